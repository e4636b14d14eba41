"""bench.report.paper: the shipped published numbers and the comparison with them.

All results are TEST FIXTURES (see report_fixtures.py): hand-made numbers, never real runs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from report_fixtures import (
    BASE,
    PAPER_BACKBONE,
    check_golden,
    make_result,
    seeded,
    write_result,
)

from bench import report
from bench.errors import BenchError
from bench.protocol import build_protocol


def test_published_csv_ships_the_csp_paper_numbers() -> None:
    path = report.published_path()
    assert path.name == "published.csv" and path.parent.name == "results"
    published = report.load_published()
    frame = published[~published["method"].isin(["dfsp", "troika"])]
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


def test_published_csv_ships_dfsp_t2i_with_its_source() -> None:
    published = report.load_published()
    frame = published[published["method"] == "dfsp"]
    assert len(frame) == 6 and set(frame["setting"]) == {"cw", "ow"}
    assert set(frame["dataset"]) == {"mit-states", "ut-zappos", "cgqa"}
    assert set(frame["backbone"]) == {PAPER_BACKBONE}
    row = frame[(frame.dataset == "ut-zappos") & (frame.setting == "cw")].iloc[0]
    assert (row.S, row.U, row.HM, row.AUC) == (66.7, 71.7, 47.2, 36.0)
    row = frame[(frame.dataset == "cgqa") & (frame.setting == "ow")].iloc[0]
    assert (row.S, row.U, row.HM, row.AUC) == (38.3, 7.2, 10.4, 2.4)
    assert frame["citation"].str.contains("CVPR 2023").all()
    assert frame["source"].str.contains("Qu et al. \\(ICLR 2025\\)").all()


def test_published_csv_ships_troika_with_its_source() -> None:
    published = report.load_published()
    frame = published[published["method"] == "troika"]
    assert len(frame) == 6 and set(frame["setting"]) == {"cw", "ow"}
    assert set(frame["dataset"]) == {"mit-states", "ut-zappos", "cgqa"}
    assert set(frame["backbone"]) == {PAPER_BACKBONE}
    row = frame[(frame.dataset == "mit-states") & (frame.setting == "cw")].iloc[0]
    assert (row.S, row.U, row.HM, row.AUC) == (49.0, 53.0, 39.3, 22.1)
    row = frame[(frame.dataset == "cgqa") & (frame.setting == "ow")].iloc[0]
    assert (row.S, row.U, row.HM, row.AUC) == (40.8, 7.9, 10.9, 2.7)
    assert frame["citation"].str.contains("CVPR 2024").all()
    assert frame["source"].str.contains("Qu et al. \\(ICLR 2025\\)").all()


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
    write_result(tmp_path, make_result("visprod", "ut-zappos", 0, {"cw": (1, 1, 1, 1)}))
    comparison, notes = report.compare_with_paper(report.aggregate(report.load_records(tmp_path)))
    assert comparison.empty
    assert "no paper numbers for backbone toy-clip; the paper used ViT-L-14:openai" in notes
    assert (
        "no paper numbers for dataset synthetic (the paper reports mit-states, ut-zappos, cgqa)"
        in notes
    )
    assert (
        "no paper numbers for method visprod on ut-zappos "
        "(the paper reports clip, coop, csp, dfsp, troika)" in notes
    )
    with pytest.raises(BenchError, match="nothing to compare"):
        report.render_comparison(comparison, "latex")


def test_compare_shows_differences_only_for_the_paper_protocol(grid: Path) -> None:
    harness = build_protocol("harness").as_record("csp", trains=True)
    for seed in (0, 1, 2):
        values = {"cw": seeded(BASE[("csp", "ut-zappos", "cw")], seed)}
        write_result(grid, make_result("csp", "ut-zappos", seed, values, protocol=harness))
    summary = report.aggregate(report.load_records(grid), worlds=["cw"])
    assert "Rows differ in method and protocol (--protocol)" in report.render(summary, "markdown")
    comparison, notes = report.compare_with_paper(summary)
    rows = comparison[(comparison.dataset == "ut-zappos") & (comparison.method == "csp")]
    assert len(rows) == 2
    matching = rows[rows.matches_paper].iloc[0]
    other = rows[~rows.matches_paper].iloc[0]
    assert matching["AUC_delta"] == pytest.approx(33.5 - 33.0)
    assert other["AUC_mean"] == pytest.approx(33.5) and np.isnan(other["AUC_delta"])
    assert other["label"] == "csp (harness protocol)"
    for field in (
        "epoch_selection val-auc",
        "augment none",
        "name_cleaning words",
        "feasibility_filter none",
    ):
        assert field in other["differs"]
    assert any(
        note.startswith(f"{other['label']} on ut-zappos: not the paper's protocol")
        for note in notes
    )
    markdown = report.render_comparison(comparison, "markdown")
    marked = next(line for line in markdown.splitlines() if "harness protocol" in line)
    assert "†" in marked and "| 64.2 | 64.0 ± 0.4 | n/a |" in marked
    assert "† Not the paper's protocol" in markdown


def test_results_without_a_protocol_are_not_compared(tmp_path: Path) -> None:
    write_result(tmp_path, make_result("csp", "mit-states", 0, {"cw": (1, 1, 1, 1)}, protocol={}))
    comparison, notes = report.compare_with_paper(report.aggregate(report.load_records(tmp_path)))
    assert not comparison["matches_paper"].any()
    assert comparison["differs"].unique().tolist() == ["no protocol recorded"]
    assert any("no protocol recorded" in note for note in notes)


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


def test_compare_with_paper_covers_troika(tmp_path: Path) -> None:
    protocol = build_protocol("paper", device="cuda", autocast="float16")
    for seed in (0, 1):
        record = protocol.as_record("troika", True)
        write_result(
            tmp_path,
            make_result("troika", "cgqa", seed, {"cw": (40.0, 35.0, 29.0, 12.0)}, protocol=record),
        )
    comparison, notes = report.compare_with_paper(report.aggregate(report.load_records(tmp_path)))
    rows = comparison.set_index("world")
    assert rows.loc["cw", "AUC_paper"] == 12.4 and rows.loc["ow", "AUC_paper"] == 2.7
    assert rows.loc["cw", "AUC_mean"] == pytest.approx(12.0)
    assert rows.loc["cw", "source"].startswith("Huang et al. (CVPR 2024)")
    # Troika is not in the CSP paper, whose protocol the deltas need: shown, marked, no delta
    assert np.isnan(rows.loc["cw", "AUC_delta"])
    assert notes == [
        "troika on cgqa: not the paper's protocol, so no difference is shown "
        "(method troika is not in the CSP paper)"
    ]
