"""Frozen image features, computed once per (backbone, dataset, split, transform) and cached.

An entry lives under ``<results_dir>/cache/features/<dataset>/<backbone identifier>/`` as a
tensor file (``.pt``) and a JSON manifest describing what produced it. The tensor file is
written first and the manifest last (both atomically), so a manifest marks a complete entry;
an entry is reused only when its manifest matches and the tensor file's sha256 matches the
manifest. Anything else (stale, truncated, corrupt) is reported and rebuilt.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import io
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import __version__
from bench.backbones import Backbone
from bench.constants import slug
from bench.errors import BenchError
from bench.io import atomic_write_bytes, atomic_write_json, sha256_file, sha256_json

#: Bumped when the layout or meaning of cache entries changes.
CACHE_FORMAT = 1
#: Feature transforms: "eval" (the backbone's preprocess) and "hflip" (mirrored, then eval).
TRANSFORMS: tuple[str, ...] = ("eval", "hflip")
#: Feature levels a method can declare in ``Method.needs``: one pooled embedding per image,
#: the image transformer's last-block token sequence, or the images themselves (an
#: :class:`ImageSet`, for a method with trainable modules inside the image encoder).
FEATURE_LEVELS: tuple[str, ...] = ("pooled", "tokens", "images")


@dataclass
class FeatureSet:
    """Image features of one split.

    Attributes:
        features: (N, D) float32 CPU tensor, not normalised.
        attr_idx: (N,) int64 attribute ids.
        obj_idx: (N,) int64 object ids.
        image_paths: Image paths relative to ``<root>/images``, in sample order.
        cache_hit: Whether the features came from the cache.
        key: The cache key.
    """

    features: torch.Tensor
    attr_idx: np.ndarray
    obj_idx: np.ndarray
    image_paths: tuple[str, ...]
    cache_hit: bool
    key: str


# --------------------------------------------------------------------------- cache keys
def _transform(backbone: Backbone, transform: str) -> Callable[[Any], torch.Tensor]:
    if transform == "eval":
        return backbone.preprocess
    if transform == "hflip":
        from torchvision import transforms

        return transforms.Compose([transforms.RandomHorizontalFlip(p=1.0), backbone.preprocess])
    raise BenchError(f"unknown feature transform {transform!r}; known: {', '.join(TRANSFORMS)}")


def _describe_transform(backbone: Backbone, transform: Callable[[Any], torch.Tensor]) -> str:
    """A stable text for the transform pipeline (memory addresses stripped)."""
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", repr(transform))
    cfg = backbone.preprocess_cfg
    if cfg:
        text += " " + json.dumps(cfg, sort_keys=True, default=str)
    return text


def _split_samples(dataset: Any, split: str) -> Sequence[Any]:
    try:
        return dataset.splits[split]
    except KeyError:
        raise BenchError(
            f"dataset {dataset.name} has no split {split!r}; known: {', '.join(dataset.splits)}"
        ) from None


def _images_signature(dataset: Any, split: str) -> str:
    """sha256 over (path, size, mtime) of the split's image files; a missing file is an error."""
    digest = hashlib.sha256()
    for sample in _split_samples(dataset, split):
        path = dataset.image_path(sample)
        try:
            stat = os.stat(path)
        except OSError:
            raise BenchError(
                f"image {path} of {dataset.name}/{split} is missing or unreadable; "
                "re-download or re-prepare the dataset"
            ) from None
        digest.update(f"{sample.image}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _key_inputs(backbone: Backbone, dataset: Any, split: str, transform: str) -> dict[str, Any]:
    inputs: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "backbone": backbone.identifier,
        "dataset": dataset.name,
        "root": str(Path(dataset.root).resolve()),
        "fingerprint": dataset.fingerprint,
        "split": split,
        "transform": transform,
        "transform_description": _describe_transform(backbone, _transform(backbone, transform)),
        "images": _images_signature(dataset, split),
    }
    # Mixed precision changes the features: the paper protocol's fp16 ones never stand in for
    # bf16 ones (or fp32 ones from the CPU); full-precision keys stay as they were.
    if backbone.autocast_dtype is not None:
        inputs["autocast"] = str(backbone.autocast_dtype).removeprefix("torch.")
    return inputs


