"""Benchmark: visprod and compcos fitted and evaluated in C-GQA's open world.

The problem has C-GQA's exact sizes (the ``synthetic-cgqa`` plan: 413 attributes, 674
objects, 5,592 train pairs, 26,920 / 7,280 / 5,098 train / val / test images, 278,362
open-world pairs) with constructed features instead of images: an image of (a, o) has
feature ``u_a P + v_o Q + c_ao + noise`` (768-d, like ViT-L-14; ``c_ao`` is a random
pair-specific "context" vector as strong as each primitive's part, unpredictable for unseen
pairs) and the word vectors of a and o are noisy linear images of u_a and v_o (50-d, like
glove50). Each method is fitted with its
``[hparams.synthetic]`` card values (``--epochs`` epochs, val AUC every epoch as in a run),
then scored on the test split against all 278,362 pairs, streamed block by block into
``bench.evaluation.evaluate_scores`` (never a dense 5,098 x 278,362 matrix). With
``--feasibility`` the runner's val-split threshold selection pass is timed as well.

Reports fit / evaluation time and peak RSS (process high-water mark after each phase).

Usage: python benchmarks/wordemb_open_world.py [--methods visprod,compcos] [--epochs 2]
    [--feasibility] [--out results/benchmarks/wordemb_open_world.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.data.czsl import CZSLDataset
from bench.data.synthetic import plan_synthetic
from bench.evaluation import evaluate_scores
from bench.features import FeatureSet
from bench.methods import FitContext, get_method_class
from bench.methods.base import resolve_hparams

METRICS = ("auc", "best_hm", "best_seen", "best_unseen")


def peak_rss_mb() -> float:
    """The process's peak resident set size so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class ConstructedVectors:
    """Word vectors given as arrays (what ``--word-vectors`` hands a method)."""

    def __init__(self, attr: np.ndarray, obj: np.ndarray) -> None:
        self.attr, self.obj = attr, obj
        self.description = f"constructed, {attr.shape[1]}-d"

    def vectors_for(self, dataset: Any) -> tuple[np.ndarray, np.ndarray]:
        return self.attr, self.obj


def cgqa_sized_dataset(seed: int) -> CZSLDataset:
    """The synthetic-cgqa plan as an in-memory dataset (no images are rendered)."""
    return plan_synthetic("synthetic-cgqa", seed=seed).as_dataset()


def constructed_problem(
    dataset: CZSLDataset, args: argparse.Namespace
) -> tuple[dict[str, FeatureSet], ConstructedVectors]:
    """Informative, compositional features per split and matching word vectors."""
    dim, latent, word_dim, seed = args.dim, args.latent, args.word_dim, args.seed
    rng = np.random.default_rng(seed)
    n_attrs, n_objs = len(dataset.attrs), len(dataset.objs)
    u = rng.standard_normal((n_attrs, latent)).astype(np.float32)
    v = rng.standard_normal((n_objs, latent)).astype(np.float32)
    scale = 1.0 / latent**0.5
    to_image = [scale * rng.standard_normal((latent, dim), dtype=np.float32) for _ in "ao"]
    to_word = [scale * rng.standard_normal((latent, word_dim), dtype=np.float32) for _ in "ao"]
    closed = dataset.candidate_pairs("closed")
    row_of = {(int(a), int(o)): i for i, (a, o) in enumerate(closed)}
    context = rng.standard_normal((len(closed), dim), dtype=np.float32) * args.context
    features = {}
    for split in ("train", "val", "test"):
        a, o = dataset.labels(split)
        rows = np.array([row_of[(int(i), int(j))] for i, j in zip(a, o, strict=True)])
        x = u[a] @ to_image[0] + v[o] @ to_image[1] + context[rows]
        x += args.noise * rng.standard_normal(x.shape, dtype=np.float32)
        paths = tuple(s.image for s in dataset.splits[split])
        features[split] = FeatureSet(torch.from_numpy(x), a, o, paths, False, split)
    attr_words = u @ to_word[0] + 0.3 * rng.standard_normal((n_attrs, word_dim))
    obj_words = v @ to_word[1] + 0.3 * rng.standard_normal((n_objs, word_dim))
    return features, ConstructedVectors(attr_words.astype(np.float32), obj_words.astype(np.float32))


def closed_world(method: Any, dataset: CZSLDataset, features: FeatureSet, split: str) -> dict:
    pairs = dataset.candidate_pairs("closed")
    return evaluate_scores(
        method.score(features.features, pairs),
        features.attr_idx,
        features.obj_idx,
        pairs,
        dataset.seen_pairs_ids(),
        dataset.candidate_mask(split, "closed"),
    )


