"""The CZSL calibration-bias protocol (czsl library / CSP), computed in one streaming pass.

The reference implementation materialises several dense (images x candidates) copies of the
score matrix and sweeps a scalar bias added to unseen candidates. Here each row of scores is
reduced once to a few numbers per *column bin* (a group of candidates that share seen-ness and
inclusion): for the part of the bin left of the row's true column and the part right of it, the
top-k scores (the true column itself excluded). From those, whether the true pair is among the
top-k predictions at any bias and under any union of bins follows exactly, ties included:

* a column left of the true one outranks it on ``>=`` (ties go to the lowest column index),
  a column right of it only on ``>``;
* adding a float32 bias is monotone, so the top-k of a part stay its top-k after biasing.

Memory is O(N * bins * k) instead of O(N * P), so C-GQA open world (5,098 x 278,362) runs in
well under 2 GB. Bins also let one pass serve all 50 feasibility thresholds of open-world
calibration (``bench.evaluation.feasibility``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

#: Bias added to unseen candidates for the "unseen first" end of the curve (the reference's 1e3).
MAX_BIAS = 1e3
#: Value the reference gives to candidates outside the closed-world mask.
_MASKED = -1e10
#: How many bias values the sweep keeps (every ``max(n // 20, 1)``-th sorted difference).
_BIAS_BINS = 20
#: Rows x candidates processed at once inside a block (bounds temporary memory).
_CHUNK_ELEMENTS = 1 << 23

ScoreInput = np.ndarray | torch.Tensor | Iterable[np.ndarray | torch.Tensor]


@dataclass(frozen=True)
class RowStats:
    """Per-image reductions of a score matrix, enough to replay the protocol exactly.

    Attributes:
        true_score: (N,) raw score of each image's true pair (NaN if it is no candidate).
        true_bin: (N,) bin of the true pair's column, -1 if it is no candidate.
        image_seen: (N,) whether the image's true pair is a training pair.
        left: (N, B, k) top-k scores of each bin's columns left of the true column.
        right: (N, B, k) top-k scores of each bin's columns right of the true column.
        best_value: (N, B) best score of each bin, true column excluded.
        best_column: (N, B) lowest column index reaching ``best_value`` (-1 if the bin is empty).
        bin_seen: (B,) whether the bin holds training pairs.
        topk: k.
    """

    true_score: np.ndarray
    true_bin: np.ndarray
    image_seen: np.ndarray
    left: np.ndarray
    right: np.ndarray
    best_value: np.ndarray
    best_column: np.ndarray
    bin_seen: np.ndarray
    topk: int


def as_pairs(pairs: Any) -> np.ndarray:
    """``pairs`` as a (P, 2) int64 array (an empty input gives shape (0, 2)).

    Raises:
        ValueError: If the array is not of shape (P, 2).
    """
    array = np.asarray(pairs, dtype=np.int64)
    if array.size == 0:
        return array.reshape(0, 2)
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"pairs must have shape (P, 2), got {array.shape}")
    return array


def _pair_codes(pairs: np.ndarray, n_objs: int) -> np.ndarray:
    return pairs[:, 0] * n_objs + pairs[:, 1]


def _iter_blocks(scores: ScoreInput) -> Iterable[torch.Tensor]:
    if isinstance(scores, (np.ndarray, torch.Tensor)):
        scores = [scores]
    for block in scores:
        tensor = torch.as_tensor(block)
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        if tensor.ndim != 2:
            raise ValueError(
                f"score blocks must be 2-D (rows, candidates), got {tuple(tensor.shape)}"
            )
        yield tensor.to(torch.float32)


def collect_row_stats(
    scores: ScoreInput,
    attr_idx: Sequence[int] | np.ndarray,
    obj_idx: Sequence[int] | np.ndarray,
    pairs: Any,
    seen_pairs: Any,
    column_bins: np.ndarray,
    bin_seen: np.ndarray,
    topk: int = 1,
) -> RowStats:
    """Reduce a (streamed) score matrix to per-row, per-bin top-k statistics.

    Args:
        scores: (N, P) array/tensor, or an iterable of (n_i, P) row blocks in image order.
        attr_idx: (N,) attribute id of each image.
        obj_idx: (N,) object id of each image.
        pairs: (P, 2) candidate (attr_id, obj_id) pairs, one per score column.
        seen_pairs: (S, 2) training pairs.
        column_bins: (P,) bin id in [0, B) of every column.
        bin_seen: (B,) whether each bin holds seen (training) pairs.
        topk: k of top-k accuracy.

    Returns:
        The row statistics.
    """
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    attr_idx = np.asarray(attr_idx, dtype=np.int64)
    obj_idx = np.asarray(obj_idx, dtype=np.int64)
    n_images = len(attr_idx)
    pairs = as_pairs(pairs)
    seen_pairs = as_pairs(seen_pairs)
    n_candidates = len(pairs)
    column_bins = np.asarray(column_bins, dtype=np.int64)
    bin_seen = np.asarray(bin_seen, dtype=bool)
    n_bins = len(bin_seen)

    n_objs = (
        int(
            max(pairs[:, 1].max(initial=0), obj_idx.max(initial=0), seen_pairs[:, 1].max(initial=0))
        )
        + 1
    )
    candidate_codes = _pair_codes(pairs, n_objs)
    code_to_column = {int(code): column for column, code in enumerate(candidate_codes)}
    image_codes = attr_idx * n_objs + obj_idx
    true_column = np.array(
        [code_to_column.get(int(code), -1) for code in image_codes], dtype=np.int64
    )
    image_seen = np.isin(image_codes, _pair_codes(seen_pairs, n_objs))
    true_bin = np.where(true_column >= 0, column_bins[np.maximum(true_column, 0)], -1)

    # Columns sorted by (bin, index): each bin is a contiguous slice in ascending column order.
    order = np.lexsort((np.arange(n_candidates), column_bins))
    bounds = np.searchsorted(column_bins[order], np.arange(n_bins + 1))
    bin_columns = [order[bounds[b] : bounds[b + 1]] for b in range(n_bins)]
    order_t = torch.from_numpy(order)
    bin_columns_t = [torch.from_numpy(cols) for cols in bin_columns]

    true_score = np.full(n_images, np.nan, dtype=np.float32)
    left = np.full((n_images, n_bins, topk), -np.inf, dtype=np.float32)
    right = np.full((n_images, n_bins, topk), -np.inf, dtype=np.float32)
    best_value = np.full((n_images, n_bins), -np.inf, dtype=np.float32)
    best_column = np.full((n_images, n_bins), -1, dtype=np.int64)

    row = 0
    for block in _iter_blocks(scores):
        if block.shape[1] != n_candidates:
            raise ValueError(
                f"score block has {block.shape[1]} columns but there are {n_candidates} candidates"
            )
        chunk_rows = max(1, _CHUNK_ELEMENTS // max(n_candidates, 1))
        for start in range(0, block.shape[0], chunk_rows):
            chunk = block[start : start + chunk_rows]
            rows = slice(row, row + chunk.shape[0])
            if rows.stop > n_images:
                raise ValueError(f"scores have more rows than the {n_images} labelled images")
            _reduce_chunk(
                chunk,
                torch.from_numpy(true_column[rows]),
                order_t,
                bounds,
                bin_columns_t,
                topk,
                true_score[rows],
                left[rows],
                right[rows],
                best_value[rows],
                best_column[rows],
            )
            row = rows.stop
    if row != n_images:
        raise ValueError(f"scores have {row} rows but {n_images} images are labelled")
    return RowStats(
        true_score, true_bin, image_seen, left, right, best_value, best_column, bin_seen, topk
    )


def _reduce_chunk(
    chunk: torch.Tensor,
    true_column: torch.Tensor,
    order: torch.Tensor,
    bounds: np.ndarray,
    bin_columns: list[torch.Tensor],
    topk: int,
    out_true: np.ndarray,
    out_left: np.ndarray,
    out_right: np.ndarray,
    out_best: np.ndarray,
    out_best_column: np.ndarray,
) -> None:
    n = chunk.shape[0]
    rows = torch.arange(n)
    has_true = true_column >= 0
    safe_column = true_column.clamp(min=0)
    out_true[:] = torch.where(has_true, chunk[rows, safe_column], torch.nan).numpy()
    permuted = chunk.index_select(1, order)
    for b, columns in enumerate(bin_columns):
        width = len(columns)
        if width == 0:
            continue
        part = permuted[:, bounds[b] : bounds[b + 1]]
        split = torch.searchsorted(columns, true_column)  # columns of this bin left of the truth
        true_here = (
            has_true & (split < width) & (columns[split.clamp(max=width - 1)] == true_column)
        )
        is_left = torch.arange(width).unsqueeze(0) < split.unsqueeze(1)
        is_right = ~is_left
        if bool(true_here.any()):
            is_right[rows[true_here], split[true_here]] = False
        left_part = part.masked_fill(~is_left, -torch.inf)
        right_part = part.masked_fill(~is_right, -torch.inf)
        left_best, left_arg = left_part.max(dim=1)
        right_best, right_arg = right_part.max(dim=1)
        if topk == 1:
            out_left[:, b, 0] = left_best.numpy()
            out_right[:, b, 0] = right_best.numpy()
        else:
            k = min(topk, width)
            out_left[:, b, :k] = left_part.topk(k, dim=1).values.numpy()
            out_right[:, b, :k] = right_part.topk(k, dim=1).values.numpy()
        # Lowest column reaching the bin's best: the left part's columns all come first.
        use_left = left_best >= right_best
        best = torch.where(use_left, left_best, right_best)
        arg = torch.where(use_left, left_arg, right_arg)
        out_best[:, b] = best.numpy()
        out_best_column[:, b] = torch.where(torch.isfinite(best), columns[arg], -1).numpy()


def _ahead_counts(stats: RowStats, included: np.ndarray, bias: np.float32) -> np.ndarray:
    """Number of included candidates ranked before each image's true pair (capped per part)."""
    bias = np.float32(bias)
    bin_bias = np.where(stats.bin_seen, np.float32(0.0), bias).astype(np.float32)
    value = np.where(stats.image_seen, stats.true_score, stats.true_score + bias).astype(np.float32)
    value = value[:, None, None]
    left = stats.left[:, included] + bin_bias[included][None, :, None]
    right = stats.right[:, included] + bin_bias[included][None, :, None]
    return (left >= value).sum(axis=(1, 2)) + (right > value).sum(axis=(1, 2))