def feature_cache_key(backbone: Backbone, dataset: Any, split: str, transform: str = "eval") -> str:
    """The cache key of a split's features.

    It covers the backbone identifier, the dataset (name, folder, fingerprint, and the
    size/mtime of every image of the split), the split, the transform (name and the full
    preprocessing config) and the autocast dtype on CUDA.
    """
    return sha256_json(_key_inputs(backbone, dataset, split, transform))[:32]


def _entry_paths(results_dir: Path, inputs: dict[str, Any], key: str) -> tuple[Path, Path]:
    folder = (
        Path(results_dir)
        / "cache"
        / "features"
        / slug(inputs["dataset"])
        / slug(inputs["backbone"])
    )
    stem = f"{slug(inputs['split'])}-{slug(inputs['transform'])}-{key[:16]}"
    return folder / f"{stem}.pt", folder / f"{stem}.json"


# ------------------------------------------------------------------------------ loading
def _warn(console: Any, message: str) -> None:
    console.print(
        f"warning: {' '.join(message.split())}", style="yellow", markup=False, highlight=False
    )


def _matching_manifest(
    manifest_path: Path, key: str, inputs: dict[str, Any], what: str, console: Any
) -> dict[str, Any] | None:
    """The entry's manifest if it is readable and matches ``key``/``inputs``, else None."""
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        _warn(console, f"{what} has an unreadable manifest ({exc}); rebuilding it")
        return None
    if (
        not isinstance(manifest, dict)
        or manifest.get("key") != key
        or manifest.get("inputs") != inputs
    ):
        _warn(console, f"{what} does not match its inputs; rebuilding it")
        return None
    return manifest


def _load_entry(
    tensor_path: Path,
    manifest_path: Path,
    key: str,
    inputs: dict[str, Any],
    expected: tuple[np.ndarray, np.ndarray, tuple[str, ...]],
    console: Any,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor | None:
    """Return the cached features (stored as ``dtype``), or None (after a warning if the entry
    was bad)."""
    if not manifest_path.exists():
        return None
    what = f"feature cache entry {manifest_path}"
    manifest = _matching_manifest(manifest_path, key, inputs, what, console)
    if manifest is None:
        return None
    if not tensor_path.is_file():
        _warn(console, f"{what}: tensor file {tensor_path.name} is missing; rebuilding it")
        return None
    if sha256_file(tensor_path) != manifest.get("sha256"):
        _warn(
            console, f"{what} is corrupt ({tensor_path.name} fails its sha256 check); rebuilding it"
        )
        return None
    try:
        payload = torch.load(tensor_path, map_location="cpu", weights_only=True)
        features = payload["features"]
        attr_idx = payload["attr_idx"].numpy()
        obj_idx = payload["obj_idx"].numpy()
        image_paths = tuple(payload["image_paths"])
    except Exception as exc:  # any unreadable payload is a bad entry, not a crash
        _warn(
            console, f"{what} cannot be loaded ({' '.join(str(exc).split())[:160]}); rebuilding it"
        )
        return None
    attr_expected, obj_expected, paths_expected = expected
    if (
        not isinstance(features, torch.Tensor)
        or features.dtype != dtype
        or features.ndim != 2
        or features.shape[0] != len(paths_expected)
        or image_paths != paths_expected
        or not np.array_equal(attr_idx, attr_expected)
        or not np.array_equal(obj_idx, obj_expected)
    ):
        _warn(console, f"{what} holds different samples than the dataset; rebuilding it")
        return None
    return features


# --------------------------------------------------------------------------- extraction
def view_seed(seed: int, epoch: int, image: str) -> int:
    """The seed of ``image``'s augmented view in ``epoch`` of a run seeded ``seed``.

    It depends on nothing else (not the order, batch or worker), so the cached views and
    the live re-encoding draw the same view of an image in an epoch.
    """
    digest = hashlib.sha256(f"{seed}|{epoch}|{image}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class ImageFiles(torch.utils.data.Dataset):
    """Opens images with PIL (RGB) and applies a transform; errors travel as strings.

    With ``seeds``, image ``i``'s transform draws from the global torch generator seeded with
    ``seeds[i]`` (the caller's random state is restored afterwards).
    """

    def __init__(
        self,
        paths: Sequence[Path],
        transform: Callable[[Any], torch.Tensor],
        seeds: Sequence[int] | None = None,
    ) -> None:
        self.paths = list(paths)
        self.transform = transform
        self.seeds = seeds

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, str | None]:
        from PIL import Image

        path = self.paths[index]
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except Exception as exc:  # PIL raises OSError, ValueError, DecompressionBombError...
            reason = " ".join(str(exc).split())[:160] or type(exc).__name__
            return None, f"cannot read image {path} ({reason}); re-download or replace the file"
        if self.seeds is None:
            return self.transform(rgb), None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seeds[index])
            return self.transform(rgb), None


