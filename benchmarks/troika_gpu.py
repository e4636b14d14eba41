"""GPU benchmark: Troika's training step, peak GPU memory and scoring throughput at ViT-L/14.

One short command (under four minutes) for a machine with an NVIDIA GPU (nothing is
downloaded: ViT-L-14 has random weights, which cost the same as OpenAI's):

    python benchmarks/troika_gpu.py --out results/benchmarks/troika_gpu.json

For each dataset, a synthetic dataset of its exact sizes (``synthetic-mit-states``,
``synthetic-ut-zappos``, ``synthetic-cgqa``: attributes, objects, training pairs) and
Troika with the card's hyperparameters for it (live adapters, batch size, traction layers):

* a training step (forward + backward + Adam under autocast) on a batch of random images,
  timed after warm-up, and the peak GPU memory (``torch.cuda.max_memory_allocated``);
* scoring throughput (images/s) on random image files against the closed-world candidates
  (the image encoder with adapters, the traction and the attribute/object terms);
* for C-GQA also the open world (278,362 pairs): the candidate texts' time and the images/s
  on a few images.

Epoch and full-run times are extrapolated from the official training-set sizes and epochs
(training steps only, plus one test scoring pass; the report labels them ``extrapolated``).
Without CUDA the script exits with a one-line message and writes nothing; ``--tiny
--device cpu`` runs the same code on tiny-random and synthetic-tiny in seconds (a test).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bench.backbones import load_backbone
from bench.backbones.base import Backbone
from bench.data.czsl import CZSLDataset
from bench.data.synthetic import plan_synthetic
from bench.features import ImageSet
from bench.io import atomic_write_json
from bench.methods import FitContext, get_method_class
from bench.methods.base import resolve_hparams
from bench.methods.training import train_pair_labels
from bench.methods.troika import Troika


@dataclass(frozen=True)
class Target:
    """A dataset Troika is benchmarked on, and its official training schedule."""

    card: str
    preset: str
    train_images: int
    test_images: int


TARGETS = (
    Target("mit-states", "synthetic-mit-states", 30338, 12995),
    Target("ut-zappos", "synthetic-ut-zappos", 22998, 2914),
    Target("cgqa", "synthetic-cgqa", 26920, 5098),
)


@dataclass(frozen=True)
class Sizes:
    """How much the benchmark runs: the full GPU check, or the tiny CPU dry run."""

    backbone: str
    preset: str | None  # None: each target's own preset
    max_batch: int | None
    warmup_steps: int
    timed_steps: int
    closed_images: int
    open_images: int


FULL = Sizes("ViT-L-14", None, None, 2, 5, 256, 8)
TINY = Sizes("tiny-random", "synthetic-tiny", 8, 1, 1, 4, 2)


class Clock:
    """Wall-clock seconds of a callable, synchronising CUDA around it."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, work: Callable[[], Any]) -> float:
        self.sync()
        start = time.perf_counter()
        work()
        self.sync()
        return time.perf_counter() - start

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def peak_gb(self) -> float | None:
        return round(torch.cuda.max_memory_allocated() / 1e9, 2) if self.cuda else None


