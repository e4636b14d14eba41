"""``bench ui``: the MLflow UI for the harness's tracking store, run as a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from bench.tracking.client import RUNS_VIEW_KEY

DEFAULT_UI_HOST = "127.0.0.1"
DEFAULT_UI_PORT = 5000
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# The signals that stop `bench ui`: Ctrl-C, a process manager or `kill`, a closed terminal/SSH.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP) if os.name == "posix" else ()
# One uvicorn worker serves one user's browser; MLflow's job runner (seven huey consumers) only
# runs GenAI jobs. Without both the server is 2 processes instead of 15 and starts 3x faster.
UI_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def ui_url(host: str, port: int) -> str:
    """The URL the UI serves on (IPv6 hosts in brackets)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def runs_url(base_url: str, experiment_id: str) -> str:
    """The address of an experiment's runs table, opened on bench's comparison view.

    The view is the one ``bench run`` saves on the experiment (:data:`RUNS_VIEW_KEY`).

    MLflow 3.17 picks the experiment page's view from the browser's global workflow switch
    (default GenAI), not from the ``mlflow.experimentKind`` tag, so the URL chooses it.
    """
    return (
        f"{base_url}/#/experiments/{experiment_id}/runs"
        f"?workflowType=machine_learning&viewStateShareKey={RUNS_VIEW_KEY}"
    )


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
        "--workers",
        "1",
    ]
    if artifacts_destination is not None:
        command += ["--artifacts-destination", str(Path(artifacts_destination).resolve())]
    return command


class UiStopped(Exception):
    """``bench ui`` got SIGTERM or SIGHUP (after the UI was stopped)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_status(self) -> int:
        """The shell's status for a process ended by this signal."""
        return 128 + self.signum


def _raise_stopped(signum: int, _frame: FrameType | None) -> None:
    # Only the first signal interrupts the wait; later ones must not cut the cleanup short.
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise UiStopped(signum)


def serve_ui(
    command: Sequence[str], env: Mapping[str, str] | None = None, grace_s: float = 10.0
) -> int:
    """Run the UI in the foreground until it exits or a stop signal; return its exit status.

    The UI runs in its own process group (``mlflow ui`` starts uvicorn, which starts workers).
    SIGINT, SIGTERM or SIGHUP to this process stop that whole group: SIGTERM, then SIGKILL for
    whatever is left after ``grace_s`` seconds. Ctrl-C returns 0.

    Raises:
        UiStopped: After SIGTERM or SIGHUP, once the group is gone.
    """
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in STOP_SIGNALS}
    try:
        process = subprocess.Popen(
            list(command),
            env={**os.environ, **UI_ENV, **(env or {})},
            start_new_session=os.name == "posix",
        )
        try:
            return process.wait()
        except UiStopped as stopped:
            if stopped.signum != signal.SIGINT:
                raise
            return 0
        finally:
            stop_group(process, grace_s)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``, read from Linux's /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, _ppid, group = stat.rsplit(")", 1)[1].split()[:3]
        if int(group) == pgid and state != "Z":
            members.append(int(entry))
    return members


def _group_alive(pgid: int) -> bool:
    if Path("/proc/self/stat").is_file():
        return bool(group_members(pgid))
    try:  # no /proc: killpg also counts zombies, so this errs on the waiting side
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def stop_group(process: subprocess.Popen[Any], grace_s: float) -> None:
    """Stop ``process`` and every process in its group; wait until none is left.

    Waits for every member, not only the leader: uvicorn's supervisor outlives ``mlflow ui``
    and respawns a worker killed by the group-wide SIGTERM, which the SIGKILL then ends.
    """
    if os.name != "posix":
        if process.poll() is None:
            process.terminate()
        process.wait()
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            break  # nothing left in the group
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            process.poll()  # reap the leader so it does not count as alive
            if not _group_alive(process.pid):
                process.wait()
                return
            time.sleep(0.1)
    process.wait()


def experiment_links(base_url: str, experiments: Iterable[tuple[str, str]]) -> list[str]:
    """One ``name: address`` line per (experiment id, name), for ``bench ui`` to print."""
    return [f"  {name}: {runs_url(base_url, exp_id)}" for exp_id, name in experiments]