def collate_images(
    batch: list[tuple[torch.Tensor | None, str | None]],
) -> tuple[torch.Tensor | None, str | None]:
    for _, error in batch:
        if error is not None:
            return None, error
    return torch.stack([tensor for tensor, _ in batch if tensor is not None]), None


def _progress(console: Any) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class _RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text("? img/s" if speed is None else f"{speed:,.1f} img/s", style="cyan")

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def _encode(
    backbone: Backbone,
    paths: Sequence[Path],
    transform: Callable[[Any], torch.Tensor],
    *,
    batch_size: int,
    num_workers: int,
    console: Any,
    label: str,
    seeds: Sequence[int] | None = None,
) -> torch.Tensor:
    loader = torch.utils.data.DataLoader(
        ImageFiles(paths, transform, seeds),
        batch_size=max(1, batch_size),
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_images,
        pin_memory=torch.device(backbone.device).type == "cuda",
    )
    chunks: list[torch.Tensor] = []
    with _progress(console) as progress:
        task = progress.add_task(label, total=len(paths))
        for images, error in loader:
            if error is not None:
                raise BenchError(error)
            chunks.append(backbone.encode_images(images).detach().float().cpu())
            progress.advance(task, len(chunks[-1]))
    if not chunks:
        return torch.zeros(0, int(backbone.embed_dim), dtype=torch.float32)
    return torch.cat(chunks).contiguous()


def _store(
    tensor_path: Path,
    manifest_path: Path,
    key: str,
    inputs: dict[str, Any],
    backbone: Backbone,
    features: torch.Tensor,
    attr_idx: np.ndarray,
    obj_idx: np.ndarray,
    image_paths: tuple[str, ...],
) -> None:
    """Write an entry: the tensor file first, then the manifest (both atomic)."""
    buffer = io.BytesIO()
    torch.save(
        {
            "features": features,
            "attr_idx": torch.from_numpy(np.ascontiguousarray(attr_idx)),
            "obj_idx": torch.from_numpy(np.ascontiguousarray(obj_idx)),
            "image_paths": list(image_paths),
        },
        buffer,
    )
    data = buffer.getvalue()
    with contextlib.suppress(FileNotFoundError):
        manifest_path.unlink()  # no manifest may vouch for a tensor file being replaced
    try:
        atomic_write_bytes(tensor_path, data)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        raise BenchError(
            f"disk full: cannot write {tensor_path.name} ({len(data):,} bytes) into "
            f"{tensor_path.parent}; nothing was written. Free space or use another "
            "--results-dir, then rerun"
        ) from None
    atomic_write_json(
        manifest_path,
        {
            "format": CACHE_FORMAT,
            "key": key,
            "inputs": inputs,
            "backbone": {
                "spec": backbone.spec.raw,
                "identifier": backbone.identifier,
                "random_weights": backbone.random_weights,
            },
            "dataset": {"name": inputs["dataset"], "fingerprint": inputs["fingerprint"]},
            "split": inputs["split"],
            "transform": {
                "name": inputs["transform"],
                "description": inputs["transform_description"],
            },
            "n": int(features.shape[0]),
            "dim": int(features.shape[1]),
            "tensor_file": tensor_path.name,
            "sha256": hashlib.sha256(data).hexdigest(),
            "bench_version": __version__,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        },
    )


