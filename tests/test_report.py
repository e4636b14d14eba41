"""bench.report: loading, aggregation over seeds, settings never averaged, renderers, paper comparison.

All results here are TEST FIXTURES written by the tests: hand-made numbers, never real runs,
even where they claim the paper's backbone (ViT-L-14:openai) so that ``--compare-paper`` has
something to compare. Golden outputs live in tests/golden/report/; regenerate them with
``BENCH_UPDATE_GOLDEN=1 pytest tests/test_report.py`` and review the diff.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from bench import report
from bench.errors import BenchError
from bench.io import atomic_write_json, sha256_json

GOLDEN = Path(__file__).parent / "golden" / "report"
PAPER_BACKBONE = "ViT-L-14:openai"
SEED_OFFSETS = {0: -0.4, 1: 0.0, 2: 0.4}  # percentage points: mean = base, sample std = 0.4

#: Fixture base numbers (S, U, HM, AUC in %), loosely shaped like the paper's.
BASE: dict[tuple[str, str, str], tuple[float, float, float, float]] = {
    ("clip", "mit-states", "cw"): (30.0, 46.0, 26.0, 11.0),
    ("clip", "mit-states", "ow"): (30.0, 14.0, 12.8, 3.0),
    ("csp", "mit-states", "cw"): (46.9, 49.5, 36.3, 19.0),
    ("csp", "mit-states", "ow"): (46.0, 15.9, 17.0, 5.5),
    ("clip", "ut-zappos", "cw"): (15.8, 49.0, 15.7, 5.1),
    ("clip", "ut-zappos", "ow"): (15.0, 20.0, 11.0, 2.0),
    ("csp", "ut-zappos", "cw"): (64.0, 66.0, 46.0, 33.5),
    ("csp", "ut-zappos", "ow"): (64.0, 44.0, 39.0, 22.0),
}


def make_result(
    method: str,
    dataset: str,
    seed: int,
    values: Mapping[str, Sequence[float]],
    *,
    backbone: str = PAPER_BACKBONE,
    augment: str = "none",
    hparams: Mapping[str, Any] | None = None,
    feasibility: str = "none",
    fingerprint: str | None = None,
    random_weights: bool = False,
    created_at: str = "2025-01-01T00:00:00+00:00",
) -> dict[str, Any]:
    """A result dict shaped like bench.runner's; ``values``: world -> (S, U, HM, AUC) in %.

    A world left out gets the other world's numbers (the runner always writes both).
    """
    values = {"cw": values.get("cw", values.get("ow")), "ow": values.get("ow", values.get("cw"))}
    config = {
        "method": method,
        "dataset": dataset,
        "dataset_path": f"/data/{dataset}",
        "dataset_fingerprint": fingerprint or f"fp-{dataset}",
        "seed": seed,
        "backbone": backbone,
        "backbone_identifier": f"{backbone}-id",
        "augment": augment,
        "hparams": dict(hparams if hparams is not None else {"lr": 0.001}),
        "eval": {
            "topk": 1,
            "feasibility": feasibility,
            "word_vectors": "none",
            "protocol": "czsl-calibration-bias",
        },
    }
    metrics: dict[str, dict[str, Any]] = {}
    for world, (s, u, hm, auc) in values.items():
        block = {
            "best_seen": s / 100,
            "best_unseen": u / 100,
            "best_hm": hm / 100,
            "auc": auc / 100,
            "attr_acc": 0.5,
            "obj_acc": 0.5,
            "closed_acc": 0.25,
            "biases": [-1.0, 0.0, 1.0],
            "seen_curve": [s / 100, s / 200, 0.0],
            "unseen_curve": [0.0, u / 200, u / 100],
        }
        metrics.setdefault("test", {})[world] = block
        metrics.setdefault("val", {})[world] = dict(block)
    config_hash = sha256_json(config)
    return {
        "status": "complete",
        "cell_id": f"{method}|{dataset}|s{seed}|{config_hash[:12]}",
        "cell": {"method": method, "dataset": dataset, "seed": seed},
        "config_hash": config_hash,
        "config": config,
        "metrics": metrics,
        "history": [],
        "timings": {"total_s": 1.0},
        "versions": {"bench": "0.1.0"},
        "backbone_random_weights": random_weights,
        "created_at": created_at,
    }


def write_result(results_dir: Path, result: Mapping[str, Any]) -> Path:
    """Write a result JSON where bench.runner would."""
    cell = result["cell"]
    path = (
        results_dir
        / "runs"
        / cell["dataset"]
        / cell["method"]
        / f"s{cell['seed']}-{result['config_hash'][:12]}.json"
    )
    atomic_write_json(path, result)
    return path


def seeded(base: Sequence[float], seed: int) -> tuple[float, ...]:
    """``base`` shifted by the seed's offset (mean over seeds 0-2 = base, std = 0.4)."""
    return tuple(round(v + SEED_OFFSETS[seed], 4) for v in base)


