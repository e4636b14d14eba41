"""bench.report.ui: the ``mlflow ui`` command line, its bind-address warning and URL."""

from __future__ import annotations

from pathlib import Path

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
