"""The local executor: every cell of the grid in this process, one after the other.

Per dataset: prepare it (features once, under the features lock), resolve and run each cell,
then re-check the cells another live ``bench run`` was running ("running elsewhere"),
waiting for them up to ``wait_elsewhere`` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from bench.pipeline.cell import CellRunner
from bench.pipeline.config import Cell, CellOutcome, PlannedCell, RunConfig
from bench.pipeline.events import (
    CellElsewhere,
    DatasetFinished,
    DatasetPrepared,
    EventBus,
    GridPlanned,
)
from bench.pipeline.plan import GridPlan, plan_cell, plan_grid
from bench.pipeline.prepare import DatasetContext, prepare_dataset
from bench.pipeline.store import cell_lock, check_results_dir


class LocalExecutor:
    """Runs a grid in this process.

    Args:
        config: The run's options.
        events: Where every event of the grid goes.
        console: The rich console of the feature cache's progress bars and warnings.
        progress: A live rich Progress that toy-clip's pretraining bar joins.
    """

    def __init__(
        self, config: RunConfig, events: EventBus, *, console: Any = None, progress: Any = None
    ) -> None:
        self.config = config
        self.events = events
        self.console = console
        self.progress = progress

    def run(self) -> list[CellOutcome]:
        """Run the grid: every unfinished cell, dataset by dataset."""
        check_results_dir(self.config.results_dir)
        plan = plan_grid(self.config)
        self.events.emit(GridPlanned(plan.cells, plan.invocation))
        runner = CellRunner(
            self.config, self.events, owner=plan.invocation, init_state=plan.init_state
        )
        outcomes: list[CellOutcome] = []
        for label, cells in plan.by_dataset().items():
            outcomes += self.run_dataset(plan, label, cells, runner)
        return outcomes

    def run_dataset(
        self, plan: GridPlan, label: str, cells: Sequence[Cell], runner: CellRunner
    ) -> list[CellOutcome]:
        """Prepare one dataset and run its cells, then re-check cells running elsewhere."""
        ctx = prepare_dataset(
            self.config,
            plan.specs[label],
            events=self.events,
            owner=plan.invocation,
            console=self.console,
            progress=self.progress,
        )
        self.events.emit(DatasetPrepared(label, ctx.backbone.spec.raw))
        status = "FINISHED"
        try:
            planned: list[PlannedCell] = []
            outcomes: list[CellOutcome] = []
            for cell in cells:
                planned.append(plan_cell(self.config, cell, ctx, plan.init_state))
                outcomes.append(runner.run(planned[-1], ctx))
            self._recheck_elsewhere(planned, outcomes, ctx, runner, plan.invocation)
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except BaseException:
            status = "FAILED"
            raise
        finally:
            self.events.emit(DatasetFinished(label, status))
        return outcomes

    def _recheck_elsewhere(
        self,
        planned: Sequence[PlannedCell],
        outcomes: list[CellOutcome],
        ctx: DatasetContext,
        runner: CellRunner,
        owner: str,
    ) -> None:
        """Run the cells another process held once it lets go; report those it still holds."""
        deadline = time.monotonic() + self.config.wait_elsewhere
        for index, (cell_plan, outcome) in enumerate(zip(planned, outcomes, strict=True)):
            if outcome.status != "elsewhere":
                continue
            lock = cell_lock(self.config.results_dir, cell_plan.cell, cell_plan.path, owner)
            holder: dict[str, Any] = {}
            if lock.wait(max(0.0, deadline - time.monotonic())):
                lock.release()
                outcomes[index] = runner.run(cell_plan, ctx)
            else:
                holder = lock.holder() or {}
            if outcomes[index].status == "elsewhere":
                who = f"pid {holder['pid']} on {holder.get('host')}" if holder.get("pid") else ""
                self.events.emit(CellElsewhere(outcomes[index], who))


def run_local(config: RunConfig, console: Any = None, progress: Any = None) -> list[CellOutcome]:
    """Run a grid in this process as ``bench run`` does (display and MLflow observers)."""
    from bench.executors.observers import default_events

    events = default_events(config, console, progress)
    return LocalExecutor(config, events, console=console, progress=progress).run()