def _console(console: Any) -> Any:
    if console is None:
        from rich.console import Console

        console = Console(stderr=True)
    return console


def extract_features(
    backbone: Backbone,
    dataset: Any,
    split: str,
    results_dir: Path,
    *,
    transform: str = "eval",
    batch_size: int = 64,
    num_workers: int = 0,
    console: Any = None,
) -> FeatureSet:
    """Return a split's frozen image features, from the cache or by running the encoder.

    Args:
        backbone: A loaded backbone (only its image encoder and identity are used).
        dataset: A ``bench.data.czsl.CZSLDataset``.
        split: "train", "val" or "test".
        results_dir: The results folder; entries go under ``cache/features/``.
        transform: "eval" (the backbone's preprocess) or "hflip".
        batch_size: Images per encoder batch.
        num_workers: DataLoader worker processes (0: load in this process).
        console: rich Console for the progress bar and warnings (default: stderr).

    Raises:
        BenchError: A missing or unreadable image (named), or an unknown split/transform.
    """
    console = _console(console)
    samples = _split_samples(dataset, split)
    attr_idx, obj_idx = (np.asarray(ids, dtype=np.int64) for ids in dataset.labels(split))
    image_paths = tuple(sample.image for sample in samples)
    inputs = _key_inputs(backbone, dataset, split, transform)
    key = sha256_json(inputs)[:32]
    tensor_path, manifest_path = _entry_paths(Path(results_dir), inputs, key)

    cached = _load_entry(
        tensor_path, manifest_path, key, inputs, (attr_idx, obj_idx, image_paths), console
    )
    if cached is not None:
        return FeatureSet(cached, attr_idx, obj_idx, image_paths, cache_hit=True, key=key)

    features = _encode(
        backbone,
        [dataset.image_path(sample) for sample in samples],
        _transform(backbone, transform),
        batch_size=batch_size,
        num_workers=num_workers,
        console=console,
        label=f"features {dataset.name}/{split}",
    )
    _store(
        tensor_path, manifest_path, key, inputs, backbone, features, attr_idx, obj_idx, image_paths
    )
    return FeatureSet(features, attr_idx, obj_idx, image_paths, cache_hit=False, key=key)


