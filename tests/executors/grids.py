"""Small grids for the executor tests: a tiny-random run config and quiet observers."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.executors.observers import default_events
from bench.pipeline.config import RunConfig
from bench.pipeline.events import EventBus


def grid_config(tiny_root: Path, results: Path, **overrides: Any) -> RunConfig:
    """clip and coop x seeds 0, 1 on synthetic-tiny, tiny-random, 1 epoch, no MLflow."""
    settings: dict[str, Any] = {
        "methods": ("clip", "coop"),
        "datasets": ("synthetic-tiny",),
        "seeds": (0, 1),
        "backbone": "tiny-random",
        "epochs": 1,
        "data_root": tiny_root,
        "results_dir": results,
        "log_mlflow": False,
    }
    settings.update(overrides)
    return RunConfig(**settings)


def quiet_events(config: RunConfig, progress: Any = None) -> EventBus:
    """The observers of ``bench run`` on a console that writes into a buffer."""
    return default_events(config, Console(file=io.StringIO(), width=200), progress)


def output(events: EventBus) -> str:
    """What the terminal observer of :func:`quiet_events` printed."""
    return events.observers[0].console.file.getvalue()  # type: ignore[attr-defined]


def metrics_by_cell(outcomes: list[Any]) -> dict[str, Any]:
    """Cell label -> its result's metrics."""
    return {o.cell.label: o.result["metrics"] for o in outcomes}
