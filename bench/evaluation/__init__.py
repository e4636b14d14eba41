"""Evaluation: the reference CZSL protocol as a pure, streaming function."""

from bench.evaluation.protocol import MAX_BIAS, evaluate_scores

__all__ = ["MAX_BIAS", "evaluate_scores"]
