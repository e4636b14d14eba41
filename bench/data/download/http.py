"""Resumable HTTP(S) downloads: mirrors in order, ``Range`` resumption, size and sha256 checks."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shutil
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import (
    DownloadColumn,
    TransferSpeedColumn,
)

from bench import __version__
from bench.data.download.output import default_console, progress_bar, say
from bench.errors import BenchError
from bench.io import sha256_file


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


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


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
            say(console, f"resuming {label} at byte {offset:,}")
        elif status in (200, 206):
            if offset:
                say(console, f"{url} does not support resuming; restarting {label} from byte 0")
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

        progress = progress_bar(console, DownloadColumn(), TransferSpeedColumn())
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
            say(console, f"cannot resume {part.name} from {url}; restarting from byte 0")
            _remove(part)  # the next try sends no Range header, so this cannot loop
            continue
        except _Interrupted as exc:
            if _size(part) > before and attempt < options.attempts:
                say(console, f"{dest.name}: {exc}; resuming")
                continue
            raise _UrlFailed(f"{exc}; rerun to resume from {part}") from None
        digest = sha256_file(part)
        if sha256 and digest != sha256:
            _remove(part)
            if resumed and not restarted_for_checksum:
                # The resumed prefix may be stale (an older upstream file): start over once.
                restarted_for_checksum = True
                say(console, f"{dest.name}: checksum mismatch after resuming; restarting")
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
    console = default_console(console)
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(f"cannot create {dest.parent} ({exc.strerror or exc})") from None
    failures: list[str] = []
    for url in urls:
        say(console, f"downloading {dest.name} from {url}")
        try:
            digest = _download_from(url, dest, sha256, options, console)
        except _UrlFailed as exc:
            failures.append(f"{url} ({exc})")
            continue
        say(console, f"downloaded {dest.name} ({_size(dest):,} bytes)")
        return DownloadResult(path=dest, url=url, sha256=digest)
    tried = "; ".join(failures) if failures else "no URL is known"
    raise BenchError(
        f"could not download {dest.name}: tried {tried}. Download it on another machine "
        f"(from one of those URLs) and place it at {dest}, then rerun"
    )
