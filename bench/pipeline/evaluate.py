"""Scoring a method on a cell's dataset: val and test, closed and open world.

Only the pure evaluator (:mod:`bench.evaluation`) computes metrics; open world is calibrated
by feasibility when word vectors are given.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from bench.constants import EVAL_SPLITS


class CellEvaluation:
    """Scores a method on val/test, closed and open world, through the pure evaluator.

    A method is scored on the feature level it declares first in ``needs``: pooled features
    (``features``) or image tokens (``tokens``).
    """

    def __init__(
        self,
        dataset: Any,
        features: Mapping[str, Any],
        topk: int,
        tokens: Mapping[str, Any] | None = None,
    ) -> None:
        self.dataset = dataset
        self.features = features
        self.tokens = tokens or {}
        self.topk = topk
        self.seen = dataset.seen_pairs_ids()
        self.closed_pairs = dataset.candidate_pairs("closed")
        self.open_pairs = dataset.candidate_pairs("open")

    def inputs(self, method: Any, split: str) -> Any:
        """What ``method.score`` gets for ``split``: pooled features or a token set."""
        if method.needs[0] == "tokens":
            return self.tokens[split]
        return self.features[split].features

    def _labels(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        fs = self.features[split]
        return fs.attr_idx, fs.obj_idx

    def closed_world(self, method: Any, split: str) -> dict[str, Any]:
        """Closed-world metrics of ``split``: train pairs plus the split's pairs allowed."""
        from bench.evaluation import evaluate_scores

        attr, obj = self._labels(split)
        return evaluate_scores(
            method.score(self.inputs(method, split), self.closed_pairs),
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
                    method.score(self.inputs(method, split), pairs),
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
            lambda: method.score(self.inputs(method, "val"), pairs),
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
            blocks = method.score(self.inputs(method, split), pairs)
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
