"""Download a dataset's higher-order annotations (AAO-MIT-States of the CSP paper).

A dataset card's ``[higher_order]`` table names the download (``name``, e.g.
``aao-mit-states``), the official file (``filename``, ``urls``, ``sha256``). The file is
fetched into ``<root>/downloads/``, checked, and converted into
``<dataset folder>/aao/annotations.csv`` against the dataset's vocabulary and images, so
the dataset itself must be downloaded first.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.cards import load_card
from bench.data.download.http import DownloadOptions, download_file
from bench.data.download.output import default_console, say
from bench.data.download.recipes import DOWNLOADS_DIR
from bench.data.download.schema import ENV_BASE_URL
from bench.data.higher_order import convert_official, higher_order_downloads, write_annotations
from bench.errors import BenchError


def _urls(table: dict[str, Any], override: str | Sequence[str] | None) -> list[str]:
    if override is not None:
        return [override] if isinstance(override, str) else list(override)
    base = os.environ.get(ENV_BASE_URL)
    if base:
        return [f"{base.rstrip('/')}/{table['filename']}"]
    return [str(url) for url in table.get("urls", [])]


def download_higher_order(
    name: str,
    root: Path,
    *,
    url_override: str | Sequence[str] | None = None,
    console: Console | None = None,
    options: DownloadOptions | None = None,
) -> Path:
    """Fetch higher-order annotations ``name`` and write the dataset's ``aao/annotations.csv``.

    Args:
        name: A ``[higher_order]`` download name of a dataset card (``aao-mit-states``).
        root: The data root holding the dataset.
        url_override: URL(s) replacing the card's (tests, mirrors); else
            ``$BENCH_DOWNLOAD_BASE_URL/<filename>`` when that variable is set.
        console: Where notes go (default: stderr).
        options: Network settings.

    Returns:
        The path of the written annotations file.

    Raises:
        BenchError: Unknown name, dataset not downloaded, failed download or checksum, a
            name outside the dataset's vocabulary, or a missing image.
    """
    from bench.data.registry import open_dataset

    console = default_console(console)
    known = higher_order_downloads()
    if name not in known:
        raise BenchError(f"unknown higher-order download {name!r}; known: {', '.join(known)}")
    dataset_name = known[name]
    table = load_card("datasets", dataset_name)["higher_order"]
    root = Path(root).expanduser().resolve()
    dataset = open_dataset(dataset_name, root)
    result = download_file(
        _urls(table, url_override),
        root / DOWNLOADS_DIR / str(table["filename"]),
        sha256=str(table.get("sha256", "")),
        options=options,
        console=console,
    )
    try:
        text = result.path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchError(f"cannot read {result.path} ({exc}); delete it and rerun") from None
    samples = convert_official(text, dataset, str(result.path))
    path = write_annotations(dataset.root, samples)
    say(console, f"{name}: {len(samples)} annotated images written to {path}")
    return path
