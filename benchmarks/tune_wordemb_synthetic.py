"""Benchmark: choose the word-embedding baselines' ``[hparams.synthetic]`` on val AUC.

For each method (visprod, compcos, cge, le+) every configuration of a small grid is fitted
on the ``synthetic`` dataset with the ``toy-clip`` backbone (the default run's cells, built
or reused under ``--results-dir``) for seeds 0, 1, 2; the epoch with the best closed-world
val AUC is kept, as in a run. The configuration with the best mean **val** AUC is the
selection; test AUC is recorded for every configuration but never used to choose. Zero-shot
``clip`` is scored on the same features for reference.

Grids (on top of the card's values; ``GRIDS`` below): epochs 20 / 50 (the best val epoch is
kept either way), lr 3e-4 / 1e-3, word vectors glove50 / backbone-text for the methods that
use them, and per method: visprod dropout and hidden width, compcos dropout, cge graph
dropout and image side (identity / a linear layer), le+ embedding size and triplet margin,
aop the auxiliary loss weight (lr 1e-3 / 1e-2 for aop). About 20 minutes on 2 CPU cores
without aop, 15 more with it. With ``--methods``, only those methods are redone and the
others' entries already in ``--out`` are kept.

Usage: python benchmarks/tune_wordemb_synthetic.py [--methods visprod,compcos,cge,le+]
    [--results-dir results] [--data-root data] [--out results/benchmarks/tune_wordemb_synthetic.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.methods import FitContext, get_method_class
from bench.methods.base import resolve_hparams
from bench.pipeline.config import RunConfig
from bench.pipeline.evaluate import CellEvaluation
from bench.pipeline.events import EventBus
from bench.pipeline.prepare import prepare_dataset

SEEDS = (0, 1, 2)
WORD_VECTORS = ("glove50", "backbone-text")
EPOCHS = (20, 50)
GRIDS: dict[str, dict[str, tuple[Any, ...]]] = {
    "visprod": {
        "lr": (3e-4, 1e-3),
        "dropout": (0.1, 0.5),
        "hidden_dim": (256, 1024),
        "epochs": EPOCHS,
    },
    "compcos": {
        "word_vectors": WORD_VECTORS,
        "lr": (3e-4, 1e-3),
        "dropout": (0.1, 0.5),
        "epochs": EPOCHS,
    },
    "cge": {
        "word_vectors": WORD_VECTORS,
        "lr": (3e-4, 1e-3),
        "gcn_dropout": (0.1, 0.5),
        "image_layers": (0, 1),
        "epochs": EPOCHS,
    },
    "le+": {
        "word_vectors": WORD_VECTORS,
        "lr": (3e-4, 1e-3),
        "emb_dim": (128, 300),
        "margin": (0.5, 1.0),
        "epochs": EPOCHS,
    },
    "aop": {
        "word_vectors": WORD_VECTORS,
        "lr": (1e-3, 1e-2),
        "lambda_aux": (1.0, 1000.0),
        "epochs": EPOCHS,
    },
}


def synthetic_context(results_dir: Path, data_root: Path) -> tuple[Any, CellEvaluation]:
    """The default run's ``synthetic`` dataset with toy-clip features (built or reused under
    ``results_dir``) and its evaluator."""
    config = RunConfig(
        methods=("clip",),
        datasets=("synthetic",),
        results_dir=results_dir,
        data_root=data_root,
        log_mlflow=False,
    )
    ctx = prepare_dataset(config, "synthetic", events=EventBus())
    return ctx, CellEvaluation(ctx.dataset, ctx.features, topk=1)


def fit_and_score(
    method: str, overrides: dict[str, Any], ctx: Any, evaluation: CellEvaluation, seed: int
) -> dict[str, float]:
    """Fit one configuration for one seed; val (best epoch) and test closed-world AUC."""
    hparams = resolve_hparams(method, ctx.dataset.name, overrides)
    model = get_method_class(method)(hparams)
    fit_context = FitContext(
        dataset=ctx.dataset,
        backbone=ctx.backbone,
        features=ctx.features,
        hparams=hparams,
        seed=seed,
        device=str(ctx.backbone.device),
        validate=evaluation.validation_auc,
    )
    log = model.fit(fit_context)
    val = log.get("best_val_auc")
    if val is None:
        val = evaluation.validation_auc(model)
    test = evaluation.closed_world(model, "test")["auc"]
    return {"val_auc": float(val), "test_auc": float(test), "best_epoch": log.get("best_epoch")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(GRIDS))
    parser.add_argument("--results-dir", type=Path, default=Path("results"))
    parser.add_argument("--data-root", type=Path, default=Path("data"))
    parser.add_argument(
        "--out", type=Path, default=Path("results/benchmarks/tune_wordemb_synthetic.json")
    )
    args = parser.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(GRIDS))
    if unknown:
        parser.error(f"no grid for {', '.join(unknown)}; known: {', '.join(GRIDS)}")

    ctx, evaluation = synthetic_context(args.results_dir, args.data_root)
    clip = fit_and_score("clip", {}, ctx, evaluation, seed=0)  # trains nothing: one seed
    print(
        f"clip zero-shot: val AUC {100 * clip['val_auc']:.1f}  test AUC {100 * clip['test_auc']:.1f}"
    )

    report: dict[str, Any] = {
        "dataset": "synthetic",
        "backbone": ctx.backbone.spec.raw,
        "seeds": list(SEEDS),
        "selection": "mean closed-world val AUC over the seeds (test never used to choose)",
        "clip": clip,
        "machine": platform.machine(),
        "methods": {},
    }
    if args.out.is_file():  # keep the methods not redone this time
        report["methods"] = json.loads(args.out.read_text()).get("methods", {})
    for method in methods:
        grid = GRIDS[method]
        rows = []
        for values in itertools.product(*grid.values()):
            overrides = dict(zip(grid, values, strict=True))
            start = time.perf_counter()
            per_seed = [fit_and_score(method, overrides, ctx, evaluation, s) for s in SEEDS]
            row = {
                "overrides": overrides,
                "val_auc": float(np.mean([r["val_auc"] for r in per_seed])),
                "test_auc": float(np.mean([r["test_auc"] for r in per_seed])),
                "test_auc_std": float(np.std([r["test_auc"] for r in per_seed])),
                "best_epochs": [r["best_epoch"] for r in per_seed],
                "seconds": round(time.perf_counter() - start, 1),
            }
            rows.append(row)
            print(
                f"{method:8s} {overrides}  val {100 * row['val_auc']:.1f}  "
                f"test {100 * row['test_auc']:.1f} ± {100 * row['test_auc_std']:.1f}",
                flush=True,
            )
        chosen = max(rows, key=lambda r: r["val_auc"])
        report["methods"][method] = {"grid": rows, "chosen": chosen}
        print(
            f"{method:8s} chosen on val: {chosen['overrides']}  val {100 * chosen['val_auc']:.1f}  "
            f"test {100 * chosen['test_auc']:.1f} (clip {100 * clip['test_auc']:.1f})",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
