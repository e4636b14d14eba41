"""CZSL datasets: the standard on-disk format, the registry of named datasets, a synthetic
generator and a verifier.

The loader (``bench.data.czsl``) reads any folder in the format the czsl library and the
official CSP code use; ``bench.data.registry`` maps card names to folders under a data root;
``bench.data.synthetic`` writes deterministic synthetic datasets in the same format.
"""

from __future__ import annotations

from bench.data.czsl import (
    CZSLDataset,
    Pair,
    Sample,
    describe,
    load_dataset,
)
from bench.data.registry import (
    REAL_DATASETS,
    default_data_root,
    expand_dataset_names,
    open_dataset,
    resolve_dataset,
)

__all__ = [
    "REAL_DATASETS",
    "CZSLDataset",
    "Pair",
    "Sample",
    "default_data_root",
    "describe",
    "expand_dataset_names",
    "load_dataset",
    "open_dataset",
    "resolve_dataset",
]
