"""The Ray executor: same results as the local executor, features once, skips, failures.

Tests that need Ray use the module-scoped ``ray_session`` fixture (a local Ray with 2 CPUs),
which skips them when Ray is not installed; the option checks run without Ray.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from grids import grid_config, metrics_by_cell, output, quiet_events
from rich.console import Console
from rich.progress import Progress, TextColumn

from bench.errors import BenchError
from bench.executors import LocalExecutor, RayExecutor, task_resources
from bench.executors.observers import default_events
from bench.pipeline.config import Cell, CellOutcome, RunConfig
from bench.pipeline.events import EventBus


@pytest.fixture(scope="module")
def ray_session() -> Iterator[Any]:
    """A local Ray instance (2 CPUs, no dashboard) shared by the module's tests."""
    ray = pytest.importorskip("ray")
    # Fault-injection hooks defined here travel to the workers by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=100 * 1024 * 1024,
        logging_level=logging.WARNING,
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_grid(
    ray_session: Any, tiny_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The same 2 methods x 2 seeds grid run locally and on Ray (with MLflow)."""
    local_config = grid_config(tiny_root, tmp_path_factory.mktemp("local"))
    local_outcomes = LocalExecutor(local_config, quiet_events(local_config)).run()
    results = tmp_path_factory.mktemp("ray")
    config = grid_config(tiny_root, results, log_mlflow=True)
    events = quiet_events(config)
    outcomes = RayExecutor(config, events).run()
    return {
        "results": results,
        "local": local_outcomes,
        "outcomes": outcomes,
        "output": output(events),
        "config": config,
    }


@pytest.mark.slow
def test_ray_grid_matches_local_executor(ray_grid: dict[str, Any]) -> None:
    outcomes = ray_grid["outcomes"]
    assert [o.cell for o in outcomes] == [o.cell for o in ray_grid["local"]]
    assert [o.status for o in outcomes] == ["done"] * 4
    assert metrics_by_cell(outcomes) == metrics_by_cell(ray_grid["local"])
    for outcome in outcomes:
        assert outcome.path is not None and outcome.path.is_file()
        on_disk = json.loads(outcome.path.read_text())
        assert on_disk["metrics"] == outcome.result["metrics"]
        # the result file has the local executor's name: same config hash
        local = next(o for o in ray_grid["local"] if o.cell == outcome.cell)
        assert outcome.path.name == local.path.name


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dfsp", "troika"])
def test_a_method_on_image_tokens_or_live_images_runs_on_ray_like_locally(
    ray_session: Any, tiny_root: Path, tmp_path: Path, method: str
) -> None:
    """DFSP needs cached image tokens: the prepare task extracts them, the cell task reads
    them. Troika encodes the images live with its adapters in the cell task. Both worlds'
    numbers equal the local executor's."""
    settings = {"methods": (method,), "seeds": (0,)}
    local_config = grid_config(tiny_root, tmp_path / "local", **settings)
    local = LocalExecutor(local_config, quiet_events(local_config)).run()
    config = grid_config(tiny_root, tmp_path / "ray", **settings)
    outcomes = RayExecutor(config, quiet_events(config)).run()
    assert [o.status for o in outcomes] == ["done"]
    assert set(outcomes[0].result["metrics"]["test"]) == {"cw", "ow"}
    # A Ray worker runs torch on its 1 CPU, the local run on 2: attention sums in another
    # order, so biases differ in the 6th decimal; the headline metrics must not.
    ray_metrics, local_metrics = outcomes[0].result["metrics"], local[0].result["metrics"]
    for split, worlds in local_metrics.items():
        for world, block in worlds.items():
            for key in ("auc", "best_hm", "best_seen", "best_unseen", "attr_acc", "obj_acc"):
                assert ray_metrics[split][world][key] == pytest.approx(block[key], abs=1e-6)
    assert outcomes[0].path.name == local[0].path.name


@pytest.mark.slow
def test_features_are_extracted_once_per_grid(ray_grid: dict[str, Any]) -> None:
    manifests = sorted((ray_grid["results"] / "cache" / "features").rglob("*.json"))
    assert len(manifests) == 3  # train, val, test, written by the one upstream task
    # every cell task found the features in the cache: none extracted them again
    assert all(o.result["feature_cache_hit"] for o in ray_grid["outcomes"])


@pytest.mark.slow
def test_driver_logs_every_cell_to_mlflow(ray_grid: dict[str, Any]) -> None:
    import mlflow

    uri = f"sqlite:///{ray_grid['results'] / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("czsl/synthetic-tiny")
    runs = client.search_runs([experiment.experiment_id])
    cells = {r.info.run_name: r for r in runs if r.data.tags.get("bench.role") == "cell"}
    parents = [r for r in runs if r.data.tags.get("bench.role") == "parent"]
    assert set(cells) == {o.cell.label for o in ray_grid["outcomes"]}
    assert all(r.info.status == "FINISHED" for r in cells.values())
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    coop = cells["coop|synthetic-tiny|s1"]
    assert coop.data.params["hp.epochs"] == "1"
    assert "test/cw/auc" in coop.data.metrics


@pytest.mark.slow
def test_rerun_skips_finished_cells(ray_grid: dict[str, Any]) -> None:
    stamps = {o.path: o.path.stat().st_mtime_ns for o in ray_grid["outcomes"]}
    config = ray_grid["config"]
    outcomes = RayExecutor(config, quiet_events(config)).run()
    assert [o.status for o in outcomes] == ["skipped"] * 4
    assert metrics_by_cell(outcomes) == metrics_by_cell(ray_grid["outcomes"])
    assert {o.path: o.path.stat().st_mtime_ns for o in outcomes} == stamps


def _inject_fault(cell: Cell, *, faults: Mapping[str, str], folder: str) -> None:
    """Fail a cell as ``faults[cell.label]`` says; count its attempts in ``folder``."""
    fault = faults.get(cell.label)
    if fault is None:
        return
    counter = Path(folder) / f"{cell.method}-s{cell.seed}.attempts"
    with open(counter, "a", encoding="utf-8") as handle:
        handle.write("x")
    attempt = len(counter.read_text(encoding="utf-8"))
    if fault == "kill" or (fault == "kill-once" and attempt == 1):
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == "raise":
        raise RuntimeError("injected failure")
    if fault == "bench-error":
        raise BenchError("injected user error")


@pytest.mark.slow
def test_failed_cells_are_retried_then_reported(
    ray_session: Any, tiny_root: Path, tmp_path: Path
) -> None:
    faults = {
        "clip|synthetic-tiny|s1": "kill-once",
        "clip|synthetic-tiny|s2": "raise",
        "clip|synthetic-tiny|s3": "kill",
        "clip|synthetic-tiny|s4": "bench-error",
    }
    counters = tmp_path / "attempts"
    counters.mkdir()
    config = grid_config(tiny_root, tmp_path / "results", methods=("clip",), seeds=(0, 1, 2, 3, 4))
    console = Console(file=io.StringIO(), width=200)
    progress = Progress(TextColumn("{task.description}"), console=console)
    events = default_events(config, console, progress)  # the live view too
    hook = partial(_inject_fault, faults=faults, folder=str(counters))
    with progress:
        outcomes = RayExecutor(config, events, max_retries=1, cell_hook=hook).run()

    status = {o.cell.seed: o.status for o in outcomes}
    assert status == {0: "done", 1: "done", 2: "failed", 3: "failed", 4: "failed"}
    errors = {o.cell.seed: o.error or "" for o in outcomes}
    assert "RuntimeError: injected failure" in errors[2] and "2 attempt" in errors[2]
    assert "died" in errors[3]
    assert errors[4] == "injected user error"
    attempts = {p.stem: len(p.read_text()) for p in counters.iterdir()}
    # a BenchError is the user's to fix: it is not retried
    assert attempts == {"clip-s1": 2, "clip-s2": 2, "clip-s3": 2, "clip-s4": 1}
    for outcome in outcomes[:2]:
        assert outcome.path.is_file() and outcome.result["status"] == "complete"
    assert "clip|synthetic-tiny|s2: FAILED" in output(events)


@pytest.mark.slow
def test_gpus_the_cluster_lacks_give_one_line(
    ray_session: Any, tiny_root: Path, tmp_path: Path
) -> None:
    config = grid_config(tiny_root, tmp_path, methods=("clip",), seeds=(0,))
    with pytest.raises(BenchError, match="no node of the Ray cluster has that many GPUs"):
        RayExecutor(config, quiet_events(config), gpus_per_job=1).run()


def test_missing_ray_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tiny_root: Path, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    config = grid_config(tiny_root, tmp_path)
    with pytest.raises(BenchError, match=r'pip install "czsl-bench\[ray\]"'):
        RayExecutor(config, quiet_events(config))


@pytest.mark.parametrize(
    ("options", "device", "message"),
    [
        ({"gpus_per_job": -1.0}, None, "must be a number >= 0"),
        ({"gpus_per_job": 1.5}, None, "whole number of GPUs"),
        ({}, "cuda:1", "Ray assigns each cell its GPU"),
    ],
)
def test_bad_options_give_one_line(
    options: dict[str, Any], device: str | None, message: str, tiny_root: Path, tmp_path: Path
) -> None:
    config = grid_config(tiny_root, tmp_path, device=device)
    with pytest.raises(BenchError, match=message):
        RayExecutor(config, quiet_events(config), **options)


def test_cheap_methods_get_a_quarter_of_the_gpus() -> None:
    assert task_resources(True, 1.0) == {"num_cpus": 1, "num_gpus": 1.0}
    assert task_resources(False, 1.0) == {"num_cpus": 1, "num_gpus": 0.25}
    assert task_resources(False, 0.0)["num_gpus"] == 0.0


def _cli_args(tiny_root: Path, results: Path) -> list[str]:
    args = ["run", "--executor", "ray", "--methods", "clip", "--datasets", "synthetic-tiny"]
    args += ["--seeds", "0", "--backbone", "tiny-random", "--data-root", str(tiny_root)]
    return [*args, "--results-dir", str(results), "--no-mlflow"]


@pytest.mark.slow
def test_cli_runs_on_ray(ray_session: Any, tiny_root: Path, tmp_path: Path) -> None:
    from bench.cli import cli

    result = CliRunner().invoke(cli, _cli_args(tiny_root, tmp_path), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "cw/AUC" in result.output and "1 cells run" in result.output


def test_cli_lists_failed_cells_and_exits_1(
    monkeypatch: pytest.MonkeyPatch, tiny_root: Path, tmp_path: Path
) -> None:
    import bench.executors
    from bench.cli import cli
    from bench.pipeline.plan import plan_grid

    class FailingExecutor:
        def __init__(self, config: RunConfig, events: EventBus, **options: Any) -> None:
            self.config = config

        def run(self) -> list[CellOutcome]:
            cell = plan_grid(self.config).cells[0]
            return [CellOutcome(cell, "failed", error="the worker process died (boom)")]

    monkeypatch.setattr(bench.executors, "RayExecutor", FailingExecutor)
    result = CliRunner().invoke(cli, _cli_args(tiny_root, tmp_path), catch_exceptions=False)
    assert result.exit_code == 1, result.output
    assert "1 FAILED" in result.output
    assert "failed: clip|synthetic-tiny|s0: the worker process died (boom)" in result.output


def test_cli_without_ray_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tiny_root: Path, tmp_path: Path
) -> None:
    from bench.cli import cli

    monkeypatch.setitem(sys.modules, "ray", None)
    result = CliRunner().invoke(cli, _cli_args(tiny_root, tmp_path))
    assert result.exit_code == 2
    assert 'pip install "czsl-bench[ray]"' in result.output


def _setup(results: Path) -> Any:
    """A driver's task setup for tasks called in this process (no Ray needed)."""
    from bench.executors.ray_executor import TaskSetup

    results.mkdir(parents=True, exist_ok=True)
    marker = results / ".bench-ray-test"
    marker.write_text("token", encoding="utf-8")
    return TaskSetup(os.getcwd(), str(marker), "token", str(results))


@pytest.mark.slow
def test_cell_task_runs_the_drivers_plan_without_replanning(
    monkeypatch: pytest.MonkeyPatch, tiny_root: Path, tmp_path: Path
) -> None:
    from dataclasses import replace

    import bench.executors.ray_executor as ray_executor
    from bench.io import sha256_json
    from bench.pipeline import plan
    from bench.pipeline.store import result_path

    config = grid_config(tiny_root, tmp_path / "results", methods=("clip",), seeds=(0,))
    grid = plan.plan_grid(config)
    setup = _setup(config.results_dir)
    prepared = ray_executor.prepare_task(
        config, "synthetic-tiny", grid.cells, None, grid.invocation, setup
    )
    (planned,) = prepared["planned"]
    assert planned.cell == grid.cells[0]
    # the driver's plan, marked: a task that re-planned would lose the mark
    marked = {**planned.config, "planned_by": "driver"}
    marked_hash = sha256_json(marked)
    ours = replace(
        planned,
        config=marked,
        config_hash=marked_hash,
        path=result_path(config.results_dir, planned.cell, marked_hash),
    )

    def no_planning(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a cell task re-planned its cell")

    monkeypatch.setattr(plan, "cell_config", no_planning)
    monkeypatch.setattr(ray_executor, "plan_cell", no_planning)
    payload = ray_executor.cell_task(
        config, "synthetic-tiny", ours, None, grid.invocation, prepared, setup
    )
    assert payload["status"] == "done", payload
    assert payload["result"]["config"]["planned_by"] == "driver"
    assert payload["result"]["config_hash"] == marked_hash
    assert Path(payload["path"]) == ours.path and ours.path.is_file()

    # a node that sees other dataset files than the plan's fails the cell, not retried
    other = replace(ours, config={**marked, "dataset_fingerprint": "another"})
    payload = ray_executor.cell_task(
        config, "synthetic-tiny", other, None, grid.invocation, prepared, setup
    )
    assert payload["status"] == "failed"
    assert "resolves cell clip|synthetic-tiny|s0 to another configuration" in payload["error"]
