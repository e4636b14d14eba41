"""Backbone specs, loading (tiny-random, checkpoints, local-dir, offline errors) and encoders."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from bench.backbones import (
    TINY_RANDOM_MODEL,
    Backbone,
    BackboneSpec,
    backbone_names,
    clean_name,
    load_backbone,
    parse_backbone,
)
from bench.backbones.loader import CONFIG_DIR
from bench.device import autocast, autocast_dtype_for, resolve_device
from bench.errors import BenchError


@pytest.fixture(scope="module")
def tiny() -> Backbone:
    return load_backbone("tiny-random", device="cpu")


def _state(backbone: Backbone) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in backbone.model.state_dict().items()}


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


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


@pytest.mark.parametrize(
    ("name", "clean"),
    [
        ("Faux.Fur", "faux fur"),
        ("traffic_light", "traffic light"),
        ("  Ankle   Boots_", "ankle boots"),
        ("wet", "wet"),
    ],
)
def test_clean_name(name: str, clean: str) -> None:
    assert clean_name(name) == clean


# ---------------------------------------------------------------------------- tiny-random
def test_tiny_random_properties(tiny: Backbone) -> None:
    assert tiny.spec.source == "tiny-random"
    assert tiny.random_weights is True
    assert tiny.warning and "RANDOM" in tiny.warning
    assert (tiny.embed_dim, tiny.width, tiny.context_length) == (64, 64, 77)
    assert tiny.device == torch.device("cpu") and tiny.autocast_dtype is None
    assert not tiny.model.training
    assert all(not p.requires_grad for p in tiny.model.parameters())
    assert tiny.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)
    assert tiny.identifier.startswith("tiny-random-")
    assert all(c.isalnum() or c in "._-" for c in tiny.identifier)


def test_tiny_random_is_deterministic(tiny: Backbone) -> None:
    torch.manual_seed(12345)
    before = torch.get_rng_state()
    again = load_backbone("tiny-random", device="cpu")
    assert torch.equal(torch.get_rng_state(), before), "loading must not touch the global RNG"
    _assert_same_weights(_state(tiny), _state(again))
    assert again.identifier == tiny.identifier


def test_encode_text_embeddings_matches_encode_text(tiny: Backbone) -> None:
    tokens = tiny.tokenizer(["a photo of a wet dog", "ancient traffic light", "x"])
    embeddings = tiny.token_embeddings(tokens)
    assert embeddings.shape == (3, 77, 64)
    ours = tiny.encode_text_embeddings(embeddings, tokens)
    with torch.no_grad():
        reference = tiny.model.encode_text(tokens)
    assert ours.dtype == torch.float32 and ours.shape == (3, 64)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


def test_encode_text_embeddings_is_differentiable(tiny: Backbone) -> None:
    tokens = tiny.tokenizer(["a photo of a red circle"])
    embeddings = tiny.token_embeddings(tokens).detach().clone().requires_grad_(True)
    tiny.encode_text_embeddings(embeddings, tokens).sum().backward()
    assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0


def test_encode_text_batches(tiny: Backbone) -> None:
    texts = [f"a photo of thing {i}" for i in range(5)]
    ours = tiny.encode_text(texts, batch_size=2)
    with torch.no_grad():
        reference = tiny.model.encode_text(tiny.tokenizer(texts))
    assert not ours.requires_grad
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
    assert tiny.encode_text([]).shape == (0, 64)


def test_name_embedding_averages_subtokens(tiny: Backbone) -> None:
    ids = tiny.tokenizer.encode("traffic light")
    assert len(ids) >= 2
    row = tiny.tokenizer(["traffic light"])[0]
    assert row[1 : 1 + len(ids)].tolist() == ids  # SOT, sub-tokens, EOT, padding
    expected = tiny.model.token_embedding.weight[ids].mean(dim=0)
    got = tiny.name_embedding("Traffic_Light")
    assert got.shape == (64,)
    torch.testing.assert_close(got, expected)
    single = tiny.tokenizer.encode("wet")
    torch.testing.assert_close(
        tiny.name_embedding("wet"), tiny.model.token_embedding.weight[single[0]]
    )


def test_encode_images(tiny: Backbone) -> None:
    images = [Image.new("RGB", (40, 30), color) for color in ("red", "blue")]
    batch = torch.stack([tiny.preprocess(image) for image in images])
    assert batch.shape == (2, 3, 32, 32)
    features = tiny.encode_images(batch)
    assert features.shape == (2, 64) and features.dtype == torch.float32
    assert not features.requires_grad
    assert tiny.train_transform(images[0]).shape == (3, 32, 32)
    names = [type(t).__name__ for t in tiny.train_transform.transforms]
    assert names[:3] == ["RandomHorizontalFlip", "RandomPerspective", "RandomRotation"]


# ------------------------------------------------------------------ checkpoints and folders
def test_checkpoint_round_trip(tiny: Backbone, tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    torch.save(tiny.model.state_dict(), path)
    loaded = load_backbone(f"{TINY_RANDOM_MODEL}:{path}", device="cpu")
    assert loaded.spec.source == "checkpoint" and loaded.random_weights is False
    assert loaded.warning is None
    _assert_same_weights(_state(tiny), _state(loaded))
    assert loaded.identifier != tiny.identifier
    assert (
        load_backbone(f"{TINY_RANDOM_MODEL}:{path}", device="cpu").identifier == loaded.identifier
    )


def test_safetensors_checkpoint(tiny: Backbone, tmp_path: Path) -> None:
    safetensors = pytest.importorskip("safetensors.torch")
    path = tmp_path / "tiny.safetensors"
    safetensors.save_file({k: v.contiguous() for k, v in _state(tiny).items()}, str(path))
    loaded = load_backbone(f"{TINY_RANDOM_MODEL}:{path}", device="cpu")
    _assert_same_weights(_state(tiny), _state(loaded))


def test_mismatched_checkpoint(tiny: Backbone, tmp_path: Path) -> None:
    state = _state(tiny)
    state["text_projection"] = torch.zeros(3, 3)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(BenchError) as info:
        load_backbone(f"{TINY_RANDOM_MODEL}:{path}", device="cpu")
    assert str(path) in str(info.value) and "\n" not in str(info.value)

    with pytest.raises(BenchError, match="does not exist"):
        load_backbone(f"{TINY_RANDOM_MODEL}:{tmp_path / 'absent.pt'}", device="cpu")


class _NotATensor:
    pass


def test_pickled_object_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"visual.conv1.weight": _NotATensor()}, path)
    with pytest.raises(BenchError) as info:
        load_backbone(f"{TINY_RANDOM_MODEL}:{path}", device="cpu")
    assert str(path) in str(info.value) and "weights_only" in str(info.value)
    assert "\x1b" not in str(info.value)


def test_local_dir(tiny: Backbone, tmp_path: Path) -> None:
    folder = tmp_path / "clip"
    folder.mkdir()
    model_cfg = json.loads((CONFIG_DIR / f"{TINY_RANDOM_MODEL}.json").read_text())
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    torch.save(tiny.model.state_dict(), folder / "open_clip_pytorch_model.bin")
    loaded = load_backbone(f"local-dir:{folder}", device="cpu")
    assert loaded.spec.source == "local-dir" and not loaded.random_weights
    _assert_same_weights(_state(tiny), _state(loaded))
    torch.testing.assert_close(loaded.encode_text(["a red star"]), tiny.encode_text(["a red star"]))

    (folder / "open_clip_pytorch_model.bin").unlink()
    with pytest.raises(BenchError, match="no weights file"):
        load_backbone(f"local-dir:{folder}", device="cpu")
    with pytest.raises(BenchError, match="open_clip_config.json"):
        load_backbone(f"local-dir:{tmp_path}", device="cpu")


# ---------------------------------------------------------------------- errors and offline
@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_missing_pretrained_weights_offline(offline: None, tmp_path: Path) -> None:
    cache = tmp_path / "empty-cache"
    start = time.perf_counter()
    with pytest.raises(BenchError) as info:
        load_backbone("ViT-B-32:openai", device="cpu", cache_dir=cache)
    assert time.perf_counter() - start < 10
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    assert "ViT-B-32:openai" in message and str(cache) in message
    for hint in (
        "HF_HUB_CACHE=DIR",
        "HF_HOME",
        "ViT-B-32:/path/to/weights.pt",
        "local-dir:",
        "hf-hub:",
        "pretrained='openai'",
    ):
        assert hint in message


def test_missing_hf_hub_weights_offline(offline: None, tmp_path: Path) -> None:
    with pytest.raises(BenchError) as info:
        load_backbone("hf-hub:someone/not-cached", device="cpu", cache_dir=tmp_path)
    assert "someone/not-cached" in str(info.value) and "local-dir:" in str(info.value)


def test_unknown_model_and_tag() -> None:
    with pytest.raises(BenchError, match=r"list_models\(\)"):
        load_backbone("ViT-Q-99:openai", device="cpu")
    with pytest.raises(BenchError, match="laion2b_s34b_b79k"):
        load_backbone("ViT-B-32:no-such-tag", device="cpu")


@pytest.mark.skipif(
    importlib.util.find_spec("bench.backbones.toy_clip") is not None,
    reason="toy_clip is installed; its own tests cover it",
)
def test_toy_clip_missing() -> None:
    with pytest.raises(BenchError, match="toy-clip"):
        load_backbone("toy-clip", device="cpu")


# ------------------------------------------------------------------------------ device
def test_resolve_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(BenchError, match="CUDA"):
        resolve_device("cuda")
    with pytest.raises(BenchError, match="not a torch device"):
        resolve_device("gpu-please")


def test_autocast_is_noop_on_cpu() -> None:
    cpu = torch.device("cpu")
    assert autocast_dtype_for(cpu) is None
    with autocast(cpu, torch.bfloat16):
        out = torch.ones(2, 2) @ torch.ones(2, 2)
    assert out.dtype == torch.float32
