"""bench.report.ui: the ``mlflow ui`` command line, its warning and addresses, stopping it."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from processes import bench_command, free_port, kill_group, port_accepts, start, wait_healthy

from bench.report import ui


def test_ui_command_binds_loopback_by_default() -> None:
    command = ui.ui_command("sqlite:////r/mlflow.db")
    assert command[1:4] == ["-m", "mlflow", "ui"]
    assert command[command.index("--backend-store-uri") + 1] == "sqlite:////r/mlflow.db"
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--port") + 1] == "5000"
    assert "--artifacts-destination" not in command
    command = ui.ui_command("sqlite:///x.db", "0.0.0.0", 8080, Path("/r/mlartifacts"))
    assert (
        command[command.index("--host") + 1] == "0.0.0.0"
        and command[command.index("--port") + 1] == "8080"
    )
    assert command[command.index("--artifacts-destination") + 1] == "/r/mlartifacts"


def test_ui_warning_and_url() -> None:
    assert ui.ui_warning(None) is None
    assert ui.ui_warning("127.0.0.1") is None and ui.ui_warning("localhost") is None
    assert "no authentication" in (ui.ui_warning("0.0.0.0") or "")
    assert ui.ui_url("127.0.0.1", 5000) == "http://127.0.0.1:5000"
    assert ui.ui_url("::1", 5000) == "http://[::1]:5000"


def test_runs_url_opens_the_comparison_view() -> None:
    assert ui.runs_url("http://127.0.0.1:5000", "7") == (
        "http://127.0.0.1:5000/#/experiments/7/runs"
        "?workflowType=machine_learning&viewStateShareKey=bench"
    )
    assert ui.experiment_links("http://h:1", [("2", "czsl/x")]) == [
        f"  czsl/x: {ui.runs_url('http://h:1', '2')}"
    ]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads process groups from /proc")
def test_sigterm_stops_the_whole_server(tmp_path: Path) -> None:
    """`kill` / a process manager stops `bench ui` and every process of its MLflow server."""
    port = free_port()
    log = tmp_path / "ui.log"
    command = bench_command("ui", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}")
    bench_ui = start([*command, "--port", str(port)], log)
    try:
        wait_healthy(bench_ui, port, log)
        (server,) = (int(pid) for pid in _children(bench_ui.pid))
        assert os.getpgid(server) == server != os.getpgid(bench_ui.pid)  # a group of its own
        assert ui.group_members(server)
        bench_ui.send_signal(signal.SIGTERM)
        assert bench_ui.wait(timeout=60) == 128 + signal.SIGTERM
        assert ui.group_members(server) == []
        assert not port_accepts(port)
    finally:
        kill_group(bench_ui)


def _children(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
