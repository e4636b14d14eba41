"""Safe extraction of zip and tar archives into a staging folder moved into place when complete."""

from __future__ import annotations

import contextlib
import gzip
import lzma
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from rich.console import Console
from rich.progress import MofNCompleteColumn

from bench.data.download.output import default_console, progress_bar
from bench.data.download.schema import ExtractSpec
from bench.errors import BenchError

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


def member_parts(archive: Path, name: str) -> tuple[str, ...]:
    """The path parts of member ``name``; raises a BenchError for absolute, ``..`` or NUL names."""
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
        parts = member_parts(archive, member.name)
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
    progress = progress_bar(console, MofNCompleteColumn())

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
def staging_dir(parent: Path, prefix: str) -> Iterator[Path]:
    """A temporary folder inside ``parent`` (same filesystem, so moves are renames), removed after."""
    try:
        parent.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    except OSError as exc:
        raise BenchError(f"cannot create a temporary folder in {parent} ({exc})") from None
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def move_into_place(staging: Path, dest: Path) -> list[str]:
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
    console = default_console(console)
    archive = Path(archive)
    dest = Path(dest)
    with staging_dir(dest, ".bench-extract-") as staging:
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
        return move_into_place(staging, dest)
