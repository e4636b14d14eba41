"""What happens while a grid runs, as events; observers (display, MLflow) receive them.

The pipeline and the executors emit events on an :class:`EventBus`; they never print or
log to MLflow themselves. Events are small frozen dataclasses that pickle, so an executor
can carry them from another process (a Ray task) and emit them on the driver's bus.

A grid emits, in order: :class:`GridPlanned`; per dataset :class:`DatasetPrepared`, then per
cell :class:`CellStarted`, :class:`EpochEnded`... and one outcome (:class:`CellFinished`,
:class:`CellSkipped`, :class:`CellElsewhere`, :class:`CellFailed`, or :class:`CellAborted`
when the attempt ended without a result), then :class:`DatasetFinished`. :class:`Message`
(warnings and notes) can come at any time; :class:`TaskStarted` only from executors that
hand cells to workers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bench.pipeline.config import Cell, CellOutcome, PlannedCell


@dataclass(frozen=True)
class GridPlanned:
    """The grid is planned: its cells, in order, and this invocation's id."""

    cells: tuple[Cell, ...]
    invocation: str


@dataclass(frozen=True)
class DatasetPrepared:
    """A dataset's features exist; its cells come next. ``backbone``: the backbone spec."""

    dataset: str
    backbone: str


@dataclass(frozen=True)
class DatasetFinished:
    """Every cell of a dataset has its outcome (status FINISHED), or the grid stopped
    (FAILED, KILLED)."""

    dataset: str
    status: str


@dataclass(frozen=True)
class TaskStarted:
    """A worker on ``host`` picked the cell up (``attempt`` counts from 1)."""

    cell: Cell
    host: str
    attempt: int = 1


@dataclass(frozen=True)
class CellStarted:
    """The cell's lock is held and it starts executing; ``epochs``: how many it trains."""

    planned: PlannedCell
    epochs: int | None


@dataclass(frozen=True)
class EpochEnded:
    """A training epoch of the cell ended with these metrics (``train/loss``, ``val/cw/auc``)."""

    cell: Cell
    epoch: int
    metrics: Mapping[str, float]


@dataclass(frozen=True)
class CellFinished:
    """The cell ran now and its result is written. ``host``: where, when not here."""

    outcome: CellOutcome
    host: str | None = None


@dataclass(frozen=True)
class CellSkipped:
    """The cell was finished before (its result is on disk).

    ``locked``: the emitter holds the cell's lock while observers run.
    """

    outcome: CellOutcome
    locked: bool = False


@dataclass(frozen=True)
class CellElsewhere:
    """Another live process runs the cell; ``holder``: who, when known."""

    outcome: CellOutcome
    holder: str = ""


@dataclass(frozen=True)
class CellFailed:
    """The cell failed for good (the grid goes on); ``outcome.error`` says why."""

    outcome: CellOutcome


@dataclass(frozen=True)
class CellAborted:
    """An attempt at the cell ended without a result: ``status`` FAILED or KILLED (Ctrl-C)."""

    cell: Cell
    status: str


@dataclass(frozen=True)
class Message:
    """A line for the user: ``level`` "warning" or "note"."""

    level: str
    text: str


#: Events that end a cell in this invocation (one per cell).
OUTCOMES = (CellFinished, CellSkipped, CellElsewhere, CellFailed)


class Observer(Protocol):
    """Receives every event of a grid, in order."""

    def notify(self, event: Any) -> None:
        """Handle one event (ignore the kinds it does not care about)."""


class EventBus:
    """Hands each event to every observer, in subscription order, synchronously."""

    def __init__(self, observers: Sequence[Observer] = ()) -> None:
        self.observers = list(observers)

    def subscribe(self, observer: Observer) -> None:
        """Add an observer."""
        self.observers.append(observer)

    def emit(self, event: Any) -> None:
        """Send ``event`` to every observer."""
        for observer in self.observers:
            observer.notify(event)

    def warn(self, text: str) -> None:
        """Emit a warning line."""
        self.emit(Message("warning", text))

    def note(self, text: str) -> None:
        """Emit a note line."""
        self.emit(Message("note", text))
