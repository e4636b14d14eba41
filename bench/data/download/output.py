"""Where download progress and notes go: one plain line each, on stderr by default."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn


def default_console(console: Console | None) -> Console:
    """``console``, or a rich console on stderr."""
    return console if console is not None else Console(stderr=True)


def say(console: Console, message: str) -> None:
    """Print ``message`` verbatim (no rich markup or highlighting), wrapped softly."""
    console.print(message, markup=False, highlight=False, soft_wrap=True)


def progress_bar(console: Console, *columns: ProgressColumn) -> Progress:
    """A transient bar (description, bar, ``columns``, time left), shown on terminals only."""
    return Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        *columns,
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
