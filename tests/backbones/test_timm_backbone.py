"""Tests of the image-only timm backbones (``timm:MODEL[:PATH|:random]``), offline."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.backbones import load_backbone, parse_backbone
from bench.errors import BenchError

timm = pytest.importorskip("timm")

#: timm's smallest ResNet (a test model, a few thousand parameters).
MODEL = "test_resnet"


@functools.cache
def weights_file(folder: str) -> Path:
    from safetensors.torch import save_file

    torch.manual_seed(123)
    model = timm.create_model(MODEL, pretrained=False)
    path = Path(folder) / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_parse_specs() -> None:
    spec = parse_backbone("timm:resnet18.tv_in1k:/w/model.safetensors")
    assert (spec.source, spec.model_name, spec.pretrained) == (
        "timm",
        "resnet18.tv_in1k",
        "/w/model.safetensors",
    )
    assert parse_backbone("timm:resnet18").pretrained is None
    assert parse_backbone("timm:resnet18:random").pretrained == "random"
    for bad in ("timm:", "timm:resnet18:", "timm:res net"):
        with pytest.raises(BenchError, match="expected timm:MODEL"):
            parse_backbone(bad)


def test_local_weights_file(tmp_path: Path) -> None:
    path = weights_file(str(tmp_path))
    backbone = load_backbone(f"timm:{MODEL}:{path}", device="cpu")
    assert not backbone.random_weights and not backbone.has_text_encoder
    size = backbone.preprocess_cfg["input_size"]
    from PIL import Image

    image = Image.fromarray(np.full((40, 30, 3), 128, dtype=np.uint8))
    batch = torch.stack([backbone.preprocess(image)] * 2)
    assert tuple(batch.shape[1:]) == tuple(size)
    features = backbone.encode_images(batch)
    assert features.shape == (2, backbone.embed_dim) and features.dtype == torch.float32
    again = load_backbone(f"timm:{MODEL}:{path}", device="cpu")
    assert again.identifier == backbone.identifier and backbone.identifier.startswith("timm-")
    torch.testing.assert_close(again.encode_images(batch), features)
    # the weights really come from the file
    from safetensors.torch import load_file

    reference = timm.create_model(MODEL, pretrained=False)
    reference.load_state_dict(load_file(str(path)))
    reference.reset_classifier(0)
    torch.testing.assert_close(reference.eval()(batch), features)


def test_no_text_side_and_errors(tmp_path: Path) -> None:
    backbone = load_backbone(f"timm:{MODEL}:random", device="cpu")
    assert backbone.random_weights and "RANDOM" in backbone.warning
    with pytest.raises(BenchError, match="no text encoder"):
        backbone.encode_text(["a photo"])
    with pytest.raises(BenchError, match="no text encoder"):
        backbone.name_embedding("red")
    with pytest.raises(BenchError, match="no text encoder"):
        backbone.text_tower()
    from bench.wordvectors import load_word_vectors

    class Names:
        name, attrs, objs, fingerprint = "toy", ("red",), ("cat",), "fp"

    with pytest.raises(BenchError, match="no text side"):
        load_word_vectors("backbone", Names(), backbone=backbone)
    with pytest.raises(BenchError, match="does not exist"):
        load_backbone(f"timm:{MODEL}:{tmp_path / 'absent.safetensors'}", device="cpu")
    with pytest.raises(BenchError, match="timm has no model"):
        load_backbone("timm:no_such_net_xyz", device="cpu")
    bad = tmp_path / "bad.safetensors"
    from safetensors.torch import save_file

    save_file({"nothing": torch.zeros(1)}, str(bad))
    with pytest.raises(BenchError, match="does not fit"):
        load_backbone(f"timm:{MODEL}:{bad}", device="cpu")
