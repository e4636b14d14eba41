"""Benchmark: a CSP + CoOp grid under the paper protocol, with the augmented-view cache vs
re-encoding the augmented images per method.

Both arms train CSP then CoOp (one dataset, one seed, ``--epochs`` epochs) on the same
seeded augmented views (``bench.features.view_seed``), with the paper protocol's last-epoch
selection and official name cleaning. "views": ``bench.features.TrainViews`` encodes each
epoch's views once (CSP) and CoOp reads them from the cache. "re-encode": every method
re-encodes its augmented images at every step, like the official loop. Validation is not
timed (it is the same in both arms). Prints and saves JSON with the times and their ratio.

Usage: python benchmarks/paper_protocol_views.py [--backbone tiny-random]
       [--dataset synthetic] [--epochs 3] [--device cpu] [--out FILE]
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
from bench.features import TrainViews
from bench.methods import FitContext, get_method_class
from bench.methods.base import resolve_hparams

METHODS = ("csp", "coop")


class CountingBackbone:
    """The backbone with a count of the images its image encoder saw."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.images = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        self.images += int(images.shape[0])
        return self._inner.encode_images(images)


def time_grid(
    dataset: Any, backbone: Any, epochs: int, views_dir: Path | None, seed: int = 0
) -> dict[str, Any]:
    """Fit CSP then CoOp; with ``views_dir`` they share the augmented-view cache there."""
    counting = CountingBackbone(backbone)
    seconds: dict[str, float] = {}
    for name in METHODS:
        hparams = resolve_hparams(name, dataset.name, {"epochs": epochs})
        views = TrainViews(counting, dataset, views_dir, seed) if views_dir else None
        ctx = FitContext(
            dataset=dataset,
            backbone=counting,
            features={},
            hparams=hparams,
            seed=seed,
            device=str(backbone.device),
            augment="paper",
            validate=lambda method: 0.0,  # the same in both arms; not what is timed
            epoch_selection="last",
            name_cleaning="official",
            train_views=views,
        )
        start = time.perf_counter()
        get_method_class(name)(hparams).fit(ctx)
        if backbone.device.type == "cuda":
            torch.cuda.synchronize()
        seconds[name] = time.perf_counter() - start
    return {
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "total_s": round(sum(seconds.values()), 3),
        "images_encoded": counting.images,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tiny-random")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument(
        "--out", type=Path, default=Path("results/benchmarks/paper_protocol_views.json")
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        data_root = args.data_root or Path(scratch) / "data"
        dataset = open_dataset(args.dataset, data_root, prepare=True)
        cache_dir = Path(scratch) / "backbones" if args.backbone.startswith("toy-clip") else None
        backbone = load_backbone(args.backbone, device=args.device, cache_dir=cache_dir)
        reencode = time_grid(dataset, backbone, args.epochs, None)
        views = time_grid(dataset, backbone, args.epochs, Path(scratch) / "results")

    report = {
        "benchmark": "paper_protocol_views",
        "backbone": args.backbone,
        "dataset": args.dataset,
        "device": str(backbone.device),
        "methods": list(METHODS),
        "epochs": args.epochs,
        "train_images": len(dataset.splits["train"]),
        "reencode_per_method": reencode,
        "view_cache": views,
        "speedup": round(reencode["total_s"] / views["total_s"], 2),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
