"""Download MIT-States, UT-Zappos and C-GQA and unpack them into the standard CZSL layout.

Result, under ``<root>/<card folder>``::

    images/...                                   # pair folders (MIT, UT) or flat (C-GQA)
    compositional-split-natural/{train,val,test}_pairs.txt
    metadata_compositional-split-natural.t7
    .bench-download.json                         # what was fetched, from where, its sha256

Archives are downloaded (resumably, HTTP ``Range``) into ``<root>/downloads/``; an archive
placed by hand in ``<root>/<folder>/`` or ``<root>/downloads/`` is used instead. Every archive
is checked against the sha256 in its card, or, where upstream publishes none, against the
value recorded in ``.bench-download.json`` the first time it was fetched. Extraction refuses
unsafe members and happens in a temporary folder inside the dataset folder, moved into place
only once complete.

URL overrides (tests, local mirrors), highest precedence first:

* ``urls_override={"<archive filename or role>": url_or_urls}`` passed to
  :func:`download_dataset`;
* the environment variable ``BENCH_DOWNLOAD_BASE_URL``: every archive is fetched from
  ``$BENCH_DOWNLOAD_BASE_URL/<archive filename>`` (instead of the card's URLs).
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import lzma
import os
import re
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from bench import __version__
from bench.cards import load_card
from bench.errors import BenchError
from bench.io import atomic_write_json, sha256_file

ENV_BASE_URL = "BENCH_DOWNLOAD_BASE_URL"
RECORD_FILE = ".bench-download.json"
DOWNLOADS_DIR = "downloads"
SPLIT_DIR = "compositional-split-natural"
METADATA_FILE = "metadata_compositional-split-natural.t7"
IMAGES_DIR = "images"
PAIR_FILES: tuple[str, ...] = ("train_pairs.txt", "val_pairs.txt", "test_pairs.txt")

_SKIPPED_PARTS = frozenset({"__MACOSX"})
_ARCHIVE_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    tarfile.TarError,
    EOFError,
    zlib.error,
    gzip.BadGzipFile,
    lzma.LZMAError,
)


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class ExtractSpec:
    """How one archive is unpacked into the dataset folder.

    Attributes:
        member_prefix: Archive folder to take (stripped from member names). When no member
            starts with it, the whole archive is taken as is.
        into: Folder under the dataset folder that receives the members (``"."``: itself).
        spaces_to_underscores: Replace spaces in folder names by ``_`` (MIT-States).
        reorganize: Post-processing step; ``"utzappos"`` builds ``images/<attr>_<obj>/``.
    """

    member_prefix: str = ""
    into: str = "."
    spaces_to_underscores: bool = False
    reorganize: str = ""


@dataclass(frozen=True)
class ArchiveSpec:
    """One ``[[archives]]`` entry of a dataset card.

    Attributes:
        role: What the archive provides (``images``, ``splits``, ``all``).
        filename: File name the archive is stored under.
        urls: Mirrors, tried in order.
        sha256: Expected hex sha256, or ``""`` when unknown upstream.
        extract: How to unpack it.
    """

    role: str
    filename: str
    urls: tuple[str, ...]
    sha256: str = ""
    extract: ExtractSpec = field(default_factory=ExtractSpec)

    @classmethod
    def from_card(cls, entry: Mapping[str, Any], card_name: str) -> ArchiveSpec:
        """Build a spec from a card's ``[[archives]]`` table, or raise a one-line BenchError."""
        where = f"dataset card {card_name!r}"
        filename = entry.get("filename")
        urls = entry.get("urls", [])
        if isinstance(urls, str):
            urls = [urls]
        if not isinstance(filename, str) or not filename or "/" in filename or "\\" in filename:
            raise BenchError(f"{where}: an [[archives]] entry needs a plain 'filename'")
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise BenchError(f"{where}: archive {filename}: 'urls' must be a list of strings")
        sha = str(entry.get("sha256", "") or "").strip().lower()
        if sha and not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise BenchError(f"{where}: archive {filename}: 'sha256' is not 64 hex digits")
        raw = entry.get("extract", {}) or {}
        if not isinstance(raw, Mapping):
            raise BenchError(f"{where}: archive {filename}: 'extract' must be a table")
        into = str(raw.get("into", ".") or ".")
        into_parts = PurePosixPath(into).parts
        if into.startswith("/") or ".." in into_parts:
            raise BenchError(f"{where}: archive {filename}: 'into' must stay inside the folder")
        reorganize = str(raw.get("reorganize", "") or "")
        if reorganize not in ("", "utzappos"):
            raise BenchError(f"{where}: archive {filename}: unknown reorganize {reorganize!r}")
        extract = ExtractSpec(
            member_prefix=str(raw.get("member_prefix", "") or ""),
            into=into,
            spaces_to_underscores=bool(raw.get("spaces_to_underscores", False)),
            reorganize=reorganize,
        )
        return cls(
            role=str(entry.get("role", "")),
            filename=filename,
            urls=tuple(urls),
            sha256=sha,
            extract=extract,
        )


