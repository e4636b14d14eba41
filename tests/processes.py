"""Helpers for tests that start real servers (``bench ui``, ``mlflow server``) as subprocesses."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

#: A closed network: no telemetry, and a dead tracking server fails at once instead of after
#: MLflow's ~4 minutes of retries.
QUIET_MLFLOW_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
#: Start-up of an MLflow server takes 20-45 s on a loaded 2-core machine.
START_TIMEOUT_S = 180.0


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_accepts(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start(command: Sequence[str], log: Path, **kwargs: object) -> subprocess.Popen[bytes]:
    """Start ``command`` in a session of its own, output to ``log``, with :data:`QUIET_MLFLOW_ENV`."""
    env = {**os.environ, **QUIET_MLFLOW_ENV, **kwargs.pop("env", {})}  # type: ignore[dict-item]
    with open(log, "wb") as out:
        return subprocess.Popen(
            list(command),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            **kwargs,  # type: ignore[arg-type]
        )


def wait_healthy(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    """Wait until the MLflow server on ``port`` answers /health (fail if ``process`` exits)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, f"exited with {process.returncode}:\n{log.read_text()}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"no /health on port {port} after {START_TIMEOUT_S} s:\n{log.read_text()}")


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``process``'s whole session (cleanup after a test; nothing else is touched)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def bench_command(*args: str) -> list[str]:
    """The ``bench`` command line run with this interpreter."""
    return [sys.executable, "-m", "bench.cli", *args]
