"""End to end: a dataset with aao/annotations.csv gets a higher_order block in every result,
the MLflow metric test/aao/acc, and its own table in ``bench report``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench.data.czsl import CZSLDataset
from bench.data.higher_order import TripleSample, write_annotations
from bench.executors.local import run_local
from bench.pipeline.config import RunConfig


@pytest.mark.slow
def test_higher_order_lands_in_results_mlflow_and_report(
    tiny_dataset: CZSLDataset, tmp_path: Path
) -> None:
    from bench import report
    from bench.tracking.writer import flatten_metrics

    root = tmp_path / "data"
    shutil.copytree(tiny_dataset.root, root / "synthetic-tiny")
    attrs = tiny_dataset.attrs
    tests = tiny_dataset.splits["test"][:5]
    samples = [
        TripleSample(s.image, s.attr, next(a for a in attrs if a != s.attr), s.obj) for s in tests
    ]
    write_annotations(root / "synthetic-tiny", samples)
    n_triples = len({s.triple for s in samples})
    config = RunConfig(
        methods=("clip", "csp", "visprod"),
        datasets=("synthetic-tiny",),
        seeds=(0,),
        backbone="tiny-random",
        epochs=1,
        data_root=root,
        results_dir=tmp_path / "results",
    )
    results = {o.cell.method: o.result for o in run_local(config)}
    for method in ("clip", "csp"):
        block = results[method]["higher_order"]["aao"]
        assert block["n_images"] == 5 and block["n_triples"] == n_triples
        assert 0.0 <= block["acc"] <= 1.0 and block["chance"] == pytest.approx(1 / n_triples)
        assert flatten_metrics(results[method])["test/aao/acc"] == block["acc"]
        assert set(results[method]["metrics"]["test"]) == {"cw", "ow"}
    assert "cannot build" in results["visprod"]["higher_order"]["aao"]["skipped"]
    assert not any(k.startswith("test/aao") for k in flatten_metrics(results["visprod"]))

    records = report.load_records(tmp_path / "results")
    frame = report.aggregate_higher_order(records)
    assert list(frame["method"]) == ["clip", "csp"]
    summary = report.aggregate(records)
    markdown = report.render(summary, "markdown", frame)
    assert "| Method | synthetic-tiny acc |" in markdown and "AAO" in markdown
    latex = report.render(summary, "latex", frame)
    assert "tab:czsl-test-aao" in latex and latex.count("\\begin{table}") == 3
    assert report.render(summary, "csv", frame) == report.render(summary, "csv")
    assert len(report.render_rich(summary, frame)) == 3

    uri = f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}"
    from_mlflow = report.aggregate_higher_order(report.load_records_mlflow(uri, curves=False))
    assert from_mlflow["acc_mean"].tolist() == pytest.approx(frame["acc_mean"].tolist())
    assert all(set(r.metrics["test"]) == {"cw", "ow"} for r in report.load_records_mlflow(uri))
