"""Benchmark: peak memory and time of DFSP scoring in C-GQA's open world.

The problem has C-GQA's exact sizes (the ``synthetic-cgqa`` plan: 413 attributes, 674
objects, 5,098 test images, 278,362 open-world pairs). Image tokens are random fp16 values
in a memory-mapped file shaped like the backbone's tokens (a ``TokenSet``, as the cache
serves them); DFSP is prepared untrained (scoring costs the same trained or not) and its
test scores are streamed block by block into ``bench.evaluation.evaluate_scores`` (never a
dense 5,098 x 278,362 matrix). The text side runs once per candidate set (all 278,362
prompts through the text encoder, the decomposition as running sums); each block fuses at
most ``block_rows`` images, whatever the number of pairs.

Reports the time of the candidate texts and of scoring + evaluation, and the peak RSS (the
process high-water mark after each phase), plus the sizes that grow with the backbone.

Usage: python benchmarks/dfsp_open_world_memory.py [--backbone tiny-random]
    [--out results/benchmarks/dfsp_open_world_memory.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from token_memory import peak_rss_mb, random_tokens

from bench.backbones import load_backbone
from bench.data.synthetic import plan_synthetic
from bench.evaluation import evaluate_scores
from bench.features import TokenSet
from bench.methods import FitContext, get_method_class
from bench.methods.base import resolve_hparams
from bench.methods.scoring import block_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tiny-random")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=Path("results/benchmarks/dfsp_open_world_memory.json")
    )
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    dataset = plan_synthetic("synthetic-cgqa", seed=args.seed).as_dataset()
    backbone = load_backbone(args.backbone, device="cpu", show_progress=False)
    pairs = dataset.candidate_pairs("open")
    attr_idx, obj_idx = (np.asarray(x, dtype=np.int64) for x in dataset.labels("test"))
    report: dict[str, object] = {
        "backbone": args.backbone,
        "n_test": len(attr_idx),
        "n_pairs": len(pairs),
        "rss_start_mb": round(peak_rss_mb(), 1),
    }
    with tempfile.TemporaryDirectory() as tmp:
        shape = backbone.image_token_shape()
        path = random_tokens(Path(tmp), len(attr_idx), shape, args.seed)
        paths = tuple(s.image for s in dataset.splits["test"])
        tokens = TokenSet(path, attr_idx, obj_idx, paths, cache_hit=True, key="benchmark")
        method = get_method_class("dfsp")(resolve_hparams("dfsp", "cgqa"))
        method.prepare(
            FitContext(dataset=dataset, backbone=backbone, features={}, hparams={}, seed=0)
        )
        report["rss_prepared_mb"] = round(peak_rss_mb(), 1)

        start = time.perf_counter()
        text, context = method.text_cache.get(pairs, lambda: method.candidate_texts(pairs))
        report["candidate_texts_s"] = round(time.perf_counter() - start, 1)
        report["rss_after_texts_mb"] = round(peak_rss_mb(), 1)

        start = time.perf_counter()
        metrics = evaluate_scores(
            method.score(tokens, pairs), attr_idx, obj_idx, pairs, dataset.seen_pairs_ids(), None
        )
        report["score_and_evaluate_s"] = round(time.perf_counter() - start, 1)
        report["rss_peak_mb"] = round(peak_rss_mb(), 1)
        report["test_ow_auc"] = float(metrics["auc"])
    rows = block_rows(1024, len(pairs))
    report["sizes"] = {
        "image_tokens": list(shape),
        "embed_dim": int(text.shape[1]),
        "rows_per_block": rows,
        "text_features_mb": round(text.numel() * 4 / 1e6, 1),
        "score_block_mb": round(rows * len(pairs) * 4 / 1e6, 1),
        "context_mb": round(context.numel() * 4 / 1e6, 3),
    }
    report["machine"] = {"python": platform.python_version(), "torch": torch.__version__}
    print(json.dumps(report, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