def run_method(
    name: str,
    dataset: CZSLDataset,
    features: dict[str, FeatureSet],
    vectors: ConstructedVectors,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Fit ``name``, then evaluate closed and open world on test; time and measure RSS."""
    hparams = resolve_hparams(name, "synthetic-cgqa", {"epochs": args.epochs})
    method = get_method_class(name)(hparams)
    history: list[dict[str, float]] = []
    ctx = FitContext(
        dataset=dataset,
        backbone=None,
        features=features,
        hparams=hparams,
        seed=0,
        validate=lambda m: float(closed_world(m, dataset, features["val"], "val")["auc"]),
        on_epoch_end=lambda e, m: history.append({"epoch": e, **m}),
        word_vectors=vectors,
    )
    tick = time.perf_counter()
    log = method.fit(ctx)
    fit_s = time.perf_counter() - tick
    rss_fit = peak_rss_mb()

    test = features["test"]
    tick = time.perf_counter()
    closed = closed_world(method, dataset, test, "test")
    closed_s = time.perf_counter() - tick

    pairs = dataset.candidate_pairs("open")
    seen = dataset.seen_pairs_ids()
    block_rows: list[int] = []

    def blocks() -> Any:
        for block in method.score(test.features, pairs):
            block_rows.append(block.shape[0])
            yield block

    tick = time.perf_counter()
    opened = evaluate_scores(blocks(), test.attr_idx, test.obj_idx, pairs, seen, None)
    open_s = time.perf_counter() - tick
    rss_open = peak_rss_mb()

    report: dict[str, Any] = {
        "hparams": hparams,
        "fit": {k: v for k, v in log.items() if not isinstance(v, list)},
        "history": history,
        "fit_s": round(fit_s, 1),
        "peak_rss_after_fit_mb": round(rss_fit, 1),
        "test_cw": {k: round(float(closed[k]), 4) for k in METRICS},
        "test_cw_eval_s": round(closed_s, 1),
        "test_ow": {k: round(float(opened[k]), 4) for k in METRICS},
        "test_ow_eval_s": round(open_s, 1),
        "test_ow_block_rows": max(block_rows) if block_rows else 0,
        "test_ow_blocks": len(block_rows),
        "peak_rss_after_open_world_mb": round(rss_open, 1),
    }
    if args.feasibility:
        from bench.evaluation.feasibility import feasibility_scores, select_threshold

        val = features["val"]
        tick = time.perf_counter()
        feasibility = feasibility_scores(pairs, seen, vectors.attr, vectors.obj)
        selection = select_threshold(
            lambda: method.score(val.features, pairs),
            val.attr_idx,
            val.obj_idx,
            pairs,
            seen,
            feasibility,
            mode="mask",
        )
        report["val_feasibility_selection_s"] = round(time.perf_counter() - tick, 1)
        report["val_feasibility_threshold"] = selection["threshold"]
        report["peak_rss_after_feasibility_mb"] = round(peak_rss_mb(), 1)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="visprod,compcos")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--latent", type=int, default=64)
    parser.add_argument("--word-dim", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise", type=float, default=4.0, help="image noise std per dim")
    parser.add_argument("--context", type=float, default=1.0, help="pair-context std per dim")
    parser.add_argument("--feasibility", action="store_true")
    parser.add_argument(
        "--out", type=Path, default=Path("results/benchmarks/wordemb_open_world.json")
    )
    args = parser.parse_args()

    start = time.perf_counter()
    dataset = cgqa_sized_dataset(args.seed)
    features, vectors = constructed_problem(dataset, args)
    setup_s = time.perf_counter() - start
    n_test, n_open = len(dataset.splits["test"]), len(dataset.attrs) * len(dataset.objs)
    report: dict[str, Any] = {
        "benchmark": "wordemb_open_world",
        "dataset": repr(dataset),
        "open_world_pairs": n_open,
        "test_images": n_test,
        "dense_test_matrix_gb": round(n_test * n_open * 4 / 1e9, 2),
        "feature_dim": args.dim,
        "noise": args.noise,
        "context": args.context,
        "setup_s": round(setup_s, 1),
        "peak_rss_after_setup_mb": round(peak_rss_mb(), 1),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "methods": {},
    }
    for name in args.methods.split(","):
        report["methods"][name] = run_method(name, dataset, features, vectors, args)
        print(json.dumps({name: report["methods"][name]}, indent=2, default=str), flush=True)
    report["total_s"] = round(time.perf_counter() - start, 1)
    report["peak_rss_mb"] = round(peak_rss_mb(), 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "methods"}, indent=2))


if __name__ == "__main__":
    main()
