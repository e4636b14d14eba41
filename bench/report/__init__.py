"""Paper-ready outputs: result tables (LaTeX, Markdown, CSV, terminal), paper comparison, figures.

Everything is built from cell results, the JSONs under ``<results-dir>/runs/`` (the source of
truth) or, through :mod:`bench.tracking`, the MLflow child runs. The flow, one module per job:

* :mod:`~bench.report.records`: result JSONs / MLflow runs -> :class:`RunRecord`;
* :mod:`~bench.report.aggregate`: records -> the summary frame (mean ± std over seeds, averaged
  only within one :class:`Setting`);
* :mod:`~bench.report.tables`: the format-independent table model and captions, rendered by
  :mod:`~bench.report.latex` and :mod:`~bench.report.render` (Markdown, CSV, rich);
* :mod:`~bench.report.higher_order`: the higher-order (AAO) accuracy table;
* :mod:`~bench.report.paper`: published against reproduced numbers;
* :mod:`~bench.report.figures`: seen-unseen curves and AUC bars.

``bench ui`` (the MLflow UI subprocess) lives in :mod:`bench.report.ui`.
"""

from __future__ import annotations

from bench.report.aggregate import METRICS, PAPER_DATASETS, aggregate, row_labels
from bench.report.figures import figure_slug, write_figures
from bench.report.higher_order import aggregate_higher_order
from bench.report.latex import latex_escape, render_latex
from bench.report.paper import (
    compare_with_paper,
    load_published,
    published_path,
    render_comparison,
    render_comparison_rich,
)
from bench.report.records import (
    RunRecord,
    Setting,
    load_records,
    load_records_mlflow,
    record_from_result,
)
from bench.report.render import (
    FORMAT_SUFFIXES,
    FORMATS,
    render,
    render_csv,
    render_markdown,
    render_rich,
)

__all__ = [
    "FORMATS",
    "FORMAT_SUFFIXES",
    "METRICS",
    "PAPER_DATASETS",
    "RunRecord",
    "Setting",
    "aggregate",
    "aggregate_higher_order",
    "compare_with_paper",
    "figure_slug",
    "latex_escape",
    "load_published",
    "load_records",
    "load_records_mlflow",
    "published_path",
    "record_from_result",
    "render",
    "render_comparison",
    "render_comparison_rich",
    "render_csv",
    "render_latex",
    "render_markdown",
    "render_rich",
    "row_labels",
    "write_figures",
]
