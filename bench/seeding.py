"""Seeding: the one place a cell's random generators are seeded from its seed."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch from ``seed``; return a CPU generator for shuffling.

    Args:
        seed: The run seed.

    Returns:
        A ``torch.Generator`` on the CPU seeded with ``seed``.
    """
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator
