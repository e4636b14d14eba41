"""UT-Zappos: images reorganised into ``images/<attr>_<obj>/`` pair folders (czsl's step)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.data.czsl import IMAGES_DIR, METADATA_FILE
from bench.data.download.archive import member_parts, move_into_place, staging_dir
from bench.data.download.output import default_console, say
from bench.errors import BenchError


def _load_rows(path: Path) -> list[dict[str, Any]]:
    import torch

    try:
        rows = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise BenchError(
            f"missing {path}: the splits archive did not provide it; delete the archive and "
            f"download it again"
        ) from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
        raise BenchError(
            f"cannot load {path} with torch.load(weights_only=True) ({type(exc).__name__}); "
            f"delete the splits archive and download it again"
        ) from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise BenchError(f"{path} is not a list of dicts; delete the splits archive and retry")
    return rows


def _safe_name(value: object, path: Path, index: int, key: str) -> str:
    if (
        not isinstance(value, str)
        or not value
        or value in (".", "..")
        or "/" in value
        or "\\" in value
        or "\x00" in value
    ):
        raise BenchError(f"{path}: row {index} has an unsafe or missing {key!r} ({value!r})")
    return value


def reorganize_utzappos(dataset_dir: Path, console: Console | None = None) -> int:
    """Build ``images/<attr>_<obj>/<basename>`` from ``_images/`` and the metadata file.

    This is the czsl ``reorganize_utzap.py`` step: each metadata row's ``_image`` (relative
    to ``_images/``) is copied into its pair folder. The new ``images/`` replaces the old one
    only once complete.

    Args:
        dataset_dir: The ``ut-zappos`` folder (with ``_images/`` and the metadata file).
        console: Where progress goes (default: stderr).

    Returns:
        The number of images copied.

    Raises:
        BenchError: Unsafe metadata or images listed in it but missing from ``_images/``.
    """
    console = default_console(console)
    dataset_dir = Path(dataset_dir)
    meta = dataset_dir / METADATA_FILE
    rows = _load_rows(meta)
    source_root = dataset_dir / "_images"
    missing: list[str] = []
    copied = 0
    with staging_dir(dataset_dir, ".bench-reorganize-") as staging:
        made: set[Path] = set()
        for index, row in enumerate(rows):
            image = row.get("_image")
            if not isinstance(image, str) or not image:
                raise BenchError(f"{meta}: row {index} has no '_image'")
            parts = member_parts(meta, image)
            attr = _safe_name(row.get("attr"), meta, index, "attr")
            obj = _safe_name(row.get("obj"), meta, index, "obj")
            source = source_root.joinpath(*parts)
            if not source.is_file():
                missing.append(image)
                continue
            folder = staging / IMAGES_DIR / f"{attr}_{obj}"
            if folder not in made:
                folder.mkdir(parents=True, exist_ok=True)
                made.add(folder)
            try:
                shutil.copyfile(source, folder / parts[-1])
            except OSError as exc:
                raise BenchError(
                    f"cannot copy {source} ({exc.strerror or exc}); check free disk space"
                ) from None
            copied += 1
        if missing:
            raise BenchError(
                f"{len(missing)} UT-Zappos images listed in {meta} are missing from "
                f"{source_root} (first: {missing[0]!r}); delete {source_root} and "
                f"ut-zap50k-images.zip, then rerun the download"
            )
        if not copied:
            raise BenchError(f"{meta} lists no images; delete the splits archive and retry")
        move_into_place(staging, dataset_dir)
    say(console, f"reorganised {copied:,} UT-Zappos images into {dataset_dir / IMAGES_DIR}")
    return copied