# ------------------------------------------------------------------ augmented training views
class TrainViews:
    """The training images' augmented views per epoch, encoded once and shared.

    Epoch ``e`` of a run seeded ``seed`` is one randomly augmented view of every training
    image (``backbone.train_transform``, each image's view seeded by ``view_seed(seed, e,
    image)``), encoded by the frozen image encoder and stored in fp16 in the feature cache
    (``train-paper-s<seed>-e<epoch>-*.pt`` beside the split features, written atomically,
    manifest last). Every method of a grid that trains on these views with the same
    backbone, dataset and seed reads the stored epoch instead of re-encoding it.

    Attributes:
        encoded: Epochs this object encoded (the rest came from the cache).
        cached: Epochs this object read from the cache.
    """

    def __init__(
        self,
        backbone: Backbone,
        dataset: Any,
        results_dir: Path,
        seed: int,
        *,
        batch_size: int = 64,
        num_workers: int = 0,
        console: Any = None,
    ) -> None:
        self.backbone, self.dataset, self.seed = backbone, dataset, seed
        self.results_dir = Path(results_dir)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.console = _console(console)
        self.encoded: list[int] = []
        self.cached: list[int] = []
        self._checked_disk = False

    def _inputs(self, epoch: int) -> dict[str, Any]:
        inputs = _key_inputs(self.backbone, self.dataset, "train", "eval")
        inputs["transform"] = f"paper-s{self.seed}-e{epoch}"
        inputs["transform_description"] = _describe_transform(
            self.backbone, self.backbone.train_transform
        )
        inputs.update(seed=int(self.seed), epoch=int(epoch), dtype="float16")
        return inputs

    def epoch(self, epoch: int) -> FeatureSet:
        """Epoch ``epoch``'s view features: (N, D) float32 (fp16 values), in sample order."""
        samples = _split_samples(self.dataset, "train")
        attr_idx, obj_idx = (
            np.asarray(ids, dtype=np.int64) for ids in self.dataset.labels("train")
        )
        image_paths = tuple(sample.image for sample in samples)
        inputs = self._inputs(epoch)
        key = sha256_json(inputs)[:32]
        tensor_path, manifest_path = _entry_paths(self.results_dir, inputs, key)
        expected = (attr_idx, obj_idx, image_paths)
        cached = _load_entry(
            tensor_path, manifest_path, key, inputs, expected, self.console, torch.float16
        )
        if cached is not None:
            self.cached.append(epoch)
            return FeatureSet(cached.float(), attr_idx, obj_idx, image_paths, True, key)
        self._check_disk(tensor_path.parent, len(samples))
        features = _encode(
            self.backbone,
            [self.dataset.image_path(sample) for sample in samples],
            self.backbone.train_transform,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            console=self.console,
            label=f"views {self.dataset.name}/train epoch {epoch}",
            seeds=[view_seed(self.seed, epoch, image) for image in image_paths],
        ).half()
        _store(
            tensor_path,
            manifest_path,
            key,
            inputs,
            self.backbone,
            features,
            attr_idx,
            obj_idx,
            image_paths,
        )
        self.encoded.append(epoch)
        return FeatureSet(features.float(), attr_idx, obj_idx, image_paths, False, key)

    def _check_disk(self, folder: Path, n_images: int) -> None:
        """Print the disk use of one epoch's views (once) and refuse a disk without room."""
        if self._checked_disk:
            return
        per_epoch = n_images * int(self.backbone.embed_dim) * 2
        free = require_free_space(folder, per_epoch, "the augmented views of one epoch")
        self.console.print(
            f"augmented-view cache: {n_images:,} images x {self.backbone.embed_dim} fp16 = "
            f"{per_epoch / 1e6:,.1f} MB per epoch in {folder} ({free / 1e9:,.1f} GB free)",
            markup=False,
            highlight=False,
        )
        self._checked_disk = True


# ------------------------------------------------------------------------- image tokens
@dataclass(frozen=True)
class TokenSet:
    """Image tokens of one split, in a memory-mapped fp16 ``.npy`` file (never loaded whole).

    Attributes:
        path: The ``.npy`` file, shape (N, T, width), float16.
        attr_idx: (N,) int64 attribute ids.
        obj_idx: (N,) int64 object ids.
        image_paths: Image paths relative to ``<root>/images``, in sample order.
        cache_hit: Whether the tokens came from the cache.
        key: The cache key.
    """

    path: Path
    attr_idx: np.ndarray
    obj_idx: np.ndarray
    image_paths: tuple[str, ...]
    cache_hit: bool
    key: str

    def array(self) -> np.ndarray:
        """The read-only memory map (opened on each call, so the set pickles small)."""
        return np.load(self.path, mmap_mode="r")

    def __len__(self) -> int:
        return len(self.image_paths)

    @property
    def shape(self) -> tuple[int, ...]:
        """(N, T, width)."""
        return tuple(self.array().shape)

    def rows(self, index: np.ndarray | torch.Tensor | slice) -> torch.Tensor:
        """The tokens of some images as a float32 tensor (only those rows are read)."""
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        return torch.from_numpy(np.asarray(self.array()[index], dtype=np.float32))

    def batches(self, size: int) -> Iterator[torch.Tensor]:
        """Float32 (b, T, width) tensors of consecutive images, in sample order."""
        for start in range(0, len(self), max(1, size)):
            yield self.rows(slice(start, start + size))