@dataclass(frozen=True)
class DownloadOptions:
    """Network settings.

    Attributes:
        timeout: Seconds to wait for a connection or for data before giving up on a URL.
        chunk_size: Bytes read per network read.
        attempts: Tries per URL; a try that broke off after receiving data is resumed.
        user_agent: HTTP ``User-Agent`` header.
    """

    timeout: float = 60.0
    chunk_size: int = 1 << 20
    attempts: int = 3
    user_agent: str = f"czsl-bench/{__version__} (+python-urllib)"


@dataclass(frozen=True)
class DownloadResult:
    """A completed, checked download.

    Attributes:
        path: Where the archive now is.
        url: The URL it came from.
        sha256: Its hex sha256.
    """

    path: Path
    url: str
    sha256: str


# --------------------------------------------------------------------------- helpers


def _console(console: Console | None) -> Console:
    return console if console is not None else Console(stderr=True)


def _say(console: Console, message: str) -> None:
    console.print(message, markup=False, highlight=False, soft_wrap=True)


def archive_specs(card: Mapping[str, Any]) -> list[ArchiveSpec]:
    """Return the ``[[archives]]`` entries of a dataset card as specs."""
    name = str(card.get("name", "?"))
    entries = card.get("archives") or []
    if not isinstance(entries, list) or not entries:
        raise BenchError(f"dataset card {name!r} has no [[archives]] to download")
    return [ArchiveSpec.from_card(entry, name) for entry in entries]


def resolve_urls(
    spec: ArchiveSpec, urls_override: Mapping[str, str | Sequence[str]] | None = None
) -> tuple[str, ...]:
    """Return the URLs to try for ``spec``: override, then ``BENCH_DOWNLOAD_BASE_URL``, then card."""
    if urls_override:
        for key in (spec.filename, spec.role):
            if key in urls_override:
                value = urls_override[key]
                return (value,) if isinstance(value, str) else tuple(value)
    base = os.environ.get(ENV_BASE_URL, "").strip()
    if base:
        return (f"{base.rstrip('/')}/{spec.filename}",)
    return spec.urls


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


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


# --------------------------------------------------------------------------- downloading


class _UrlFailed(Exception):
    """This URL cannot deliver the file; try the next mirror."""


class _Interrupted(Exception):
    """The transfer broke off; the ``.part`` file may be resumed."""


class _Restart(Exception):
    """The ``.part`` file cannot be resumed from this server; start again from byte 0."""


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _reason(exc: BaseException, options: DownloadOptions) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}".strip()
    if isinstance(exc, urllib.error.URLError):
        if not isinstance(exc.reason, BaseException):
            return str(exc.reason)
        exc = exc.reason
    if isinstance(exc, TimeoutError):
        return f"timed out after {options.timeout:g} s"
    return str(exc) or type(exc).__name__


