"""The Ray executor on a cluster of two nodes (a head and a second node, on this machine).

``ray.cluster_utils.Cluster`` starts real Ray nodes (each its own raylet with one CPU and a
resource naming it), as ``ray start --head`` and ``ray start --address`` would. Cells land
on both nodes and give the local executor's numbers; a node killed mid-grid has its cell
retried on the other node, and every cell is counted once.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from grids import grid_config, metrics_by_cell, quiet_events

from bench.executors import LocalExecutor, RayExecutor
from bench.pipeline.config import Cell, RunConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[dict[str, Any]]:
    """A head node and a second node, one CPU each; the test process is the driver."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Fault-injection hooks defined here travel to the workers by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "num_gpus": 0,
            "resources": {"node_a": 1},
            "include_dashboard": False,
        },
    )
    try:
        second = cluster.add_node(num_cpus=1, num_gpus=0, resources={"node_b": 1})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level=logging.WARNING, log_to_driver=False)
        nodes = {
            name: node["NodeID"]
            for node in ray.nodes()
            for name in ("node_a", "node_b")
            if name in node["Resources"]
        }
        yield {"ray": ray, "cluster": cluster, "second": second, "nodes": nodes}
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def local_outcomes(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    config = grid_config(tiny_root, tmp_path_factory.mktemp("local"), device="cpu")
    return LocalExecutor(config, quiet_events(config)).run()


def _on_ray(config: RunConfig, **options: Any) -> list[Any]:
    return RayExecutor(config, quiet_events(config), **options).run()


def test_cells_land_on_both_nodes_with_local_results(
    two_nodes: dict[str, Any], local_outcomes: list[Any], tiny_root: Path, tmp_path: Path
) -> None:
    outcomes = _on_ray(grid_config(tiny_root, tmp_path, device="cpu"))
    assert [o.status for o in outcomes] == ["done"] * len(local_outcomes)
    assert metrics_by_cell(outcomes) == metrics_by_cell(local_outcomes)
    ran_on = {o.result["executor"]["node_id"] for o in outcomes}
    assert ran_on == set(two_nodes["nodes"].values())


def _stall_on_node(cell: Cell, *, node_id: str, marker: str) -> None:
    """The first cell that starts on ``node_id`` says so in ``marker`` and hangs there."""
    import ray

    if ray.get_runtime_context().get_node_id() != node_id:
        return
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    with open(marker, "w", encoding="utf-8") as handle:
        handle.write(cell.label)
    threading.Event().wait(300)  # until its node is killed


def test_node_killed_mid_grid_its_cell_retried_elsewhere_counted_once(
    two_nodes: dict[str, Any], local_outcomes: list[Any], tiny_root: Path, tmp_path: Path
) -> None:
    import mlflow

    marker = tmp_path / "stalled"
    results = tmp_path / "results"
    hook = partial(_stall_on_node, node_id=two_nodes["nodes"]["node_b"], marker=str(marker))

    def kill_second_node() -> None:
        deadline = time.monotonic() + 300
        while not marker.is_file() or not marker.read_text():
            if time.monotonic() > deadline:
                return
            time.sleep(0.1)
        two_nodes["cluster"].remove_node(two_nodes["second"], allow_graceful=False)

    killer = threading.Thread(target=kill_second_node, daemon=True)
    killer.start()
    config = grid_config(tiny_root, results, device="cpu", log_mlflow=True)
    outcomes = _on_ray(config, cell_hook=hook)
    killer.join(timeout=10)

    stalled = marker.read_text()
    assert [o.status for o in outcomes] == ["done"] * len(local_outcomes)
    assert metrics_by_cell(outcomes) == metrics_by_cell(local_outcomes)
    retried = next(o for o in outcomes if o.cell.label == stalled)
    assert retried.result["executor"]["node_id"] == two_nodes["nodes"]["node_a"]
    assert len(list((results / "runs").glob("*/*/*.json"))) == len(local_outcomes)
    client = mlflow.MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("czsl/synthetic-tiny")
    finished = client.search_runs(
        [experiment.experiment_id],
        "tags.`bench.role` = 'cell' and attributes.status = 'FINISHED'",
    )
    assert sorted(r.info.run_name for r in finished) == sorted(o.cell.label for o in outcomes)
    nodes = {r.info.run_name: r.data.tags["bench.executor.node_id"] for r in finished}
    assert nodes[stalled] == two_nodes["nodes"]["node_a"]
