"""bench.report.aggregate (and the captions of the table model): mean/std/n over seeds, settings never averaged.

All results are TEST FIXTURES (see report_fixtures.py): hand-made numbers, never real runs.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from report_fixtures import (
    PAPER_BACKBONE,
    make_result,
    seeded,
    write_result,
)

from bench import report


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
