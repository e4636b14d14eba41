"""Benchmark: CSP trained on cached image features vs re-encoding images at every step.

The official CSP code re-encodes (augmented) images through the frozen image encoder at every
step. With a frozen encoder and no augmentation, the features can be computed once and cached.
Same backbone, same data, same CSP hyperparameters; epochs are timed directly (a few of them)
and the 20-epoch totals are extrapolated: cached = extraction once + 20 x epoch; re-encode =
20 x epoch. Goal: cached >= 10x faster over 20 epochs.

Usage: python benchmarks/csp_cached_vs_reencode.py [--backbone tiny-random] [--dataset synthetic]
       [--epochs-timed 2] [--device cpu] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from bench.backbones import load_backbone
from bench.data.registry import open_dataset
from bench.features import extract_features
from bench.methods import FitContext, get_method_class
from bench.methods.base import resolve_hparams


def time_fit(dataset, backbone, features, augment: str, epochs: int, seed: int = 0) -> float:
    hparams = resolve_hparams("csp", dataset.name, {"epochs": epochs})
    method = get_method_class("csp")(hparams)
    ctx = FitContext(
        dataset=dataset,
        backbone=backbone,
        features=features,
        hparams=hparams,
        seed=seed,
        device=str(backbone.device),
        augment=augment,
        validate=lambda m: 0.0,  # model selection is not what is timed
    )
    start = time.perf_counter()
    method.fit(ctx)
    if backbone.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tiny-random")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--epochs-timed", type=int, default=2)
    parser.add_argument("--device", default=None)
    parser.add_argument(
        "--out", type=Path, default=Path("results/benchmarks/csp_cached_vs_reencode.json")
    )
    args = parser.parse_args()

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
        cached_epoch = time_fit(dataset, backbone, features, "none", args.epochs_timed)
        reencode_epoch = time_fit(dataset, backbone, features, "paper", args.epochs_timed)

    cached_20 = extraction_s + 20 * cached_epoch
    reencode_20 = 20 * reencode_epoch
    report = {
        "benchmark": "csp_cached_vs_reencode",
        "backbone": args.backbone,
        "dataset": args.dataset,
        "device": str(backbone.device),
        "train_images": len(features["train"].image_paths),
        "epochs_timed": args.epochs_timed,
        "feature_extraction_s_all_splits": round(extraction_s, 3),
        "cached_epoch_s": round(cached_epoch, 4),
        "reencode_epoch_s": round(reencode_epoch, 4),
        "cached_20_epochs_s": round(cached_20, 2),
        "reencode_20_epochs_s": round(reencode_20, 2),
        "speedup_20_epochs": round(reencode_20 / cached_20, 2),
        "speedup_per_epoch": round(reencode_epoch / cached_epoch, 2),
        "goal_speedup": 10,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