def write_grid(results_dir: Path, seeds: Sequence[int] = (0, 1, 2), **kwargs: Any) -> None:
    """The fixture grid: clip and csp on mit-states and ut-zappos."""
    for method, dataset in sorted({(m, d) for m, d, _ in BASE}):
        for seed in seeds:
            values = {w: seeded(BASE[(method, dataset, w)], seed) for w in ("cw", "ow")}
            write_result(results_dir, make_result(method, dataset, seed, values, **kwargs))


@pytest.fixture
def grid(tmp_path: Path) -> Path:
    write_grid(tmp_path)
    return tmp_path


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("BENCH_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from the golden file (see module docstring)"


# --------------------------------------------------------------------------- loading
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


# --------------------------------------------------------------------------- aggregation
def test_aggregate_mean_std_n(grid: Path) -> None:
    summary = report.aggregate(report.load_records(grid))
    assert len(summary) == 8
    row = summary[
        (summary.world == "cw") & (summary.dataset == "mit-states") & (summary.method == "csp")
    ].iloc[0]
    assert row["n"] == 3 and row["seeds"] == "0,1,2"
    assert row["S_mean"] == pytest.approx(46.9) and row["S_std"] == pytest.approx(0.4)
    assert row["AUC_mean"] == pytest.approx(19.0) and row["AUC_std"] == pytest.approx(0.4)
    assert row["label"] == "csp" and row["backbone"] == PAPER_BACKBONE
    # paper column order, methods alphabetical, closed world first
    assert list(summary["dataset"].unique()) == ["mit-states", "ut-zappos"]
    assert list(summary["world"].unique()) == ["cw", "ow"]
    assert list(summary[summary.world == "cw"]["method"]) == ["clip", "csp", "clip", "csp"]


def test_aggregate_single_seed_has_no_std(tmp_path: Path) -> None:
    write_result(tmp_path, make_result("clip", "mit-states", 3, {"cw": (30, 40, 20, 10)}))
    summary = report.aggregate(report.load_records(tmp_path), worlds=["cw"])
    assert summary.iloc[0]["n"] == 1 and math.isnan(summary.iloc[0]["S_std"])
    assert "30.0 &" in report.render_latex(summary)  # no "± nan"
    assert "nan" not in report.render_latex(summary)


def test_aggregate_orders_by_request(grid: Path) -> None:
    records = report.load_records(grid)
    summary = report.aggregate(
        records,
        worlds=["ow"],
        dataset_order=["ut-zappos", "mit-states"],
        method_order=["csp", "clip"],
    )
    assert list(summary["dataset"]) == ["ut-zappos", "ut-zappos", "mit-states", "mit-states"]
    assert list(summary["method"])[:2] == ["csp", "clip"]


def test_two_backbones_are_two_rows_never_averaged(grid: Path) -> None:
    for seed in (0, 1, 2):
        values = {
            "cw": seeded((10.0, 10.0, 10.0, 1.0), seed),
            "ow": seeded((5.0, 5.0, 5.0, 0.5), seed),
        }
        write_result(
            grid, make_result("csp", "mit-states", seed, values, backbone="ViT-B-32:openai")
        )
    summary = report.aggregate(report.load_records(grid))
    cw = summary[(summary.world == "cw") & (summary.dataset == "mit-states")]
    assert list(cw["label"]) == [
        "clip (ViT-L-14:openai)",
        "csp (ViT-B-32:openai)",
        "csp (ViT-L-14:openai)",
    ]
    assert list(cw["n"]) == [3, 3, 3]
    assert cw.set_index("label").at["csp (ViT-B-32:openai)", "S_mean"] == pytest.approx(10.0)
    assert cw.set_index("label").at["csp (ViT-L-14:openai)", "S_mean"] == pytest.approx(46.9)
    latex = report.render_latex(summary)
    assert "csp (ViT-B-32:openai) & 10.0 $\\pm$ 0.4" in latex
    assert "Rows differ in method and backbone (given in parentheses)" in latex
    assert "--" in latex  # ViT-B-32 has no ut-zappos runs


@pytest.mark.parametrize(
    ("change", "label"),
    [
        ({"augment": "paper"}, "csp (augment paper)"),
        ({"feasibility": "mask"}, "csp (feasibility mask)"),
    ],
)
def test_other_settings_are_separate_rows(grid: Path, change: dict[str, str], label: str) -> None:
    for seed in (0, 1):
        write_result(grid, make_result("csp", "mit-states", seed, {"cw": (1, 1, 1, 1)}, **change))
    summary = report.aggregate(report.load_records(grid), worlds=["cw"])
    labels = set(summary["label"])
    assert label in labels and len(labels) == 3
    assert summary.set_index("label").loc[label, "n"] == 2


def test_hparams_differing_on_one_dataset_get_hashes(grid: Path) -> None:
    for seed in (0, 1):
        write_result(
            grid, make_result("csp", "ut-zappos", seed, {"cw": (1, 1, 1, 1)}, hparams={"lr": 0.1})
        )
    summary = report.aggregate(report.load_records(grid), worlds=["cw"])
    ut = summary[summary.dataset == "ut-zappos"]
    hashed = sorted(label for label in ut["label"] if label.startswith("csp (hparams "))
    assert len(hashed) == 2, list(ut["label"])
    # mit-states has one csp setting, so its row stays plain
    assert "csp" in set(summary[summary.dataset == "mit-states"]["label"])
    assert "hyperparameters (hash)" in report.render_markdown(summary)


def test_mixed_seed_counts_get_an_n_column(grid: Path) -> None:
    (next((grid / "runs" / "ut-zappos" / "clip").glob("s2-*.json"))).unlink()
    summary = report.aggregate(report.load_records(grid), worlds=["cw"])
    markdown = report.render_markdown(summary)
    assert "| mit-states n |" in markdown and "| ut-zappos n |" in markdown
    assert "column n" in markdown
    assert (
        "| clip | 30.0 ± 0.4 | 46.0 ± 0.4 | 26.0 ± 0.4 | 11.0 ± 0.4 | 3 | 15.6 ± 0.3 | 48.8 ± 0.3 | 15.5 ± 0.3 | 4.9 ± 0.3 | 2 |"
        in markdown
    )


def test_random_weights_warning_in_caption(tmp_path: Path) -> None:
    write_result(
        tmp_path,
        make_result(
            "clip",
            "synthetic",
            0,
            {"cw": (1, 1, 1, 1)},
            backbone="tiny-random",
            random_weights=True,
        ),
    )
    text = report.render_markdown(report.aggregate(report.load_records(tmp_path)))
    assert "WARNING: backbone tiny-random has random weights" in text


# --------------------------------------------------------------------------- renderers (golden)
def test_latex_golden(grid: Path) -> None:
    latex = report.render_latex(report.aggregate(report.load_records(grid)))
    check_golden("table.tex", latex)


def test_latex_structure(grid: Path) -> None:
    latex = report.render_latex(report.aggregate(report.load_records(grid)))
    assert latex.count("\\begin{table}") == 2 and latex.count("\\end{table}") == 2
    for rule in ("\\toprule", "\\midrule", "\\bottomrule"):
        assert latex.count(rule) == 2
    assert (
        "\\multirow[c]{2}{*}{Method} & \\multicolumn{4}{c}{mit-states} & \\multicolumn{4}{c}{ut-zappos} \\\\"
        in latex
    )
    assert "\\cmidrule(lr){2-5} \\cmidrule(lr){6-9}" in latex
    assert "\\begin{tabular}{lrrrrrrrr}" in latex
    assert "\\label{tab:czsl-test-cw}" in latex and "\\label{tab:czsl-test-ow}" in latex
    assert "csp & \\textbf{46.9} $\\pm$ 0.4 & \\textbf{49.5} $\\pm$ 0.4" in latex
    caption = next(line for line in latex.splitlines() if line.startswith("\\caption{Closed-world"))
    for part in (
        "test split",
        "Mean $\\pm$ std over 3 seeds (0, 1, 2)",
        "Backbone ViT-L-14:openai",
        "augmentation none",
        "Rows differ only in the method",
        "Best value per column in bold",
    ):
        assert part in caption
    assert "no feasibility filter" in latex  # the open-world caption


def test_markdown_golden(grid: Path) -> None:
    check_golden("table.md", report.render_markdown(report.aggregate(report.load_records(grid))))


def test_csv_golden_and_roundtrip(grid: Path) -> None:
    text = report.render_csv(report.aggregate(report.load_records(grid)))
    check_golden("table.csv", text)
    import io

    frame = pd.read_csv(io.StringIO(text))
    assert len(frame) == 8 and "row_order" not in frame
    assert (
        frame.loc[
            (frame.world == "ow") & (frame.method == "csp") & (frame.dataset == "ut-zappos"),
            "HM_mean",
        ].item()
        == 39.0
    )


def test_latex_escapes_labels(tmp_path: Path) -> None:
    write_result(
        tmp_path,
        make_result("my_method", "my_data", 0, {"cw": (1, 1, 1, 1)}, backbone="local-dir:/x/y_z"),
    )
    latex = report.render_latex(report.aggregate(report.load_records(tmp_path)))
    assert "my\\_method" in latex and "my\\_data" in latex and "y\\_z" in latex
    assert (
        report.latex_escape("50% & $x_1$ ± ~") == "50\\% \\& \\$x\\_1\\$ $\\pm$ \\textasciitilde{}"
    )


def test_render_rejects_unknown_format(grid: Path) -> None:
    with pytest.raises(BenchError, match="unknown report format"):
        report.render(report.aggregate(report.load_records(grid)), "html")


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
def test_latex_compiles(grid: Path, tmp_path: Path) -> None:
    for seed in (0, 1):  # a second backbone: multirow-free labels with parentheses and colons
        write_result(
            grid,
            make_result(
                "csp", "mit-states", seed, {"cw": (1, 2, 3, 4)}, backbone="ViT-B-32:openai"
            ),
        )
    summary = report.aggregate(report.load_records(grid))
    comparison, _ = report.compare_with_paper(summary)
    body = report.render_latex(summary) + "\n" + report.render_comparison(comparison, "latex")
    document = (
        "\\documentclass{article}\n\\usepackage[margin=1cm,landscape]{geometry}\n"
        "\\usepackage{booktabs,multirow}\n\\begin{document}\n" + body + "\\end{document}\n"
    )
    (tmp_path / "doc.tex").write_text(document)
    done = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 0


# --------------------------------------------------------------------------- published numbers
def test_published_csv_ships_the_csp_paper_numbers() -> None:
    path = report.published_path()
    assert path.name == "published.csv" and path.parent.name == "results"
    frame = report.load_published()
    assert len(frame) == 18
    assert set(frame["backbone"]) == {PAPER_BACKBONE} and set(frame["split"]) == {"test"}
    assert set(frame["dataset"]) == {"mit-states", "ut-zappos", "cgqa"}
    assert set(frame["method"]) == {"clip", "coop", "csp"}
    row = frame[
        (frame.method == "csp") & (frame.dataset == "mit-states") & (frame.setting == "cw")
    ].iloc[0]
    assert (row.S, row.U, row.HM, row.AUC) == (46.6, 49.9, 36.3, 19.4)
    row = frame[
        (frame.method == "coop") & (frame.dataset == "cgqa") & (frame.setting == "ow")
    ].iloc[0]
    assert (row.S, row.U, row.HM, row.AUC) == (21.0, 4.6, 5.5, 0.7)
    assert frame["citation"].str.contains("Nayak, Yu & Bach").all()
    assert frame["citation"].str.contains("ICLR 2023").all()


def test_published_path_falls_back_to_the_wheel_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bench

    package = tmp_path / "site-packages" / "bench"
    (package / "_data").mkdir(parents=True)
    shutil.copy(report.published_path(), package / "_data" / "published.csv")
    monkeypatch.setattr(bench, "__file__", str(package / "__init__.py"))
    assert report.published_path() == package / "_data" / "published.csv"
    (package / "_data" / "published.csv").unlink()
    with pytest.raises(BenchError, match="cannot find published.csv"):
        report.published_path()


def test_compare_with_paper_deltas(grid: Path) -> None:
    summary = report.aggregate(report.load_records(grid))
    comparison, notes = report.compare_with_paper(summary)
    assert notes == []
    assert len(comparison) == 8
    row = comparison[
        (comparison.world == "cw")
        & (comparison.dataset == "mit-states")
        & (comparison.method == "csp")
    ].iloc[0]
    assert row["S_paper"] == 46.6 and row["S_mean"] == pytest.approx(46.9)
    assert row["S_delta"] == pytest.approx(0.3) and row["U_delta"] == pytest.approx(-0.4)
    assert row["HM_delta"] == pytest.approx(0.0, abs=1e-9) and row["AUC_delta"] == pytest.approx(
        -0.4
    )
    row = comparison[
        (comparison.world == "ow")
        & (comparison.dataset == "ut-zappos")
        & (comparison.method == "clip")
    ].iloc[0]
    assert row["AUC_paper"] == 2.2 and row["AUC_delta"] == pytest.approx(-0.2)
    markdown = report.render_comparison(comparison, "markdown")
    assert (
        "| mit-states | csp | 46.6 | 46.9 ± 0.4 | +0.3 | 49.9 | 49.5 ± 0.4 | −0.4 | 36.3 | 36.3 ± 0.4 | +0.0 |"
        in markdown
    )
    check_golden("compare.tex", report.render_comparison(comparison, "latex"))


def test_compare_with_paper_says_why_not(tmp_path: Path) -> None:
    write_result(
        tmp_path, make_result("csp", "mit-states", 0, {"cw": (1, 1, 1, 1)}, backbone="toy-clip")
    )
    write_result(
        tmp_path, make_result("csp", "synthetic", 0, {"cw": (1, 1, 1, 1)}, backbone="toy-clip")
    )
    write_result(tmp_path, make_result("dfsp", "ut-zappos", 0, {"cw": (1, 1, 1, 1)}))
    comparison, notes = report.compare_with_paper(report.aggregate(report.load_records(tmp_path)))
    assert comparison.empty
    assert "no paper numbers for backbone toy-clip; the paper used ViT-L-14:openai" in notes
    assert (
        "no paper numbers for dataset synthetic (the paper reports mit-states, ut-zappos, cgqa)"
        in notes
    )
    assert (
        "no paper numbers for method dfsp on ut-zappos (the paper reports clip, coop, csp)" in notes
    )
    with pytest.raises(BenchError, match="nothing to compare"):
        report.render_comparison(comparison, "latex")


def test_compare_only_matching_rows(grid: Path) -> None:
    for seed in (0, 1):
        write_result(
            grid,
            make_result(
                "csp", "mit-states", seed, {"cw": (1, 1, 1, 1)}, backbone="ViT-B-32:openai"
            ),
        )
    comparison, notes = report.compare_with_paper(
        report.aggregate(report.load_records(grid), worlds=["cw"])
    )
    assert set(comparison["backbone"]) == {PAPER_BACKBONE} and len(comparison) == 4
    assert notes == [
        "no paper numbers for backbone ViT-B-32:openai; the paper used ViT-L-14:openai"
    ]
    assert "csp (ViT-L-14:openai)" in set(comparison["label"])


# --------------------------------------------------------------------------- figures
def test_figures_are_written(grid: Path) -> None:
    records = report.load_records(grid)
    written = report.write_figures(records, grid / "reports")
    assert set(written) == {"mit-states", "ut-zappos"}
    names = {p.name for paths in written.values() for p in paths}
    for dataset in ("mit-states", "ut-zappos"):
        for stem in (f"curves-{dataset}-cw", f"curves-{dataset}-ow", f"auc-{dataset}"):
            assert {f"{stem}.png", f"{stem}.pdf"} <= names
    for paths in written.values():
        for path in paths:
            assert path.parent == grid / "reports" and path.stat().st_size > 0
    assert (grid / "reports" / "auc-mit-states.pdf").read_bytes().startswith(b"%PDF")
    assert (grid / "reports" / "curves-ut-zappos-cw.png").read_bytes().startswith(b"\x89PNG")


def test_figures_need_results(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="no test results to plot"):
        report.write_figures([], tmp_path)


# --------------------------------------------------------------------------- MLflow
def test_mlflow_records_match_the_jsons_and_figures_get_logged(grid: Path, tmp_path: Path) -> None:
    from bench.tracking import log_report_artifacts, open_tracker

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


# --------------------------------------------------------------------------- UI helpers
def test_ui_command_binds_loopback_by_default() -> None:
    command = report.ui_command("sqlite:////r/mlflow.db")
    assert command[1:4] == ["-m", "mlflow", "ui"]
    assert command[command.index("--backend-store-uri") + 1] == "sqlite:////r/mlflow.db"
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--port") + 1] == "5000"
    assert "--artifacts-destination" not in command
    command = report.ui_command("sqlite:///x.db", "0.0.0.0", 8080, Path("/r/mlartifacts"))
    assert (
        command[command.index("--host") + 1] == "0.0.0.0"
        and command[command.index("--port") + 1] == "8080"
    )
    assert command[command.index("--artifacts-destination") + 1] == "/r/mlartifacts"


def test_ui_warning_and_url() -> None:
    assert report.ui_warning(None) is None
    assert report.ui_warning("127.0.0.1") is None and report.ui_warning("localhost") is None
    assert "no authentication" in (report.ui_warning("0.0.0.0") or "")
    assert report.ui_url("127.0.0.1", 5000) == "http://127.0.0.1:5000"
    assert report.ui_url("::1", 5000) == "http://[::1]:5000"
