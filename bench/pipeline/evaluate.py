"""Scoring a method on a cell's dataset: val and test, closed and open world.

Only the pure evaluator (:mod:`bench.evaluation`) computes metrics; open world is calibrated
by feasibility when word vectors are given.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from bench.constants import EVAL_SPLITS


def fp16_rounded(blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Score blocks rounded to fp16 and back: the official CSP code evaluates fp16 logits,
    whose rounding ties close candidates (the evaluator then breaks ties by its rule)."""
    for block in blocks:
        yield np.asarray(block).astype(np.float16).astype(np.float32)


class CellEvaluation:
    """Scores a method on val/test, closed and open world, through the pure evaluator.

    A method is scored on the feature level it declares first in ``needs``: pooled features
    (``features``), image tokens (``tokens``) or the images (``images``, encoded by the
    method). Under the ``precision`` "fp16" of the
    protocol record, a CLIP-family method's scores are rounded to fp16 (``fp16_rounded``).
    """

    def __init__(
        self,
        dataset: Any,
        features: Mapping[str, Any],
        topk: int,
        tokens: Mapping[str, Any] | None = None,
        precision: str = "fp32",
        images: Mapping[str, Any] | None = None,
    ) -> None:
        self.dataset = dataset
        self.features = features
        self.tokens = tokens or {}
        self.images = images or {}
        self.topk = topk
        self.precision = precision
        self.seen = dataset.seen_pairs_ids()
        self.closed_pairs = dataset.candidate_pairs("closed")
        self.open_pairs = dataset.candidate_pairs("open")

    def inputs(self, method: Any, split: str) -> Any:
        """What ``method.score`` gets for ``split``: pooled features, a token set or the
        split's images."""
        level = method.input_level()
        if level == "tokens":
            return self.tokens[split]
        if level == "images":
            return self.images[split]
        return self.features[split].features

    def scores(self, method: Any, split: str, pairs: np.ndarray) -> Iterable[np.ndarray]:
        """``method``'s score blocks of ``split`` over ``pairs``, at the protocol's precision."""
        from bench.methods.clip_family import ClipFamilyMethod

        blocks = method.score(self.inputs(method, split), pairs)
        if self.precision == "fp16" and isinstance(method, ClipFamilyMethod):
            return fp16_rounded(blocks)
        return blocks

    def _labels(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        fs = self.features[split]
        return fs.attr_idx, fs.obj_idx

    def closed_world(self, method: Any, split: str) -> dict[str, Any]:
        """Closed-world metrics of ``split``: train pairs plus the split's pairs allowed."""
        from bench.evaluation import evaluate_scores

        attr, obj = self._labels(split)
        return evaluate_scores(
            self.scores(method, split, self.closed_pairs),
            attr,
            obj,
            self.closed_pairs,
            self.seen,
            self.dataset.candidate_mask(split, "closed"),
            self.topk,
        )

    def validation_auc(self, method: Any) -> float:
        """Closed-world validation AUC, for model selection."""
        return float(self.closed_world(method, "val")["auc"])

    def evaluate_all(
        self, method: Any, word_vectors: Any, feasibility_mode: str
    ) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
        """Every split x world; open world calibrated by feasibility when vectors are given."""
        from bench.evaluation import evaluate_scores
        from bench.evaluation.feasibility import (
            csp_multiply,
            feasibility_scores,
            feasible_mask,
            seen_columns,
            select_threshold,
        )

        metrics: dict[str, dict[str, Any]] = {split: {} for split in EVAL_SPLITS}
        for split in EVAL_SPLITS:
            metrics[split]["cw"] = self.closed_world(method, split)
        pairs = self.open_pairs
        feasibility_info = None
        if word_vectors is None or feasibility_mode == "off":
            for split in EVAL_SPLITS:
                attr, obj = self._labels(split)
                metrics[split]["ow"] = evaluate_scores(
                    self.scores(method, split, pairs),
                    attr,
                    obj,
                    pairs,
                    self.seen,
                    None,
                    self.topk,
                )
            return metrics, feasibility_info
        attr_vectors, obj_vectors = word_vectors.vectors_for(self.dataset)
        feasibility = feasibility_scores(pairs, self.seen, attr_vectors, obj_vectors)
        seen = seen_columns(pairs, self.seen)
        attr, obj = self._labels("val")
        selection = select_threshold(
            lambda: self.scores(method, "val", pairs),
            attr,
            obj,
            pairs,
            self.seen,
            feasibility,
            mode=feasibility_mode,
            topk=self.topk,
        )
        threshold = selection["threshold"]
        feasibility_info = {
            "mode": feasibility_mode,
            "threshold": threshold,
            "val_auc_at_threshold": selection["val_auc"],
            "source": getattr(word_vectors, "description", str(word_vectors)),
        }
        for split in EVAL_SPLITS:
            attr, obj = self._labels(split)
            blocks = self.scores(method, split, pairs)
            if threshold is None:
                metrics[split]["ow"] = evaluate_scores(
                    blocks, attr, obj, pairs, self.seen, None, self.topk
                )
            elif feasibility_mode == "mask":
                mask = feasible_mask(feasibility, seen, threshold)
                metrics[split]["ow"] = evaluate_scores(
                    blocks, attr, obj, pairs, self.seen, mask, self.topk
                )
            else:
                metrics[split]["ow"] = evaluate_scores(
                    csp_multiply(blocks, feasibility, seen, threshold),
                    attr,
                    obj,
                    pairs,
                    self.seen,
                    None,
                    self.topk,
                )
            metrics[split]["ow"]["feasibility_threshold"] = threshold
        return metrics, feasibility_info