class _Complete(Exception):
    """The server says the ``.part`` file already holds the whole file."""


def _open(url: str, offset: int, options: DownloadOptions) -> http.client.HTTPResponse:
    headers = {"User-Agent": options.user_agent, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=options.timeout)  # noqa: S310
    except urllib.error.HTTPError as exc:
        with contextlib.suppress(Exception):
            exc.close()
        if exc.code == 416 and offset:
            # Range not satisfiable: the .part is complete already, or stale.
            match = re.fullmatch(r"bytes\s+\*/(\d+)", (exc.headers or {}).get("Content-Range", ""))
            if match and int(match.group(1)) == offset:
                raise _Complete() from None
            raise _Restart() from None
        raise _UrlFailed(_reason(exc, options)) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        raise _UrlFailed(_reason(exc, options)) from None


def _fetch(url: str, part: Path, options: DownloadOptions, console: Console, label: str) -> bool:
    """Fetch ``url`` into ``part``, resuming if possible; return True if it resumed."""
    offset = _size(part)
    try:
        response = _open(url, offset, options)
    except _Complete:
        return True
    with response:
        status = getattr(response, "status", None) or 200  # file:// responses have none
        total: int | None = None
        if offset and status == 206:
            match = re.fullmatch(
                r"bytes\s+(\d+)-(\d+)/(\d+|\*)", response.headers.get("Content-Range", "").strip()
            )
            if not match or int(match.group(1)) != offset:
                raise _Restart()
            total = None if match.group(3) == "*" else int(match.group(3))
            mode = "ab"
            _say(console, f"resuming {label} at byte {offset:,}")
        elif status in (200, 206):
            if offset:
                _say(console, f"{url} does not support resuming; restarting {label} from byte 0")
            offset = 0
            mode = "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if status == 206:
                match = re.fullmatch(
                    r"bytes\s+0-\d+/(\d+)", response.headers.get("Content-Range", "").strip()
                )
                total = int(match.group(1)) if match else None
        else:
            raise _UrlFailed(f"unexpected HTTP status {status}")

        progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        )
        try:
            handle = open(part, mode)
        except OSError as exc:
            raise BenchError(f"cannot write {part} ({exc.strerror or exc})") from None
        with handle, progress:
            task = progress.add_task(label, total=total, completed=offset)
            while True:
                try:
                    chunk = response.read(options.chunk_size)
                except (OSError, http.client.HTTPException) as exc:
                    raise _Interrupted(
                        f"connection lost after {offset:,} bytes ({_reason(exc, options)})"
                    ) from None
                if not chunk:
                    break
                try:
                    handle.write(chunk)
                except OSError as exc:
                    raise BenchError(f"cannot write {part} ({exc.strerror or exc})") from None
                offset += len(chunk)
                progress.update(task, completed=offset)
    size = _size(part)
    if total is not None and size != total:
        raise _Interrupted(f"incomplete transfer ({size:,} of {total:,} bytes)")
    return mode == "ab"


def _download_from(
    url: str, dest: Path, sha256: str, options: DownloadOptions, console: Console
) -> str:
    part = dest.with_name(dest.name + ".part")
    restarted_for_checksum = False
    attempt = 0
    while True:
        attempt += 1
        before = _size(part)
        try:
            resumed = _fetch(url, part, options, console, dest.name)
        except _Restart:
            _say(console, f"cannot resume {part.name} from {url}; restarting from byte 0")
            _remove(part)  # the next try sends no Range header, so this cannot loop
            continue
        except _Interrupted as exc:
            if _size(part) > before and attempt < options.attempts:
                _say(console, f"{dest.name}: {exc}; resuming")
                continue
            raise _UrlFailed(f"{exc}; rerun to resume from {part}") from None
        digest = sha256_file(part)
        if sha256 and digest != sha256:
            _remove(part)
            if resumed and not restarted_for_checksum:
                # The resumed prefix may be stale (an older upstream file): start over once.
                restarted_for_checksum = True
                _say(console, f"{dest.name}: checksum mismatch after resuming; restarting")
                continue
            raise _UrlFailed(
                f"sha256 mismatch: expected {sha256}, got {digest}; the bad download was deleted"
            )
        os.replace(part, dest)
        return digest


