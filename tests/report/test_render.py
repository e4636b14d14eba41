"""bench.report.render: Markdown and CSV golden outputs, the format dispatch.

All results are TEST FIXTURES (see report_fixtures.py): hand-made numbers, never real runs.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from report_fixtures import (
    check_golden,
)

from bench import report
from bench.errors import BenchError


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


def test_render_rejects_unknown_format(grid: Path) -> None:
    with pytest.raises(BenchError, match="unknown report format"):
        report.render(report.aggregate(report.load_records(grid)), "html")
