"""The one-glance comparison of a ``bench run`` dataset, for its MLflow parent run.

The same aggregation and numbers as ``bench report`` (mean ± std over seeds, in %), as a
flat table (one row per method, a column per world and metric) for ``mlflow.log_table``, the
report's Markdown for the run description, and the AUC bar figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from bench.report.aggregate import METRICS, aggregate
from bench.report.figures import auc_bars_figure
from bench.report.records import RunRecord
from bench.report.render import render_markdown
from bench.report.tables import cell_text


@dataclass(frozen=True)
class Comparison:
    """A dataset's comparison: ``table`` (one row per method), ``markdown``, ``figure``."""

    table: pd.DataFrame
    markdown: str
    figure: Any


def comparison_table(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per row label: method, seeds, then ``<world> <metric>`` as ``mean ± std``."""
    rows: dict[str, dict[str, str]] = {}
    for _, row in summary.sort_values("row_order", kind="stable").iterrows():
        line = rows.setdefault(row["label"], {"method": row["label"], "seeds": row["seeds"]})
        for name, _ in METRICS:
            line[f"{row['world']} {name}"] = cell_text(row, name, None, "markdown")
    return pd.DataFrame(list(rows.values()))


def dataset_comparison(records: Sequence[RunRecord], dataset: str) -> Comparison | None:
    """The comparison of ``dataset``'s finished cells in ``records`` (None if there are none)."""
    summary = aggregate([r for r in records if r.dataset == dataset])
    if summary.empty:
        return None
    return Comparison(
        comparison_table(summary), render_markdown(summary), auc_bars_figure(summary, dataset)
    )