def download_file(
    urls: Sequence[str],
    dest: Path,
    *,
    sha256: str = "",
    options: DownloadOptions | None = None,
    console: Console | None = None,
) -> DownloadResult:
    """Download ``dest`` from the first of ``urls`` that delivers it complete and intact.

    The transfer goes into ``<dest>.part`` (resumed with an HTTP ``Range`` request when the
    server allows it, restarted otherwise) and is renamed to ``dest`` only after the size and,
    when ``sha256`` is given, checksum checks pass.

    Args:
        urls: Mirrors, tried in order.
        dest: Final path of the file.
        sha256: Expected hex sha256; ``""`` skips the check.
        options: Network settings.
        console: Where progress and notes go (default: stderr).

    Returns:
        Where the file is, which URL delivered it and its sha256.

    Raises:
        BenchError: One line naming every URL tried and why it failed, and what to do.
    """
    options = options or DownloadOptions()
    console = _console(console)
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(f"cannot create {dest.parent} ({exc.strerror or exc})") from None
    failures: list[str] = []
    for url in urls:
        _say(console, f"downloading {dest.name} from {url}")
        try:
            digest = _download_from(url, dest, sha256, options, console)
        except _UrlFailed as exc:
            failures.append(f"{url} ({exc})")
            continue
        _say(console, f"downloaded {dest.name} ({_size(dest):,} bytes)")
        return DownloadResult(path=dest, url=url, sha256=digest)
    tried = "; ".join(failures) if failures else "no URL is known"
    raise BenchError(
        f"could not download {dest.name}: tried {tried}. Download it on another machine "
        f"(from one of those URLs) and place it at {dest}, then rerun"
    )


# --------------------------------------------------------------------------- extraction


@dataclass(frozen=True)
class _Member:
    name: str
    is_dir: bool
    problem: str  # why the member type is refused, "" when it is a plain file or folder
    ref: Any  # ZipInfo or TarInfo


def _refuse(archive: Path, member: str, why: str) -> BenchError:
    return BenchError(
        f"refusing to extract {archive.name}: member {member!r} {why}; the archive is unsafe "
        f"or not the expected one, delete {archive} and download it again"
    )


def _member_parts(archive: Path, name: str) -> tuple[str, ...]:
    raw = name.replace("\\", "/")
    if raw.startswith("/") or re.match(r"^[A-Za-z]:", raw):
        raise _refuse(archive, name, "has an absolute path")
    parts = tuple(p for p in raw.split("/") if p not in ("", "."))
    if ".." in parts:
        raise _refuse(archive, name, "has a '..' component")
    if any("\x00" in p for p in parts):
        raise _refuse(archive, name, "has a NUL byte in its name")
    return parts


def _zip_members(zf: zipfile.ZipFile) -> list[_Member]:
    members = []
    for info in zf.infolist():
        mode = (info.external_attr >> 16) & 0xFFFF
        kind = stat.S_IFMT(mode)
        problem = ""
        if kind == stat.S_IFLNK:
            problem = "is a symbolic link"
        elif kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            problem = "is a device, fifo or socket"
        members.append(_Member(info.filename, info.is_dir(), problem, info))
    return members


def _tar_members(tf: tarfile.TarFile) -> list[_Member]:
    members = []
    for info in tf.getmembers():
        problem = ""
        if info.issym():
            problem = "is a symbolic link"
        elif info.islnk():
            problem = "is a hard link"
        elif info.ischr() or info.isblk() or info.isfifo():
            problem = "is a device or fifo"
        elif not (info.isreg() or info.isdir()):
            problem = "has an unsupported type"
        members.append(_Member(info.name, info.isdir(), problem, info))
    return members