def random_image_set(folder: Path, n: int, side: int, dataset: CZSLDataset) -> ImageSet:
    """``n`` random-noise PNG files labelled with the first test images' labels."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    attr_idx, obj_idx = (np.asarray(x, dtype=np.int64)[:n] for x in dataset.labels("test"))
    return ImageSet(tuple(paths), attr_idx, obj_idx, tuple(p.name for p in paths))


def training_batch(
    dataset: CZSLDataset, batch_size: int, image_size: int, device: torch.device
) -> tuple[torch.Tensor, ...]:
    """Random images with the labels of ``batch_size`` random training images."""
    attr_idx, obj_idx = (np.asarray(x, dtype=np.int64) for x in dataset.labels("train"))
    rows = np.random.default_rng(0).choice(len(attr_idx), batch_size, replace=False)
    labels = train_pair_labels(
        attr_idx[rows], obj_idx[rows], dataset.seen_pairs_ids(), dataset.name
    )
    images = torch.randn(batch_size, 3, image_size, image_size, device=device)
    return images, labels, torch.as_tensor(attr_idx[rows]), torch.as_tensor(obj_idx[rows])


def scoring_rate(
    method: Troika, images: ImageSet, pairs: np.ndarray, clock: Clock
) -> dict[str, Any]:
    """Candidate-text time, then images/s and peak memory of scoring ``images``."""
    method.invalidate()
    clock.reset_peak()
    texts_s = clock(lambda: method.text_cache.get(pairs, lambda: method.candidate_texts(pairs)))
    scoring_s = clock(lambda: sum(block.shape[0] for block in method.score(images, pairs)))
    return {
        "pairs": len(pairs),
        "images": len(images),
        "candidate_texts_s": round(texts_s, 2),
        "scoring_s": round(scoring_s, 2),
        "images_per_s": round(len(images) / scoring_s, 1),
        "peak_gpu_gb": clock.peak_gb(),
    }


def benchmark_target(
    target: Target, sizes: Sizes, backbone: Backbone, scratch: Path, clock: Clock
) -> dict[str, Any]:
    """Training step, memory and scoring throughput of Troika on one dataset."""
    dataset = plan_synthetic(sizes.preset or target.preset, seed=0).as_dataset()
    hparams = resolve_hparams("troika", target.card)
    batch_size = int(hparams["batch_size"])
    if sizes.max_batch is not None:
        batch_size = min(batch_size, sizes.max_batch)
    method = get_method_class("troika")(hparams)
    assert isinstance(method, Troika)
    ctx = FitContext(
        dataset=dataset,
        backbone=backbone,
        features={},
        hparams={},
        seed=0,
        device=str(backbone.device),
        images={"train": ImageSet.of_split(dataset, "train")},
    )
    method.prepare(ctx)
    method.start_training(ctx)
    optimizer = method.build_optimizer(method.trainable_parameters())
    image_size = int(backbone.model.visual.image_size[0])
    batch = training_batch(dataset, batch_size, image_size, backbone.device)

    def step() -> None:
        loss = method.training_loss(batch, 1)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        method.invalidate()

    method.start_epoch(1)
    for _ in range(sizes.warmup_steps):
        clock(step)
    clock.reset_peak()
    step_s = clock(lambda: [step() for _ in range(sizes.timed_steps)]) / sizes.timed_steps
    train_peak = clock.peak_gb()
    method.finish_epoch(1)

    closed = random_image_set(scratch / target.card, sizes.closed_images, 256, dataset)
    report: dict[str, Any] = {
        "dataset_sizes": {
            "attrs": len(dataset.attrs),
            "objs": len(dataset.objs),
            "train_pairs": len(dataset.train_pairs),
        },
        "batch_size": batch_size,
        "cmt_layers": int(hparams["cmt_layers"]),
        "train_step_s": round(step_s, 4),
        "train_peak_gpu_gb": train_peak,
        "closed_world": scoring_rate(method, closed, dataset.candidate_pairs("closed"), clock),
    }
    if target.card == "cgqa":
        few = random_image_set(scratch / "cgqa-open", sizes.open_images, 256, dataset)
        report["open_world"] = scoring_rate(method, few, dataset.candidate_pairs("open"), clock)
    steps = math.ceil(target.train_images / batch_size)
    epochs = int(hparams["epochs"])
    epoch_s = steps * step_s
    test_rates = {"closed_world": report["closed_world"]["images_per_s"]}
    if "open_world" in report:
        test_rates["open_world"] = report["open_world"]["images_per_s"]
    report["extrapolated"] = {
        "note": "training steps of the official training set x epochs, and one test pass "
        "per world; no validation, data loading or augmentation",
        "train_images": target.train_images,
        "epochs": epochs,
        "steps_per_epoch": steps,
        "epoch_min": round(epoch_s / 60, 1),
        "training_h": round(epochs * epoch_s / 3600, 2),
        "test_scoring_min": {
            world: round(target.test_images / rate / 60, 1) for world, rate in test_rates.items()
        },
    }
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the report it prints and saves."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/troika_gpu.json"))
    parser.add_argument("--device", default="cuda", help="cuda (the benchmark); cpu with --tiny")
    parser.add_argument(
        "--precision", default="fp16", help="CUDA autocast: fp16 (the official code's) or bf16"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="tiny-random on synthetic-tiny: a dry run in seconds"
    )
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: troika_gpu.py needs a GPU (--tiny --device cpu dry-runs)")
    sizes = TINY if args.tiny else FULL
    torch.manual_seed(0)
    backbone = load_backbone(
        sizes.backbone, device=args.device, show_progress=False, precision=args.precision
    )
    clock = Clock(backbone.device)
    report: dict[str, Any] = {
        "benchmark": "troika_gpu",
        "backbone": f"{sizes.backbone} (random weights)",
        "tiny": args.tiny,
        "device": torch.cuda.get_device_name(backbone.device) if clock.cuda else "cpu",
        "autocast_dtype": str(backbone.autocast_dtype),
        "torch": torch.__version__,
    }
    with tempfile.TemporaryDirectory() as folder:
        for target in TARGETS:
            start = time.perf_counter()
            try:
                report[target.card] = benchmark_target(target, sizes, backbone, Path(folder), clock)
            except Exception as exc:  # report every dataset, even after a failure
                report[target.card] = {"error": f"{type(exc).__name__}: {exc}"}
            report[target.card]["seconds"] = round(time.perf_counter() - start, 1)
            print(json.dumps({target.card: report[target.card]}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, report)
    return report


if __name__ == "__main__":
    main()
