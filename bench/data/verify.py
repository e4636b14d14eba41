"""Check a dataset on disk: counts against its card, and every image file readable."""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.constants import DATA_SPLITS
from bench.data.czsl import IMAGES_DIR, describe
from bench.data.registry import dataset_card, is_registered, open_dataset


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of :func:`verify_dataset`.

    Attributes:
        name: Dataset name.
        root: Dataset folder.
        counts: ``describe()`` of the loaded dataset.
        expected: The card's ``[counts]``, or None for an unregistered folder.
        mismatches: One line per count that differs from the card.
        missing: Image paths (relative to ``images/``) that do not exist.
        unreadable: ``"path: reason"`` for images that exist but PIL cannot verify.
        images_checked: Number of distinct image files checked.
    """

    name: str
    root: Path
    counts: Mapping[str, Any]
    expected: Mapping[str, Any] | None
    mismatches: tuple[str, ...]
    missing: tuple[str, ...]
    unreadable: tuple[str, ...]
    images_checked: int

    @property
    def ok(self) -> bool:
        """True when counts match and every image is present and readable."""
        return not (self.mismatches or self.missing or self.unreadable)

    def summary(self, max_listed: int = 10) -> list[str]:
        """Human-readable lines describing the result."""
        lines = [f"{self.name} ({self.root}): {self.images_checked} images checked"]
        if self.expected is None:
            lines.append("no card for this folder: counts not compared")
        elif not self.mismatches:
            lines.append("counts match the card")
        lines += [f"count mismatch: {line}" for line in self.mismatches]
        for label, items in (("missing", self.missing), ("unreadable", self.unreadable)):
            if items:
                lines.append(f"{len(items)} {label} image(s) under {self.root / IMAGES_DIR}:")
                lines += [f"  {item}" for item in items[:max_listed]]
                if len(items) > max_listed:
                    lines.append(f"  ... and {len(items) - max_listed} more")
        lines.append("OK" if self.ok else "FAILED")
        return lines


def compare_counts(expected: Mapping[str, Any], found: Mapping[str, Any]) -> list[str]:
    """Compare a card's ``[counts]`` with ``describe()``; one line per difference.

    The card's ``train.pairs`` is compared with the train split's ``seen_pairs``; keys the
    card does not list are not compared.
    """
    problems: list[str] = []
    for key, want in expected.items():
        if isinstance(want, Mapping):
            got_split = found.get(key, {})
            for sub, sub_want in want.items():
                field = "seen_pairs" if (key == "train" and sub == "pairs") else sub
                got = got_split.get(field) if isinstance(got_split, Mapping) else None
                if got != sub_want:
                    problems.append(f"{key}.{sub}: card says {sub_want}, found {got}")
        elif found.get(key) != want:
            problems.append(f"{key}: card says {want}, found {found.get(key)}")
    return problems


def _check_image(path: Path) -> str | None:
    """None if ``path`` is a readable image, else ``"missing"`` or the reason it is unreadable."""
    from PIL import Image

    if not path.is_file():
        return "missing"
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as exc:  # PIL raises many kinds for broken files
        return f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    return None


def verify_dataset(
    name_or_path: str | os.PathLike[str],
    root: Path | None = None,
    *,
    progress: bool = True,
    workers: int = 8,
) -> VerifyReport:
    """Load a dataset, compare its counts with its card and check every image file.

    Args:
        name_or_path: A registered dataset name or a dataset folder.
        root: The data root for registered names.
        progress: Show a rich progress bar on stderr.
        workers: Threads used to open images.

    Raises:
        BenchError: the dataset cannot be found or loaded.
    """
    ds = open_dataset(name_or_path, root)
    counts = describe(ds)
    value = os.fspath(name_or_path)
    expected = dataset_card(value).get("counts") if is_registered(value) else None
    mismatches = compare_counts(expected, counts) if expected else []

    images = sorted({s.image for split in DATA_SPLITS for s in ds.splits[split]})
    base = ds.root / IMAGES_DIR
    results: list[str | None] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        checks = pool.map(_check_image, (base / image for image in images), chunksize=64)
        if progress:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            columns = (
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
            )
            with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
                task = bar.add_task(f"checking {ds.name} images", total=len(images))
                for result in checks:
                    results.append(result)
                    bar.advance(task)
        else:
            results = list(checks)

    missing = tuple(img for img, res in zip(images, results, strict=True) if res == "missing")
    unreadable = tuple(
        f"{img}: {res}"
        for img, res in zip(images, results, strict=True)
        if res is not None and res != "missing"
    )
    return VerifyReport(
        name=ds.name,
        root=ds.root,
        counts=counts,
        expected=expected,
        mismatches=tuple(mismatches),
        missing=missing,
        unreadable=unreadable,
        images_checked=len(images),
    )