def _plan(
    archive: Path, members: list[_Member], spec: ExtractSpec, staging: Path
) -> list[tuple[_Member, Path]]:
    """Check every member and map the selected ones to paths under ``staging``."""
    checked = []
    for member in members:
        parts = _member_parts(archive, member.name)
        if member.problem:
            raise _refuse(archive, member.name, member.problem)
        checked.append((member, parts))
    prefix = tuple(
        p for p in spec.member_prefix.replace("\\", "/").split("/") if p not in ("", ".")
    )
    use_prefix = bool(prefix) and any(
        parts[: len(prefix)] == prefix and len(parts) > len(prefix) for _, parts in checked
    )
    into = tuple(p for p in PurePosixPath(spec.into).parts if p not in ("", "."))
    root = staging.resolve()
    plan = []
    for member, parts in checked:
        if use_prefix:
            if parts[: len(prefix)] != prefix:
                continue
            parts = parts[len(prefix) :]
        if not parts or _SKIPPED_PARTS.intersection(parts):
            continue
        if spec.spaces_to_underscores:
            folders = parts if member.is_dir else parts[:-1]
            parts = tuple(p.replace(" ", "_") for p in folders) + parts[len(folders) :]
        target = staging.joinpath(*into, *parts)
        resolved = target.resolve()
        if resolved != root and root not in resolved.parents:
            raise _refuse(archive, member.name, "would be written outside the target folder")
        plan.append((member, target))
    return plan


def _write_member(source: IO[bytes] | None, target: Path, is_dir: bool) -> None:
    if is_dir:
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        if source is not None:
            shutil.copyfileobj(source, out, 1 << 20)


@contextlib.contextmanager
def _tar_member(tf: tarfile.TarFile, ref: tarfile.TarInfo) -> Iterator[IO[bytes] | None]:
    """A tar member's content (None for members without data), closed afterwards."""
    source = tf.extractfile(ref)
    try:
        yield source
    finally:
        if source is not None:
            source.close()


def _extract_all(archive: Path, spec: ExtractSpec, staging: Path, console: Console) -> None:
    is_zip = archive.name.lower().endswith(".zip") or zipfile.is_zipfile(archive)
    progress = Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )

    def write_all(
        members: list[_Member], open_member: Callable[[Any], Any]
    ) -> list[tuple[_Member, Path]]:
        plan = _plan(archive, members, spec, staging)
        with progress:
            task = progress.add_task(f"extracting {archive.name}", total=len(plan))
            for member, target in plan:
                if member.is_dir:
                    _write_member(None, target, True)
                else:
                    with open_member(member.ref) as source:
                        _write_member(source, target, False)
                progress.advance(task)
        return plan

    if is_zip:
        with zipfile.ZipFile(archive) as zf:
            plan = write_all(_zip_members(zf), zf.open)
    else:
        with tarfile.open(archive, "r:*") as tf:
            plan = write_all(_tar_members(tf), lambda ref: _tar_member(tf, ref))
    if not plan:
        raise BenchError(
            f"{archive} contains no files to extract (expected {spec.member_prefix or 'files'}); "
            f"it is not the expected archive: delete it and download it again"
        )


@contextlib.contextmanager
def _staging_dir(parent: Path, prefix: str) -> Iterator[Path]:
    try:
        parent.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    except OSError as exc:
        raise BenchError(f"cannot create a temporary folder in {parent} ({exc})") from None
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _move_into_place(staging: Path, dest: Path) -> list[str]:
    """Move each top-level entry of ``staging`` to ``dest``, replacing what is there."""
    placed = []
    for child in sorted(staging.iterdir()):
        target = dest / child.name
        if target.exists() or target.is_symlink():
            old = staging / f".bench-old-{child.name}"
            os.replace(target, old)
        os.replace(child, target)
        placed.append(child.name)
    return placed


