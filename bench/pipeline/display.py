"""The terminal view of a grid, as an observer of the pipeline's events.

Warnings and notes become one line each on the console; a live rich ``Progress`` (when
given) shows a grid row (done / running / queued / skipped / failed counts) and a row per
running cell (epoch, loss, validation AUC). Cells run elsewhere (Ray workers) also get a
line when they finish or fail.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TextIO

from bench.constants import WORLDS
from bench.pipeline.config import Cell, CellOutcome
from bench.pipeline.events import (
    OUTCOMES,
    CellAborted,
    CellElsewhere,
    CellFailed,
    CellFinished,
    CellStarted,
    EpochEnded,
    GridPlanned,
    Message,
    TaskStarted,
)

STYLES = {"warning": "yellow", "note": "cyan"}


class TerminalDisplay:
    """Prints a grid's messages and drives its live progress rows.

    Args:
        console: A rich Console for the lines.
        progress: A rich Progress (None: lines only).
        outcome_lines: Where to write :func:`outcome_line` as each cell settles (for a log
            file, CI or a cluster job, which see no live progress); None: nowhere.
    """

    def __init__(
        self, console: Any, progress: Any = None, outcome_lines: TextIO | None = None
    ) -> None:
        self.console = console
        self.progress = progress
        self.outcome_lines = outcome_lines
        self._grid_row: Any = None
        self._total = 0
        self._rows: dict[Cell, Any] = {}
        self._hosts: dict[Cell, str] = {}
        self._running: set[Cell] = set()
        self._counts: dict[str, int] = {}

    def print_line(self, line: str, style: str | None = None) -> None:
        """Print one line as it is (no markup)."""
        self.console.print(line, style=style, markup=False, highlight=False, soft_wrap=True)

    def notify(self, event: Any) -> None:
        """Handle one event."""
        if isinstance(event, Message):
            self.print_line(f"{event.level}: {' '.join(event.text.split())}", STYLES[event.level])
        elif isinstance(event, GridPlanned):
            self._total = len(event.cells)
            if self.progress is not None:
                self._grid_row = self.progress.add_task("grid", total=self._total)
        elif isinstance(event, TaskStarted):
            self._hosts[event.cell] = event.host
            attempt = f" (attempt {event.attempt})" if event.attempt > 1 else ""
            self._start_row(event.cell, f"{event.cell.label} on {event.host}{attempt}: loading")
        elif isinstance(event, CellStarted):
            cell = event.planned.cell
            host = self._hosts.get(cell)
            self._start_row(cell, f"{cell.label} on {host}" if host else cell.label, event.epochs)
        elif isinstance(event, EpochEnded):
            self._epoch(event)
        elif isinstance(event, CellAborted):
            self._end_row(event.cell)
        elif isinstance(event, OUTCOMES):
            self._settle(event)

    # ------------------------------------------------------------------ rows
    def _start_row(self, cell: Cell, description: str, total: int | None = None) -> None:
        self._running.add(cell)
        if self.progress is not None:
            row = self._rows.get(cell)
            if row is None:
                self._rows[cell] = self.progress.add_task(description, total=total or None)
            else:
                self.progress.reset(row, total=total or None, description=description)
        self._refresh()

    def _epoch(self, event: EpochEnded) -> None:
        row = self._rows.get(event.cell)
        if self.progress is None or row is None:
            return
        loss = event.metrics.get("train/loss", float("nan"))
        auc = event.metrics.get("val/cw/auc", float("nan"))
        self.progress.update(
            row,
            completed=event.epoch,
            description=f"{event.cell.label} epoch {event.epoch} loss {loss:.3f} "
            f"val AUC {100 * auc:.1f}",
        )

    def _end_row(self, cell: Cell) -> None:
        self._running.discard(cell)
        row = self._rows.pop(cell, None)
        if self.progress is not None and row is not None:
            self.progress.remove_task(row)

    def _settle(self, event: Any) -> None:
        outcome: CellOutcome = event.outcome
        self._end_row(outcome.cell)
        if self.outcome_lines is not None:
            self.outcome_lines.write(outcome_line(outcome) + "\n")
            self.outcome_lines.flush()
        self._counts[outcome.status] = self._counts.get(outcome.status, 0) + 1
        self._hosts.pop(outcome.cell, None)
        if isinstance(event, CellFinished) and event.host:
            seconds = (outcome.result or {}).get("timings", {}).get("total_s")
            took = f" in {seconds:.1f} s" if isinstance(seconds, int | float) else ""
            self.print_line(f"{outcome.cell.label}: done on {event.host}{took}", "green")
        elif isinstance(event, CellFailed):
            self.print_line(f"{outcome.cell.label}: FAILED: {outcome.error}", "red")
        elif isinstance(event, CellElsewhere):
            who = f" ({event.holder})" if event.holder else ""
            self.notify(
                Message(
                    "warning",
                    f"cell {outcome.cell.label} is running in another bench process{who}; "
                    "rerun this command later to pick up its result",
                )
            )
        self._refresh()

    def _refresh(self) -> None:
        """The grid row: done / running / queued / skipped / failed / elsewhere counts."""
        if self.progress is None or self._grid_row is None:
            return
        settled = sum(self._counts.values())
        running = len(self._running)
        queued = self._total - settled - running
        parts = [f"{self._counts.get('done', 0)} done", f"{running} running", f"{queued} queued"]
        parts += [
            f"{self._counts[s]} {s}"
            for s in ("skipped", "failed", "elsewhere")
            if self._counts.get(s)
        ]
        self.progress.update(
            self._grid_row, completed=settled, description="grid: " + ", ".join(parts)
        )


def outcome_line(outcome: CellOutcome) -> str:
    """One line for a settled cell: method, dataset, seed, status, cw AUC (%), elapsed."""
    cell, result = outcome.cell, outcome.result or {}
    auc = result.get("metrics", {}).get("test", {}).get("cw", {}).get("auc")
    seconds = result.get("timings", {}).get("total_s")
    parts = [
        f"{cell.method} {cell.dataset} seed {cell.seed}: {outcome.status}",
        f"cw AUC {100 * auc:.1f}" if auc is not None else "cw AUC -",
        f"{seconds:.1f} s" if isinstance(seconds, int | float) else "-",
    ]
    if outcome.error:
        parts.append(" ".join(outcome.error.split())[:200])
    return ", ".join(parts)


def summary_rows(outcomes: Sequence[CellOutcome]) -> Iterator[dict[str, Any]]:
    """One row per cell for the end-of-run table (percentages)."""
    for outcome in outcomes:
        row: dict[str, Any] = {
            "cell": outcome.cell.label,
            "method": outcome.cell.method,
            "dataset": outcome.cell.dataset,
            "seed": outcome.cell.seed,
            "status": outcome.status,
        }
        result = outcome.result or {}
        for world in WORLDS:
            block = result.get("metrics", {}).get("test", {}).get(world)
            if block:
                for key, name in (
                    ("best_seen", "S"),
                    ("best_unseen", "U"),
                    ("best_hm", "HM"),
                    ("auc", "AUC"),
                ):
                    row[f"{world}/{name}"] = 100 * block[key]
        yield row
