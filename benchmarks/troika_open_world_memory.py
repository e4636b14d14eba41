"""Benchmark: peak memory and time of Troika scoring in C-GQA's open world.

The problem has C-GQA's exact sizes (the ``synthetic-cgqa`` plan: 413 attributes, 674
objects, 5,098 test images, 278,362 open-world pairs). Troika runs with ``adapters = false``
on random fp16 image tokens in a memory-mapped file shaped like the backbone's tokens (a
``TokenSet``, as the cache serves them): apart from the image encoder, which the live
variant runs once per image, the scoring work per image is the same. Troika is prepared
untrained (scoring costs the same trained or not); its score blocks are streamed into
``bench.evaluation.evaluate_scores`` (never a dense images x pairs matrix), and the pair
path's traction runs over chunks of at most ``troika.TRACTION_ROWS`` (image, pair) rows
(never images x pairs x width).

The traction runs per image and candidate pair, so on a few CPU cores the whole test split
is slow: ``--images N`` scores the first N test images only. The report gives the measured
times, the per-image scoring time and, labelled ``extrapolated``, the time for every test
image; the peak RSS (the process high-water mark) after each phase; and the sizes that a
dense score matrix or an unstreamed traction would take (``rows_per_block`` and
``pairs_per_traction_chunk`` are those of the whole test split; with fewer images a block
holds ``rows_per_measured_block`` images and its traction chunks more pairs).

Usage: python benchmarks/troika_open_world_memory.py [--backbone tiny-random] [--images 32]
    [--out results/benchmarks/troika_open_world_memory.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from token_memory import peak_rss_mb, random_tokens

from bench.backbones import load_backbone
from bench.data.synthetic import plan_synthetic
from bench.evaluation import evaluate_scores
from bench.features import TokenSet
from bench.io import atomic_write_json
from bench.methods import FitContext, get_method_class
from bench.methods.base import resolve_hparams
from bench.methods.scoring import block_rows
from bench.methods.troika import TRACTION_ROWS

#: The cards' hyperparameter table the sizes come from (C-GQA: 2 traction layers).
HPARAMS_DATASET = "cgqa"


class TimedBlocks:
    """Iterates ``blocks`` and adds the time spent producing each one to ``seconds``."""

    def __init__(self, blocks: Iterable[np.ndarray]) -> None:
        self.blocks = blocks
        self.seconds = 0.0
        self.count = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        iterator = iter(self.blocks)
        while True:
            start = time.perf_counter()
            block = next(iterator, None)
            self.seconds += time.perf_counter() - start
            if block is None:
                return
            self.count += 1
            yield block


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the report it prints and saves."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tiny-random")
    parser.add_argument(
        "--preset", default="synthetic-cgqa", help="synthetic plan (tests use synthetic-tiny)"
    )
    parser.add_argument(
        "--images", type=int, default=32, help="test images scored (0: all of them)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=Path("results/benchmarks/troika_open_world_memory.json")
    )
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    dataset = plan_synthetic(args.preset, seed=args.seed).as_dataset()
    backbone = load_backbone(args.backbone, device="cpu", show_progress=False)
    pairs = dataset.candidate_pairs("open")
    attr_idx, obj_idx = (np.asarray(x, dtype=np.int64) for x in dataset.labels("test"))
    n_test = len(attr_idx)
    n_scored = n_test if args.images <= 0 else min(args.images, n_test)
    report: dict[str, Any] = {
        "benchmark": "troika_open_world_memory",
        "backbone": args.backbone,
        "dataset": args.preset,
        "variant": "adapters=false (cached tokens)",
        "n_test": n_test,
        "n_scored": n_scored,
        "n_pairs": len(pairs),
        "rss_start_mb": round(peak_rss_mb(), 1),
    }
    hparams = resolve_hparams("troika", HPARAMS_DATASET, {"adapters": False})
    with tempfile.TemporaryDirectory() as tmp:
        shape = backbone.image_token_shape()
        path = random_tokens(Path(tmp), n_scored, shape, args.seed)
        paths = tuple(s.image for s in dataset.splits["test"])[:n_scored]
        labels = attr_idx[:n_scored], obj_idx[:n_scored]
        tokens = TokenSet(path, *labels, paths, cache_hit=True, key="benchmark")
        method = get_method_class("troika")(hparams)
        method.prepare(
            FitContext(dataset=dataset, backbone=backbone, features={}, hparams={}, seed=0)
        )
        report["rss_prepared_mb"] = round(peak_rss_mb(), 1)

        start = time.perf_counter()
        texts = method.text_cache.get(pairs, lambda: method.candidate_texts(pairs))
        report["candidate_texts_s"] = round(time.perf_counter() - start, 1)
        report["rss_after_texts_mb"] = round(peak_rss_mb(), 1)

        blocks = TimedBlocks(method.score(tokens, pairs))
        start = time.perf_counter()
        metrics = evaluate_scores(blocks, *labels, pairs, dataset.seen_pairs_ids(), None)
        total = time.perf_counter() - start
        report["score_and_evaluate_s"] = round(total, 1)
        report["scoring_s"] = round(blocks.seconds, 3)
        report["evaluation_s"] = round(total - blocks.seconds, 1)
        report["score_blocks"] = blocks.count
        report["rss_peak_mb"] = round(peak_rss_mb(), 1)
        report["test_ow_auc_of_scored_images"] = float(metrics["auc"])
    per_image = blocks.seconds / n_scored
    report["scoring_s_per_image"] = round(per_image, 4)
    report["extrapolated"] = {
        "note": f"measured on {n_scored} images, scaled linearly to all {n_test}",
        "scoring_all_test_images_s": round(per_image * n_test, 0),
        "scoring_all_test_images_h": round(per_image * n_test / 3600, 2),
    }
    rows = block_rows(1024, len(pairs))
    embed_dim = int(texts["pair"].shape[1])
    dense_scores = n_test * len(pairs) * 4
    report["sizes"] = {
        "image_tokens": list(shape),
        "embed_dim": embed_dim,
        "cmt_layers": int(hparams["cmt_layers"]),
        "rows_per_block": rows,
        "rows_per_measured_block": min(rows, n_scored),
        "traction_rows": TRACTION_ROWS,
        "pairs_per_traction_chunk": max(1, TRACTION_ROWS // rows),
        "text_features_mb": round(sum(t.numel() for t in texts.values()) * 4 / 1e6, 1),
        "score_block_mb": round(rows * len(pairs) * 4 / 1e6, 1),
        "traction_chunk_activation_mb": round(TRACTION_ROWS * 4 * embed_dim * 4 / 1e6, 1),
        "dense_scores_gb": round(dense_scores / 1e9, 2),
        "dense_traction_fp32_gb": round(dense_scores * embed_dim / 1e9, 1),
    }
    report["machine"] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(report, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, report)
    return report


if __name__ == "__main__":
    main()
