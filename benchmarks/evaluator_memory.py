"""Benchmark: the streaming evaluator on a C-GQA-scale open-world problem.

5,098 test images x 278,362 candidate pairs (413 attrs x 674 objs), scores produced block by
block from random image/text features (as a method's ``score`` would), never as one matrix.
Reports wall time and peak RSS; goal: <= 2 GB peak and <= 60 s on 2 CPU cores.

Usage: python benchmarks/evaluator_memory.py [--images N] [--attrs A] [--objs O] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch

from bench.evaluation import evaluate_scores


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5098)
    parser.add_argument("--attrs", type=int, default=413)
    parser.add_argument("--objs", type=int, default=674)
    parser.add_argument("--seen", type=int, default=5592)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument(
        "--block", type=int, default=None, help="rows per block [default: as methods yield]"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("results/benchmarks/evaluator_memory.json")
    )
    args = parser.parse_args()

    if args.block is None:
        from bench.methods.base import MAX_BLOCK_ELEMENTS

        args.block = max(1, MAX_BLOCK_ELEMENTS // (args.attrs * args.objs))
    rng = np.random.default_rng(0)
    generator = torch.Generator().manual_seed(0)
    pairs = np.array([(a, o) for a in range(args.attrs) for o in range(args.objs)], dtype=np.int64)
    seen = pairs[rng.choice(len(pairs), args.seen, replace=False)]
    labels = np.concatenate(
        [
            seen[rng.integers(0, len(seen), args.images // 2)],
            pairs[rng.integers(0, len(pairs), args.images - args.images // 2)],
        ]
    )
    # Unit text features, normalised in place so the setup itself stays small.
    text = torch.randn(len(pairs), args.dim, generator=generator)
    text.div_(text.norm(dim=1, keepdim=True))
    label_cols = torch.from_numpy(labels[:, 0] * args.objs + labels[:, 1])
    # Images near their pair's text feature (noise of norm ~1), so the task is not at chance.
    noise = torch.randn(args.images, args.dim, generator=generator) / args.dim**0.5
    images = torch.nn.functional.normalize(text[label_cols] + noise, dim=1)
    baseline_rss = peak_rss_mb()
    generation_seconds = 0.0

    def blocks():
        nonlocal generation_seconds
        for start in range(0, args.images, args.block):
            tick = time.perf_counter()
            block = (100.0 * images[start : start + args.block] @ text.T).numpy()
            generation_seconds += time.perf_counter() - tick
            yield block

    start = time.perf_counter()
    result = evaluate_scores(blocks(), labels[:, 0], labels[:, 1], pairs, seen)
    total_s = time.perf_counter() - start
    report = {
        "benchmark": "evaluator_memory",
        "images": args.images,
        "candidates": len(pairs),
        "dense_matrix_gb": args.images * len(pairs) * 4 / 1e9,
        "block_rows": args.block,
        "score_generation_s": round(generation_seconds, 2),
        "evaluator_s": round(total_s - generation_seconds, 2),
        "total_s": round(total_s, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_rss_before_evaluation_mb": round(baseline_rss, 1),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "auc": result["auc"],
        "best_hm": result["best_hm"],
        "goal": {"peak_rss_mb": 2048, "seconds": 60},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
