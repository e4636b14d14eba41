"""``bench report`` and ``bench ui`` through the command line.

The result JSONs are TEST FIXTURES with made-up numbers (some claim the paper's backbone,
ViT-L-14:openai, so that ``--compare-paper`` has something to compare); no real runs.
"""

from __future__ import annotations

import io
import signal
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner

from bench import report as lib
from bench.cli import cli
from bench.io import atomic_write_json, sha256_json
from bench.protocol import build_protocol
from bench.report import ui
from bench.tracking import client as tracking_client


def fixture_result(
    method: str, dataset: str, seed: int, values: Sequence[float], backbone: str = "ViT-L-14:openai"
) -> dict[str, Any]:
    """A minimal result JSON (both worlds get ``values``: S, U, HM, AUC in %)."""
    s, u, hm, auc = (v / 100 for v in values)
    block = {
        "best_seen": s,
        "best_unseen": u,
        "best_hm": hm,
        "auc": auc,
        "biases": [0.0, 1.0],
        "seen_curve": [s, 0.0],
        "unseen_curve": [0.0, u],
    }
    config = {
        "method": method,
        "dataset": dataset,
        "seed": seed,
        "backbone": backbone,
        "backbone_identifier": backbone,
        "augment": "none",
        "hparams": {"lr": 0.001},
        "eval": {"topk": 1, "feasibility": "none", "word_vectors": "none", "protocol": "czsl"},
        "dataset_fingerprint": f"fp-{dataset}",
        # the paper's protocol as run on CUDA (fp16), so --compare-paper shows differences
        "protocol": replace(build_protocol("paper"), precision="fp16").as_record(
            method, trains=method != "clip"
        ),
    }
    config_hash = sha256_json(config)
    return {
        "status": "complete",
        "cell_id": f"{method}|{dataset}|s{seed}|{config_hash[:12]}",
        "cell": {"method": method, "dataset": dataset, "seed": seed},
        "config_hash": config_hash,
        "config": config,
        "metrics": {
            "test": {"cw": dict(block), "ow": dict(block)},
            "val": {"cw": dict(block), "ow": dict(block)},
        },
        "versions": {"bench": "0.1.0"},
        "created_at": "2025-01-01T00:00:00+00:00",
    }


def write(results_dir: Path, result: dict[str, Any]) -> None:
    cell = result["cell"]
    name = f"s{cell['seed']}-{result['config_hash'][:12]}.json"
    atomic_write_json(results_dir / "runs" / cell["dataset"] / cell["method"] / name, result)


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """csp and clip on mit-states (3 seeds each), csp on ut-zappos (2 seeds), ViT-L-14."""
    for seed, shift in enumerate((-0.5, 0.0, 0.5)):
        write(
            tmp_path,
            fixture_result("csp", "mit-states", seed, [47.0 + shift, 50.0, 36.0 + shift, 19.0]),
        )
        write(
            tmp_path, fixture_result("clip", "mit-states", seed, [30.0, 46.0 + shift, 26.0, 11.0])
        )
    for seed in (0, 1):
        write(tmp_path, fixture_result("csp", "ut-zappos", seed, [64.0, 66.0, 46.0 + seed, 33.0]))
    return tmp_path


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return CliRunner()


def invoke(runner: CliRunner, *args: str) -> Any:
    return runner.invoke(cli, [str(a) for a in args])


def test_commands_are_registered(runner: CliRunner) -> None:
    output = invoke(runner, "--help").output
    assert "report" in output and "ui" in output
    help_text = invoke(runner, "report", "--help").output
    for option in (
        "--latex",
        "--markdown",
        "--csv",
        "--setting",
        "--compare-paper",
        "--figures",
        "-o",
    ):
        assert option in help_text


def test_terminal_table_by_default(runner: CliRunner, results: Path) -> None:
    result = invoke(runner, "report", "--results-dir", results)
    assert result.exit_code == 0, result.output
    assert "Closed world, test split" in result.stdout and "Open world, test split" in result.stdout
    assert "47.0 ± 0.5" in result.stdout  # csp, mit-states, S


