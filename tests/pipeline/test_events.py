"""Events: an observer sees a grid's events in order, and the display turns them into lines."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from bench.executors.local import LocalExecutor
from bench.pipeline.config import Cell, CellOutcome, RunConfig
from bench.pipeline.display import TerminalDisplay
from bench.pipeline.events import (
    CellElsewhere,
    CellFinished,
    CellSkipped,
    CellStarted,
    DatasetFinished,
    DatasetPrepared,
    EpochEnded,
    EventBus,
    GridPlanned,
    Message,
)


class Recorder:
    """An observer that keeps every event."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def notify(self, event: Any) -> None:
        self.events.append(event)


def _config(tiny_root: Path, results: Path) -> RunConfig:
    return RunConfig(
        methods=("clip", "coop"),
        datasets=("synthetic-tiny",),
        seeds=(0,),
        backbone="tiny-random",
        epochs=1,
        data_root=tiny_root,
        results_dir=results,
        log_mlflow=False,
    )


def _kinds(events: list[Any]) -> list[str]:
    return [type(e).__name__ for e in events if not isinstance(e, Message)]


@pytest.mark.slow
def test_observer_receives_a_grids_events_in_order(tiny_root: Path, tmp_path: Path) -> None:
    recorder = Recorder()
    outcomes = LocalExecutor(_config(tiny_root, tmp_path), EventBus([recorder])).run()
    assert _kinds(recorder.events) == [
        "GridPlanned",
        "DatasetPrepared",
        "CellStarted",
        "CellFinished",  # clip trains no epoch
        "CellStarted",
        "EpochEnded",
        "CellFinished",
        "DatasetFinished",
    ]
    planned, prepared = [e for e in recorder.events if not isinstance(e, Message)][:2]
    assert isinstance(planned, GridPlanned)
    assert planned.cells == tuple(o.cell for o in outcomes)
    assert isinstance(prepared, DatasetPrepared) and prepared.backbone == "tiny-random"
    started = [e for e in recorder.events if isinstance(e, CellStarted)]
    finished = [e for e in recorder.events if isinstance(e, CellFinished)]
    assert [e.planned.cell for e in started] == [o.cell for o in outcomes]
    assert [e.outcome for e in finished] == outcomes
    assert [e.planned.path for e in started] == [o.path for o in outcomes]
    (epoch,) = [e for e in recorder.events if isinstance(e, EpochEnded)]
    assert epoch.cell.method == "coop" and epoch.epoch == 1 and "val/cw/auc" in epoch.metrics
    assert recorder.events[-1] == DatasetFinished("synthetic-tiny", "FINISHED")
    assert any("RANDOM" in e.text for e in recorder.events if isinstance(e, Message))

    again = Recorder()
    LocalExecutor(_config(tiny_root, tmp_path), EventBus([again])).run()
    assert _kinds(again.events) == [
        "GridPlanned",
        "DatasetPrepared",
        "CellSkipped",
        "CellSkipped",
        "DatasetFinished",
    ]
    assert all(not e.locked for e in again.events if isinstance(e, CellSkipped))


def test_display_prints_messages_and_cells_run_elsewhere() -> None:
    stream = io.StringIO()
    display = TerminalDisplay(Console(file=stream, width=300))
    cell = Cell("clip", "synthetic-tiny", 0)
    display.notify(Message("warning", "something   odd"))
    display.notify(Message("note", "for your information"))
    display.notify(CellElsewhere(CellOutcome(cell, "elsewhere"), "pid 7 on host"))
    result = {"timings": {"total_s": 1.25}}
    display.notify(CellFinished(CellOutcome(cell, "done", result), host="node-1"))
    assert stream.getvalue().splitlines() == [
        "warning: something odd",
        "note: for your information",
        "warning: cell clip|synthetic-tiny|s0 is running in another bench process (pid 7 on "
        "host); rerun this command later to pick up its result",
        "clip|synthetic-tiny|s0: done on node-1 in 1.2 s",
    ]
