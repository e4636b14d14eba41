"""Helpers of the memory benchmarks that score random cached image tokens (imported by the
scripts beside it, which run with this folder on ``sys.path``)."""

from __future__ import annotations

import resource
from pathlib import Path

import numpy as np


def peak_rss_mb() -> float:
    """The process's peak resident set size so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def random_tokens(folder: Path, n: int, shape: tuple[int, int], seed: int) -> Path:
    """An (n, T, width) fp16 ``.npy`` of random tokens, written in chunks."""
    path = folder / "tokens.npy"
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, *shape))
    rng = np.random.default_rng(seed)
    for start in range(0, n, 512):
        stop = min(n, start + 512)
        array[start:stop] = rng.standard_normal((stop - start, *shape), dtype=np.float32)
    array.flush()
    return path
