"""Preparing a dataset for its cells: open it, load the backbone, extract (or reuse) features.

Backbone building and feature extraction hold the dataset's features lock (blocking), so
two processes on one results folder extract a dataset's features once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from bench.constants import DATA_SPLITS, slug
from bench.errors import BenchError
from bench.locks import FileLock, features_lock_path
from bench.pipeline.config import RunConfig, dataset_label
from bench.pipeline.events import EventBus
from bench.pipeline.store import sweep_temporaries, writing
from bench.protocol import (
    OFFLINE_WORD_VECTORS,
    PAPER_WORD_VECTORS,
    Protocol,
    backbone_precision,
    build_protocol,
)


@dataclass(frozen=True)
class DatasetContext:
    """What every cell of one dataset shares: the dataset, backbone, cached features
    (pooled always; image tokens when a method of the run needs them; the split's images for
    methods that encode them live), the protocol and the open-world feasibility word vectors
    it asks for.

    ``annotations`` are the dataset's higher-order annotations (None without the file) and
    ``annotation_features`` their images' features.
    """

    dataset: Any
    backbone: Any
    features: dict[str, Any]
    feature_seconds: float
    cache_hit: bool
    protocol: Protocol
    word_vectors: Any = None
    tokens: dict[str, Any] = field(default_factory=dict)
    annotations: tuple[Any, ...] | None = None
    annotation_features: Any = None
    images: dict[str, Any] = field(default_factory=dict)


def random_weights_warning(backbone: Any) -> str:
    """The warning a backbone with random weights comes with."""
    return backbone.warning or (
        f"backbone {backbone.spec.raw} has RANDOM weights: its numbers say nothing about any method"
    )


def prepare_dataset(
    config: RunConfig,
    spec: str,
    *,
    events: EventBus,
    owner: str = "",
    console: Any = None,
    progress: Any = None,
    features_lock: bool = True,
) -> DatasetContext:
    """Open the dataset ``spec``, load its backbone and extract (or reuse) its features.

    Args:
        config: The run's options.
        spec: A registered dataset name or a dataset folder.
        events: Where warnings and notes go.
        owner: Who holds the features lock (the invocation id), for people looking at it.
        console: The rich console of the feature cache's progress bars and warnings
            (default: stderr).
        progress: A live rich Progress that toy-clip's pretraining bar joins (default: its
            own bar).
        features_lock: False skips the lock (and the sweep of leftover temporary files it
            allows), for a caller that knows the features are already cached.
    """
    from bench.backbones import load_backbone
    from bench.data.higher_order import SPLIT, load_annotations, with_annotation_split
    from bench.data.registry import open_dataset
    from bench.features import ImageSet, extract_features, extract_tokens
    from bench.methods import get_method_class
    from bench.pipeline.plan import cell_hparams

    dataset = open_dataset(spec, config.data_root, prepare=True)
    annotations = load_annotations(dataset)
    backbone_spec = config.backbone_for(spec)
    results_dir = config.results_dir
    # toy-clip is built by the harness itself and cached with the other results.
    cache_dir = (
        results_dir / "cache" / "backbones" if backbone_spec.startswith("toy-clip") else None
    )
    protocol_name = config.protocol_for(spec)
    label = dataset_label(spec)
    lock = FileLock(features_lock_path(results_dir, label), owner)
    feature_dir = results_dir / "cache" / "features" / slug(dataset.name)
    if features_lock:
        with writing(lock.path):
            if not lock.acquire(blocking=False):
                events.note(
                    f"another bench process is preparing {label} in {results_dir}; waiting for it"
                )
                lock.acquire(blocking=True)
        if feature_dir.is_dir():  # only the lock holder writes there
            sweep_temporaries(list(feature_dir.rglob(".*.tmp")))
    try:
        with writing(cache_dir or results_dir / "cache"):
            backbone = load_backbone(
                backbone_spec,
                device=config.device,
                cache_dir=cache_dir,
                show_progress=progress if progress is not None else True,
                precision=backbone_precision(protocol_name),
            )
        if backbone.random_weights:
            events.warn(random_weights_warning(backbone))
        start = time.perf_counter()
        with writing(feature_dir):
            features = {
                split: extract_features(backbone, dataset, split, results_dir, console=console)
                for split in DATA_SPLITS
            }
            needs = {
                level
                for name in config.methods
                for level in get_method_class(name).needs_for(
                    cell_hparams(config, name, dataset.name)
                )
            }
            tokens = {}
            if "tokens" in needs:
                tokens = {
                    split: extract_tokens(backbone, dataset, split, results_dir, console=console)
                    for split in DATA_SPLITS
                }
            annotation_features = None
            if annotations is not None:
                view = with_annotation_split(dataset, annotations)
                annotation_features = extract_features(
                    backbone, view, SPLIT, results_dir, console=console
                )
        seconds = time.perf_counter() - start
    finally:
        lock.release()
    images = {}
    if "images" in needs:
        images = {split: ImageSet.of_split(dataset, split) for split in DATA_SPLITS}
    cache_hit = all(f.cache_hit for f in [*features.values(), *tokens.values()])
    autocast = backbone.autocast_dtype
    protocol = build_protocol(
        protocol_name,
        device=backbone.device.type,
        autocast=str(autocast).removeprefix("torch.") if autocast is not None else None,
        augment=config.augment,
        feasibility=config.feasibility,
        word_vectors=config.word_vectors,
    )
    protocol, word_vectors = feasibility_vectors(protocol, dataset, backbone, events)
    return DatasetContext(
        dataset,
        backbone,
        features,
        seconds,
        cache_hit,
        protocol,
        word_vectors,
        tokens,
        annotations,
        annotation_features,
        images,
    )


def feasibility_vectors(
    protocol: Protocol, dataset: Any, backbone: Any, events: EventBus
) -> tuple[Protocol, Any]:
    """The protocol's feasibility word vectors (None without), and the protocol as run.

    When the paper's GloVe 6B-300d cannot be had (offline), glove50 stands in: a warning,
    and the protocol records it (``matches_paper`` false).
    """
    from bench.wordvectors import load_word_vectors

    if protocol.word_vectors is None:
        return protocol, None
    naming = protocol.feasibility_names
    try:
        return protocol, load_word_vectors(
            protocol.word_vectors, dataset, backbone=backbone, naming=naming
        )
    except BenchError as exc:
        if protocol.word_vectors != PAPER_WORD_VECTORS:
            raise
        reason = " ".join(str(exc).split())[:240]
    events.warn(
        f"{PAPER_WORD_VECTORS} (the paper's feasibility vectors) is unavailable ({reason}); "
        f"{OFFLINE_WORD_VECTORS} stands in and the results say so"
    )
    protocol = replace(protocol, word_vectors=OFFLINE_WORD_VECTORS)
    return protocol, load_word_vectors(
        OFFLINE_WORD_VECTORS, dataset, backbone=backbone, naming=naming
    )
