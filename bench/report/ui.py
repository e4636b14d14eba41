"""``bench ui``: the MLflow UI for the harness's tracking store, run as a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFAULT_UI_HOST = "127.0.0.1"
DEFAULT_UI_PORT = 5000
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def ui_url(host: str, port: int) -> str:
    """The URL the UI serves on (IPv6 hosts in brackets)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def ui_warning(host: str | None) -> str | None:
    """A warning when ``--host`` was given and is not a loopback address, else None."""
    if host is None or host in _LOOPBACK:
        return None
    return (
        f"the MLflow UI will listen on {host}, reachable from other machines, and it has no "
        "authentication: anyone who can reach it can read and change every run"
    )


def ui_command(
    tracking_uri: str,
    host: str | None = None,
    port: int = DEFAULT_UI_PORT,
    artifacts_destination: Path | None = None,
) -> list[str]:
    """The ``mlflow ui`` command line for the harness's store (bound to 127.0.0.1 by default)."""
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        tracking_uri,
        "--host",
        host or DEFAULT_UI_HOST,
        "--port",
        str(port),
    ]
    if artifacts_destination is not None:
        command += ["--artifacts-destination", str(Path(artifacts_destination).resolve())]
    return command


def serve_ui(command: Sequence[str], grace_s: float = 10.0) -> int:
    """Run the UI in the foreground until it exits or Ctrl-C; return its exit status.

    The UI runs in its own process group (``mlflow ui`` starts worker processes), which is
    stopped as a whole on the way out: SIGTERM, then SIGKILL after ``grace_s`` seconds.
    """
    process = subprocess.Popen(list(command), start_new_session=os.name == "posix")
    try:
        return process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        _stop_group(process, grace_s)


def _stop_group(process: subprocess.Popen[Any], grace_s: float) -> None:
    if os.name != "posix":
        if process.poll() is None:
            process.terminate()
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            return  # nothing left in the group
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:
            # the leader is gone; give stragglers in its group the same grace, then SIGKILL
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and _group_alive(process.pid):
                time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
