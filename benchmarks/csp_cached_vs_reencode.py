"""Benchmark: CSP epochs as the bench trains vs the official loop.

The official CSP code re-encodes (augmented) images through the frozen image encoder at every
step and runs the text encoder over every position of every training pair's prompt. The
bench caches the image features once (frozen encoder, no augmentation) and encodes each
shared prompt prefix once (``--text-encoding prefix``). Same backbone, data and CSP
hyperparameters; a few epochs of each are timed (validation excluded):

- ``cached_prefix``: cached features + prefix text encoding (the bench's default);
- ``cached_full``: cached features + the full text encoder (isolates the text encoder);
- ``reencode_full``: images re-encoded every step + the full text encoder (the official loop).

It prints and saves the per-epoch seconds of each, ``speedup_per_epoch`` (reencode_full over
cached_prefix; goal >= 10 on a GPU), ``text_speedup_per_epoch`` (cached_full over
cached_prefix) and 20-epoch totals (cached: feature extraction once + 20 epochs).

Usage: python benchmarks/csp_cached_vs_reencode.py [--backbone tiny-random]
       [--dataset synthetic-tiny] [--epochs-timed 2] [--device cpu] [--out FILE]
On a GPU, MIT-States scale: --backbone ViT-L-14 --dataset synthetic-mit-states --device cuda
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.backbones import load_backbone
from bench.data.registry import open_dataset
from bench.features import extract_features
from bench.io import atomic_write_json
from bench.methods import FitContext, get_method_class
from bench.methods.base import resolve_hparams

#: Timed variants: (augment, text encoding).
VARIANTS = {
    "cached_prefix": ("none", "prefix"),
    "cached_full": ("none", "full"),
    "reencode_full": ("paper", "full"),
}
EXTRAPOLATED_EPOCHS = 20


def time_fit(
    dataset: Any, backbone: Any, features: dict, augment: str, text_encoding: str, epochs: int
) -> float:
    """Seconds per epoch of a CSP fit (validation is a constant: not what is timed)."""
    hparams = resolve_hparams("csp", dataset.name, {"epochs": epochs})
    method = get_method_class("csp")(hparams)
    ctx = FitContext(
        dataset=dataset,
        backbone=backbone,
        features=features,
        hparams=hparams,
        seed=0,
        device=str(backbone.device),
        augment=augment,
        text_encoding=text_encoding,
        validate=lambda m: 0.0,
    )
    start = time.perf_counter()
    method.fit(ctx)
    if backbone.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / epochs


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the report it prints and saves."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tiny-random")
    parser.add_argument("--dataset", default="synthetic-tiny")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--epochs-timed", type=int, default=2)
    parser.add_argument("--device", default=None)
    parser.add_argument(
        "--out", type=Path, default=Path("results/benchmarks/csp_cached_vs_reencode.json")
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        data_root = args.data_root or Path(scratch) / "data"
        dataset = open_dataset(args.dataset, data_root, prepare=True)
        cache_dir = Path(scratch) / "backbones" if args.backbone.startswith("toy-clip") else None
        backbone = load_backbone(args.backbone, device=args.device, cache_dir=cache_dir)
        start = time.perf_counter()
        features = {
            s: extract_features(backbone, dataset, s, Path(scratch) / "results")
            for s in ("train", "val", "test")
        }
        extraction_s = time.perf_counter() - start
        epoch_s = {
            name: time_fit(dataset, backbone, features, augment, encoding, args.epochs_timed)
            for name, (augment, encoding) in VARIANTS.items()
        }

    cached_total = extraction_s + EXTRAPOLATED_EPOCHS * epoch_s["cached_prefix"]
    reencode_total = EXTRAPOLATED_EPOCHS * epoch_s["reencode_full"]
    report = {
        "benchmark": "csp_cached_vs_reencode",
        "backbone": args.backbone,
        "dataset": args.dataset,
        "device": str(backbone.device),
        "train_images": len(features["train"].image_paths),
        "train_pairs": len(dataset.train_pairs),
        "epochs_timed": args.epochs_timed,
        "feature_extraction_s_all_splits": round(extraction_s, 3),
        **{f"{name}_epoch_s": round(seconds, 4) for name, seconds in epoch_s.items()},
        "speedup_per_epoch": round(epoch_s["reencode_full"] / epoch_s["cached_prefix"], 2),
        "text_speedup_per_epoch": round(epoch_s["cached_full"] / epoch_s["cached_prefix"], 2),
        f"cached_prefix_{EXTRAPOLATED_EPOCHS}_epochs_s": round(cached_total, 2),
        f"reencode_full_{EXTRAPOLATED_EPOCHS}_epochs_s": round(reencode_total, 2),
        f"speedup_{EXTRAPOLATED_EPOCHS}_epochs": round(reencode_total / cached_total, 2),
        "goal_speedup_per_epoch": 10,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, report)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
