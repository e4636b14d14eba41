"""LaTeX tables: pandas ``Styler.to_latex`` plus booktabs post-processing."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from bench.report.higher_order import higher_order_caption, higher_order_cells, higher_order_tables
from bench.report.tables import Table, summary_tables, table_cells, table_columns

_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "–": "--",
    "−": "$-$",
    "Δ": r"$\Delta$",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX specials (and turn ±, –, −, Δ into their LaTeX forms)."""
    return "".join(_LATEX_SPECIALS.get(char, char) for char in str(text))


def _split_row(line: str) -> list[str]:
    return [cell.strip() for cell in line.rstrip().removesuffix("\\\\").split("&")]


def _span(cell: str) -> int:
    if cell.startswith("\\multicolumn{"):
        return int(cell[len("\\multicolumn{") :].split("}", 1)[0])
    return 1


def _polish(latex: str, row_headers: Sequence[str]) -> str:
    """Booktabs header polish: multirow row headers, ``\\cmidrule`` under grouped columns.

    Styler writes two header rows (groups, then metrics); the row-header cells and the
    single-column groups (such as ``n``) become ``\\multirow{2}`` cells, and every group
    spanning several columns gets a ``\\cmidrule(lr)``.
    """
    lines = latex.splitlines()
    top = lines.index("\\toprule")
    first, second = _split_row(lines[top + 1]), _split_row(lines[top + 2])
    column, rules, new_first, new_second = 1, [], [], []
    i2 = 0
    for index, cell in enumerate(first):
        span = _span(cell)
        if index < len(row_headers):
            new_first.append(f"\\multirow[c]{{2}}{{*}}{{{row_headers[index]}}}")
            new_second.append("")
        elif span == 1 and not second[i2]:
            new_first.append(f"\\multirow[c]{{2}}{{*}}{{{cell}}}" if cell else "")
            new_second.append("")
        else:
            new_first.append(cell)
            new_second.extend(second[i2 : i2 + span])
            if span > 1:
                rules.append(f"\\cmidrule(lr){{{column}-{column + span - 1}}}")
        column += span
        i2 += span
    if len(row_headers) > 1:  # a little space between the groups of the first index level
        start, end = lines.index("\\midrule") + 1, lines.index("\\bottomrule")
        for index in range(end - 1, start, -1):
            if not lines[index].startswith(" &"):
                lines.insert(index, "\\addlinespace")
    lines[top + 1] = " & ".join(new_first) + " \\\\"
    lines[top + 2] = " & ".join(new_second) + " \\\\"
    if rules:
        lines.insert(top + 2, " ".join(rules))
    return "\n".join(lines) + "\n"


def booktabs_table(
    frame: pd.DataFrame, caption: str, label: str, row_headers: Sequence[str]
) -> str:
    """A booktabs ``table`` of ``frame`` (cells already LaTeX) with a two-row column header.

    Args:
        frame: Body cells; its index holds the row headers, its columns (group, metric).
        caption: Plain-text caption (escaped here).
        label: ``\\label`` of the table.
        row_headers: Header of each index level, e.g. ``["Method"]``.
    """
    latex = frame.style.to_latex(
        hrules=True,
        multicol_align="c",
        multirow_align="c",
        caption=latex_escape(caption),
        label=label,
        position_float="centering",
        column_format="l" * len(row_headers) + "r" * len(frame.columns),
        environment="table",
    )
    return _polish(latex, row_headers)


def _latex_table(table: Table) -> str:
    columns = pd.MultiIndex.from_tuples(
        [(latex_escape(d), m) for d, m in table_columns(table)], names=[None, None]
    )
    frame = pd.DataFrame(
        table_cells(table, "latex"),
        index=pd.Index([latex_escape(label) for label in table.labels]),
        columns=columns,
    )
    return booktabs_table(frame, table.caption, f"tab:czsl-{table.split}-{table.world}", ["Method"])


def _higher_order_latex(name: str, frame: pd.DataFrame) -> str:
    datasets, body = higher_order_cells(frame, "latex")
    columns = pd.MultiIndex.from_tuples([(latex_escape(d), "acc") for d in datasets])
    table = pd.DataFrame(
        [cells for _, *cells in body],
        index=pd.Index([latex_escape(label) for label, *_ in body]),
        columns=columns,
    )
    caption = higher_order_caption(frame)
    return booktabs_table(table, caption, f"tab:czsl-test-{name}", ["Method"])


def render_latex(summary: pd.DataFrame, higher_order: pd.DataFrame | None = None) -> str:
    """One booktabs ``table`` per world (``\\usepackage{booktabs,multirow}``), then one per
    higher-order evaluation in ``higher_order`` (:func:`aggregate_higher_order`)."""
    tables = [_latex_table(table) for table in summary_tables(summary)]
    if higher_order is not None:
        tables += [_higher_order_latex(n, f) for n, f in higher_order_tables(higher_order)]
    return "\n".join(tables)
