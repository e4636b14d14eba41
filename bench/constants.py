"""Names and choices shared across the package (one home for each)."""

from __future__ import annotations

import re

#: Splits a cell is evaluated on.
EVAL_SPLITS: tuple[str, ...] = ("val", "test")
#: Every split of a dataset.
DATA_SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Result/metric keys of the two evaluation worlds: closed and open.
WORLDS: tuple[str, ...] = ("cw", "ow")
#: The dataset layer's names of the same worlds (``candidate_pairs("closed")``...).
WORLD_NAMES: dict[str, str] = {"cw": "closed", "ow": "open"}
#: ``--augment``: "none" trains on cached features, "paper" on augmented images.
AUGMENT_CHOICES: tuple[str, ...] = ("none", "paper")
#: ``--text-encoding``: "prefix" encodes each shared prompt prefix once
#: (``bench.prefix_text``), "full" every prompt position (the original loop); the first is
#: the default.
TEXT_ENCODING_CHOICES: tuple[str, ...] = ("prefix", "full")
#: ``--feasibility``: open-world filter modes.
FEASIBILITY_CHOICES: tuple[str, ...] = ("mask", "csp-multiply", "off")


def slug(text: str) -> str:
    """A filesystem-safe folder/file name for ``text`` (at most 80 characters, never empty)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")[:80] or "x"
