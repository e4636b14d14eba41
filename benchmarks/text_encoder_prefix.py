"""Benchmark: prefix-shared vs full text encoding of CSP prompts (forward + backward).

A random open_clip ViT-B-32 text tower on the CPU encodes CSP's training prompts ("a photo of
[attr] [obj]", 8 tokens, learned attribute/object rows after dropout) at MIT-States scale
(1,262 pairs over 115 attributes and 245 objects) and C-GQA scale (5,592 pairs over 413
attributes and 674 objects), as one CSP training step does: encode, cross-entropy against a
batch of image features, backward to the vocabulary. Reports the median step time of the
full encoder (the backbone's ``encode_text_embeddings``) and of ``bench.prefix_text``, their ratio
(``speedup``, goal >= 3 on 2 cores) and the largest feature difference (``max_abs_diff``).

Usage: python benchmarks/text_encoder_prefix.py [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.backbones import load_backbone
from bench.backbones.openclip import OpenClipBackbone
from bench.io import atomic_write_json
from bench.prefix_text import (
    PrefixTree,
    PromptRows,
    Slot,
    encode_prompts,
    fill_template,
    pool_positions,
)

#: Dataset scales and timed steps per encoder (few: a C-GQA full step takes minutes).
SCALES = {
    "mit-states": {"attrs": 115, "objs": 245, "pairs": 1262, "repeats": {"full": 2, "prefix": 3}},
    "cgqa": {"attrs": 413, "objs": 674, "pairs": 5592, "repeats": {"full": 1, "prefix": 1}},
}
CONTEXT_LENGTH = 8
ATTR_DROPOUT = 0.3
IMAGE_BATCH = 128


def csp_prompts(
    backbone: OpenClipBackbone, vocabulary: torch.Tensor, pairs: torch.Tensor, n_attrs: int
) -> PromptRows:
    """CSP's training prompts: the template with the pair's vocabulary rows before EOT."""
    tokens = backbone.tokenizer(["a photo of x x"])[:, :CONTEXT_LENGTH]
    with torch.no_grad():
        embeddings = backbone.token_embeddings(tokens).float()
    eot = int(tokens[0].argmax())
    return fill_template(
        tokens,
        embeddings,
        [
            Slot((eot - 2,), vocabulary, pairs[:, 0]),
            Slot((eot - 1,), vocabulary, pairs[:, 1] + n_attrs),
        ],
    )


def time_step(
    encode: Callable[[PromptRows], torch.Tensor],
    make_prompts: Callable[[], PromptRows],
    vocabulary: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    repeats: int,
) -> tuple[float, torch.Tensor]:
    """Median seconds of one step (prompts, encode, loss, backward) and the last features."""
    times = []
    for _ in range(repeats):
        vocabulary.grad = None
        start = time.perf_counter()
        features = encode(make_prompts())
        logits = 100.0 * images @ F.normalize(features, dim=-1).t()
        F.cross_entropy(logits, labels).backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times), features.detach()


def run_scale(
    backbone: OpenClipBackbone, attrs: int, objs: int, pairs: int, repeats: dict[str, int]
) -> dict:
    """Time the full and the prefix encoder on CSP prompts of one dataset scale."""
    generator = torch.Generator().manual_seed(0)
    grid = torch.cartesian_prod(torch.arange(attrs), torch.arange(objs))
    train_pairs = grid[torch.randperm(len(grid), generator=generator)[:pairs]]
    vocabulary = torch.nn.Parameter(
        0.02 * torch.randn(attrs + objs, backbone.width, generator=generator)
    )
    images = F.normalize(torch.randn(IMAGE_BATCH, backbone.embed_dim, generator=generator), dim=-1)
    labels = torch.randint(0, pairs, (IMAGE_BATCH,), generator=generator)
    mask_generator = torch.Generator()

    def make_prompts() -> PromptRows:
        # the same dropout mask for both encoders, one per step (as CSP draws it)
        mask_generator.manual_seed(1)
        keep = torch.rand(vocabulary.shape, generator=mask_generator) >= ATTR_DROPOUT
        return csp_prompts(backbone, vocabulary * keep / (1 - ATTR_DROPOUT), train_pairs, attrs)

    def full(prompts: PromptRows) -> torch.Tensor:
        return backbone.encode_text_embeddings(prompts.embeddings(), prompts.tokens)

    def prefix(prompts: PromptRows) -> torch.Tensor:
        return encode_prompts(backbone.text_tower(), prompts)

    args = (make_prompts, vocabulary, images, labels)
    full_s, full_features = time_step(full, *args, repeats["full"])
    prefix_s, prefix_features = time_step(prefix, *args, repeats["prefix"])
    prompts = make_prompts()
    tree = PrefixTree.build(prompts.index, pool_positions(backbone.text_tower(), prompts.tokens))
    return {
        "pairs": pairs,
        "attrs": attrs,
        "objs": objs,
        "token_positions_full": prompts.index.numel(),
        "token_positions_prefix": len(tree.node_rows),
        "full_step_s": round(full_s, 3),
        "prefix_step_s": round(prefix_s, 3),
        "speedup": round(full_s / prefix_s, 2),
        "max_abs_diff": float((full_features - prefix_features).abs().max()),
        "repeats": repeats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path("results/benchmarks/text_encoder_prefix.json")
    )
    args = parser.parse_args()
    report: dict = {
        "benchmark": "text_encoder_prefix",
        "backbone": "ViT-B-32 text tower, random weights",
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "load_average_1m_start": round(os.getloadavg()[0], 2),
        "goal_speedup": 3,
    }
    backbone = load_backbone("ViT-B-32", device="cpu")
    for name, scale in SCALES.items():
        report[name] = run_scale(backbone, **scale)
        print(name, json.dumps(report[name]), flush=True)
    report["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