# ------------------------------------------------------------------------- live images
@dataclass(frozen=True)
class ImageSet:
    """The images of one split, for methods that run the image encoder themselves.

    Nothing is cached: a method with trainable modules inside the encoder (``needs``
    "images") encodes these images with its current modules, while training and when
    scoring. It holds paths only, so it pickles small (Ray).

    Attributes:
        paths: Absolute image paths, in sample order.
        attr_idx: (N,) int64 attribute ids.
        obj_idx: (N,) int64 object ids.
        image_paths: Image paths relative to ``<root>/images``, in sample order.
    """

    paths: tuple[Path, ...]
    attr_idx: np.ndarray
    obj_idx: np.ndarray
    image_paths: tuple[str, ...]

    @classmethod
    def of_split(cls, dataset: Any, split: str) -> ImageSet:
        """The images of ``dataset``'s ``split``."""
        samples = _split_samples(dataset, split)
        attr_idx, obj_idx = (np.asarray(ids, dtype=np.int64) for ids in dataset.labels(split))
        return cls(
            tuple(Path(dataset.image_path(s)) for s in samples),
            attr_idx,
            obj_idx,
            tuple(s.image for s in samples),
        )

    def __len__(self) -> int:
        return len(self.paths)

    def loader(
        self,
        transform: Callable[[Any], torch.Tensor],
        batches: Sequence[Sequence[int]],
        *,
        seeds: Sequence[int] | None = None,
        device: torch.device | str = "cpu",
    ) -> Iterator[torch.Tensor]:
        """Transformed (b, 3, H, W) image batches, one per list of indices in ``batches``.

        Args:
            transform: The backbone's ``preprocess`` or ``train_transform``.
            batches: The sample indices of each batch, in order.
            seeds: Per-sample seeds of a random transform (``view_seed``), else None.
            device: Where the batches go; on CUDA, worker processes decode the images.

        Raises:
            BenchError: An image cannot be read.
        """
        device = torch.device(device)
        workers = 0 if device.type == "cpu" else min(8, torch.get_num_threads())
        loader = torch.utils.data.DataLoader(
            ImageFiles(self.paths, transform, seeds),
            batch_sampler=[list(batch) for batch in batches],
            num_workers=workers,
            collate_fn=collate_images,
            pin_memory=device.type == "cuda",
        )
        for images, error in loader:
            if error is not None or images is None:
                raise BenchError(error or "empty image batch")
            yield images.to(device, non_blocking=True)

    def batches(
        self,
        transform: Callable[[Any], torch.Tensor],
        size: int,
        device: torch.device | str = "cpu",
    ) -> Iterator[torch.Tensor]:
        """Consecutive images (``size`` at a time, in sample order) through ``transform``."""
        order = list(range(len(self)))
        step = max(1, size)
        yield from self.loader(
            transform, [order[i : i + step] for i in range(0, len(order), step)], device=device
        )


def image_token_shape(backbone: Any) -> tuple[int, int]:
    """(T, width) of the backbone's image tokens, without encoding an image.

    Raises:
        BenchError: The backbone has no token-level image access.
    """
    if not hasattr(backbone, "encode_image_tokens"):
        raise BenchError(
            f"backbone {backbone.spec.raw} gives no image tokens; methods on image tokens "
            "need an open_clip ViT backbone (e.g. ViT-L-14:openai)"
        )
    return backbone.image_token_shape()


def require_free_space(folder: Path, size: int, what: str) -> int:
    """Create ``folder`` and return its free bytes; refuse (one line, nothing written) when
    ``what`` needs ``size`` bytes more than that.

    Raises:
        BenchError: The disk is too full.
    """
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if size > free:
        raise BenchError(
            f"disk full: {what} need {_human_bytes(size)} but {folder} has "
            f"{_human_bytes(free)} free; free disk space or use another --results-dir, then "
            "rerun (nothing was written)"
        )
    return free


def _human_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1000
    raise AssertionError("unreachable")


