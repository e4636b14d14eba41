"""Tests of the streaming CZSL evaluator: hand-computed cases and parity with a dense transcription."""

from __future__ import annotations

import numpy as np
import pytest
from dense_reference import dense_reference

from bench.evaluation import evaluate_scores
from bench.evaluation.protocol import collect_row_stats, mask_bins, metrics_from_stats

SCALARS = (
    "best_seen",
    "best_unseen",
    "best_hm",
    "auc",
    "attr_acc",
    "obj_acc",
    "closed_acc",
    "bias_term",
)

# Two attributes x two objects; (0,0) and (1,1) seen, (0,1) and (1,0) unseen.
PAIRS = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
SEEN = np.array([[0, 0], [1, 1]])


def _random_problem(rng, n_images=60, n_attrs=5, n_objs=6, n_seen=12, ties=False):
    pairs = np.array([(a, o) for a in range(n_attrs) for o in range(n_objs)])
    seen = pairs[rng.choice(len(pairs), n_seen, replace=False)]
    labels = pairs[rng.integers(0, len(pairs), n_images)]
    scores = rng.normal(size=(n_images, len(pairs))).astype(np.float32)
    if ties:
        scores = np.round(scores * 2) / 2  # many exact ties
    return scores, labels[:, 0], labels[:, 1], pairs, seen


def _assert_same(result, expected):
    for key in SCALARS:
        assert result[key] == pytest.approx(expected[key], abs=1e-6), key
    np.testing.assert_allclose(result["seen_curve"], expected["seen_curve"], atol=1e-6)
    np.testing.assert_allclose(result["unseen_curve"], expected["unseen_curve"], atol=1e-6)


def test_hand_computed_perfect_scores():
    # Each image's true pair scores highest by a wide margin.
    attr = np.array([0, 1, 0, 1])
    obj = np.array([0, 1, 1, 0])
    scores = np.full((4, 4), -1.0, dtype=np.float32)
    scores[np.arange(4), [0, 3, 1, 2]] = 5.0
    result = evaluate_scores(scores, attr, obj, PAIRS, SEEN)
    assert result["closed_acc"] == 1.0
    assert result["attr_acc"] == result["obj_acc"] == 1.0
    # Both unseen images are right at bias 1000; d = -1 - 5 = -6 (minus 1e-4) for each.
    assert result["biases"][0] == pytest.approx(-6.0001, abs=1e-5)
    # At bias -6.0001 the unseen truths (5 - 6.0001) fall just below the seen -1; at bias 1000
    # every unseen column beats the seen truths.
    assert result["seen_curve"] == [1.0, 1.0, 0.0]
    assert result["unseen_curve"] == [0.0, 0.0, 1.0]
    # AUC = trapezoid of seen over unseen: (1 - 0) * (1 + 0) / 2.
    assert result["auc"] == pytest.approx(0.5)
    # No point has both accuracies above 0, so HM is 0 at the first bias.
    assert result["best_hm"] == 0.0
    assert result["bias_term"] == pytest.approx(-6.0001, abs=1e-5)
    assert result["best_seen"] == result["best_unseen"] == 1.0


def test_hand_computed_calibration_tradeoff():
    # Image 0: seen (0,0); image 1: unseen (0,1) whose score trails the seen (0,0) by 1.
    attr = np.array([0, 0])
    obj = np.array([0, 1])
    scores = np.array([[2.0, 1.5, -9, -9], [2.0, 1.0, -9, -9]], dtype=np.float32)
    result = evaluate_scores(scores, attr, obj, PAIRS, SEEN)
    # Unbiased: the seen image is right, the unseen one is not.
    assert result["closed_acc"] == 0.5
    assert result["attr_acc"] == 1.0 and result["obj_acc"] == 0.5
    # Bias list: d = 2.0 - 1.0 - 1e-4 = 0.9999. At that bias 1.0 + 0.9999 < 2.0, so the unseen
    # image is still wrong, and image 0's unseen (0,1) has 1.5 + 0.9999 > 2.0: seen image wrong.
    assert result["biases"][0] == pytest.approx(0.9999, abs=1e-6)
    assert result["seen_curve"] == [0.0, 0.0]
    assert result["unseen_curve"] == [0.0, 1.0]
    # The documented quirk: best_seen is 0 although the unbiased seen accuracy is 1.
    assert result["best_seen"] == 0.0
    assert result["auc"] == 0.0 and result["best_hm"] == 0.0


def test_ties_go_to_the_lowest_column():
    attr = np.array([0, 1])
    obj = np.array([1, 1])  # (0,1) unseen at column 1, (1,1) seen at column 3
    scores = np.array([[3.0, 3.0, 0, 0], [0, 0, 0, 0]], dtype=np.float32)
    result = evaluate_scores(scores, attr, obj, PAIRS, SEEN)
    # Row 0: columns 0 and 1 tie; column 0 wins, so the unseen truth (col 1) loses unbiased.
    # Row 1: all tie; column 0 wins, the truth is column 3.
    assert result["closed_acc"] == 0.0
    assert result["attr_acc"] == pytest.approx(0.5)  # row 0 predicts (0,0): attr right
    assert result["obj_acc"] == 0.0


