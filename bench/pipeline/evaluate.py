"""Scoring a method on a cell's dataset: val and test, closed and open world.

Only the pure evaluator (:mod:`bench.evaluation`) computes metrics; open world is calibrated
by feasibility when word vectors are given.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
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

    CSP's feasibility threshold search (``csp-multiply``) reads the open-world val scores
    once per threshold (50). A method scored on tokens or images (whose scoring runs an image
    side per image and pair) is scored once into a float32 memory map at ``spill_path`` that
    is replayed instead, when the disk has room; the values are the same.
    """

    def __init__(
        self,
        dataset: Any,
        features: Mapping[str, Any],
        topk: int,
        tokens: Mapping[str, Any] | None = None,
        precision: str = "fp32",
        images: Mapping[str, Any] | None = None,
        spill_path: Path | None = None,
    ) -> None:
        self.dataset = dataset
        self.spill_path = spill_path
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

    @contextlib.contextmanager
    def replayable(
        self, method: Any, split: str, pairs: np.ndarray
    ) -> Iterator[Callable[[], Iterable[np.ndarray]]]:
        """A callable giving ``split``'s score blocks over ``pairs`` as often as needed:
        re-scoring for a method on pooled features (cheap), else one scoring pass spilled to
        ``spill_path`` (float32, removed afterwards) and replayed; re-scoring when there is
        no spill path or too little free disk."""
        n_images = len(self.features[split].attr_idx)
        size = n_images * len(pairs) * 4
        folder = self.spill_path.parent if self.spill_path is not None else None
        if (
            method.input_level() == "pooled"
            or folder is None
            or not folder.is_dir()
            or shutil.disk_usage(folder).free < 2 * size
        ):
            yield lambda: self.scores(method, split, pairs)
            return
        from bench.methods.scoring import block_rows

        assert self.spill_path is not None
        array = np.lib.format.open_memmap(
            self.spill_path, mode="w+", dtype=np.float32, shape=(n_images, len(pairs))
        )
        try:
            start = 0
            for block in self.scores(method, split, pairs):
                array[start : start + len(block)] = block
                start += len(block)
            array.flush()
            rows = block_rows(1024, len(pairs))
            yield lambda: (np.asarray(array[i : i + rows]) for i in range(0, n_images, rows))
        finally:  # the mapping closes with ``array``; the name goes now
            self.spill_path.unlink(missing_ok=True)

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
            feasibility_scores,
            seen_columns,
            select_threshold,
        )

        metrics: dict[str, dict[str, Any]] = {split: {} for split in EVAL_SPLITS}
        for split in EVAL_SPLITS:
            metrics[split]["cw"] = self.closed_world(method, split)
        pairs = self.open_pairs
        if word_vectors is None or feasibility_mode == "off":
            for split in EVAL_SPLITS:
                metrics[split]["ow"] = evaluate_scores(
                    self.scores(method, split, pairs),
                    *self._labels(split),
                    pairs,
                    self.seen,
                    None,
                    self.topk,
                )
            return metrics, None
        attr_vectors, obj_vectors = word_vectors.vectors_for(self.dataset)
        feasibility = feasibility_scores(pairs, self.seen, attr_vectors, obj_vectors)
        seen = seen_columns(pairs, self.seen)
        with self.replayable(method, "val", pairs) as val_scores:
            selection = select_threshold(
                val_scores,
                *self._labels("val"),
                pairs,
                self.seen,
                feasibility,
                mode=feasibility_mode,
                topk=self.topk,
            )
            threshold = selection["threshold"]
            metrics["val"]["ow"] = self._calibrated(
                val_scores(), "val", pairs, feasibility, seen, threshold, feasibility_mode
            )
        for split in EVAL_SPLITS:
            if split != "val":
                metrics[split]["ow"] = self._calibrated(
                    self.scores(method, split, pairs),
                    split,
                    pairs,
                    feasibility,
                    seen,
                    threshold,
                    feasibility_mode,
                )
        feasibility_info = {
            "mode": feasibility_mode,
            "threshold": threshold,
            "val_auc_at_threshold": selection["val_auc"],
            "source": getattr(word_vectors, "description", str(word_vectors)),
        }
        return metrics, feasibility_info

    def _calibrated(
        self,
        blocks: Iterable[np.ndarray],
        split: str,
        pairs: np.ndarray,
        feasibility: np.ndarray,
        seen: np.ndarray,
        threshold: float | None,
        mode: str,
    ) -> dict[str, Any]:
        """Open-world metrics of ``split`` with the chosen feasibility threshold applied."""
        from bench.evaluation import evaluate_scores
        from bench.evaluation.feasibility import csp_multiply, feasible_mask

        attr, obj = self._labels(split)
        mask = None
        if threshold is not None and mode == "mask":
            mask = feasible_mask(feasibility, seen, threshold)
        elif threshold is not None:
            blocks = csp_multiply(blocks, feasibility, seen, threshold)
        result = evaluate_scores(blocks, attr, obj, pairs, self.seen, mask, self.topk)
        result["feasibility_threshold"] = threshold
        return result
