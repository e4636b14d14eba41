"""Tests of bench.evaluation.higher_order: top-1 over the distinct triples, and skipping."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from bench.data.higher_order import TripleSample
from bench.evaluation.higher_order import (
    can_score_triples,
    evaluate_triples,
    skipped,
    top1_accuracy,
    triple_labels,
)

ATTRS = ("big", "blue", "red")
OBJS = ("car", "cat")
SAMPLES = (
    TripleSample("0.png", "red", "big", "car"),
    TripleSample("1.png", "blue", "big", "cat"),
    TripleSample("2.png", "red", "big", "car"),  # same triple: one candidate
    TripleSample("3.png", "red", "blue", "cat"),
)


def test_candidates_are_the_sorted_distinct_triples() -> None:
    triples, labels = triple_labels(SAMPLES, ATTRS, OBJS)
    # sorted by name: (blue, big, cat), (red, big, car), (red, blue, cat)
    assert triples.tolist() == [[1, 0, 1], [2, 0, 0], [2, 1, 1]]
    assert labels.tolist() == [1, 0, 1, 2]


def test_top1_accuracy() -> None:
    scores = np.array([[0.1, 0.9, 0.0], [0.5, 0.5, 0.0], [0.0, 0.2, 0.1], [1.0, 0.0, 0.0]])
    # row 1 ties: the first maximum (column 0) counts
    assert top1_accuracy(scores, np.array([1, 0, 1, 2])) == pytest.approx(0.75)
    assert np.isnan(top1_accuracy(np.zeros((0, 3)), np.zeros(0, dtype=int)))


class _Oracle:
    """Scores each image's true triple highest, except image 3."""

    def score_triples(self, image_features: Any, triples: np.ndarray) -> np.ndarray:
        self.seen = triples
        scores = np.zeros((len(image_features), len(triples)), dtype=np.float32)
        for row, label in enumerate([1, 0, 1, 0]):
            scores[row, label] = 1.0
        return scores


def test_evaluate_triples_scores_every_image_against_every_triple() -> None:
    method = _Oracle()
    result = evaluate_triples(method, np.zeros((4, 8)), SAMPLES, ATTRS, OBJS)
    assert result == {"acc": 0.75, "n_images": 4, "n_triples": 3, "chance": pytest.approx(1 / 3)}
    assert method.seen.shape == (3, 3)


def test_methods_without_triple_prompts_are_skipped() -> None:
    from bench.methods import get_method_class

    assert can_score_triples(_Oracle())
    for name in ("clip", "coop", "csp"):
        assert can_score_triples(get_method_class(name)({}))
    for name in ("visprod", "compcos", "aop", "dfsp", "troika"):
        assert not can_score_triples(get_method_class(name)({}))
    assert "visprod" in skipped("visprod")["skipped"]
