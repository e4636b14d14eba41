"""Fixture result JSONs for the bench.report tests (and the ``grid`` fixture in conftest.py).

All results here are TEST FIXTURES: hand-made numbers, never real runs, even where they claim
the paper's backbone (ViT-L-14:openai) so that ``--compare-paper`` has something to compare.
Golden outputs live in tests/golden/report/; regenerate them with
``BENCH_UPDATE_GOLDEN=1 pytest tests/report`` and review the diff.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.io import atomic_write_json, sha256_json
from bench.protocol import build_protocol

GOLDEN = Path(__file__).parent.parent / "golden" / "report"
PAPER_BACKBONE = "ViT-L-14:openai"
SEED_OFFSETS = {0: -0.4, 1: 0.0, 2: 0.4}  # percentage points: mean = base, sample std = 0.4

#: Fixture base numbers (S, U, HM, AUC in %), loosely shaped like the paper's.
BASE: dict[tuple[str, str, str], tuple[float, float, float, float]] = {
    ("clip", "mit-states", "cw"): (30.0, 46.0, 26.0, 11.0),
    ("clip", "mit-states", "ow"): (30.0, 14.0, 12.8, 3.0),
    ("csp", "mit-states", "cw"): (46.9, 49.5, 36.3, 19.0),
    ("csp", "mit-states", "ow"): (46.0, 15.9, 17.0, 5.5),
    ("clip", "ut-zappos", "cw"): (15.8, 49.0, 15.7, 5.1),
    ("clip", "ut-zappos", "ow"): (15.0, 20.0, 11.0, 2.0),
    ("csp", "ut-zappos", "cw"): (64.0, 66.0, 46.0, 33.5),
    ("csp", "ut-zappos", "ow"): (64.0, 44.0, 39.0, 22.0),
}


def paper_protocol(method: str) -> dict[str, Any]:
    """The protocol record of a cell run with the official CSP protocol (fp16 on CUDA)."""
    official = replace(build_protocol("paper"), precision="fp16")
    return official.as_record(method, trains=method != "clip")


def make_result(
    method: str,
    dataset: str,
    seed: int,
    values: Mapping[str, Sequence[float]],
    *,
    backbone: str = PAPER_BACKBONE,
    augment: str = "none",
    hparams: Mapping[str, Any] | None = None,
    feasibility: str = "none",
    fingerprint: str | None = None,
    random_weights: bool = False,
    created_at: str = "2025-01-01T00:00:00+00:00",
    protocol: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A result dict shaped like bench run's; ``values``: world -> (S, U, HM, AUC) in %.

    A world left out gets the other world's numbers (the runner always writes both).
    ``protocol`` defaults to the paper's protocol as run on a CUDA machine (fp16).
    """
    values = {"cw": values.get("cw", values.get("ow")), "ow": values.get("ow", values.get("cw"))}
    config = {
        "method": method,
        "dataset": dataset,
        "dataset_path": f"/data/{dataset}",
        "dataset_fingerprint": fingerprint or f"fp-{dataset}",
        "seed": seed,
        "backbone": backbone,
        "backbone_identifier": f"{backbone}-id",
        "augment": augment,
        "hparams": dict(hparams if hparams is not None else {"lr": 0.001}),
        "eval": {
            "topk": 1,
            "feasibility": feasibility,
            "word_vectors": "none",
            "protocol": "czsl-calibration-bias",
        },
        "protocol": dict(protocol) if protocol is not None else paper_protocol(method),
    }
    metrics: dict[str, dict[str, Any]] = {}
    for world, (s, u, hm, auc) in values.items():
        block = {
            "best_seen": s / 100,
            "best_unseen": u / 100,
            "best_hm": hm / 100,
            "auc": auc / 100,
            "attr_acc": 0.5,
            "obj_acc": 0.5,
            "closed_acc": 0.25,
            "biases": [-1.0, 0.0, 1.0],
            "seen_curve": [s / 100, s / 200, 0.0],
            "unseen_curve": [0.0, u / 200, u / 100],
        }
        metrics.setdefault("test", {})[world] = block
        metrics.setdefault("val", {})[world] = dict(block)
    config_hash = sha256_json(config)
    return {
        "status": "complete",
        "cell_id": f"{method}|{dataset}|s{seed}|{config_hash[:12]}",
        "cell": {"method": method, "dataset": dataset, "seed": seed},
        "config_hash": config_hash,
        "config": config,
        "metrics": metrics,
        "history": [],
        "timings": {"total_s": 1.0},
        "versions": {"bench": "0.1.0"},
        "backbone_random_weights": random_weights,
        "created_at": created_at,
    }


def write_result(results_dir: Path, result: Mapping[str, Any]) -> Path:
    """Write a result JSON where bench run would."""
    cell = result["cell"]
    path = (
        results_dir
        / "runs"
        / cell["dataset"]
        / cell["method"]
        / f"s{cell['seed']}-{result['config_hash'][:12]}.json"
    )
    atomic_write_json(path, result)
    return path


def seeded(base: Sequence[float], seed: int) -> tuple[float, ...]:
    """``base`` shifted by the seed's offset (mean over seeds 0-2 = base, std = 0.4)."""
    return tuple(round(v + SEED_OFFSETS[seed], 4) for v in base)


def write_grid(results_dir: Path, seeds: Sequence[int] = (0, 1, 2), **kwargs: Any) -> None:
    """The fixture grid: clip and csp on mit-states and ut-zappos."""
    for method, dataset in sorted({(m, d) for m, d, _ in BASE}):
        for seed in seeds:
            values = {w: seeded(BASE[(method, dataset, w)], seed) for w in ("cw", "ow")}
            write_result(results_dir, make_result(method, dataset, seed, values, **kwargs))


def check_golden(name: str, text: str) -> None:
    """Compare ``text`` with golden file ``name`` (or rewrite it with BENCH_UPDATE_GOLDEN=1)."""
    path = GOLDEN / name
    if os.environ.get("BENCH_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from the golden file (see module docstring)"
