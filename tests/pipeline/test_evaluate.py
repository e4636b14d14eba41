"""Cell evaluation at the protocol's precision: fp16 logits tie close candidates."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from bench.evaluation import evaluate_scores
from bench.methods import get_method_class
from bench.pipeline.evaluate import CellEvaluation, fp16_rounded

# Two attributes x two objects; (0,0) and (1,1) seen, (0,1) and (1,0) unseen.
PAIRS = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
SEEN = np.array([[0, 0], [1, 1]])
# One image of the unseen pair (0,1) (column 1), 1e-4 above the seen column 0: fp32 logits
# keep it ahead, fp16 logits (spacing 1/64 near 20) tie the two.
SCORES = np.array([[20.0, 20.0001, 0.0, 0.0]], dtype=np.float32)
ATTR, OBJ = np.array([0]), np.array([1])


def test_fp16_rounding_ties_close_candidates_and_the_lowest_column_wins() -> None:
    (rounded,) = fp16_rounded([SCORES])
    assert rounded.dtype == np.float32
    assert rounded[0, 0] == rounded[0, 1] == 20.0
    assert evaluate_scores(SCORES, ATTR, OBJ, PAIRS, SEEN)["closed_acc"] == 1.0
    # tied: column 0 wins (the evaluator's rule), so the unbiased prediction is wrong
    assert evaluate_scores([rounded], ATTR, OBJ, PAIRS, SEEN)["closed_acc"] == 0.0


class _Dataset:
    def seen_pairs_ids(self) -> np.ndarray:
        return SEEN

    def candidate_pairs(self, world: str) -> np.ndarray:
        return PAIRS

    def candidate_mask(self, split: str, world: str) -> None:
        return None


def _scored(method_name: str) -> object:
    method = get_method_class(method_name)({})
    method.score = lambda inputs, pairs: iter([SCORES])
    return method


@pytest.mark.parametrize(
    ("precision", "method_name", "closed_acc"),
    [
        ("fp32", "clip", 1.0),
        ("bfloat16-autocast", "csp", 1.0),
        ("fp16", "clip", 0.0),  # CLIP family: fp16 logits as in the official code
        ("fp16", "csp", 0.0),
        ("fp16", "compcos", 1.0),  # not CLIP family: its scores are not rounded
    ],
)
def test_cell_evaluation_rounds_clip_family_scores_under_fp16(
    precision: str, method_name: str, closed_acc: float
) -> None:
    features = {"val": SimpleNamespace(features=None, attr_idx=ATTR, obj_idx=OBJ)}
    evaluation = CellEvaluation(_Dataset(), features, topk=1, precision=precision)
    metrics = evaluation.closed_world(_scored(method_name), "val")
    assert metrics["closed_acc"] == closed_acc


class _WordVectors:
    """Attribute and object vectors giving the unseen pairs distinct feasibilities."""

    description = "test vectors"

    def vectors_for(self, dataset: object) -> tuple[np.ndarray, np.ndarray]:
        return np.array([[1.0, 0.0], [0.6, 0.8]]), np.array([[1.0, 0.1], [0.1, 1.0]])


def _token_method(calls: list[str]) -> object:
    """A method scored on tokens whose scores are fixed random numbers; counts its passes."""
    method = get_method_class("clip")({})
    method.input_level = lambda: "tokens"
    rng = np.random.default_rng(0)
    table = {
        split: rng.normal(size=(5, len(PAIRS))).astype(np.float32) for split in ("val", "test")
    }

    def score(inputs: object, pairs: np.ndarray) -> object:
        calls.append(inputs)
        return iter([table[inputs][:3], table[inputs][3:]])

    method.score = score
    return method


@pytest.mark.parametrize("mode", ["csp-multiply", "mask"])
def test_expensive_open_world_val_scores_are_spilled_once_and_replayed(tmp_path, mode: str) -> None:
    labels = SimpleNamespace(attr_idx=np.array([0, 0, 1, 1, 0]), obj_idx=np.array([1, 0, 0, 1, 1]))
    features = {"val": labels, "test": labels}
    tokens = {"val": "val", "test": "test"}
    results = {}
    for spill in (None, tmp_path / ".cell.json.val-ow-scores.tmp"):
        calls: list[str] = []
        evaluation = CellEvaluation(_Dataset(), features, 1, tokens, spill_path=spill)
        results[spill is None] = evaluation.evaluate_all(_token_method(calls), _WordVectors(), mode)
        ow_val_passes = calls.count("val") - 1  # one closed-world pass
        if spill is None:
            assert ow_val_passes > 2 if mode == "csp-multiply" else ow_val_passes == 2
        else:
            assert ow_val_passes == 1  # scored once, replayed for every threshold
            assert not spill.exists()  # removed afterwards
    assert results[True] == results[False]
    assert results[True][1]["threshold"] is not None