def _load_token_entry(
    array_path: Path,
    manifest_path: Path,
    key: str,
    inputs: dict[str, Any],
    shape: tuple,
    console: Any,
) -> bool:
    """Whether a complete, matching token entry exists (after a warning if it is bad).

    The array is too large to hash on every run: its sha256 is recorded at extraction and
    the file's size and header are checked here; the manifest, written last, vouches for it.
    """
    if not manifest_path.exists():
        return False
    what = f"token cache entry {manifest_path}"
    manifest = _matching_manifest(manifest_path, key, inputs, what, console)
    if manifest is None:
        return False
    try:
        array = np.load(array_path, mmap_mode="r")
        ok = (
            array.dtype == np.float16
            and tuple(array.shape) == shape
            and array_path.stat().st_size == manifest.get("bytes")
        )
    except (OSError, ValueError) as exc:
        _warn(
            console, f"{what} cannot be opened ({' '.join(str(exc).split())[:160]}); rebuilding it"
        )
        return False
    if not ok:
        _warn(console, f"{what} has the wrong size or shape; rebuilding it")
    return ok


def extract_tokens(
    backbone: Backbone,
    dataset: Any,
    split: str,
    results_dir: Path,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    console: Any = None,
) -> TokenSet:
    """Return a split's image tokens (fp16, memory-mapped), from the cache or by encoding.

    Entries sit beside the pooled features, keyed like them plus ``level: tokens``. The size
    is printed before extraction; extraction refuses (one line) when the disk is short. The
    array is written to a temporary file, renamed into place, and the manifest comes last.

    Raises:
        BenchError: Too little free disk, a missing or unreadable image, a backbone
            without image tokens.
    """
    console = _console(console)
    samples = _split_samples(dataset, split)
    attr_idx, obj_idx = (np.asarray(ids, dtype=np.int64) for ids in dataset.labels(split))
    image_paths = tuple(sample.image for sample in samples)
    inputs = {**_key_inputs(backbone, dataset, split, "eval"), "level": "tokens"}
    key = sha256_json(inputs)[:32]
    pooled_path, _ = _entry_paths(Path(results_dir), inputs, key)
    array_path = pooled_path.with_name(pooled_path.stem + "-tokens.npy")
    manifest_path = pooled_path.with_name(pooled_path.stem + "-tokens.json")
    n_tokens, width = image_token_shape(backbone)
    shape = (len(samples), n_tokens, width)
    token_set = TokenSet(array_path, attr_idx, obj_idx, image_paths, cache_hit=True, key=key)
    if _load_token_entry(array_path, manifest_path, key, inputs, shape, console):
        return token_set

    size = int(np.prod(shape)) * 2
    folder = array_path.parent
    require_free_space(folder, size, f"image tokens of {dataset.name}/{split}")
    console.print(
        f"image tokens {dataset.name}/{split}: {shape[0]} x {n_tokens} x {width} fp16 = "
        f"{_human_bytes(size)} in {folder}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    with contextlib.suppress(FileNotFoundError):
        manifest_path.unlink()  # no manifest may vouch for an array being replaced
    temporary = folder / f".{array_path.name}.{os.getpid()}.tmp"
    try:
        array = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.float16, shape=shape)
        loader = torch.utils.data.DataLoader(
            ImageFiles([dataset.image_path(s) for s in samples], _transform(backbone, "eval")),
            batch_size=max(1, batch_size),
            shuffle=False,
            num_workers=num_workers,
            collate_fn=collate_images,
        )
        start = 0
        with _progress(console) as progress:
            task = progress.add_task(f"tokens {dataset.name}/{split}", total=len(samples))
            for images, error in loader:
                if error is not None:
                    raise BenchError(error)
                tokens = backbone.encode_image_tokens(images).cpu().numpy()
                array[start : start + len(tokens)] = tokens
                start += len(tokens)
                progress.advance(task, len(tokens))
        array.flush()
        del array
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, array_path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
    atomic_write_json(
        manifest_path,
        {
            "format": CACHE_FORMAT,
            "key": key,
            "inputs": inputs,
            "backbone": {"spec": backbone.spec.raw, "identifier": backbone.identifier},
            "shape": list(shape),
            "dtype": "float16",
            "bytes": array_path.stat().st_size,
            "array_file": array_path.name,
            "sha256": sha256_file(array_path),
            "bench_version": __version__,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        },
    )
    return TokenSet(array_path, attr_idx, obj_idx, image_paths, cache_hit=False, key=key)
