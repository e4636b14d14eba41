"""GPU check: the CUDA + autocast path end to end, and throughput figures.

Run as one command on a machine with an NVIDIA GPU (CPU CI does not run it):

    python benchmarks/gpu_check.py --out results/benchmarks/gpu_check.json

1. tiny-random on CUDA: autocast dtype, token-level text encoding equals open_clip's, a full
   runner grid (clip, coop, csp; 2 epochs) on synthetic-tiny, and CSP with 0 epochs scoring
   like CLIP under autocast.
2. Throughput of ViT-B-32 with random weights: images/s and prompts/s under autocast.
3. CSP on cached features vs re-encoding images every step (ViT-B-32, synthetic), per epoch.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

from bench.backbones import load_backbone
from bench.data.registry import open_dataset
from bench.executors.local import run_local
from bench.features import extract_features
from bench.methods import FitContext, get_method_class
from bench.methods.base import resolve_hparams
from bench.pipeline.config import RunConfig

DEVICE = "cuda"


def _sync() -> None:
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def check_tiny_random(scratch: Path) -> dict:
    backbone = load_backbone("tiny-random", device=DEVICE)
    tokens = backbone.tokenizer(["a photo of red circle", "ancient traffic light"])
    ours = backbone.encode_text_embeddings(backbone.token_embeddings(tokens), tokens)
    with (
        torch.no_grad(),
        torch.autocast(
            DEVICE.split(":")[0],
            dtype=backbone.autocast_dtype or torch.float32,
            enabled=backbone.autocast_dtype is not None,
        ),
    ):
        reference = backbone.model.encode_text(tokens.to(DEVICE)).float()
    quiet = Console(file=io.StringIO())
    config = RunConfig(
        methods=("clip", "coop", "csp"),
        datasets=("synthetic-tiny",),
        seeds=(0,),
        backbone="tiny-random",
        epochs=2,
        data_root=scratch / "data",
        results_dir=scratch / "results",
        device=DEVICE,
        log_mlflow=False,
    )
    start = time.perf_counter()
    outcomes = run_local(config, console=quiet)
    grid_s = time.perf_counter() - start
    zero = run_local(
        RunConfig(
            **{
                **config.__dict__,
                "epochs": 0,
                "results_dir": scratch / "results0",
                "methods": ("clip", "csp"),
            }
        ),
        console=quiet,
    )
    by_method = {o.cell.method: o.result["metrics"]["test"]["cw"] for o in zero}
    return {
        "device_name": torch.cuda.get_device_name(0) if DEVICE.startswith("cuda") else "cpu",
        "autocast_dtype": str(backbone.autocast_dtype),
        "text_encoding_max_abs_diff_vs_open_clip": float((ours - reference).abs().max()),
        "grid_seconds": round(grid_s, 2),
        "grid_test_cw_auc": {
            o.cell.method: o.result["metrics"]["test"]["cw"]["auc"] for o in outcomes
        },
        "grid_devices": sorted({o.result["device"] for o in outcomes}),
        "epochs0_csp_minus_clip_closed_acc": by_method["csp"]["closed_acc"]
        - by_method["clip"]["closed_acc"],
        "epochs0_csp_minus_clip_auc": by_method["csp"]["auc"] - by_method["clip"]["auc"],
    }


def throughput_vit_b32() -> dict:
    backbone = load_backbone("ViT-B-32", device=DEVICE)
    images = torch.randn(256, 3, 224, 224)
    backbone.encode_images(images[:16])
    _sync()
    start = time.perf_counter()
    for _ in range(4):
        backbone.encode_images(images)
    _sync()
    image_rate = 4 * len(images) / (time.perf_counter() - start)
    prompts = [f"a photo of attr{i % 400} obj{i % 650}" for i in range(8192)]
    backbone.encode_text(prompts[:256])
    _sync()
    start = time.perf_counter()
    backbone.encode_text(prompts, batch_size=1024)
    _sync()
    text_rate = len(prompts) / (time.perf_counter() - start)
    return {
        "vit_b32_random_images_per_s": round(image_rate, 1),
        "vit_b32_random_prompts_per_s": round(text_rate, 1),
    }


def cached_vs_reencode(scratch: Path) -> dict:
    backbone = load_backbone("ViT-B-32", device=DEVICE)
    dataset = open_dataset("synthetic", scratch / "data", prepare=True)
    quiet = Console(file=io.StringIO())
    start = time.perf_counter()
    features = {
        s: extract_features(backbone, dataset, s, scratch / "fx", console=quiet, num_workers=4)
        for s in ("train", "val", "test")
    }
    extraction = time.perf_counter() - start
    seconds = {}
    for augment in ("none", "paper"):
        hparams = resolve_hparams("csp", dataset.name, {"epochs": 1})
        method = get_method_class("csp")(hparams)
        ctx = FitContext(
            dataset=dataset,
            backbone=backbone,
            features=features,
            hparams=hparams,
            seed=0,
            device=DEVICE,
            augment=augment,
            validate=lambda m: 0.0,
        )
        start = time.perf_counter()
        method.fit(ctx)
        _sync()
        seconds[augment] = time.perf_counter() - start
    cached_20 = extraction + 20 * seconds["none"]
    return {
        "csp_epoch_cached_s": round(seconds["none"], 3),
        "csp_epoch_reencode_s": round(seconds["paper"], 3),
        "feature_extraction_s": round(extraction, 3),
        "speedup_20_epochs": round(20 * seconds["paper"] / cached_20, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/gpu_check.json"))
    parser.add_argument(
        "--device", default="cuda", help="cuda (the check); cpu only dry-runs the script"
    )
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check needs a GPU")
    report: dict = {"torch": torch.__version__}
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        for name, step in (
            ("tiny_random", lambda: check_tiny_random(scratch)),
            ("throughput", throughput_vit_b32),
            ("cached_vs_reencode", lambda: cached_vs_reencode(scratch)),
        ):
            start = time.perf_counter()
            try:
                report[name] = step()
            except Exception as exc:  # report every step, even after a failure
                report[name] = {"error": f"{type(exc).__name__}: {exc}"}
            report[name]["step_seconds"] = round(time.perf_counter() - start, 1)
            print(json.dumps({name: report[name]}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        "GPU CHECK",
        "FAILED" if any("error" in v for v in report.values() if isinstance(v, dict)) else "PASSED",
    )


if __name__ == "__main__":
    main()