def safe_extract(
    archive: Path, dest: Path, spec: ExtractSpec | None = None, console: Console | None = None
) -> list[str]:
    """Safely unpack a zip or tar archive into ``dest``.

    Every member is checked first: absolute paths, ``..`` components, members that would
    land outside ``dest``, links, devices and fifos are refused. Members are written into a
    temporary folder inside ``dest`` and then moved into place, replacing existing entries.

    Args:
        archive: The ``.zip`` / ``.tar[.gz|.bz2|.xz]`` file.
        dest: Folder that receives the members.
        spec: Member prefix to take, target sub-folder and renaming rules.
        console: Where progress goes (default: stderr).

    Returns:
        The names of the top-level entries placed in ``dest``.

    Raises:
        BenchError: One line, for an unsafe member or a truncated or corrupt archive.
    """
    spec = spec or ExtractSpec()
    console = _console(console)
    archive = Path(archive)
    dest = Path(dest)
    with _staging_dir(dest, ".bench-extract-") as staging:
        try:
            _extract_all(archive, spec, staging, console)
        except BenchError:
            raise
        except _ARCHIVE_ERRORS as exc:
            raise BenchError(
                f"{archive} is truncated or corrupt ({type(exc).__name__}: {exc}); "
                f"delete it and run the download again"
            ) from None
        except (NotImplementedError, RuntimeError) as exc:  # zip: unsupported method, encrypted
            raise BenchError(
                f"cannot extract {archive} with Python's zipfile ({exc}); unpack it with another "
                f"tool (e.g. 7z) and arrange the files by hand"
            ) from None
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) and exc.filename == str(archive):
                raise BenchError(f"archive {archive} disappeared during extraction") from None
            raise BenchError(
                f"cannot extract {archive} into {dest} ({exc.strerror or exc}); check free "
                f"disk space and permissions, then rerun"
            ) from None
        return _move_into_place(staging, dest)


# --------------------------------------------------------------------------- UT-Zappos


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
    console = _console(console)
    dataset_dir = Path(dataset_dir)
    meta = dataset_dir / METADATA_FILE
    rows = _load_rows(meta)
    source_root = dataset_dir / "_images"
    missing: list[str] = []
    copied = 0
    with _staging_dir(dataset_dir, ".bench-reorganize-") as staging:
        made: set[Path] = set()
        for index, row in enumerate(rows):
            image = row.get("_image")
            if not isinstance(image, str) or not image:
                raise BenchError(f"{meta}: row {index} has no '_image'")
            parts = _member_parts(meta, image)
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
        _move_into_place(staging, dataset_dir)
    _say(console, f"reorganised {copied:,} UT-Zappos images into {dataset_dir / IMAGES_DIR}")
    return copied


# --------------------------------------------------------------------------- the dataset


def _read_record(path: Path) -> dict[str, Any]:
    import json

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
    console = _console(console)
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
        _say(
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
            _say(console, f"{spec.filename}: already extracted; skipping")
            continue
        recorded = str(entry.get("sha256", "") or "")
        expected = spec.sha256 or recorded
        source = "from the dataset card" if spec.sha256 else f"recorded in {record_path}"

        local = _find_local(spec, root, dataset_dir)
        if local is not None:
            _say(console, f"using {local} (found on disk, not downloading)")
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
            _say(console, f"{spec.filename}: sha256 verified ({source})")

        _say(console, f"extracting {archive.name} into {dataset_dir}")
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
            _say(
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
    _say(console, f"{name}: ready at {dataset_dir}")
    return dataset_dir


__all__ = [
    "ENV_BASE_URL",
    "RECORD_FILE",
    "ArchiveSpec",
    "DownloadOptions",
    "DownloadResult",
    "ExtractSpec",
    "archive_specs",
    "dataset_is_complete",
    "download_dataset",
    "download_file",
    "reorganize_utzappos",
    "resolve_urls",
    "safe_extract",
]
