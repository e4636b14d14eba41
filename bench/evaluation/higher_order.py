"""Higher-order (attribute-attribute-object) evaluation, as in the CSP paper's AAO test.

Each annotated image is scored against every distinct ``(attr, attr2, obj)`` triple of the
annotations file; the metric is top-1 accuracy. There is no seen/unseen split and no
calibration. A method takes part when it has the optional ``score_triples(image_features,
triples)`` interface (CLIP, CoOp and CSP do); the others are skipped with a note.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bench.data.higher_order import TripleSample, distinct_triples

#: Key of the annotations file's evaluation in a result's ``higher_order`` block.
NAME = "aao"


def triple_labels(
    samples: Sequence[TripleSample], attrs: Sequence[str], objs: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Candidates and labels of the annotations.

    Returns:
        ``(triples, labels)``: a (T, 3) int64 array of (attr_id, attr2_id, obj_id) of the
        sorted distinct triples, and each sample's row in it (N,).
    """
    candidates = distinct_triples(samples)
    row = {triple: i for i, triple in enumerate(candidates)}
    attr_id = {name: i for i, name in enumerate(attrs)}
    obj_id = {name: i for i, name in enumerate(objs)}
    triples = np.array(
        [[attr_id[a], attr_id[b], obj_id[o]] for a, b, o in candidates], dtype=np.int64
    ).reshape(-1, 3)
    labels = np.array([row[s.triple] for s in samples], dtype=np.int64)
    return triples, labels


def top1_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose highest score is at their label (the first maximum on ties)."""
    scores = np.asarray(scores)
    if scores.shape[0] == 0:
        return float("nan")
    return float(np.mean(scores.argmax(axis=1) == np.asarray(labels)))


def can_score_triples(method: Any) -> bool:
    """Whether ``method`` has the optional ``score_triples`` interface."""
    return callable(getattr(method, "score_triples", None))


def evaluate_triples(
    method: Any,
    image_features: Any,
    samples: Sequence[TripleSample],
    attrs: Sequence[str],
    objs: Sequence[str],
) -> dict[str, Any]:
    """Top-1 accuracy of ``method`` over the distinct triples of ``samples``.

    Args:
        method: A fitted method with ``score_triples``.
        image_features: (N, D) features of the samples' images, in sample order.
        samples: The annotations.
        attrs: The dataset's attribute names (ids of both attributes).
        objs: The dataset's object names.

    Returns:
        ``{"acc", "n_images", "n_triples", "chance"}``.
    """
    triples, labels = triple_labels(samples, attrs, objs)
    scores = method.score_triples(image_features, triples)
    return {
        "acc": top1_accuracy(scores, labels),
        "n_images": len(samples),
        "n_triples": len(triples),
        "chance": 1.0 / len(triples),
    }


def skipped(method_name: str) -> dict[str, Any]:
    """The entry of a method that cannot score triples."""
    return {"skipped": f"method {method_name} cannot build attribute-attribute-object prompts"}