def test_latex_matches_the_library(runner: CliRunner, results: Path) -> None:
    result = invoke(runner, "report", "--latex", "--results-dir", results)
    assert result.exit_code == 0, result.output
    expected = lib.render_latex(lib.aggregate(lib.load_records(results)))
    assert result.stdout == expected
    assert "\\multicolumn{5}{c}{mit-states}" in expected  # n column: seed counts differ
    assert "csp & \\textbf{47.0} $\\pm$ 0.5" in expected


def test_markdown_setting_and_filters(runner: CliRunner, results: Path) -> None:
    result = invoke(
        runner,
        "report",
        "--markdown",
        "--setting",
        "cw",
        "--datasets",
        "ut-zappos",
        "--results-dir",
        results,
    )
    assert result.exit_code == 0, result.output
    assert "Open-world" not in result.stdout
    assert "| csp | 64.0 | 66.0 | 46.5 ± 0.7 | 33.0 |" in result.stdout.replace(" ± 0.0", "")
    assert "mit-states" not in result.stdout


def test_csv_to_file_by_suffix(runner: CliRunner, results: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "table.csv"
    result = invoke(runner, "report", "--results-dir", results, "--methods", "csp", "-o", out)
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and f"wrote {out}" in result.stderr
    frame = pd.read_csv(io.StringIO(out.read_text()))
    assert set(frame["method"]) == {"csp"} and len(frame) == 4
    row = frame[(frame.world == "cw") & (frame.dataset == "mit-states")].iloc[0]
    assert row["n"] == 3 and row["S_mean"] == 47.0 and row["S_std"] == 0.5


def test_unknown_suffix_and_no_results_are_one_line(
    runner: CliRunner, results: Path, tmp_path: Path
) -> None:
    result = invoke(runner, "report", "--results-dir", results, "-o", tmp_path / "table.txt")
    assert result.exit_code == 2 and "cannot tell the format" in result.stderr
    result = invoke(runner, "report", "--results-dir", tmp_path / "empty")
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "no finished runs" in result.stderr
    result = invoke(runner, "report", "--results-dir", results, "--methods", "nope")
    assert result.exit_code == 2 and "for methods nope" in result.stderr


def test_compare_paper(runner: CliRunner, results: Path) -> None:
    result = invoke(
        runner,
        "report",
        "--compare-paper",
        "--markdown",
        "--setting",
        "cw",
        "--results-dir",
        results,
    )
    assert result.exit_code == 0, result.output
    # paper csp mit-states cw: 46.6 / 49.9 / 36.3 / 19.4
    assert (
        "| mit-states | csp | 46.6 | 47.0 ± 0.5 | +0.4 | 49.9 | 50.0 ± 0.0 | +0.1 | 36.3 | 36.0 ± 0.5 | −0.3 |"
        in result.stdout
    )
    assert "| ut-zappos | csp | 64.2 | 64.0 ± 0.0 | −0.2 |" in result.stdout
    result = invoke(runner, "report", "--compare-paper", "--results-dir", results)
    assert result.exit_code == 0 and "paper vs reproduced" in result.stdout


def test_compare_paper_says_why_not(runner: CliRunner, tmp_path: Path) -> None:
    write(tmp_path, fixture_result("csp", "mit-states", 0, [1, 1, 1, 1], backbone="toy-clip"))
    result = invoke(runner, "report", "--compare-paper", "--results-dir", tmp_path)
    assert result.exit_code == 2
    assert "no paper numbers for backbone toy-clip; the paper used ViT-L-14:openai" in result.stderr
    result = invoke(
        runner, "report", "--compare-paper", "--split", "val", "--results-dir", tmp_path
    )
    assert result.exit_code == 2 and "test split" in result.stderr


def test_figures_and_mlflow(runner: CliRunner, results: Path) -> None:
    """--figures writes PNG+PDF, logs them to the parent run; --tracking-uri reads the store."""
    from bench.tracking.writer import open_tracker

    uri = f"sqlite:///{results / 'mlflow.db'}"
    tracker = open_tracker(uri, results / "mlartifacts")
    parent = tracker.parent_run("mit-states", "inv", {"dataset": "mit-states"}, {})
    for path in sorted((results / "runs" / "mit-states" / "csp").glob("*.json")):
        import json

        tracker.log_cell(json.loads(path.read_text()), parent, {})
    tracker.finish_parent("mit-states", "inv")

    result = invoke(runner, "report", "--csv", "--figures", "--results-dir", results)
    assert result.exit_code == 0, result.output
    reports = results / "reports"
    for stem in ("curves-mit-states-cw", "curves-mit-states-ow", "auc-mit-states", "auc-ut-zappos"):
        for suffix in (".png", ".pdf"):
            assert (reports / f"{stem}{suffix}").stat().st_size > 0
    assert f"logged the mit-states figures to MLflow run {parent}" in result.stderr
    assert "no MLflow parent run for ut-zappos" in result.stderr

    result = invoke(
        runner, "report", "--csv", "--tracking-uri", uri, "--results-dir", results / "elsewhere"
    )
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(io.StringIO(result.stdout))
    assert set(frame["method"]) == {"csp"} and set(frame["dataset"]) == {"mit-states"}
    assert frame.loc[frame.world == "cw", "S_mean"].item() == 47.0

    result = invoke(runner, "report", "--tracking-uri", f"sqlite:///{results / 'missing.db'}")
    assert result.exit_code == 2 and "no MLflow store" in result.stderr


# --------------------------------------------------------------------------- bench ui
@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Capture the UI command instead of serving."""
    commands: list[list[str]] = []

    def fake_serve(command: Sequence[str]) -> int:
        commands.append(list(command))
        return 0

    monkeypatch.setattr(ui, "serve_ui", fake_serve)
    monkeypatch.setattr(tracking_client, "czsl_experiments", lambda uri: [])
    return commands


def test_ui_defaults_to_loopback(
    runner: CliRunner, tmp_path: Path, served: list[list[str]]
) -> None:
    (tmp_path / "mlflow.db").write_bytes(b"")
    result = invoke(runner, "ui", "--results-dir", tmp_path)
    assert result.exit_code == 0, result.output
    (command,) = served
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--port") + 1] == "5000"
    assert (
        command[command.index("--backend-store-uri") + 1]
        == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    )
    assert command[command.index("--artifacts-destination") + 1] == str(
        (tmp_path / "mlartifacts").resolve()
    )
    assert "http://127.0.0.1:5000" in result.stdout
    assert "warning" not in result.stderr


def test_ui_prints_each_experiments_runs_address(
    runner: CliRunner, tmp_path: Path, served: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mlflow.db").write_bytes(b"")
    monkeypatch.setattr(tracking_client, "czsl_experiments", lambda uri: [("3", "czsl/mit-states")])
    result = invoke(runner, "ui", "--results-dir", tmp_path, "--port", "5001")
    assert result.exit_code == 0, result.output
    assert (
        "czsl/mit-states: http://127.0.0.1:5001/#/experiments/3/runs"
        "?workflowType=machine_learning&viewStateShareKey=bench"
    ) in result.stdout


def test_ui_stopped_by_sigterm_exits_143(
    runner: CliRunner, tmp_path: Path, served: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mlflow.db").write_bytes(b"")

    def stopped(command: Sequence[str]) -> int:
        raise ui.UiStopped(signal.SIGTERM)

    monkeypatch.setattr(ui, "serve_ui", stopped)
    result = invoke(runner, "ui", "--results-dir", tmp_path)
    assert result.exit_code == 143 and "exited with status" not in result.stderr


def test_ui_explicit_host_warns(runner: CliRunner, served: list[list[str]]) -> None:
    result = invoke(
        runner, "ui", "--tracking-uri", "sqlite:////srv/m.db", "--host", "0.0.0.0", "--port", "8081"
    )
    assert result.exit_code == 0, result.output
    (command,) = served
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert command[command.index("--backend-store-uri") + 1] == "sqlite:////srv/m.db"
    assert "--artifacts-destination" not in command
    assert "no authentication" in result.stderr and "http://0.0.0.0:8081" in result.stdout


def test_ui_without_store_is_one_line(
    runner: CliRunner, tmp_path: Path, served: list[list[str]]
) -> None:
    result = invoke(runner, "ui", "--results-dir", tmp_path)
    assert result.exit_code == 2 and "no MLflow store" in result.stderr and served == []


def test_ui_failure_exit_status(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mlflow.db").write_bytes(b"")
    monkeypatch.setattr(ui, "serve_ui", lambda command: 1)
    result = invoke(runner, "ui", "--results-dir", tmp_path)
    assert result.exit_code == 2 and "exited with status 1" in result.stderr
