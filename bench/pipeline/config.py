"""What ``bench run`` was asked to do, and the units it runs: cells and their outcomes."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.constants import AUGMENT_CHOICES, FEASIBILITY_CHOICES, TEXT_ENCODING_CHOICES
from bench.data.registry import dataset_card, is_registered
from bench.errors import BenchError
from bench.protocol import PROTOCOL_CHOICES, build_protocol, default_protocol_name

DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_SYNTHETIC_BACKBONE = "toy-clip"
DEFAULT_REAL_BACKBONE = "ViT-L-14:openai"
MAX_SEED = 2**32 - 1
MAX_EPOCHS = 10_000
MAX_TOPK = 1_000


@dataclass(frozen=True)
class RunConfig:
    """What ``bench run`` was asked to do.

    Attributes:
        methods: Registered method names.
        datasets: Registered dataset names or dataset folder paths.
        seeds: Random seeds; each (method, dataset, seed) is one cell.
        backbone: Backbone spec; None picks ``toy-clip`` for synthetic datasets and
            ``ViT-L-14:openai`` (the CSP paper's) for the others.
        epochs: Overrides the card's epoch count for methods that train.
        data_root: Where registered datasets live.
        results_dir: Where runs, caches, the MLflow store and reports go.
        tracking_uri: MLflow tracking URI (default: sqlite store in results_dir).
        rerun: Redo finished cells (and start unfinished ones over, dropping checkpoints).
        device: "cpu", "cuda", "cuda:1"...; None = CUDA when available.
        protocol: "paper" or "harness" (``bench.protocol``); None: "paper" on the real
            datasets, "harness" on synthetic and folder datasets.
        augment: "none" trains on cached features; "paper" on augmented views; None: the
            protocol's (an explicit value overrides it and is recorded).
        text_encoding: "prefix" encodes each shared prompt prefix once, "full" every prompt
            position; recorded in the cell config of methods that encode prompts.
        topk: Top-k accuracy.
        feasibility: Open-world filter: "mask" (proper masking), "csp-multiply" (CSP's
            variant, for reproduction) or "off"; None: the protocol's.
        word_vectors: Word-vector provider for open-world feasibility (None: the protocol's;
            the harness protocol has none, so no feasibility).
        log_mlflow: Log finished cells to MLflow.
        hparam_overrides: Extra hyperparameter overrides for every method that defines them.
        load_state: A saved trainable state (``trainable_state.pt`` of an earlier cell, with
            ``trainable_state_names.json`` beside it when present) that initialises every
            training method; with ``epochs=0`` the state is evaluated as it is.
        wait_elsewhere: Seconds to wait, after a dataset's other cells, for cells that
            another process is running (0: re-check once, then report them).
    """

    methods: tuple[str, ...]
    datasets: tuple[str, ...]
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    backbone: str | None = None
    epochs: int | None = None
    data_root: Path = Path("data")
    results_dir: Path = Path("results")
    tracking_uri: str | None = None
    rerun: bool = False
    device: str | None = None
    protocol: str | None = None
    augment: str | None = None
    text_encoding: str = "prefix"
    topk: int = 1
    feasibility: str | None = None
    word_vectors: str | None = None
    log_mlflow: bool = True
    hparam_overrides: Mapping[str, Any] = field(default_factory=dict)
    load_state: Path | None = None
    wait_elsewhere: float = 0.0

    def __post_init__(self) -> None:
        if not self.methods:
            raise BenchError("no method given; pass --methods, e.g. --methods clip,csp")
        if not self.datasets:
            raise BenchError("no dataset given; pass --datasets, e.g. --datasets synthetic")
        if not self.seeds:
            raise BenchError("no seed given; pass --seeds, e.g. --seeds 0,1,2")
        for seed in self.seeds:
            if not 0 <= seed <= MAX_SEED:
                raise BenchError(
                    f"--seeds: {seed} is out of range; use integers in [0, {MAX_SEED}]"
                )
        if self.epochs is not None and not 0 <= self.epochs <= MAX_EPOCHS:
            raise BenchError(
                f"--epochs: {self.epochs} is out of range; use an integer in [0, {MAX_EPOCHS}]"
            )
        if self.protocol is not None and self.protocol not in PROTOCOL_CHOICES:
            raise BenchError(
                f"--protocol: {self.protocol!r} is not one of {', '.join(PROTOCOL_CHOICES)}"
            )
        if self.augment is not None and self.augment not in AUGMENT_CHOICES:
            raise BenchError(
                f"--augment: {self.augment!r} is not one of {', '.join(AUGMENT_CHOICES)}"
            )
        if self.text_encoding not in TEXT_ENCODING_CHOICES:
            raise BenchError(
                f"--text-encoding: {self.text_encoding!r} is not one of "
                f"{', '.join(TEXT_ENCODING_CHOICES)}"
            )
        if self.feasibility is not None and self.feasibility not in FEASIBILITY_CHOICES:
            raise BenchError(
                f"--feasibility: {self.feasibility!r} is not one of {', '.join(FEASIBILITY_CHOICES)}"
            )
        if not 1 <= self.topk <= MAX_TOPK:
            raise BenchError(
                f"--topk: {self.topk} is out of range; use an integer in [1, {MAX_TOPK}]"
            )
        if self.wait_elsewhere < 0:
            raise BenchError(f"--wait-elsewhere: {self.wait_elsewhere} must be >= 0 seconds")

    def backbone_for(self, dataset: str) -> str:
        """The backbone spec used on ``dataset``."""
        if self.backbone:
            return self.backbone
        return DEFAULT_SYNTHETIC_BACKBONE if is_synthetic(dataset) else DEFAULT_REAL_BACKBONE

    def protocol_for(self, dataset: str) -> str:
        """The protocol name used on ``dataset``: ``--protocol``, else the dataset kind's."""
        if self.protocol:
            return self.protocol
        kind = dataset_card(dataset).get("kind") if is_registered(dataset) else None
        return default_protocol_name(kind)

    def augment_for(self, dataset: str) -> str:
        """The ``--augment`` mode of ``dataset``'s training methods (before per-method limits)."""
        return build_protocol(self.protocol_for(dataset), augment=self.augment).augment


def is_synthetic(dataset: str) -> bool:
    """Whether ``dataset`` (a registered name or a folder) is generated by the harness.

    A registered dataset says so by its card's ``kind``; a folder by the ``generator.json``
    the generator writes into it. Folders without one keep the older rule: a folder name
    starting with "synthetic".
    """
    from bench.data.synthetic import read_generator_params

    if is_registered(dataset):
        return dataset_card(dataset).get("kind") == "synthetic"

    params = read_generator_params(Path(dataset))
    if params is not None:
        return params.get("generator") == "bench.data.synthetic"
    return Path(dataset).name.startswith("synthetic")


def dataset_label(spec: str) -> str:
    """The name a dataset spec goes by in cells, result paths and MLflow (a folder's name)."""
    path = Path(spec)
    if os.sep in spec or spec.startswith(".") or path.is_dir() and not is_registered(spec):
        return path.resolve().name
    return spec


@dataclass(frozen=True)
class Cell:
    """One (method, dataset, seed) job."""

    method: str
    dataset: str
    seed: int

    @property
    def label(self) -> str:
        """``<method>|<dataset>|s<seed>``, the MLflow run name."""
        return f"{self.method}|{self.dataset}|s{self.seed}"


@dataclass(frozen=True)
class PlannedCell:
    """A cell with its resolved configuration, the configuration's hash and its result file.

    Resolved once per grid, where the dataset's backbone is loaded; executors send it to
    whoever runs the cell.
    """

    cell: Cell
    config: dict[str, Any]
    config_hash: str
    path: Path


@dataclass(frozen=True)
class CellOutcome:
    """What happened to a cell in this invocation.

    ``status``: "done" (run now), "skipped" (finished earlier or by another process),
    "elsewhere" (another live process is running it) or "failed".
    """

    cell: Cell
    status: str
    result: dict[str, Any] | None = None
    error: str | None = None
    path: Path | None = None