def test_topk_two_counts_second_place():
    attr = np.array([0, 1])
    obj = np.array([1, 0])
    scores = np.array([[3.0, 2.0, 1.0, 0.0], [3.0, 0.0, 2.0, 1.0]], dtype=np.float32)
    top1 = evaluate_scores(scores, attr, obj, PAIRS, SEEN, topk=1)
    top2 = evaluate_scores(scores, attr, obj, PAIRS, SEEN, topk=2)
    assert top1["closed_acc"] == 0.0
    assert top2["closed_acc"] == 1.0
    # attr/obj accuracy stays top-1.
    assert top2["attr_acc"] == top1["attr_acc"]


def test_candidate_mask_removes_columns():
    attr = np.array([0])
    obj = np.array([0])
    scores = np.array([[1.0, 5.0, 0.0, 0.0]], dtype=np.float32)
    unmasked = evaluate_scores(scores, attr, obj, PAIRS, SEEN)
    masked = evaluate_scores(
        scores, attr, obj, PAIRS, SEEN, candidate_mask=np.array([1, 0, 1, 1], bool)
    )
    assert unmasked["closed_acc"] == 0.0
    assert masked["closed_acc"] == 1.0
    assert masked["n_candidates"] == 3


def test_true_pair_outside_the_mask_is_never_right():
    attr, obj = np.array([0]), np.array([1])
    scores = np.array([[0.0, 9.0, 0.0, 0.0]], dtype=np.float32)
    result = evaluate_scores(
        scores, attr, obj, PAIRS, SEEN, candidate_mask=np.array([1, 0, 1, 1], bool)
    )
    assert result["closed_acc"] == 0.0
    assert result["best_unseen"] == 0.0


def test_no_unseen_images():
    attr = np.array([0, 1])
    obj = np.array([0, 1])
    scores = np.array([[1.0, 0, 0, 0], [0, 0, 0, 1.0]], dtype=np.float32)
    result = evaluate_scores(scores, attr, obj, PAIRS, SEEN)
    assert result["n_unseen_images"] == 0
    assert result["biases"] == [1000.0]
    assert result["unseen_curve"] == [0.0]
    assert result["auc"] == 0.0
    assert result["best_seen"] == 0.0  # at bias 1000 the unseen columns win every row


@pytest.mark.parametrize("topk", [1, 2, 3])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_parity_with_dense_transcription(topk, ties, masked):
    rng = np.random.default_rng(1000 * topk + 10 * ties + masked)
    for _ in range(5):
        scores, attr, obj, pairs, seen = _random_problem(rng, ties=ties)
        mask = None
        if masked:
            mask = rng.random(len(pairs)) < 0.7
            truth = {(a, o) for a, o in zip(attr, obj)}
            mask |= np.array(
                [tuple(p) in truth or any((p == s).all() for s in seen) for p in pairs]
            )
        expected = dense_reference(scores, attr, obj, pairs, seen, mask, topk)
        _assert_same(evaluate_scores(scores, attr, obj, pairs, seen, mask, topk), expected)


def test_float32_rounding_of_the_bias_is_reproduced():
    # Two unseen scores that differ by less than float32's resolution at 1000 round to a
    # tie once biased; the lower column then wins although its raw score is smaller.
    attr, obj = np.array([1]), np.array([0])  # truth (1,0) = column 2, unseen
    scores = np.array([[0.0, 0.25, 0.25 + 1e-6, -5.0]], dtype=np.float32)
    result = evaluate_scores(scores, attr, obj, PAIRS, SEEN)
    expected = dense_reference(scores, attr, obj, PAIRS, SEEN)
    _assert_same(result, expected)
    assert result["unseen_curve"][-1] == 0.0  # column 1 wins the tie at bias 1000


def test_streamed_blocks_equal_dense():
    rng = np.random.default_rng(7)
    scores, attr, obj, pairs, seen = _random_problem(rng, n_images=101)
    dense = evaluate_scores(scores, attr, obj, pairs, seen)
    blocks = (scores[i : i + 17] for i in range(0, len(scores), 17))
    streamed = evaluate_scores(blocks, attr, obj, pairs, seen)
    assert dense == streamed


def test_bins_evaluate_many_masks_in_one_pass():
    rng = np.random.default_rng(3)
    scores, attr, obj, pairs, seen = _random_problem(rng, n_images=80)
    seen_col = np.array([any((p == s).all() for s in seen) for p in pairs])
    column_bins = np.where(seen_col, 0, 1 + rng.integers(0, 3, len(pairs)))
    bin_seen = np.array([True, False, False, False])
    stats = collect_row_stats(scores, attr, obj, pairs, seen, column_bins, bin_seen)
    for level in range(3):
        included = np.array([True] + [b >= level for b in range(3)])
        mask = included[column_bins]
        expected = evaluate_scores(scores, attr, obj, pairs, seen, mask)
        result = metrics_from_stats(stats, included, pairs, attr, obj)
        for key in SCALARS:
            assert result[key] == expected[key], key


def test_mismatched_rows_raise():
    scores = np.zeros((3, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="rows"):
        evaluate_scores(scores, [0, 1], [0, 1], PAIRS, SEEN)
    with pytest.raises(ValueError, match="columns"):
        evaluate_scores(np.zeros((2, 3), np.float32), [0, 1], [0, 1], PAIRS, SEEN)


def test_mask_bins_shape_check():
    with pytest.raises(ValueError, match="candidate_mask"):
        mask_bins(PAIRS, SEEN, np.ones(3, bool))
