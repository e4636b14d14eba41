"""Shared fixtures: small synthetic datasets and a builder for hand-made dataset folders.

Fixtures:
    synthetic_root: a data root (session) holding the default ``synthetic`` dataset.
    synthetic_dataset: that dataset, loaded (``CZSLDataset``).
    tiny_root: a data root (session) holding ``synthetic-tiny`` (6 attrs x 5 objs).
    tiny_dataset: that dataset, loaded.
    make_czsl_folder: ``make_czsl_folder(name="ds", pairs=..., rows=..., ...) -> Path``
        writes a dataset folder in the standard format under ``tmp_path``; with no
        pairs/rows it writes a hand-made dataset covering the loader's rules.
    czsl_defaults: fresh copies of that hand-made dataset's ``(pairs, rows)``.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from bench.data.czsl import CZSLDataset, load_dataset

#: A hand-made dataset covering the loader's rules (used when no pairs/rows are given).
DEFAULT_PAIRS: dict[str, list[str]] = {
    "train": ["red circle", "blue square", "Faux.Fur traffic_light", "red circle"],
    "val": ["blue square", "", "red square"],
    "test": ["blue circle", "red circle", "Faux.Fur square"],
}
DEFAULT_ROWS: list[dict[str, str]] = [
    {"image": "red_circle/0.jpg", "attr": "red", "obj": "circle", "set": "train"},
    {"image": "red_circle/1.jpg", "attr": "red", "obj": "circle", "set": "train"},
    {"image": "blue_square/2.jpg", "attr": "blue", "obj": "square", "set": "train"},
    {
        "image": "Faux.Fur_traffic_light/3.jpg",
        "attr": "Faux.Fur",
        "obj": "traffic_light",
        "set": "train",
    },
    # a train image whose pair is closed-world but not in train_pairs.txt: kept
    {"image": "red_square/4.jpg", "attr": "red", "obj": "square", "set": "train"},
    # skipped: attr NA, set NA, pair outside the closed world
    {"image": "adj_circle/5.jpg", "attr": "NA", "obj": "circle", "set": "train"},
    {"image": "red_circle/6.jpg", "attr": "red", "obj": "circle", "set": "NA"},
    {"image": "blue_traffic_light/7.jpg", "attr": "blue", "obj": "traffic_light", "set": "train"},
    {"image": "blue_square/8.jpg", "attr": "blue", "obj": "square", "set": "val"},
    {"image": "red_square/9.jpg", "attr": "red", "obj": "square", "set": "val"},
    # a val image of a test-only pair: kept (images are never filtered by the pair file)
    {"image": "blue_circle/10.jpg", "attr": "blue", "obj": "circle", "set": "val"},
    {"image": "blue_circle/11.jpg", "attr": "blue", "obj": "circle", "set": "test"},
    {"image": "red_circle/12.jpg", "attr": "red", "obj": "circle", "set": "test"},
    {"image": "Faux.Fur_square/13.jpg", "attr": "Faux.Fur", "obj": "square", "set": "test"},
]

_SENTINEL: Any = object()


def write_tiny_image(path: Path, seed: int = 0) -> None:
    """Write a 4x4 RGB image (PNG bytes whatever the extension)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (4, 4), (seed * 37 % 256, seed * 91 % 256, 128))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())


def build_czsl_folder(
    folder: Path,
    pairs: Mapping[str, Sequence[str | tuple[str, str]]] | None = None,
    rows: Sequence[Mapping[str, str]] | None = None,
    *,
    metadata: Any = _SENTINEL,
    images: bool = True,
    skip_pair_files: Sequence[str] = (),
) -> Path:
    """Write a dataset folder in the standard format.

    Args:
        folder: The dataset folder to create.
        pairs: Lines per split (``"attr obj"`` strings written verbatim, or tuples).
        rows: Metadata rows; defaults to ``DEFAULT_ROWS``.
        metadata: Object to ``torch.save`` instead of ``rows`` (or ``bytes`` written raw).
        images: Write a tiny image for every row.
        skip_pair_files: Splits whose pair file is not written.
    """
    import torch

    pairs = DEFAULT_PAIRS if pairs is None else pairs
    rows = DEFAULT_ROWS if rows is None else rows
    split_dir = folder / "compositional-split-natural"
    split_dir.mkdir(parents=True, exist_ok=True)
    for split, lines in pairs.items():
        if split in skip_pair_files:
            continue
        text = "".join((line if isinstance(line, str) else " ".join(line)) + "\n" for line in lines)
        (split_dir / f"{split}_pairs.txt").write_text(text, encoding="utf-8")
    meta_path = folder / "metadata_compositional-split-natural.t7"
    if metadata is _SENTINEL:
        torch.save([dict(row) for row in rows], meta_path)
    elif isinstance(metadata, bytes):
        meta_path.write_bytes(metadata)
    elif metadata is not None:
        torch.save(metadata, meta_path)
    if images:
        for index, row in enumerate(rows):
            write_tiny_image(folder / "images" / row["image"], seed=index)
    return folder


@pytest.fixture
def make_czsl_folder(tmp_path: Path) -> Callable[..., Path]:
    """Factory writing hand-made dataset folders under ``tmp_path`` (see ``build_czsl_folder``)."""

    def make(name: str = "handmade", **kwargs: Any) -> Path:
        return build_czsl_folder(tmp_path / name, **kwargs)

    return make


@pytest.fixture
def czsl_defaults() -> tuple[dict[str, list[str]], list[dict[str, str]]]:
    """Fresh copies of ``(DEFAULT_PAIRS, DEFAULT_ROWS)`` to modify in a test."""
    return {k: list(v) for k, v in DEFAULT_PAIRS.items()}, [dict(row) for row in DEFAULT_ROWS]


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding the default ``synthetic`` dataset (seed 0)."""
    from bench.data.registry import prepare_synthetic

    root = tmp_path_factory.mktemp("data-synthetic")
    prepare_synthetic("synthetic", root)
    return root


@pytest.fixture(scope="session")
def synthetic_dataset(synthetic_root: Path) -> CZSLDataset:
    """The default ``synthetic`` dataset, loaded."""
    return load_dataset(synthetic_root / "synthetic", name="synthetic")


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding ``synthetic-tiny`` (seed 0)."""
    from bench.data.registry import prepare_synthetic

    root = tmp_path_factory.mktemp("data-tiny")
    prepare_synthetic("synthetic-tiny", root)
    return root


@pytest.fixture(scope="session")
def tiny_dataset(tiny_root: Path) -> CZSLDataset:
    """``synthetic-tiny``, loaded."""
    return load_dataset(tiny_root / "synthetic-tiny", name="synthetic-tiny")
