"""MLflow logging of a grid, as an observer of the pipeline's events (driver process only).

Policy: a parent run per invocation and dataset, and a child run per executed cell created
when the cell starts, both tagged with their owner process (``bench.owner.*``). Runs left
RUNNING by a dead process are marked KILLED when the first dataset starts; a cell that runs
again after a killed or failed attempt gets a NEW child run tagged ``bench.resumed_from_run``
(the old run id). A finished cell missing from MLflow (killed between its result JSON and its
logging, or run with ``--no-mlflow``) is logged when next skipped. MLflow failures never lose
results: they become one warning and logging stops for the rest of the run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from bench import __version__
from bench.pipeline.cell import git_commit
from bench.pipeline.config import Cell, CellOutcome, RunConfig
from bench.pipeline.events import (
    CellAborted,
    CellFailed,
    CellFinished,
    CellSkipped,
    CellStarted,
    DatasetFinished,
    DatasetPrepared,
    EventBus,
    GridPlanned,
)
from bench.pipeline.store import artifact_paths, cell_lock, writing
from bench.tracking.client import resolve_tracking_uri
from bench.tracking.writer import Tracker, open_tracker, owner_alive, owner_tags

T = TypeVar("T")


class MlflowObserver:
    """Logs a grid's events to MLflow (see the module docstring for the policy).

    Args:
        config: The run's options (store, results folder, what the parent run records).
        events: Where its warnings and notes go.
    """

    def __init__(self, config: RunConfig, events: EventBus) -> None:
        self.config = config
        self.events = events
        self.invocation = ""
        self._git_commit = "unknown"
        self._tracker: Tracker | None = None
        self._off = not config.log_mlflow
        self._stale_marked = False
        self._parents: dict[str, str | None] = {}
        self._logged: dict[str, set[str]] = {}
        self._cell_runs: dict[Cell, str] = {}
        self._results: dict[str, list[dict[str, Any]]] = {}
        self._handlers: dict[type, Callable[[Any], None]] = {
            GridPlanned: self._grid_planned,
            DatasetPrepared: self._dataset_prepared,
            DatasetFinished: self._dataset_finished,
            CellStarted: self._cell_started,
            CellFinished: self._cell_finished,
            CellSkipped: self._cell_skipped,
            CellAborted: lambda event: self._end_cell_run(event.cell, event.status),
            CellFailed: lambda event: self._end_cell_run(event.outcome.cell, "FAILED"),
        }

    def notify(self, event: Any) -> None:
        """Handle one event."""
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)

    def _track(self, what: str, call: Callable[[Tracker], T]) -> T | None:
        """Run a tracker call; a failure warns once and turns MLflow logging off."""
        if self._off or self._tracker is None:
            return None
        try:
            return call(self._tracker)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - results are on disk; MLflow is a copy
            self._off = True
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            self.events.warn(
                f"MLflow failed while {what} ({reason}); results are still written under "
                f"{self.config.results_dir}/runs and MLflow logging is off for the rest of this "
                "run (the next bench run logs the missing cells)"
            )
            return None

    # ------------------------------------------------------------------ grid and datasets
    def _grid_planned(self, event: GridPlanned) -> None:
        """Open the store: a bad one fails before any work."""
        self.invocation = event.invocation
        if not self._off and self._tracker is None:
            self._git_commit = git_commit() or "unknown"
            self._tracker = open_tracker(
                resolve_tracking_uri(self.config.tracking_uri, self.config.results_dir),
                self.config.results_dir / "mlartifacts",
            )

    def _dataset_prepared(self, event: DatasetPrepared) -> None:
        """Mark stale runs (once), read the logged cells and open the dataset's parent run."""
        if self._tracker is None:
            return
        label = event.dataset
        if not self._stale_marked:
            self._stale_marked = True
            marked = self._track(
                "marking stale runs", lambda tracker: tracker.mark_stale_runs(owner_alive)
            )
            if marked:
                self.events.note(
                    f"marked {marked} MLflow run(s) left RUNNING by a bench process that no "
                    "longer exists as KILLED"
                )
        hashes = self._track(
            "reading logged cells", lambda tracker: tracker.finished_config_hashes(label)
        )
        self._logged[label] = set(hashes or ())
        self._parents[label] = self._track(
            "creating the parent run",
            lambda tracker: tracker.parent_run(
                label,
                self.invocation,
                {
                    "methods": ",".join(self.config.methods),
                    "seeds": ",".join(map(str, self.config.seeds)),
                    "backbone": event.backbone,
                    "dataset": label,
                    "augment": self.config.augment_for(label),
                },
                {
                    "bench.version": __version__,
                    "bench.git_commit": self._git_commit,
                    **owner_tags(self.invocation),
                },
            ),
        )

    def _dataset_finished(self, event: DatasetFinished) -> None:
        """Close the dataset's parent run (with the comparison, when every cell finished)."""
        results = self._results.pop(event.dataset, [])
        if self._parents.pop(event.dataset, None) is None:
            return
        if event.status == "FINISHED":
            self._log_comparison(event.dataset, results)
        self._track(
            "closing the parent run",
            lambda tracker: tracker.finish_parent(event.dataset, self.invocation, event.status),
        )

    def _log_comparison(self, dataset: str, results: list[dict[str, Any]]) -> None:
        """The runs view and the parent run's comparison table, figure and description."""
        from bench.plots import pyplot
        from bench.report import record_from_result
        from bench.report.comparison import dataset_comparison

        self._track(
            "saving the runs view",
            lambda tracker: tracker.set_runs_view(dataset, self.config.methods),
        )
        comparison = dataset_comparison([record_from_result(r) for r in results], dataset)
        if comparison is not None:
            self._track(
                "logging the comparison",
                lambda tracker: tracker.log_comparison(dataset, self.invocation, comparison),
            )
            pyplot().close(comparison.figure)

    # ------------------------------------------------------------------ cells
    def _cell_started(self, event: CellStarted) -> None:
        """Open a RUNNING child run (closing an earlier attempt's run of this grid FAILED)."""
        self._end_cell_run(event.planned.cell, "FAILED")
        self._start_cell_run(event.planned.cell, event.planned.config_hash)

    def _start_cell_run(self, cell: Cell, config_hash: str) -> None:
        parent_id = self._parents.get(cell.dataset)
        if parent_id is None:
            return
        previous = self._track(
            "looking up earlier attempts",
            lambda tracker: tracker.previous_attempt(cell.dataset, config_hash),
        )
        tags = {
            "bench.cell": f"{cell.label}|{config_hash[:12]}",
            "bench.config_hash": config_hash,
            **owner_tags(self.invocation),
        }
        if previous:
            tags["bench.resumed_from_run"] = previous
        run_id = self._track(
            "creating a cell run",
            lambda tracker: tracker.start_cell(cell.dataset, cell.label, parent_id, tags),
        )
        if run_id is not None:
            self._cell_runs[cell] = run_id

    def _end_cell_run(self, cell: Cell, status: str) -> None:
        run_id = self._cell_runs.pop(cell, None)
        if run_id is not None:
            self._track("closing a cell run", lambda tracker: tracker.end_run(run_id, status))

    def _cell_finished(self, event: CellFinished) -> None:
        """Log the finished cell into its run (one is created if its start was not seen)."""
        outcome = event.outcome
        if outcome.result is not None:
            self._results.setdefault(outcome.cell.dataset, []).append(outcome.result)
        if outcome.cell not in self._cell_runs and outcome.result is not None:
            self._start_cell_run(outcome.cell, outcome.result["config_hash"])
        self._log_finished(outcome, self._cell_runs.pop(outcome.cell, None))

    def _log_finished(self, outcome: CellOutcome, run_id: str | None) -> None:
        result, path = outcome.result, outcome.path
        parent_id = self._parents.get(outcome.cell.dataset)
        if parent_id is None or result is None or path is None:
            return
        logged = self._track(
            f"logging cell {result['cell_id']}",
            lambda tracker: tracker.log_cell(
                result, parent_id, artifact_paths(path), run_id=run_id
            ),
        )
        if logged is not None:
            self._logged.setdefault(outcome.cell.dataset, set()).add(result["config_hash"])

    def _cell_skipped(self, event: CellSkipped) -> None:
        """Log a cell finished earlier that MLflow does not have yet.

        Another process that is still running the cell holds its lock and logs it itself, so
        the cell is only logged here under its lock, after a fresh look at the store.
        """
        outcome = event.outcome
        result, path = outcome.result, outcome.path
        dataset = outcome.cell.dataset
        if result is not None:
            self._results.setdefault(dataset, []).append(result)
        if self._parents.get(dataset) is None or self._off or result is None or path is None:
            return
        config_hash = result.get("config_hash")
        if config_hash in self._logged.get(dataset, set()):
            return
        lock = None
        if not event.locked:
            lock = cell_lock(self.config.results_dir, outcome.cell, path, self.invocation)
            with writing(lock.path):
                if not lock.acquire(blocking=False):
                    return  # its owner logs it
        try:
            logged = self._track(
                "reading logged cells",
                lambda tracker: tracker.finished_config_hashes(dataset, config_hash),
            )
            if logged is None or logged:
                self._logged.setdefault(dataset, set()).update(logged or ())
                return
            self._log_finished(outcome, None)
            if not self._off:
                self.events.note(
                    f"logged finished cell {result['cell_id']} to MLflow (it was missing there)"
                )
        finally:
            if lock is not None:
                lock.release()
