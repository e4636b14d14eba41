"""The download recipe of a dataset card: find or fetch, verify, extract, reorganise, record."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.cards import load_card
from bench.constants import DATA_SPLITS
from bench.data.czsl import IMAGES_DIR, METADATA_FILE, SPLIT_DIR
from bench.data.download.archive import safe_extract
from bench.data.download.http import DownloadOptions, download_file
from bench.data.download.output import default_console, say
from bench.data.download.schema import ArchiveSpec, archive_specs, resolve_urls
from bench.data.download.utzappos import reorganize_utzappos
from bench.errors import BenchError
from bench.io import atomic_write_json, sha256_file

#: What was fetched, from where, its sha256 (in the dataset folder).
RECORD_FILE = ".bench-download.json"
#: Where archives are downloaded to, under the data root.
DOWNLOADS_DIR = "downloads"
PAIR_FILES: tuple[str, ...] = tuple(f"{split}_pairs.txt" for split in DATA_SPLITS)


def dataset_is_complete(dataset_dir: Path) -> bool:
    """True when ``dataset_dir`` holds images, the three pair files and the metadata file."""
    images = dataset_dir / IMAGES_DIR
    try:
        has_images = images.is_dir() and any(images.iterdir())
    except OSError:
        return False
    return (
        has_images
        and all((dataset_dir / SPLIT_DIR / name).is_file() for name in PAIR_FILES)
        and (dataset_dir / METADATA_FILE).is_file()
    )


def _missing_layout(dataset_dir: Path) -> list[str]:
    missing = []
    images = dataset_dir / IMAGES_DIR
    if not (images.is_dir() and any(images.iterdir())):
        missing.append(f"{IMAGES_DIR}/")
    missing += [
        f"{SPLIT_DIR}/{n}" for n in PAIR_FILES if not (dataset_dir / SPLIT_DIR / n).is_file()
    ]
    if not (dataset_dir / METADATA_FILE).is_file():
        missing.append(METADATA_FILE)
    return missing


def _read_record(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BenchError(
            f"cannot read {path} ({exc}); delete it and rerun (recorded checksums are then "
            f"recomputed from the archives)"
        ) from None
    if not isinstance(record, dict):
        raise BenchError(f"{path} is not a JSON object; delete it and rerun")
    return record


def _find_local(spec: ArchiveSpec, root: Path, dataset_dir: Path) -> Path | None:
    for candidate in (dataset_dir / spec.filename, root / DOWNLOADS_DIR / spec.filename):
        if candidate.is_file():
            return candidate
    return None


def _mismatch(path: Path, expected: str, got: str, source: str, record: Path | None) -> BenchError:
    hint = f" (if the upstream file changed, delete {record} too)" if record else ""
    return BenchError(
        f"sha256 mismatch for {path}: expected {expected} ({source}), got {got}; delete the "
        f"file and rerun to download it again, or place the right archive there by hand{hint}"
    )


def download_dataset(
    name: str,
    root: Path,
    force: bool = False,
    *,
    urls_override: Mapping[str, str | Sequence[str]] | None = None,
    console: Console | None = None,
    options: DownloadOptions | None = None,
) -> Path:
    """Download and unpack dataset ``name`` into ``<root>/<card folder>`` (standard layout).

    Steps, per archive of the card: use an archive already in ``<root>/<folder>/`` or
    ``<root>/downloads/`` or download it into ``<root>/downloads/`` (mirrors in order,
    resumable), check its sha256 (the card's, or the one recorded on the first download when
    upstream publishes none), then extract it safely. UT-Zappos images are then reorganised
    into pair folders.

    Args:
        name: ``mit-states``, ``ut-zappos`` or ``cgqa`` (any card with ``kind = "download"``).
        root: Data root; the dataset lands in ``root / card["folder"]``.
        force: Re-check and re-extract even when the dataset is already complete (archives
            already on disk are reused once their checksum matches).
        urls_override: ``{archive filename or role: url or [urls]}`` replacing the card's URLs.
            Without it, ``$BENCH_DOWNLOAD_BASE_URL/<filename>`` replaces them when that
            environment variable is set.
        console: Where progress and notes go (default: a rich console on stderr).
        options: Network settings (timeout, attempts).

    Returns:
        The dataset folder.

    Raises:
        BenchError: One line for an unknown dataset, a failed download (naming the URLs
            tried), a checksum mismatch, an unsafe or corrupt archive, or an incomplete result.
    """
    console = default_console(console)
    options = options or DownloadOptions()
    card = load_card("datasets", name)
    if card.get("kind") != "download":
        raise BenchError(
            f"dataset {name!r} cannot be downloaded (its card's kind is not 'download')"
        )
    folder = str(card.get("folder") or name)
    specs = archive_specs(card)
    root = Path(root).expanduser().resolve()
    dataset_dir = root / folder
    if not force and dataset_is_complete(dataset_dir):
        say(
            console, f"{name}: already complete at {dataset_dir}; nothing to do (use force to redo)"
        )
        return dataset_dir
    try:
        dataset_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(f"cannot create {dataset_dir} ({exc.strerror or exc})") from None

    record_path = dataset_dir / RECORD_FILE
    record = _read_record(record_path)
    archives: dict[str, Any] = record.setdefault("archives", {})
    record["dataset"] = name
    record["complete"] = False
    reorganize = False
    extracted_now = False
    for spec in specs:
        reorganize |= spec.extract.reorganize == "utzappos"
        entry = archives.get(spec.filename, {})
        outputs = entry.get("outputs") or []
        if (
            not force
            and entry.get("extracted")
            and outputs
            and all((dataset_dir / o).exists() for o in outputs)
        ):
            say(console, f"{spec.filename}: already extracted; skipping")
            continue
        recorded = str(entry.get("sha256", "") or "")
        expected = spec.sha256 or recorded
        source = "from the dataset card" if spec.sha256 else f"recorded in {record_path}"

        local = _find_local(spec, root, dataset_dir)
        if local is not None:
            say(console, f"using {local} (found on disk, not downloading)")
            digest = sha256_file(local)
            if expected and digest != expected:
                raise _mismatch(
                    local, expected, digest, source, None if spec.sha256 else record_path
                )
            archive, url = local, f"placed by hand at {local}"
        else:
            try:
                result = download_file(
                    resolve_urls(spec, urls_override),
                    root / DOWNLOADS_DIR / spec.filename,
                    sha256=expected,
                    options=options,
                    console=console,
                )
            except BenchError as exc:
                if recorded and not spec.sha256 and "sha256 mismatch" in str(exc):
                    raise BenchError(
                        f"{exc} (if the upstream file changed, delete {record_path} too)"
                    ) from None
                raise
            archive, url, digest = result.path, result.url, result.sha256
        if expected:
            say(console, f"{spec.filename}: sha256 verified ({source})")

        say(console, f"extracting {archive.name} into {dataset_dir}")
        placed = safe_extract(archive, dataset_dir, spec.extract, console)
        extracted_now = True

        archives[spec.filename] = {
            "sha256": digest,
            "sha256_source": "card" if spec.sha256 else "recorded",
            "url": url,
            "extracted": True,
            "outputs": placed,
        }
        atomic_write_json(record_path, record)
        if not expected:
            say(
                console,
                f"note: upstream publishes no sha256 for {spec.filename}; recorded {digest} in "
                f"{record_path} (recorded, not verified); later runs verify against it",
            )

    if reorganize and (extracted_now or not (dataset_dir / IMAGES_DIR).is_dir()):
        reorganize_utzappos(dataset_dir, console)
        record["reorganized"] = True

    missing = _missing_layout(dataset_dir)
    if missing:
        atomic_write_json(record_path, record)
        raise BenchError(
            f"{name}: after extraction {dataset_dir} still lacks {', '.join(missing)}; the "
            f"archives are not the expected ones: delete them from {root / DOWNLOADS_DIR} "
            f"and rerun"
        )
    record["complete"] = True
    atomic_write_json(record_path, record)
    say(console, f"{name}: ready at {dataset_dir}")
    return dataset_dir