def _valid(stats: RowStats, included: np.ndarray) -> np.ndarray:
    return (stats.true_bin >= 0) & included[np.maximum(stats.true_bin, 0)]


def correct_at_bias(stats: RowStats, included: np.ndarray, bias: float) -> np.ndarray:
    """Whether each image's true pair is among the top-k at ``bias`` over the included bins."""
    return _valid(stats, included) & (_ahead_counts(stats, included, np.float32(bias)) < stats.topk)


def _mean(values: np.ndarray) -> float:
    # Accuracies are float32 means, as in the reference; an empty set counts as 0.
    if values.size == 0:
        return 0.0
    return float(np.float32(values.sum(dtype=np.float64) / values.size))


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    if len(x) < 2:
        return 0.0
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def _harmonic_means(seen: np.ndarray, unseen: np.ndarray) -> np.ndarray:
    total = seen + unseen
    with np.errstate(divide="ignore", invalid="ignore"):
        hm = np.where((seen > 0) & (unseen > 0), 2.0 * seen * unseen / total, 0.0)
    return hm


def metrics_from_stats(
    stats: RowStats,
    included: np.ndarray,
    pairs: Any,
    attr_idx: Sequence[int] | np.ndarray,
    obj_idx: Sequence[int] | np.ndarray,
) -> dict[str, Any]:
    """Replay the calibration-bias protocol over the bins marked ``included``.

    Returns:
        The metrics dict documented in ``evaluate_scores``.
    """
    included = np.asarray(included, dtype=bool)
    pairs = as_pairs(pairs)
    attr_idx = np.asarray(attr_idx, dtype=np.int64)
    obj_idx = np.asarray(obj_idx, dtype=np.int64)
    seen_images = stats.image_seen
    unseen_images = ~seen_images
    valid = _valid(stats, included)

    # Unbiased: pair accuracy (top-k) and the top-1 prediction's attribute and object.
    ahead_unbiased = _ahead_counts(stats, included, np.float32(0.0))
    closed_correct = valid & (ahead_unbiased < stats.topk)
    best = np.where(included[None, :], stats.best_value, -np.inf)
    best_bin = np.argmax(best, axis=1)
    tied = best == best[np.arange(len(best)), best_bin][:, None]
    tied_columns = np.where(tied & included[None, :], stats.best_column, np.iinfo(np.int64).max)
    predicted = tied_columns.min(axis=1)
    true_column_wins = valid & (ahead_unbiased == 0)
    has_prediction = true_column_wins | (predicted != np.iinfo(np.int64).max)
    predicted = np.where(predicted == np.iinfo(np.int64).max, 0, predicted)
    predicted_attr = np.where(true_column_wins, attr_idx, pairs[predicted, 0] if len(pairs) else -1)
    predicted_obj = np.where(true_column_wins, obj_idx, pairs[predicted, 1] if len(pairs) else -1)
    attr_acc = _mean((predicted_attr == attr_idx) & has_prediction)
    obj_acc = _mean((predicted_obj == obj_idx) & has_prediction)

    # The "unseen first" end of the curve, and the bias list from its correct unseen images.
    correct_max = correct_at_bias(stats, included, MAX_BIAS)
    seen_at_max = _mean(correct_max[seen_images])
    unseen_at_max = _mean(correct_max[unseen_images])
    k = stats.topk
    seen_tops = np.concatenate(
        [
            stats.left[:, stats.bin_seen].reshape(len(valid), -1),
            stats.right[:, stats.bin_seen].reshape(len(valid), -1),
        ],
        axis=1,
    )
    if seen_tops.shape[1] >= k:
        kth_seen = -np.partition(-seen_tops, k - 1, axis=1)[:, k - 1]
    else:
        kth_seen = np.full(len(valid), -np.inf, dtype=np.float32)
    chosen = unseen_images & correct_max
    differences = (kth_seen[chosen] - stats.true_score[chosen]).astype(np.float32) - np.float32(
        1e-4
    )
    differences = np.sort(differences.astype(np.float32))
    step = max(len(differences) // _BIAS_BINS, 1)
    biases = differences[::step]

    seen_curve, unseen_curve = [], []
    for bias in biases:
        correct = correct_at_bias(stats, included, bias)
        seen_curve.append(_mean(correct[seen_images]))
        unseen_curve.append(_mean(correct[unseen_images]))
    seen_curve.append(seen_at_max)
    unseen_curve.append(unseen_at_max)
    seen_arr = np.asarray(seen_curve, dtype=np.float64)
    unseen_arr = np.asarray(unseen_curve, dtype=np.float64)
    hm = _harmonic_means(seen_arr, unseen_arr)
    best_index = int(np.argmax(hm))
    bias_term = float(biases[best_index]) if best_index < len(biases) else MAX_BIAS

    return {
        "best_seen": float(seen_arr.max()),
        "best_unseen": float(unseen_arr.max()),
        "best_hm": float(hm[best_index]),
        "auc": _trapezoid(seen_arr, unseen_arr),
        "attr_acc": attr_acc,
        "obj_acc": obj_acc,
        "closed_acc": _mean(closed_correct),
        "bias_term": bias_term,
        "hm_seen": float(seen_arr[best_index]),
        "hm_unseen": float(unseen_arr[best_index]),
        "seen_curve": seen_arr.tolist(),
        "unseen_curve": unseen_arr.tolist(),
        "biases": [float(b) for b in biases] + [MAX_BIAS],
        "topk": k,
        "n_images": int(len(valid)),
        "n_seen_images": int(seen_images.sum()),
        "n_unseen_images": int(unseen_images.sum()),
    }


def mask_bins(
    pairs: Any, seen_pairs: Any, candidate_mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bins for a single candidate mask: seen/unseen x allowed/excluded.

    Returns:
        ``(column_bins, bin_seen, included)``.
    """
    pairs = as_pairs(pairs)
    seen_pairs = as_pairs(seen_pairs)
    n_objs = int(max(pairs[:, 1].max(initial=0), seen_pairs[:, 1].max(initial=0))) + 1
    seen_column = np.isin(_pair_codes(pairs, n_objs), _pair_codes(seen_pairs, n_objs))
    allowed = (
        np.ones(len(pairs), dtype=bool)
        if candidate_mask is None
        else np.asarray(candidate_mask, dtype=bool)
    )
    if allowed.shape != (len(pairs),):
        raise ValueError(f"candidate_mask must have shape ({len(pairs)},), got {allowed.shape}")
    # bin 0: seen allowed, 1: unseen allowed, 2: seen excluded, 3: unseen excluded
    column_bins = np.where(seen_column, 0, 1) + np.where(allowed, 0, 2)
    bin_seen = np.array([True, False, True, False])
    included = np.array([True, True, False, False])
    return column_bins.astype(np.int64), bin_seen, included


def evaluate_scores(
    scores: ScoreInput,
    attr_idx: Sequence[int] | np.ndarray,
    obj_idx: Sequence[int] | np.ndarray,
    pairs: Any,
    seen_pairs: Any,
    candidate_mask: np.ndarray | None = None,
    topk: int = 1,
) -> dict[str, Any]:
    """Evaluate CZSL scores with the calibration-bias protocol of the czsl library and CSP.

    Pure function: no models, no logging. Streams over row blocks, so the full matrix never
    has to exist.

    Args:
        scores: (N, P) scores, or an iterable of (n_i, P) row blocks in image order.
        attr_idx: (N,) attribute id of each image.
        obj_idx: (N,) object id of each image.
        pairs: (P, 2) candidate pairs as (attr_id, obj_id), one per column.
        seen_pairs: (S, 2) training pairs.
        candidate_mask: (P,) bool, the allowed candidates (closed world: train pairs plus the
            evaluated split's pairs); None allows all.
        topk: A prediction is correct if the true pair is among the top k.

    Returns:
        ``best_seen``, ``best_unseen``, ``best_hm``, ``auc``, ``attr_acc``, ``obj_acc``,
        ``closed_acc`` (unbiased pair accuracy), ``bias_term`` (bias of the best HM point),
        ``hm_seen``/``hm_unseen``, the curve (``seen_curve``, ``unseen_curve``, ``biases``) and
        image counts. Accuracies are fractions in [0, 1]; an empty image set scores 0.
    """
    column_bins, bin_seen, included = mask_bins(pairs, seen_pairs, candidate_mask)
    stats = collect_row_stats(
        scores, attr_idx, obj_idx, pairs, seen_pairs, column_bins, bin_seen, topk
    )
    result = metrics_from_stats(stats, included, pairs, attr_idx, obj_idx)
    result["n_candidates"] = int(included[column_bins].sum())
    return result
