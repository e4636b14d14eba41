"""bench.report.figures: curves and AUC bars as PNG and PDF.

All results are TEST FIXTURES (see report_fixtures.py): hand-made numbers, never real runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import report
from bench.errors import BenchError


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


def test_figure_slug_keeps_the_existing_file_names() -> None:
    assert report.figure_slug("mit-states") == "mit-states"
    assert report.figure_slug("le+") == "le_"  # bench.constants.slug would give "le"
    assert report.figure_slug("/data/my ds") == "_data_my_ds"
    assert report.figure_slug("synthetic-tiny") == "synthetic-tiny"
