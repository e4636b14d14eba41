"""The open_clip sources: tiny-random, checkpoints, local-dir, and offline errors."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from bench.backbones import TINY_RANDOM_MODEL, Backbone, load_backbone
from bench.backbones.openclip import CONFIG_DIR
from bench.errors import BenchError


def _state(backbone: Backbone) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in backbone.model.state_dict().items()}


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_tiny_random_is_deterministic(tiny: Backbone) -> None:
    torch.manual_seed(12345)
    before = torch.get_rng_state()
    again = load_backbone("tiny-random", device="cpu")
    assert torch.equal(torch.get_rng_state(), before), "loading must not touch the global RNG"
    _assert_same_weights(_state(tiny), _state(again))
    assert again.identifier == tiny.identifier


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
