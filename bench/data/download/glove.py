"""GloVe 6B word vectors (the official CSP feasibility calibration's), downloaded once.

``ensure_glove_6b("300d")`` returns ``<folder>/glove.6B.300d.txt``: on first use the
``glove.6B.zip`` archive (822 MB) is downloaded resumably into the folder through
:func:`~bench.data.download.http.download_file`, its sha256 is recorded in
``glove.6B.json`` (Stanford publishes none; later downloads are checked against it) and
the one text file is extracted atomically. The folder is ``$BENCH_GLOVE_DIR``, else
``./results/cache/glove``; ``$BENCH_DOWNLOAD_BASE_URL`` replaces the URLs as for datasets.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

from rich.console import Console

from bench.data.download.http import download_file
from bench.data.download.schema import ENV_BASE_URL
from bench.errors import BenchError
from bench.io import atomic_open, atomic_write_json

#: The folder override.
GLOVE_DIR_ENV = "BENCH_GLOVE_DIR"
ARCHIVE = "glove.6B.zip"
RECORD = "glove.6B.json"
URLS: tuple[str, ...] = (
    "https://nlp.stanford.edu/data/glove.6B.zip",
    "https://huggingface.co/stanfordnlp/glove/resolve/main/glove.6B.zip",
)
DIMENSIONS: tuple[str, ...] = ("50d", "100d", "200d", "300d")


def glove_dir() -> Path:
    """``$BENCH_GLOVE_DIR`` if set, else ``./results/cache/glove``."""
    return Path(os.environ.get(GLOVE_DIR_ENV) or Path("results") / "cache" / "glove").expanduser()


def _urls() -> list[str]:
    base = os.environ.get(ENV_BASE_URL)
    return [f"{base.rstrip('/')}/{ARCHIVE}"] if base else list(URLS)


def ensure_glove_6b(
    dimension: str, folder: Path | None = None, console: Console | None = None
) -> Path:
    """The path of ``glove.6B.<dimension>.txt``, downloading GloVe 6B the first time.

    Raises:
        BenchError: An unknown dimension, a failed download, a checksum that differs from
            the recorded one, or a corrupt archive (one line each).
    """
    if dimension not in DIMENSIONS:
        raise BenchError(f"GloVe 6B has no {dimension!r} vectors; use one of {DIMENSIONS}")
    folder = Path(folder) if folder is not None else glove_dir()
    target = folder / f"glove.6B.{dimension}.txt"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    record_path = folder / RECORD
    record = json.loads(record_path.read_text("utf-8")) if record_path.is_file() else {}
    archive = folder / ARCHIVE
    result = download_file(_urls(), archive, sha256=str(record.get("sha256", "")), console=console)
    if not record:
        atomic_write_json(
            record_path, {"archive": ARCHIVE, "url": result.url, "sha256": result.sha256}
        )
    member = f"glove.6B.{dimension}.txt"
    try:
        with zipfile.ZipFile(archive) as zf, zf.open(member) as source, atomic_open(target) as out:
            shutil.copyfileobj(source, out, 1 << 20)
    except KeyError:
        raise BenchError(f"{archive} has no {member}; delete it and rerun") from None
    except (zipfile.BadZipFile, EOFError) as exc:
        raise BenchError(f"{archive} is corrupt ({exc}); delete it and rerun") from None
    except OSError as exc:
        raise BenchError(
            f"cannot extract {member} into {folder} ({exc.strerror or exc}); check free disk "
            "space, then rerun"
        ) from None
    return target
