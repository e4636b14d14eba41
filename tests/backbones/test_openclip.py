"""The open_clip backbone: its properties and its image and token-level text encoders."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from bench.backbones import Backbone


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
    # the official CSP order: augment the resized, cropped image
    assert names[:2] == ["Resize", "CenterCrop"]
    flip = names.index("RandomHorizontalFlip")
    assert names[flip : flip + 4] == [
        "RandomHorizontalFlip",
        "RandomPerspective",
        "RandomRotation",
        "MaybeToTensor",
    ]


# ------------------------------------------------------------------------- image tokens
def _toy_clip_architecture() -> Backbone:
    """toy-clip's architecture with random weights (its pretraining is not needed here)."""
    from bench.backbones.openclip import (
        BuiltModel,
        assemble_backbone,
        create_model,
        register_configs,
    )
    from bench.backbones.spec import BackboneSpec

    register_configs()
    spec = BackboneSpec("toy-clip", "toy-clip", "toy-clip", None)
    model = create_model(spec, "toy-clip", cache_dir=None)
    built = BuiltModel(model, "random", True, "toy-clip", "toy-clip-architecture")
    return assemble_backbone(spec, built, torch.device("cpu"), None)


@pytest.mark.parametrize("config", ["tiny-random", "toy-clip"])
def test_pooled_from_tokens_equals_encode_images(tiny: Backbone, config: str) -> None:
    backbone = tiny if config == "tiny-random" else _toy_clip_architecture()
    size = backbone.preprocess_cfg["size"]
    size = size[0] if isinstance(size, (list, tuple)) else size
    images = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    tokens = backbone.encode_image_tokens(images)
    n_tokens, width = backbone.image_token_shape()
    assert tokens.shape == (3, n_tokens, width) and tokens.dtype == torch.float32
    assert n_tokens == 1 + (size // backbone.model.visual.patch_size[0]) ** 2
    pooled = backbone.pool_image_tokens(tokens)
    assert torch.equal(pooled, backbone.encode_images(images))


def test_text_hidden_then_pool_is_encode_text(tiny: Backbone) -> None:
    tokens = tiny.tokenizer(["a photo of red cat", "a dog"])
    hidden = tiny.encode_text_hidden(tiny.token_embeddings(tokens))
    assert hidden.shape == (2, tokens.shape[1], tiny.width)
    assert torch.equal(
        tiny.pool_text_tokens(hidden, tokens), tiny.encode_text(["a photo of red cat", "a dog"])
    )
