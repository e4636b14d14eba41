"""bench.pipeline.display: the line a settled cell gets when stdout is not a terminal."""

from __future__ import annotations

import io

from rich.console import Console

from bench.pipeline.config import Cell, CellOutcome
from bench.pipeline.display import TerminalDisplay, outcome_line
from bench.pipeline.events import CellFailed, CellFinished

CELL = Cell("csp", "mit-states", 2)
RESULT = {"metrics": {"test": {"cw": {"auc": 0.1234}}}, "timings": {"total_s": 61.04}}


def test_outcome_line() -> None:
    assert outcome_line(CellOutcome(CELL, "done", RESULT)) == (
        "csp mit-states seed 2: done, cw AUC 12.3, 61.0 s"
    )
    assert outcome_line(CellOutcome(CELL, "failed", error="out of\nmemory")) == (
        "csp mit-states seed 2: failed, cw AUC -, -, out of memory"
    )


def test_display_writes_a_line_per_settled_cell() -> None:
    lines = io.StringIO()
    display = TerminalDisplay(Console(file=io.StringIO()), outcome_lines=lines)
    display.notify(CellFinished(CellOutcome(CELL, "done", RESULT)))
    display.notify(CellFailed(CellOutcome(Cell("clip", "mit-states", 0), "failed", error="x")))
    assert lines.getvalue().splitlines() == [
        "csp mit-states seed 2: done, cw AUC 12.3, 61.0 s",
        "clip mit-states seed 0: failed, cw AUC -, -, x",
    ]
