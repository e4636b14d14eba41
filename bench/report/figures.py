"""Figures: seen-unseen calibration curves (whose area is the AUC) and AUC bars, PNG and PDF."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from bench.constants import WORLDS
from bench.errors import BenchError
from bench.plots import pyplot, save_curves, save_figure
from bench.report.aggregate import aggregate, row_labels
from bench.report.records import RunRecord
from bench.report.tables import world_label


def figure_slug(text: str) -> str:
    """A figure file name part for ``text``: every character but ``[alnum-_.]`` becomes ``_``.

    Not :func:`bench.constants.slug`: that one collapses runs and strips leading and trailing
    ``._-``, which would rename existing figures (``le+`` -> ``le``, ``/data/x`` -> ``data_x``).
    """
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _auc_bars(frame: pd.DataFrame, dataset: str, stem: Path) -> list[Path]:
    figure = auc_bars_figure(frame, dataset)
    return save_figure(figure, [stem.with_suffix(suffix) for suffix in (".png", ".pdf")])


def auc_bars_figure(frame: pd.DataFrame, dataset: str) -> Any:
    """A matplotlib figure of AUC per row label (mean ± std bars, one per world) of ``dataset``.

    Args:
        frame: Rows of :func:`~bench.report.aggregate.aggregate`'s summary for one dataset.
        dataset: The dataset's name, for the title.
    """
    labels = list(dict.fromkeys(frame.sort_values("row_order", kind="stable")["label"]))
    worlds = list(dict.fromkeys(frame["world"]))
    width = 0.8 / len(worlds)
    figure, axis = pyplot().subplots(figsize=(max(4.5, 1.1 * len(labels) + 1.5), 3.6), dpi=120)
    for offset, world in enumerate(worlds):
        rows = frame[frame["world"] == world].set_index("label")
        xs = [i + (offset - (len(worlds) - 1) / 2) * width for i in range(len(labels))]
        means = [rows.at[label, "AUC_mean"] if label in rows.index else 0.0 for label in labels]
        stds = [rows.at[label, "AUC_std"] if label in rows.index else 0.0 for label in labels]
        stds = [0.0 if math.isnan(s) else s for s in stds]
        bars = axis.bar(xs, means, width, yerr=stds, capsize=3, label=world_label(world))
        counts = [
            f"n={int(rows.at[label, 'n'])}" if label in rows.index else "" for label in labels
        ]
        axis.bar_label(bars, labels=counts, fontsize=6, padding=2)
    axis.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=7)
    axis.set_ylabel("AUC (%)")
    split = frame["split"].iloc[0]
    warning = " [RANDOM backbone weights]" if frame["random_weights"].astype(bool).any() else ""
    axis.set_title(f"{dataset}: {split} AUC, mean ± std over seeds{warning}", fontsize=9)
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    return figure


def write_figures(
    records: Sequence[RunRecord],
    out_dir: Path,
    split: str = "test",
    worlds: Sequence[str] = WORLDS,
    dataset_order: Sequence[str] | None = None,
    method_order: Sequence[str] | None = None,
) -> dict[str, list[Path]]:
    """Seen–unseen curves and AUC bars per dataset, as PNG and PDF under ``out_dir``.

    ``curves-<dataset>-<world>.{png,pdf}``: the calibration curve (whose area is the AUC) of
    every row, from seed 0 or else the row's first seed (named in the legend).
    ``auc-<dataset>.{png,pdf}``: mean AUC per row and world, error bars = sample std over seeds.

    Returns:
        ``{dataset: [files]}``.
    """
    summary = aggregate(records, split, worlds, dataset_order, method_order)
    if summary.empty:
        raise BenchError(f"no {split} results to plot")
    labels, _ = row_labels({(r.dataset, r.method, r.setting) for r in records})
    written: dict[str, list[Path]] = {}
    out_dir = Path(out_dir)
    for dataset in dict.fromkeys(summary["dataset"]):
        files: list[Path] = []
        frame = summary[summary["dataset"] == dataset]
        order = {
            label: i
            for i, label in enumerate(frame.sort_values("row_order", kind="stable")["label"])
        }
        for world in dict.fromkeys(frame["world"]):
            firsts: dict[str, RunRecord] = {}
            for record in sorted(records, key=lambda r: (r.seed != 0, r.seed)):
                label = labels[(record.dataset, record.method, record.setting)]
                block = record.block(split, world) if record.dataset == dataset else None
                if block and block.get("seen_curve") and label not in firsts:
                    firsts[label] = record
            if not firsts:
                continue
            curves = {
                f"{label} (seed {firsts[label].seed})": firsts[label].block(split, world)
                for label in sorted(firsts, key=lambda k: order.get(k, len(order)))
            }
            seeds = {r.seed for r in firsts.values()}
            which = f"seed {seeds.pop()}" if len(seeds) == 1 else "first seed of each row"
            title = f"{dataset}: {split}, {world_label(world)} ({which})"
            stem = out_dir / f"curves-{figure_slug(dataset)}-{world}"
            for suffix in (".png", ".pdf"):
                files.append(save_curves(curves, stem.with_suffix(suffix), title))  # type: ignore[arg-type]
        files += _auc_bars(frame, dataset, out_dir / f"auc-{figure_slug(dataset)}")
        written[dataset] = files
    return written
