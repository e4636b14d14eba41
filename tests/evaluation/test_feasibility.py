"""Tests of open-world feasibility scores and threshold selection."""

from __future__ import annotations

import numpy as np
import pytest

from bench.evaluation import evaluate_scores
from bench.evaluation.feasibility import (
    candidate_thresholds,
    csp_multiply,
    feasibility_scores,
    feasible_mask,
    seen_columns,
    select_threshold,
)


def test_feasibility_hand_computed():
    # attrs: 0 "wet", 1 "dry"; objs: 0 "dog", 1 "cat", 2 "car".
    attr_vectors = np.array([[1.0, 0.0], [0.0, 1.0]])
    obj_vectors = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    seen = np.array([[0, 0], [1, 2]])  # wet dog, dry car
    pairs = np.array([(a, o) for a in range(2) for o in range(3)])
    feas = feasibility_scores(pairs, seen, attr_vectors, obj_vectors)
    # wet cat: s_obj = cos(cat, dog) = 0.8; s_attr: no attribute seen with cat -> -1.
    assert feas[1] == pytest.approx((0.8 - 1.0) / 2)
    # wet car: s_obj = cos(car, dog) = 0; s_attr = cos(wet, dry) = 0.
    assert feas[2] == pytest.approx(0.0)
    # dry dog: s_obj = cos(dog, car) = 0; s_attr = cos(dry, wet) = 0.
    assert feas[3] == pytest.approx(0.0)
    # dry cat: s_obj = cos(cat, car) = 0.6; s_attr = -1.
    assert feas[4] == pytest.approx((0.6 - 1.0) / 2)
    assert feas[0] == feas[5] == 0.0  # seen pairs
    assert feas.dtype == np.float32


def test_thresholds_span_unseen_range():
    feas = np.array([0.0, -0.5, 0.25, 0.0], dtype=np.float32)
    seen = np.array([True, False, False, True])
    th = candidate_thresholds(feas, seen, 5)
    assert th.dtype == np.float32
    np.testing.assert_allclose(th, [-0.5, -0.3125, -0.125, 0.0625, 0.25])
    np.testing.assert_array_equal(feasible_mask(feas, seen, 0.0), [True, False, True, True])


def _problem(seed):
    rng = np.random.default_rng(seed)
    pairs = np.array([(a, o) for a in range(6) for o in range(5)])
    seen = pairs[rng.choice(len(pairs), 10, replace=False)]
    labels = pairs[rng.integers(0, len(pairs), 80)]
    scores = rng.normal(size=(80, len(pairs))).astype(np.float32)
    feas = rng.uniform(-1, 1, len(pairs)).astype(np.float32)
    feas[seen_columns(pairs, seen)] = 0.0
    return scores, labels[:, 0], labels[:, 1], pairs, seen, feas


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_single_pass_selection_equals_brute_force(seed):
    scores, attr, obj, pairs, seen, feas = _problem(seed)
    chosen = select_threshold(scores, attr, obj, pairs, seen, feas, n_thresholds=12)
    seen_col = seen_columns(pairs, seen)
    brute = [
        evaluate_scores(scores, attr, obj, pairs, seen, feasible_mask(feas, seen_col, t))["auc"]
        for t in chosen["thresholds"]
    ]
    assert chosen["aucs"] == brute
    first_best = int(np.argmax(brute))  # argmax keeps the first of equal maxima
    assert chosen["threshold"] == chosen["thresholds"][first_best]
    assert chosen["val_auc"] == brute[first_best]


def test_csp_multiply_doubles_seen_scores_below_zero_threshold():
    feas = np.array([0.0, -0.2, 0.3], dtype=np.float32)
    seen = np.array([True, False, False])
    block = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    out = next(csp_multiply(block, feas, seen, threshold=-0.1))
    np.testing.assert_array_equal(out, [[2.0, 0.0, 3.0]])
    out = next(csp_multiply(block, feas, seen, threshold=0.1))
    np.testing.assert_array_equal(out, [[1.0, 0.0, 3.0]])


def test_csp_mode_needs_a_callable_and_runs():
    scores, attr, obj, pairs, seen, feas = _problem(4)
    with pytest.raises(ValueError, match="callable"):
        select_threshold(scores, attr, obj, pairs, seen, feas, mode="csp-multiply")
    chosen = select_threshold(
        lambda: scores, attr, obj, pairs, seen, feas, mode="csp-multiply", n_thresholds=5
    )
    assert len(chosen["aucs"]) == 5 and chosen["mode"] == "csp-multiply"
