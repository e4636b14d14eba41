"""Scoring helpers shared by every method: candidate-pair arrays, blocks and a small cache."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bench.errors import BenchError
from bench.methods.base import MAX_BLOCK_ELEMENTS

#: Candidate sets whose values are cached per method instance (closed + open world).
CACHE_ENTRIES = 2


def pairs_digest(pairs: np.ndarray) -> str:
    """A short content hash of a (P, 2) pair array (cache key)."""
    array = np.ascontiguousarray(np.asarray(pairs, dtype=np.int64))
    return hashlib.sha1(array.tobytes() + str(array.shape).encode()).hexdigest()


def as_pair_tensor(pairs: np.ndarray | torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """(P, 2) int64 tensor on ``device``; raises BenchError on a malformed array."""
    tensor = torch.as_tensor(np.asarray(pairs), dtype=torch.long, device=device)
    if tensor.ndim != 2 or tensor.shape[1] != 2:
        raise BenchError(f"candidate pairs must have shape (P, 2), got {tuple(tensor.shape)}")
    return tensor


def block_rows(block_size: int, n_pairs: int) -> int:
    """Image rows per score block: ``block_size``, fewer when a block would exceed
    ``MAX_BLOCK_ELEMENTS`` scores (C-GQA's open world never needs a dense N x P matrix).

    Raises:
        ValueError: ``block_size`` is not positive.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    return max(1, min(block_size, MAX_BLOCK_ELEMENTS // max(n_pairs, 1)))


class CandidateCache:
    """What scoring computes once per candidate set (text features, pair embeddings), for
    the current trainable state; ``invalidate()`` when that state changes."""

    def __init__(self, entries: int = CACHE_ENTRIES) -> None:
        self.entries = entries
        self._values: dict[str, Any] = {}

    def invalidate(self) -> None:
        """Forget every cached value (the trainable state changed)."""
        self._values.clear()

    def get(self, pairs: np.ndarray, compute: Callable[[], Any]) -> Any:
        """The cached value for ``pairs``, computed by ``compute()`` on a miss."""
        key = pairs_digest(pairs)
        if key not in self._values:
            value = compute()
            while len(self._values) >= self.entries:
                self._values.pop(next(iter(self._values)))
            self._values[key] = value
        return self._values[key]
