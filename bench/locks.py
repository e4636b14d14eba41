"""Advisory file locks so that several ``bench run`` processes can share one results folder.

A lock is ``fcntl.flock`` on a small file under ``<results>/locks/``. The kernel releases it
when the holding process exits, however it exits (SIGKILL included), so a lock is never
stale; the lock files themselves are left in place (deleting a lock file another process
may be about to lock would break mutual exclusion). The file holds the owner's pid, host and
invocation, for people looking at a stuck run.

Cell locks are taken without blocking: a cell held by another live process is reported as
"running elsewhere" and skipped. The feature-extraction lock of a dataset blocks, so a second
process waits for the first to fill the feature cache and then reuses it.

``flock`` works on local file systems; on NFS it depends on the server (Linux NFSv4 emulates
it with POSIX locks). On systems without ``fcntl`` (Windows) locks are no-ops.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

try:  # pragma: no cover - always present on Linux and macOS
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCKS_DIR = "locks"


class FileLock:
    """An exclusive ``flock`` on ``path``; use ``acquire``/``release`` or ``hold``.

    Attributes:
        path: The lock file.
    """

    def __init__(self, path: Path, owner: str = "") -> None:
        self.path = Path(path)
        self.owner = owner
        self._handle: IO[Any] | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._handle is not None

    def acquire(self, blocking: bool = False) -> bool:
        """Take the lock; return False if another process holds it (``blocking=False``).

        Raises:
            OSError: The lock file cannot be created (the caller reports it).
        """
        if self._handle is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - kept open while the lock is held
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except (BlockingIOError, PermissionError):
                handle.close()
                return False
            except BaseException:
                handle.close()
                raise
        self._handle = handle
        with contextlib.suppress(OSError):
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(owner_record(self.owner)) + "\n")
            handle.flush()
        return True

    def release(self) -> None:
        """Release the lock (closing the file releases the flock)."""
        handle, self._handle = self._handle, None
        if handle is not None:
            with contextlib.suppress(OSError):
                handle.seek(0)
                handle.truncate()
            handle.close()

    def is_free(self) -> bool:
        """Whether nobody holds the lock right now (takes and drops it)."""
        if self.held:
            return False
        probe = FileLock(self.path)
        if probe.acquire(blocking=False):
            probe.release()
            return True
        return False

    def wait(self, timeout: float, poll: float = 0.5) -> bool:
        """Poll without blocking until the lock is taken or ``timeout`` seconds pass."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            if self.acquire(blocking=False):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(poll, remaining))

    def holder(self) -> dict[str, Any] | None:
        """The owner record written by the current holder, if readable."""
        try:
            text = self.path.read_text().strip()
            record = json.loads(text) if text else None
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def __enter__(self) -> FileLock:
        self.acquire(blocking=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def hold(path: Path, owner: str = "") -> Iterator[FileLock]:
    """Hold a blocking lock on ``path`` for the duration of the block."""
    lock = FileLock(path, owner)
    lock.acquire(blocking=True)
    try:
        yield lock
    finally:
        lock.release()


def owner_record(invocation: str = "") -> dict[str, Any]:
    """Who holds a lock: pid, host and invocation."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "invocation": invocation}


def cell_lock_path(results_dir: Path, dataset: str, method: str, stem: str) -> Path:
    """``<results>/locks/<dataset>/<method>/<stem>.lock`` (``stem`` as the result file's)."""
    return Path(results_dir) / LOCKS_DIR / dataset / method / f"{stem}.lock"


def features_lock_path(results_dir: Path, dataset: str) -> Path:
    """``<results>/locks/features-<dataset>.lock``: held while a dataset's features are built."""
    return Path(results_dir) / LOCKS_DIR / f"features-{dataset}.lock"


__all__ = ["FileLock", "cell_lock_path", "features_lock_path", "hold", "owner_record"]
