"""bench.report.records: loading result JSONs and MLflow runs, duplicates.

All results are TEST FIXTURES (see report_fixtures.py): hand-made numbers, never real runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from report_fixtures import (
    make_result,
    write_result,
)

from bench import report
from bench.io import sha256_json


def test_load_records_reads_runs_and_skips_incomplete(grid: Path) -> None:
    broken = grid / "runs" / "mit-states" / "csp" / "s9-broken.json"
    broken.write_text("{not json")
    partial = make_result("csp", "mit-states", 7, {"cw": (1, 1, 1, 1)})
    partial["status"] = "running"
    write_result(grid, partial)
    records = report.load_records(grid)
    assert len(records) == 12
    assert {r.seed for r in records} == {0, 1, 2}
    assert report.load_records(grid / "nothing-here") == []
    only = report.load_records(grid, datasets=["ut-zappos"], methods=["csp"])
    assert {(r.dataset, r.method) for r in only} == {("ut-zappos", "csp")} and len(only) == 3


def test_duplicate_cell_keeps_the_latest(tmp_path: Path) -> None:
    old = make_result("csp", "mit-states", 0, {"cw": (10, 10, 10, 10)}, created_at="2025-01-01")
    new = make_result("csp", "mit-states", 0, {"cw": (20, 20, 20, 20)}, created_at="2025-02-01")
    new["config"]["dataset_path"] = "/elsewhere"  # same setting, different config hash
    new["config_hash"] = sha256_json(new["config"])
    write_result(tmp_path, old)
    write_result(tmp_path, new)
    (record,) = report.load_records(tmp_path)
    assert record.block("test", "cw")["auc"] == pytest.approx(0.2)


def test_mlflow_records_match_the_jsons_and_figures_get_logged(grid: Path, tmp_path: Path) -> None:
    from bench.tracking.writer import log_report_artifacts, open_tracker

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    tracker = open_tracker(uri, tmp_path / "store" / "mlartifacts")
    parent = tracker.parent_run("mit-states", "inv-1", {"dataset": "mit-states"}, {})
    for path in sorted((grid / "runs" / "mit-states").glob("*/*.json")):
        result = json.loads(path.read_text())
        curves = path.with_suffix("") / "curves.csv"
        curves.parent.mkdir(parents=True, exist_ok=True)
        lines = ["split,world,point,bias,seen,unseen"]
        for split, worlds in result["metrics"].items():
            for world, block in worlds.items():
                for i, point in enumerate(
                    zip(block["biases"], block["seen_curve"], block["unseen_curve"])
                ):
                    lines.append(f"{split},{world},{i},{point[0]},{point[1]},{point[2]}")
        curves.write_text("\n".join(lines) + "\n")
        tracker.log_cell(result, parent, {"curves_table": curves})
    tracker.finish_parent("mit-states", "inv-1")

    from_store = report.load_records_mlflow(uri)
    from_json = report.load_records(grid, datasets=["mit-states"])
    assert len(from_store) == len(from_json) == 6
    assert {(r.method, r.seed, r.setting) for r in from_store} == {
        (r.method, r.seed, r.setting) for r in from_json
    }
    pd.testing.assert_frame_equal(report.aggregate(from_store), report.aggregate(from_json))
    block = next(r for r in from_store if r.method == "csp" and r.seed == 0).block("test", "cw")
    assert block["seen_curve"] == pytest.approx([0.465, 0.2325, 0.0])
    assert report.load_records_mlflow(uri, datasets=["ut-zappos"]) == []

    figures = report.write_figures(from_store, tmp_path / "reports")["mit-states"]
    run_id = log_report_artifacts(uri, "mit-states", figures)
    assert run_id == parent
    import mlflow

    logged = {f.path for f in mlflow.MlflowClient(uri).list_artifacts(parent, "report")}
    assert "report/auc-mit-states.pdf" in logged and "report/curves-mit-states-cw.png" in logged
    assert log_report_artifacts(uri, "ut-zappos", figures) is None
