"""Aggregation over seeds: one summary row per (world, dataset, method, setting), in %.

Runs are averaged over seeds only when everything else about them is equal (their
:class:`~bench.report.records.Setting`); runs that differ get separate rows whose labels name
the difference, e.g. ``csp (ViT-B-32:openai)``.

Layout of the summary frame (:func:`aggregate`), one row per (world, dataset, row label):
``world, split, dataset, method, label, n, seeds, S_mean, S_std, U_mean, U_std, HM_mean,
HM_std, AUC_mean, AUC_std`` (in %; std is the sample std, NaN for one seed), then the setting
fields and ``random_weights``; ``row_order`` (after ``label``) is the display order of rows.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, fields
from typing import Any

import pandas as pd

from bench.constants import WORLDS
from bench.report.records import RunRecord, Setting

#: Table columns: (header, key in a result's metrics block).
METRICS: tuple[tuple[str, str], ...] = (
    ("S", "best_seen"),
    ("U", "best_unseen"),
    ("HM", "best_hm"),
    ("AUC", "auc"),
)
#: Datasets of the CSP paper, in its column order (other datasets follow alphabetically).
PAPER_DATASETS = ("mit-states", "ut-zappos", "cgqa")

# Setting fields, in the order they are tried for row labels. Global fields mean the same on
# every dataset; local ones (hyperparameters, dataset version) legitimately differ per dataset.
_GLOBAL_FIELDS = (
    "backbone",
    "augment",
    "topk",
    "feasibility",
    "word_vectors",
    "protocol",
    "backbone_identifier",
    "run_protocol",
)
_LOCAL_FIELDS = ("hparams_hash", "dataset_fingerprint")
_FIELD_LABELS = {
    "backbone": "{}",
    "augment": "augment {}",
    "topk": "top-{}",
    "feasibility": "feasibility {}",
    "word_vectors": "word vectors {}",
    "protocol": "protocol {}",
    "backbone_identifier": "weights {}",
    "run_protocol": "{} protocol",
    "hparams_hash": "hparams {:.8}",
    "dataset_fingerprint": "data {:.8}",
}


def order_key(value: str, order: Sequence[str]) -> tuple[int, str]:
    """Sort key: the position of ``value`` in ``order``, then the others alphabetically."""
    return (order.index(value), "") if value in order else (len(order), value)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (NaN for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def _distinguishing(settings: Sequence[Setting], candidates: Sequence[str]) -> list[str]:
    """The fields (greedily, in order) needed to tell ``settings`` apart."""
    chosen: list[str] = []
    for name in candidates:
        before = {tuple(getattr(s, c) for c in chosen) for s in settings}
        after = {tuple(getattr(s, c) for c in [*chosen, name]) for s in settings}
        if len(after) > len(before):
            chosen.append(name)
    return chosen


def row_labels(
    groups: Iterable[tuple[str, str, Setting]],
) -> tuple[dict[tuple[str, str, Setting], str], list[str]]:
    """Row labels for (dataset, method, setting) groups and the fields that tell rows apart.

    A global field (backbone, augmentation, ...) that differs anywhere is named in every label,
    so rows line up across datasets; hyperparameters and dataset fingerprints are named only
    where one dataset and method have several of them.

    Returns:
        ``{group: label}`` (e.g. ``csp (ViT-B-32:openai)``) and the differing field names.
    """
    groups = sorted(set(groups))
    global_fields = _distinguishing(sorted({s for _, _, s in groups}), _GLOBAL_FIELDS)
    by_key: dict[tuple[Any, ...], list[Setting]] = {}
    for dataset, method, setting in groups:
        key = (dataset, method, *(getattr(setting, f) for f in global_fields))
        by_key.setdefault(key, []).append(setting)
    differing = list(global_fields)
    labels: dict[tuple[str, str, Setting], str] = {}
    for (dataset, method, *_), settings in by_key.items():
        local = _distinguishing(settings, _LOCAL_FIELDS) if len(settings) > 1 else []
        differing += [f for f in local if f not in differing]
        for setting in settings:
            parts = [_FIELD_LABELS[f].format(getattr(setting, f)) for f in [*global_fields, *local]]
            labels[(dataset, method, setting)] = (
                f"{method} ({', '.join(parts)})" if parts else method
            )
    return labels, differing


def aggregate(
    records: Sequence[RunRecord],
    split: str = "test",
    worlds: Sequence[str] = WORLDS,
    dataset_order: Sequence[str] | None = None,
    method_order: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Mean, sample std and count over seeds per (world, dataset, method, setting), in %.

    Args:
        records: Finished cells (see :func:`load_records`).
        split: "test" or "val".
        worlds: Any of "cw", "ow".
        dataset_order: Column order of datasets (default: the paper's, then alphabetical).
        method_order: Row order of methods (default: alphabetical).

    Returns:
        The summary frame described in the module docstring, sorted by world, dataset and row.
    """
    dataset_order = tuple(dataset_order or PAPER_DATASETS)
    method_order = tuple(method_order or ())
    groups: dict[tuple[str, str, Setting], list[RunRecord]] = {}
    for record in records:
        groups.setdefault((record.dataset, record.method, record.setting), []).append(record)
    labels, _ = row_labels(groups)
    rows: list[dict[str, Any]] = []
    for world in worlds:
        for (dataset, method, setting), members in groups.items():
            blocks = sorted(
                ((r.seed, r.block(split, world)) for r in members if r.block(split, world)),
                key=lambda pair: pair[0],
            )
            if not blocks:
                continue
            row: dict[str, Any] = {
                "world": world,
                "split": split,
                "dataset": dataset,
                "method": method,
                "label": labels[(dataset, method, setting)],
                "n": len(blocks),
                "seeds": ",".join(str(seed) for seed, _ in blocks),
            }
            for name, key in METRICS:
                values = [100.0 * float(block[key]) for _, block in blocks]
                row[f"{name}_mean"], row[f"{name}_std"] = mean_std(values)
            row.update(asdict(setting))
            row["random_weights"] = any(r.random_weights for r in members)
            rows.append(row)
    columns = ["world", "split", "dataset", "method", "label", "n", "seeds"]
    columns += [f"{name}_{stat}" for name, _ in METRICS for stat in ("mean", "std")]
    columns += [f.name for f in fields(Setting)] + ["random_weights"]
    frame = pd.DataFrame(rows, columns=columns)
    if frame.empty:
        frame.insert(5, "row_order", pd.Series(dtype=int))
        return frame
    order = sorted(
        range(len(frame)),
        key=lambda i: (
            worlds.index(frame.at[i, "world"]),
            order_key(frame.at[i, "dataset"], dataset_order),
            order_key(frame.at[i, "method"], method_order),
            frame.at[i, "label"],
        ),
    )
    frame = frame.iloc[order].reset_index(drop=True)
    label_order = sorted(
        set(zip(frame["method"], frame["label"])),
        key=lambda ml: (order_key(ml[0], method_order), ml[1]),
    )
    rank = {label: i for i, (_, label) in enumerate(label_order)}
    frame.insert(5, "row_order", [rank[label] for label in frame["label"]])
    return frame
