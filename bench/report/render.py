"""Markdown, CSV and terminal (rich) renderers of the summary, and the format dispatch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from bench.errors import BenchError
from bench.report.higher_order import higher_order_caption, higher_order_cells, higher_order_tables
from bench.report.latex import render_latex
from bench.report.tables import summary_tables, table_cells, table_columns, world_label

#: Text formats of ``bench report`` (the terminal table is the default, no format).
FORMATS = ("latex", "markdown", "csv")
#: Output file suffix -> format, for ``bench report -o FILE``.
FORMAT_SUFFIXES = {".tex": "latex", ".md": "markdown", ".csv": "csv"}


def _md(text: str) -> str:
    return str(text).replace("|", "\\|")


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]], left: int) -> str:
    """A pipe table; the first ``left`` columns are left-aligned, the others right-aligned."""
    align = [":---"] * left + ["---:"] * (len(header) - left)
    lines = ["| " + " | ".join(_md(h) for h in header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def render_markdown(summary: pd.DataFrame, higher_order: pd.DataFrame | None = None) -> str:
    """One pipe table per world, each followed by a pandoc-style ``Table:`` caption, then one
    per higher-order evaluation in ``higher_order``."""
    parts = []
    for table in summary_tables(summary):
        header = ["Method"] + [f"{d} {m}" for d, m in table_columns(table)]
        body = [
            [label, *cells] for label, cells in zip(table.labels, table_cells(table, "markdown"))
        ]
        parts.append(f"{markdown_table(header, body, 1)}\n\nTable: {table.caption}\n")
    for _, frame in higher_order_tables(higher_order) if higher_order is not None else []:
        datasets, rows = higher_order_cells(frame, "markdown")
        table_text = markdown_table(["Method"] + [f"{d} acc" for d in datasets], rows, 1)
        parts.append(f"{table_text}\n\nTable: {higher_order_caption(frame)}\n")
    return "\n".join(parts)


def render_csv(summary: pd.DataFrame) -> str:
    """The summary frame as CSV (percentages with two decimals; empty std for one seed)."""
    return summary.drop(columns=["row_order"], errors="ignore").to_csv(
        index=False, float_format="%.2f", lineterminator="\n"
    )


def new_rich_table(title: str, caption: str) -> Any:
    """An empty rich ``Table`` with ``title`` and a left-justified plain-text ``caption``."""
    from rich.markup import escape
    from rich.table import Table

    return Table(title=title, caption=escape(caption), caption_justify="left")


def render_rich(summary: pd.DataFrame, higher_order: pd.DataFrame | None = None) -> list[Any]:
    """Rich tables for the terminal, one per world, then one per higher-order evaluation."""
    from rich.markup import escape

    tables = []
    for table in summary_tables(summary):
        rich_table = new_rich_table(
            f"{world_label(table.world).capitalize()}, {table.split} split (%)", table.caption
        )
        rich_table.add_column("Method", no_wrap=True)
        previous = None
        for dataset, metric in table_columns(table):
            group = escape(dataset) if dataset != previous else ""
            rich_table.add_column(f"{group}\n{metric}", justify="right", no_wrap=True)
            previous = dataset
        for label, cells in zip(table.labels, table_cells(table, "rich")):
            rich_table.add_row(escape(label), *cells)
        tables.append(rich_table)
    for name, frame in higher_order_tables(higher_order) if higher_order is not None else []:
        datasets, rows = higher_order_cells(frame, "rich")
        rich_table = new_rich_table(
            f"Higher-order compositions ({name}), test split (%)", higher_order_caption(frame)
        )
        rich_table.add_column("Method", no_wrap=True)
        for dataset in datasets:
            rich_table.add_column(f"{escape(dataset)}\nacc", justify="right", no_wrap=True)
        for label, *cells in rows:
            rich_table.add_row(escape(label), *cells)
        tables.append(rich_table)
    return tables


def check_format(fmt: str) -> None:
    """Raise a one-line BenchError unless ``fmt`` is one of :data:`FORMATS`."""
    if fmt not in FORMATS:
        raise BenchError(f"unknown report format {fmt!r}; use one of {', '.join(FORMATS)}")


def render(summary: pd.DataFrame, fmt: str, higher_order: pd.DataFrame | None = None) -> str:
    """Render the summary as "latex", "markdown" or "csv"; LaTeX and Markdown add the
    higher-order tables of ``higher_order`` (CSV is the summary frame only)."""
    check_format(fmt)
    if fmt == "csv":
        return render_csv(summary)
    renderer = render_latex if fmt == "latex" else render_markdown
    return renderer(summary, higher_order)
