"""The observers ``bench run`` attaches to a grid: the terminal display and MLflow logging."""

from __future__ import annotations

from typing import Any, TextIO

from bench.pipeline.config import RunConfig
from bench.pipeline.display import TerminalDisplay
from bench.pipeline.events import EventBus
from bench.tracking.observer import MlflowObserver


def default_events(
    config: RunConfig,
    console: Any = None,
    progress: Any = None,
    outcome_lines: TextIO | None = None,
) -> EventBus:
    """An event bus with the terminal display (on ``console``, default stderr) and MLflow.

    Args:
        config: The run's options (MLflow logging follows ``config.log_mlflow``).
        console: The rich console for warning and note lines.
        progress: A live rich Progress for the grid, cell and epoch rows (None: none).
        outcome_lines: Where a line per settled cell goes (None: nowhere).
    """
    if console is None:
        from rich.console import Console

        console = Console(stderr=True)
    events = EventBus([TerminalDisplay(console, progress, outcome_lines)])
    events.subscribe(MlflowObserver(config, events))
    return events
