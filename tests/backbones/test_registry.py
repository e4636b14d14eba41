"""Spec parsing through the source registry, and the listed example specs."""

from __future__ import annotations

import pytest

from bench.backbones import TINY_RANDOM_MODEL, BackboneSpec, backbone_names, parse_backbone
from bench.backbones.registry import SOURCES, load_backbone
from bench.errors import BenchError


# ---------------------------------------------------------------------------- parsing
@pytest.mark.parametrize(
    ("raw", "source", "model", "pretrained"),
    [
        ("ViT-L-14:openai", "open_clip", "ViT-L-14", "openai"),
        ("ViT-B-32:laion2b_s34b_b79k", "open_clip", "ViT-B-32", "laion2b_s34b_b79k"),
        ("  ViT-B-32  ", "open_clip", "ViT-B-32", None),
        (
            "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
            "hf-hub",
            "laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
            None,
        ),
        ("local-dir:/models/clip", "local-dir", "/models/clip", None),
        ("ViT-B-32:/ckpt/weights.pt", "checkpoint", "ViT-B-32", "/ckpt/weights.pt"),
        ("ViT-B-32:weights.safetensors", "checkpoint", "ViT-B-32", "weights.safetensors"),
        ("ViT-B-32:./w.bin", "checkpoint", "ViT-B-32", "./w.bin"),
        ("tiny-random", "tiny-random", TINY_RANDOM_MODEL, None),
        ("toy-clip", "toy-clip", "toy-clip", None),
    ],
)
def test_parse_backbone_forms(raw: str, source: str, model: str, pretrained: str | None) -> None:
    spec = parse_backbone(raw)
    assert spec == BackboneSpec(raw.strip(), source, model, pretrained)


@pytest.mark.parametrize(
    "raw", ["", "  ", ":openai", "ViT-B-32:", "hf-hub:", "local-dir:", "a b:c"]
)
def test_parse_backbone_malformed(raw: str) -> None:
    with pytest.raises(BenchError):
        parse_backbone(raw)


def test_parse_expands_home() -> None:
    assert not parse_backbone("ViT-B-32:~/w.pt").pretrained.startswith("~")
    assert not parse_backbone("local-dir:~/clip").model_name.startswith("~")


def test_backbone_names() -> None:
    names = backbone_names()
    assert "tiny-random" in names and "toy-clip" in names
    assert all(isinstance(parse_backbone(name), BackboneSpec) for name in names)


def test_every_source_is_registered_once_and_named_by_its_specs() -> None:
    names = [source.name for source in SOURCES]
    assert sorted(names) == sorted(
        ["open_clip", "hf-hub", "local-dir", "checkpoint", "tiny-random", "toy-clip", "timm"]
    )
    for source in SOURCES:
        for example in source.examples:
            assert parse_backbone(example).source == source.name


def test_unknown_source_is_refused() -> None:
    with pytest.raises(BenchError, match="unknown source 'nowhere'"):
        load_backbone(BackboneSpec("x", "nowhere", "x", None), device="cpu")
