"""Benchmark: how well attributes and objects can be learned from synthetic's train features.

Explains the word-embedding baselines' ceiling on ``synthetic`` with ``toy-clip``: an MLP
classifier (VisProd's head: Linear, LayerNorm, ReLU, dropout 0.1, Linear; Adam 1e-3, batch
64) is trained on the 1,440 cached train features to predict the attribute, and another the
object; their accuracy on val/test images of seen and of unseen pairs is compared with
zero-shot ``clip``'s attribute and object accuracy (its top closed-world pair, no bias).
toy-clip itself was pretrained on tens of thousands of rendered images with captions, so its
text side knows every shape; the baselines only see the train split.

Usage: python benchmarks/synthetic_feature_probe.py [--results-dir results] [--data-root data]
    [--epochs 50] [--out results/benchmarks/synthetic_feature_probe.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tune_wordemb_synthetic import synthetic_context  # beside this script

from bench.methods import FitContext, get_method_class
from bench.methods.base import resolve_hparams
from bench.methods.wordemb import mlp, prepare_features

SEEDS = (0, 1, 2)


def split_groups(ctx: Any, split: str) -> dict[str, np.ndarray]:
    """Boolean masks of the split's images: all, of seen pairs, of unseen pairs."""
    fs = ctx.features[split]
    seen = {tuple(p) for p in np.asarray(ctx.dataset.seen_pairs_ids()).tolist()}
    is_seen = np.array(
        [(int(a), int(o)) in seen for a, o in zip(fs.attr_idx, fs.obj_idx, strict=True)]
    )
    return {"all": np.ones_like(is_seen), "seen": is_seen, "unseen": ~is_seen}


def accuracies(pred: np.ndarray, truth: np.ndarray, groups: dict[str, np.ndarray]) -> dict:
    """Accuracy (%) per group of images; groups without images (train: unseen) are left out."""
    return {
        g: round(100 * float((pred[m] == truth[m]).mean()), 1) for g, m in groups.items() if m.any()
    }


def probe(ctx: Any, kind: str, seed: int, epochs: int) -> dict[str, dict[str, float]]:
    """Train one MLP classifier of ``kind`` (attr_idx / obj_idx); val/test accuracies."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x = prepare_features(torch.as_tensor(ctx.features["train"].features))
    y = torch.as_tensor(np.asarray(getattr(ctx.features["train"], kind)), dtype=torch.long)
    n_classes = len(ctx.dataset.attrs if kind == "attr_idx" else ctx.dataset.objs)
    model = mlp(x.shape[1], n_classes, layers=2, hidden_dim=256, dropout=0.1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        model.train()
        for index in torch.randperm(len(x), generator=generator).split(64):
            loss = F.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    out = {}
    for split in ("train", "val", "test"):
        feats = prepare_features(torch.as_tensor(ctx.features[split].features))
        with torch.no_grad():
            pred = model(feats).argmax(1).numpy()
        truth = np.asarray(getattr(ctx.features[split], kind))
        out[split] = accuracies(pred, truth, split_groups(ctx, split))
    return out


def clip_primitives(ctx: Any) -> dict[str, dict[str, dict[str, float]]]:
    """Zero-shot clip's attribute / object accuracy from its top closed-world pair."""
    hparams = resolve_hparams("clip", ctx.dataset.name)
    clip = get_method_class("clip")(hparams)
    clip.fit(
        FitContext(
            dataset=ctx.dataset,
            backbone=ctx.backbone,
            features=ctx.features,
            hparams=hparams,
            seed=0,
        )
    )
    pairs = np.asarray(ctx.dataset.candidate_pairs("closed"))
    out: dict[str, dict[str, dict[str, float]]] = {"attr_idx": {}, "obj_idx": {}}
    for split in ("val", "test"):
        fs = ctx.features[split]
        scores = np.concatenate(list(clip.score(fs.features, pairs)))
        mask = ctx.dataset.candidate_mask(split, "closed")
        if mask is not None:
            scores = np.where(np.asarray(mask, dtype=bool), scores, -np.inf)
        top = pairs[scores.argmax(1)]
        groups = split_groups(ctx, split)
        out["attr_idx"][split] = accuracies(top[:, 0], np.asarray(fs.attr_idx), groups)
        out["obj_idx"][split] = accuracies(top[:, 1], np.asarray(fs.obj_idx), groups)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path, default=Path("results"))
    parser.add_argument("--data-root", type=Path, default=Path("data"))
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument(
        "--out", type=Path, default=Path("results/benchmarks/synthetic_feature_probe.json")
    )
    args = parser.parse_args()
    ctx, _ = synthetic_context(args.results_dir, args.data_root)
    report: dict[str, Any] = {
        "dataset": "synthetic",
        "backbone": ctx.backbone.spec.raw,
        "train_images": int(len(ctx.features["train"].features)),
        "probe": "MLP 2 layers, hidden 256, dropout 0.1, Adam 1e-3, batch 64",
        "epochs": args.epochs,
        "clip_zero_shot": clip_primitives(ctx),
        "mlp_probe": {},
    }
    for kind in ("attr_idx", "obj_idx"):
        runs = [probe(ctx, kind, seed, args.epochs) for seed in SEEDS]
        report["mlp_probe"][kind] = {
            split: {
                group: round(float(np.mean([r[split][group] for r in runs])), 1)
                for group in runs[0][split]
            }
            for split in runs[0]
        }
    for kind, label in (("attr_idx", "attribute"), ("obj_idx", "object")):
        for split in ("val", "test"):
            probe_acc = report["mlp_probe"][kind][split]
            clip_acc = report["clip_zero_shot"][kind][split]
            print(
                f"{label:9s} {split:4s}  MLP probe (mean of {len(SEEDS)} seeds) "
                f"all {probe_acc['all']:5.1f} seen {probe_acc['seen']:5.1f} "
                f"unseen {probe_acc['unseen']:5.1f} | zero-shot clip all {clip_acc['all']:5.1f} "
                f"seen {clip_acc['seen']:5.1f} unseen {clip_acc['unseen']:5.1f}"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
