"""Open-world feasibility calibration (Mancini et al. 2021, as used by CSP).

An unseen pair (a, o) is plausible when o resembles the objects seen with a in training and a
resembles the attributes seen with o. Unseen pairs below a threshold chosen on the validation
split are removed from the open-world candidates at test time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from bench.evaluation.protocol import (
    ScoreInput,
    as_pairs,
    collect_row_stats,
    evaluate_scores,
    metrics_from_stats,
)

#: Number of candidate thresholds tried on the validation split.
N_THRESHOLDS = 50
FEASIBILITY_MODES = ("mask", "csp-multiply")


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def seen_columns(pairs: Any, seen_pairs: Any) -> np.ndarray:
    """(P,) bool: whether each candidate pair is a training pair."""
    pairs = as_pairs(pairs)
    seen = {tuple(p) for p in as_pairs(seen_pairs).tolist()}
    return np.array([tuple(p) in seen for p in pairs.tolist()], dtype=bool)


def feasibility_scores(
    pairs: Any, seen_pairs: Any, attr_vectors: np.ndarray, obj_vectors: np.ndarray
) -> np.ndarray:
    """Feasibility of every candidate pair from word vectors.

    For an unseen (a, o): s_obj = max cosine between o and the objects seen with a in training
    (-1 if none), s_attr likewise for a against the attributes seen with o; feasibility is
    (s_obj + s_attr) / 2. Seen pairs get 0.

    Args:
        pairs: (P, 2) candidate (attr_id, obj_id) pairs.
        seen_pairs: (S, 2) training pairs.
        attr_vectors: (n_attrs, D) one vector per attribute.
        obj_vectors: (n_objs, D) one vector per object.

    Returns:
        (P,) float32 feasibility scores.
    """
    pairs = as_pairs(pairs)
    seen_pairs = as_pairs(seen_pairs)
    attr_sim = _normalise(attr_vectors) @ _normalise(attr_vectors).T
    obj_sim = _normalise(obj_vectors) @ _normalise(obj_vectors).T
    n_attrs, n_objs = len(attr_sim), len(obj_sim)
    objs_with_attr = np.zeros((n_attrs, n_objs), dtype=bool)
    objs_with_attr[seen_pairs[:, 0], seen_pairs[:, 1]] = True
    # s_obj[a, o] = max over o' seen with a of cos(o, o'); s_attr[a, o] = max over a' seen with o.
    s_obj = np.full((n_attrs, n_objs), -1.0)
    for a in range(n_attrs):
        partners = np.flatnonzero(objs_with_attr[a])
        if len(partners):
            s_obj[a] = obj_sim[:, partners].max(axis=1)
    s_attr = np.full((n_attrs, n_objs), -1.0)
    for o in range(n_objs):
        partners = np.flatnonzero(objs_with_attr[:, o])
        if len(partners):
            s_attr[:, o] = attr_sim[:, partners].max(axis=1)
    feasibility = (s_obj + s_attr) / 2.0
    feasibility[seen_pairs[:, 0], seen_pairs[:, 1]] = 0.0
    return feasibility[pairs[:, 0], pairs[:, 1]].astype(np.float32)


def candidate_thresholds(
    feasibility: np.ndarray, seen: np.ndarray, n: int = N_THRESHOLDS
) -> np.ndarray:
    """``n`` float32 thresholds evenly spaced between the min and max unseen feasibility."""
    unseen = np.asarray(feasibility, dtype=np.float32)[~np.asarray(seen, dtype=bool)]
    if unseen.size == 0:
        return np.zeros(0, dtype=np.float32)
    return np.linspace(float(unseen.min()), float(unseen.max()), n).astype(np.float32)


def feasible_mask(feasibility: np.ndarray, seen: np.ndarray, threshold: float) -> np.ndarray:
    """(P,) bool: seen pairs, and unseen pairs whose feasibility is at least ``threshold``."""
    return np.asarray(seen, dtype=bool) | (np.asarray(feasibility) >= np.float32(threshold))


def csp_multiply(
    blocks: ScoreInput, feasibility: np.ndarray, seen: np.ndarray, threshold: float
) -> Iterator[np.ndarray]:
    """CSP's own open-world filter, for reproduction: scores x (feasible + seen).

    Unlike proper masking this keeps infeasible pairs at score 0 and doubles the seen scores
    whenever the threshold is <= 0 (seen pairs have feasibility 0, so they count as feasible
    *and* seen).
    """
    factor = (np.asarray(feasibility) >= np.float32(threshold)).astype(np.float32) + np.asarray(
        seen, dtype=np.float32
    )
    if isinstance(blocks, np.ndarray) or hasattr(blocks, "numpy"):
        blocks = [blocks]
    for block in blocks:
        yield np.asarray(block, dtype=np.float32) * factor[None, :]


def select_threshold(
    scores: ScoreInput | Callable[[], ScoreInput],
    attr_idx: np.ndarray,
    obj_idx: np.ndarray,
    pairs: Any,
    seen_pairs: Any,
    feasibility: np.ndarray,
    *,
    mode: str = "mask",
    n_thresholds: int = N_THRESHOLDS,
    topk: int = 1,
) -> dict[str, Any]:
    """Choose the feasibility threshold on validation scores: the first with the best AUC.

    With ``mode="mask"`` all thresholds are evaluated from one streaming pass (each threshold
    admits a superset of the unseen candidates of the next). ``mode="csp-multiply"`` replays
    CSP's score multiplication and needs ``scores`` as a zero-argument callable returning a
    fresh iterable for each threshold.

    Returns:
        ``{"threshold", "val_auc", "thresholds", "aucs", "mode"}``.
    """
    if mode not in FEASIBILITY_MODES:
        raise ValueError(f"unknown feasibility mode {mode!r}; choose from {FEASIBILITY_MODES}")
    pairs = as_pairs(pairs)
    seen = seen_columns(pairs, seen_pairs)
    thresholds = candidate_thresholds(feasibility, seen, n_thresholds)
    if thresholds.size == 0:
        return {"threshold": None, "val_auc": None, "thresholds": [], "aucs": [], "mode": mode}
    aucs: list[float] = []
    if mode == "mask":
        source = scores() if callable(scores) else scores
        level = (
            np.searchsorted(thresholds, np.asarray(feasibility, dtype=np.float32), side="right") - 1
        )
        # bin 0: seen columns; bin 1 + i: unseen columns admitted by thresholds 0..i.
        column_bins = np.where(seen, 0, 1 + np.clip(level, 0, len(thresholds) - 1))
        bin_seen = np.zeros(len(thresholds) + 1, dtype=bool)
        bin_seen[0] = True
        stats = collect_row_stats(
            source, attr_idx, obj_idx, pairs, seen_pairs, column_bins, bin_seen, topk
        )
        for i in range(len(thresholds)):
            included = np.concatenate([[True], np.arange(len(thresholds)) >= i])
            aucs.append(metrics_from_stats(stats, included, pairs, attr_idx, obj_idx)["auc"])
    else:
        if not callable(scores):
            raise ValueError(
                "mode 'csp-multiply' needs scores as a callable returning fresh blocks"
            )
        for threshold in thresholds:
            blocks: Iterable[np.ndarray] = csp_multiply(
                scores(), feasibility, seen, float(threshold)
            )
            aucs.append(
                evaluate_scores(blocks, attr_idx, obj_idx, pairs, seen_pairs, topk=topk)["auc"]
            )
    best = 0
    for i, auc in enumerate(aucs):
        if auc > aucs[best]:
            best = i
    return {
        "threshold": float(thresholds[best]),
        "val_auc": float(aucs[best]),
        "thresholds": [float(t) for t in thresholds],
        "aucs": aucs,
        "mode": mode,
    }
