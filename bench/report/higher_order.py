"""The higher-order (attribute-attribute-object) table: top-1 accuracy over seeds, in %.

Built from the ``higher_order`` block of the cell results (``{"aao": {"acc", "n_images",
"n_triples", ...}}``); one row per (dataset, method, setting) as in the main tables, one
column per dataset. Methods that cannot build such prompts have no row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from bench.report.aggregate import PAPER_DATASETS, mean_std, order_key, row_labels
from bench.report.records import RunRecord, Setting
from bench.report.tables import cell_text

#: Columns of the higher-order summary frame.
COLUMNS: tuple[str, ...] = (
    "name",
    "dataset",
    "method",
    "label",
    "n",
    "seeds",
    "acc_mean",
    "acc_std",
    "n_images",
    "n_triples",
)


def aggregate_higher_order(
    records: Sequence[RunRecord],
    dataset_order: Sequence[str] | None = None,
    method_order: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Mean and sample std over seeds of each higher-order accuracy, in %.

    Returns:
        A frame with :data:`COLUMNS`, one row per (evaluation name, dataset, method,
        setting); empty when no record has a higher-order accuracy.
    """
    dataset_order = tuple(dataset_order or PAPER_DATASETS)
    method_order = tuple(method_order or ())
    groups: dict[tuple[str, str, str, Setting], list[tuple[int, dict[str, Any]]]] = {}
    for record in records:
        for name, block in record.higher_order.items():
            if isinstance(block, dict) and block.get("acc") is not None:
                key = (name, record.dataset, record.method, record.setting)
                groups.setdefault(key, []).append((record.seed, block))
    labels, _ = row_labels({(d, m, s) for _, d, m, s in groups})
    rows = []
    for (name, dataset, method, setting), members in groups.items():
        members.sort(key=lambda pair: pair[0])
        mean, std = mean_std([100.0 * float(block["acc"]) for _, block in members])
        last = members[-1][1]
        label = labels[(dataset, method, setting)]
        seeds = ",".join(str(seed) for seed, _ in members)
        counts = (last.get("n_images"), last.get("n_triples"))
        rows.append((name, dataset, method, label, len(members), seeds, mean, std, *counts))
    rows.sort(
        key=lambda r: (r[0], order_key(r[1], dataset_order), order_key(r[2], method_order), r[3])
    )
    return pd.DataFrame(rows, columns=list(COLUMNS))


def higher_order_caption(frame: pd.DataFrame) -> str:
    """The caption: what is measured, the chance level per dataset, the seeds."""
    chance = ", ".join(
        f"{dataset} {100.0 / int(triples):.1f} ({int(triples)} triples, {int(images)} images)"
        for dataset, triples, images in dict.fromkeys(
            zip(frame["dataset"], frame["n_triples"], frame["n_images"])
        )
        if triples
    )
    ns = sorted(set(frame["n"]))
    seeds = "one seed, so no std" if ns == [1] else "mean ± std over seeds (column n)"
    return (
        "Higher-order compositions (attribute–attribute–object, the CSP paper's AAO test): "
        "top-1 accuracy (%) of each annotated image over the distinct triples of "
        f"aao/annotations.csv; {seeds}. Chance: {chance}."
    )


def higher_order_tables(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """``(evaluation name, its rows)`` of each higher-order evaluation in ``frame``."""
    return [(name, frame[frame["name"] == name]) for name in dict.fromkeys(frame["name"])]


def higher_order_cells(frame: pd.DataFrame, style: str) -> tuple[list[str], list[list[str]]]:
    """Column datasets and the body (label, then one cell per dataset) in ``style``."""
    datasets = list(dict.fromkeys(frame["dataset"]))
    labels = list(dict.fromkeys(frame["label"]))
    cells = {(row["label"], row["dataset"]): row for _, row in frame.iterrows()}
    body = []
    for label in labels:
        line = []
        for dataset in datasets:
            row = cells.get((label, dataset))
            shown = (
                None if row is None else {"acc_mean": row["acc_mean"], "acc_std": row["acc_std"]}
            )
            line.append(cell_text(shown, "acc", None, style))
        body.append([label, *line])
    return datasets, body
