"""``bench run --tracking-uri http://...`` against a real ``mlflow server`` (sqlite + artifacts).

The server is stopped mid-grid: every result JSON is still written, ``bench run`` says one
line about it, and the next ``bench run`` against the restarted server logs the missing cells.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from processes import bench_command, free_port, kill_group, start, wait_healthy

pytestmark = pytest.mark.slow
SEEDS = (0, 1, 2)


def _server(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = folder / f"server-{port}.log"
    server = start(
        [
            *(sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1"),
            *("--port", str(port), "--workers", "1"),
            *("--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}"),
            *("--artifacts-destination", str(folder / "artifacts")),
        ],
        log,
    )
    try:
        wait_healthy(server, port, log)
    except BaseException:
        kill_group(server)
        raise
    return server, f"http://127.0.0.1:{port}"


def _run_args(tiny_root: Path, results: Path, uri: str) -> list[str]:
    return bench_command(
        *("run", "--methods", "csp", "--datasets", "synthetic-tiny"),
        *("--seeds", ",".join(map(str, SEEDS)), "--epochs", "1", "--backbone", "tiny-random"),
        *("--device", "cpu", "--data-root", str(tiny_root), "--results-dir", str(results)),
        *("--tracking-uri", uri),
    )


def _finished_cells(uri: str) -> list[str]:
    import mlflow

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("czsl/synthetic-tiny")
    runs = client.search_runs(
        [experiment.experiment_id],
        "tags.`bench.role` = 'cell' and attributes.status = 'FINISHED'",
    )
    return sorted(run.info.run_name for run in runs)


def test_server_stopped_mid_grid_then_backfilled(tiny_root: Path, tmp_path: Path) -> None:
    store, results = tmp_path / "server", tmp_path / "results"
    store.mkdir()
    server, uri = _server(store)
    try:
        log = tmp_path / "run.log"
        grid = start(_run_args(tiny_root, results, uri), log)
        first = results / "runs" / "synthetic-tiny" / "csp"
        deadline = time.monotonic() + 300
        while not list(first.glob("s0-*.json")) and grid.poll() is None:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        kill_group(server)  # the server dies while the grid goes on
        assert grid.wait(timeout=600) == 0, log.read_text()
    finally:
        kill_group(server)
    output = log.read_text()
    assert len(list(first.glob("s*.json"))) == len(SEEDS)
    warnings = [line for line in output.splitlines() if "MLflow failed" in line]
    assert len(warnings) == 1, output
    assert "the next bench run logs the missing cells" in output.replace("\n", " ")

    server, uri = _server(store)  # the same store, back up
    try:
        again = subprocess.run(
            _run_args(tiny_root, results, uri), capture_output=True, text=True, check=False
        )
        assert again.returncode == 0, again.stdout + again.stderr
        assert f"0 cells run, {len(SEEDS)} already done" in again.stdout + again.stderr
        assert _finished_cells(uri) == [f"csp|synthetic-tiny|s{seed}" for seed in SEEDS]
    finally:
        kill_group(server)
