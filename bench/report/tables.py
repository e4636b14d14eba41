"""The format-independent table model behind every renderer: one table per world, captions."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import pandas as pd

from bench.constants import WORLD_NAMES
from bench.errors import BenchError
from bench.report.aggregate import METRICS, row_labels
from bench.report.records import Setting

#: How captions name the setting fields that tell rows apart.
_FIELD_NAMES = {
    "backbone": "backbone",
    "augment": "augmentation",
    "topk": "top-k",
    "feasibility": "feasibility mode",
    "word_vectors": "word vectors",
    "protocol": "evaluation protocol",
    "backbone_identifier": "backbone weights",
    "hparams_hash": "hyperparameters (hash)",
    "dataset_fingerprint": "dataset version (fingerprint)",
    "run_protocol": "protocol (--protocol)",
}


def world_label(world: str) -> str:
    """``"closed world"`` or ``"open world"`` for a world key (cw, ow)."""
    return f"{WORLD_NAMES[world]} world"


def world_adjective(world: str) -> str:
    """``"Closed-world"`` or ``"Open-world"``, as captions start."""
    return f"{WORLD_NAMES[world].capitalize()}-world"


@dataclass
class Table:
    """One world's table, format-independent."""

    world: str
    split: str
    datasets: list[str]
    labels: list[str]
    cells: dict[tuple[str, str], Mapping[str, Any]]
    best: dict[tuple[str, str], float]
    show_n: bool
    caption: str


def _settings_of(frame: pd.DataFrame) -> list[tuple[str, str, Setting]]:
    names = [f.name for f in fields(Setting)]
    return [
        (row["dataset"], row["method"], Setting(**{n: row[n] for n in names}))
        for _, row in frame.iterrows()
    ]


def _uniform(frame: pd.DataFrame, column: str) -> Any:
    values = list(dict.fromkeys(frame[column]))
    return values[0] if len(values) == 1 else None


def _seeds_sentence(frame: pd.DataFrame, show_n: bool) -> str:
    if show_n:
        return "Mean ± std over n seeds (column n; no std for one seed)."
    n = int(frame["n"].iloc[0])
    seeds = _uniform(frame, "seeds")
    if n == 1:
        return (
            f"One seed ({seeds}), so no std." if seeds is not None else "One seed each, so no std."
        )
    listed = f" ({seeds.replace(',', ', ')})" if seeds is not None else ""
    return f"Mean ± std over {n} seeds{listed}."


def _settings_sentence(frame: pd.DataFrame, world: str, differing: Sequence[str]) -> str:
    parts = []
    backbone = _uniform(frame, "backbone")
    if backbone is not None and "backbone" not in differing:
        parts.append(f"backbone {backbone}")
    augment = _uniform(frame, "augment")
    if augment is not None and "augment" not in differing:
        parts.append(f"augmentation {augment}")
    topk = _uniform(frame, "topk")
    if topk is not None and "topk" not in differing:
        parts.append(f"top-{topk} accuracy")
    feasibility = _uniform(frame, "feasibility")
    if world == "ow" and feasibility is not None and "feasibility" not in differing:
        vectors = _uniform(frame, "word_vectors")
        if feasibility == "none":
            parts.append("no feasibility filter")
        elif vectors is not None:
            parts.append(f"feasibility filter {feasibility} (word vectors {vectors})")
        else:
            parts.append(f"feasibility filter {feasibility}")
    return (parts[0][0].upper() + "; ".join(parts)[1:] + ".") if parts else ""


def _rows_sentence(frame: pd.DataFrame, differing: Sequence[str]) -> str:
    if differing:
        names = ", ".join(_FIELD_NAMES[f] for f in differing)
        return (
            f"Rows differ in method and {names} (given in parentheses); "
            "runs with different settings are never averaged."
        )
    return "Rows differ only in the method." if frame["method"].nunique() > 1 else ""


def _warning_sentence(frame: pd.DataFrame) -> str:
    random = sorted(set(frame.loc[frame["random_weights"].astype(bool), "backbone"]))
    if not random:
        return ""
    return (
        f"WARNING: backbone {', '.join(random)} has random weights; "
        "its numbers say nothing about the methods."
    )


def _table(summary: pd.DataFrame, world: str) -> Table:
    frame = summary[summary["world"] == world]
    split = str(frame["split"].iloc[0])
    datasets = list(dict.fromkeys(frame["dataset"]))
    labels = list(dict.fromkeys(frame.sort_values("row_order", kind="stable")["label"]))
    cells = {(row["label"], row["dataset"]): row for _, row in frame.iterrows()}
    best: dict[tuple[str, str], float] = {}
    for dataset in datasets:
        rows = frame[frame["dataset"] == dataset]
        for name, _ in METRICS:
            shown = [round(v, 1) for v in rows[f"{name}_mean"]]
            if len(set(shown)) > 1:  # a tie of all rows marks nothing
                best[(dataset, name)] = max(shown)
    show_n = frame["n"].nunique() > 1
    _, differing = row_labels(_settings_of(frame))
    sentences = [
        f"{world_adjective(world)} results on the {split} split (%): "
        "S best seen accuracy, U best unseen accuracy, HM best harmonic mean, "
        "AUC area under the seen–unseen curve.",
        _seeds_sentence(frame, show_n),
        _settings_sentence(frame, world, differing),
        _rows_sentence(frame, differing),
        "Best value per column in bold." if best else "",
        _warning_sentence(frame),
    ]
    caption = " ".join(s for s in sentences if s)
    return Table(world, split, datasets, labels, cells, best, show_n, caption)


def summary_tables(summary: pd.DataFrame) -> list[Table]:
    """One table per world of :func:`~bench.report.aggregate.aggregate`'s summary frame."""
    if summary.empty:
        raise BenchError("no results to report")
    return [_table(summary, world) for world in dict.fromkeys(summary["world"])]


def cell_text(row: Mapping[str, Any] | None, name: str, best: float | None, style: str) -> str:
    """``mean ± std`` of metric ``name`` in ``style`` (latex, markdown, rich); bold if best."""
    if row is None:
        return {"latex": "--", "markdown": "–", "rich": "–"}[style]
    mean = f"{row[f'{name}_mean']:.1f}"
    if best is not None and round(row[f"{name}_mean"], 1) == best:
        mean = {"latex": "\\textbf{%s}", "markdown": "**%s**", "rich": "[bold]%s[/bold]"}[
            style
        ] % mean
    std = row[f"{name}_std"]
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return mean
    pm = "$\\pm$" if style == "latex" else "±"
    return f"{mean} {pm} {std:.1f}"


def table_columns(table: Table) -> list[tuple[str, str]]:
    """The (dataset, metric) columns of ``table``, with ``n`` where seed counts differ."""
    metrics = [name for name, _ in METRICS] + (["n"] if table.show_n else [])
    return [(dataset, metric) for dataset in table.datasets for metric in metrics]


def table_cells(table: Table, style: str) -> list[list[str]]:
    """The body of ``table`` as text in ``style``, one list per row label."""
    body = []
    for label in table.labels:
        line = []
        for dataset, metric in table_columns(table):
            row = table.cells.get((label, dataset))
            if metric == "n":
                line.append(
                    str(int(row["n"])) if row is not None else cell_text(None, "", None, style)
                )
            else:
                line.append(cell_text(row, metric, table.best.get((dataset, metric)), style))
        body.append(line)
    return body
