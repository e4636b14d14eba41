"""Prefix-shared text encoding equals the full encoding: features and gradients, fp32, CPU."""

from __future__ import annotations

import dataclasses

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool

from bench.backbones import find_text_tower, load_backbone
from bench.backbones.openclip import OpenClipBackbone
from bench.errors import BenchError
from bench.prefix_text import (
    PrefixTree,
    PromptRows,
    Slot,
    check_tower,
    encode_prompts,
    encode_tree,
    fill_template,
    pool_positions,
    token_prompts,
)

TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}
ATTRS = ["red", "faux fur", "ancient", "wet"]
OBJS = ["circle", "traffic light", "dog", "square", "sliced apple pie"]
PAIRS = torch.tensor([(a, o) for a in range(len(ATTRS)) for o in range(len(OBJS)) if (a + o) % 3])


@pytest.fixture(scope="module")
def tiny() -> OpenClipBackbone:
    return load_backbone("tiny-random", device="cpu")


def _loss(features: torch.Tensor) -> torch.Tensor:
    """A CSP-like loss on unit features, against fixed random targets."""
    target = torch.randn(features.shape, generator=torch.Generator().manual_seed(3))
    return (F.normalize(features, dim=-1) * target).sum()


def _features_and_grads(
    encode, prompts: PromptRows, leaves: list[torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    features = encode(prompts)
    return features.detach(), list(torch.autograd.grad(_loss(features), leaves))


def _assert_prefix_equals_full(full, tower, prompts_fn, leaves) -> None:
    """Same features and same gradients of every leaf for both encoders."""
    ref, ref_grads = _features_and_grads(full, prompts_fn(), leaves)
    got, got_grads = _features_and_grads(lambda p: encode_prompts(tower, p), prompts_fn(), leaves)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    torch.testing.assert_close(got, ref, **TOLERANCE)
    for mine, theirs in zip(got_grads, ref_grads, strict=True):
        scale = float(theirs.abs().max())
        assert scale > 0
        # gradients sum over many prompts in another order: 1e-5 of their largest entry
        torch.testing.assert_close(mine, theirs, atol=1e-5 * max(1.0, scale), rtol=1e-5)


def _backbone_full(backbone: OpenClipBackbone):
    return lambda p: backbone.encode_text_embeddings(p.embeddings(), p.tokens)


def _template(backbone: OpenClipBackbone, length: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    tokens = backbone.tokenizer(["a photo of x x"])[:, :length]
    with torch.no_grad():
        embeddings = backbone.token_embeddings(tokens).float()
    return tokens, embeddings, int(tokens[0].argmax())


def _rows(n: int, width: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.Parameter(0.05 * torch.randn(n, width, generator=generator))


# ---------------------------------------------------------------------------- CSP / CoOp / CLIP
@pytest.mark.parametrize("length", [8, 77], ids=["context-8", "context-77-padded"])
def test_csp_prompts_match_full(tiny: OpenClipBackbone, length: int) -> None:
    tokens, embeddings, eot = _template(tiny, length)
    vocabulary = _rows(len(ATTRS) + len(OBJS), tiny.width, seed=0)
    keep = torch.rand(vocabulary.shape, generator=torch.Generator().manual_seed(1)) >= 0.3

    def prompts() -> PromptRows:
        dropped = vocabulary * keep / 0.7  # one dropout mask per step, as CSP draws it
        return fill_template(
            tokens,
            embeddings,
            [
                Slot((eot - 2,), dropped, PAIRS[:, 0]),
                Slot((eot - 1,), dropped, PAIRS[:, 1] + len(ATTRS)),
            ],
        )

    _assert_prefix_equals_full(_backbone_full(tiny), tiny.text_tower(), prompts, [vocabulary])


def test_coop_prompts_match_full(tiny: OpenClipBackbone) -> None:
    tokens, embeddings, eot = _template(tiny, 8)
    context = _rows(3, tiny.width, seed=4)
    with torch.no_grad():
        attr_vectors = torch.stack([tiny.name_embedding(a) for a in ATTRS])
        obj_vectors = torch.stack([tiny.name_embedding(o) for o in OBJS])
    every = torch.arange(3).expand(len(PAIRS), 3)

    def prompts() -> PromptRows:
        return fill_template(
            tokens,
            embeddings,
            [
                Slot((1, 2, 3), context, every),
                Slot((eot - 2,), attr_vectors, PAIRS[:, 0]),
                Slot((eot - 1,), obj_vectors, PAIRS[:, 1]),
            ],
        )

    _assert_prefix_equals_full(_backbone_full(tiny), tiny.text_tower(), prompts, [context])


def test_hard_prompts_with_names_of_different_lengths_match_full(tiny: OpenClipBackbone) -> None:
    texts = [f"a photo of {a} {o}" for a, o in PAIRS.tolist() for a, o in [(ATTRS[a], OBJS[o])]]
    tokens = tiny.tokenizer(texts)
    assert tokens.shape[1] == 77 and len(set(tokens.argmax(-1).tolist())) > 2
    table = tiny.model.token_embedding.weight.detach().clone().requires_grad_(True)

    def prompts() -> PromptRows:
        return PromptRows(tokens, table, tokens)

    _assert_prefix_equals_full(_backbone_full(tiny), tiny.text_tower(), prompts, [table])
    with torch.no_grad():
        reference = tiny.model.encode_text(tokens)
        got = encode_prompts(tiny.text_tower(), token_prompts(tiny.text_tower(), tokens))
    torch.testing.assert_close(got, reference, **TOLERANCE)


# ---------------------------------------------------------------------------- the tree
def test_tree_shares_prefix_and_attribute_positions(tiny: OpenClipBackbone) -> None:
    tokens, embeddings, eot = _template(tiny, 8)
    vocabulary = _rows(len(ATTRS) + len(OBJS), tiny.width, seed=0)
    prompts = fill_template(
        tokens,
        embeddings,
        [
            Slot((eot - 2,), vocabulary, PAIRS[:, 0]),
            Slot((eot - 1,), vocabulary, PAIRS[:, 1] + len(ATTRS)),
        ],
    )
    assert prompts.rows.shape[0] == 8 + len(vocabulary)  # one table for both slots
    tree = PrefixTree.build(prompts.index, pool_positions(tiny.text_tower(), prompts.tokens))
    n_attrs = len(PAIRS[:, 0].unique())
    # SOT a photo of | one node per attribute | object and EOT per pair; padding never
    assert len(tree.node_rows) == (eot - 2) + n_attrs + 2 * len(PAIRS)
    assert tree.shared.tolist() == list(range(eot - 2))
    assert tree.branch.shape == (len(tree.node_rows), 2)
    assert tree.node_depths.max() == eot
    assert tree.outputs.unique().numel() == len(PAIRS)
    torch.testing.assert_close(
        encode_tree(tiny.text_tower(), tree, prompts.rows),
        encode_prompts(tiny.text_tower(), prompts),
    )


def test_identical_prompts_share_every_node(tiny: OpenClipBackbone) -> None:
    tokens = tiny.tokenizer(["a photo of a dog"] * 3 + ["a photo"])
    tree = PrefixTree.build(tokens, pool_positions(tiny.text_tower(), tokens))
    assert tree.outputs[:3].unique().numel() == 1
    assert len(tree.node_rows) == int(tokens[0].argmax()) + 1 + 1  # + EOT after "a photo"


def test_output_positions_can_be_chosen(tiny: OpenClipBackbone) -> None:
    tokens = tiny.tokenizer(["a photo of a dog", "a cat"])
    prompts = token_prompts(tiny.text_tower(), tokens)
    with torch.no_grad():
        got = encode_prompts(tiny.text_tower(), prompts, positions=torch.tensor([2, 1]))
        cut = tokens.clone()
        cut[0, 3:] = 0
        cut[1, 2:] = 0
        cut[0, 2], cut[1, 1] = 49407, 49407  # pooled as if the prompts ended there
        reference = tiny.encode_text_embeddings(prompts.embeddings(), cut)
    torch.testing.assert_close(got, reference, **TOLERANCE)


def test_checkpointed_layers_give_the_same_features_and_gradients(tiny: OpenClipBackbone) -> None:
    tokens = tiny.tokenizer(["a photo of red circle", "a photo of wet traffic light"])
    table = tiny.model.token_embedding.weight.detach().clone().requires_grad_(True)
    prompts = PromptRows(tokens, table, tokens)
    plain = encode_prompts(tiny.text_tower(), prompts)
    (plain_grad,) = torch.autograd.grad(_loss(plain), [table])
    saved = encode_prompts(tiny.text_tower(), prompts, checkpoint_layers=True)
    (saved_grad,) = torch.autograd.grad(_loss(saved), [table])
    torch.testing.assert_close(saved, plain, **TOLERANCE)
    torch.testing.assert_close(saved_grad, plain_grad, **TOLERANCE)


def test_autocast_bfloat16_stays_close_to_the_full_encoder(tiny: OpenClipBackbone) -> None:
    tokens = tiny.tokenizer([f"a photo of {a} {o}" for a in ATTRS for o in OBJS])
    prompts = token_prompts(tiny.text_tower(), tokens)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = encode_prompts(tiny.text_tower(), prompts)
        reference = tiny.encode_text_embeddings(prompts.embeddings(), tokens)
    assert got.dtype == torch.float32
    assert (got - reference).norm() <= 0.05 * reference.norm()


# ---------------------------------------------------------------------------- other towers
def _custom_text_clip(**text_cfg) -> torch.nn.Module:
    """A tiny CustomTextCLIP (open_clip ships no tiny config for one), all weights random."""
    config = {"context_length": 16, "width": 32, "heads": 2, "layers": 2, **text_cfg}
    vision = {"image_size": 16, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16}
    torch.manual_seed(0)
    model = open_clip.CustomTextCLIP(embed_dim=24, vision_cfg=vision, text_cfg=config)
    with torch.no_grad():
        for parameter in model.text.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model.eval().requires_grad_(False)


def _open_clip_full(model: torch.nn.Module):
    """A transcription of open_clip's ``TextTransformer.forward`` on given embeddings."""
    text = model.text

    def encode(prompts: PromptRows) -> torch.Tensor:
        length = prompts.tokens.shape[1]
        x = prompts.embeddings() + text.positional_embedding[:length]
        x = text.transformer(x, attn_mask=text.attn_mask[:length, :length])
        x = text.ln_final(x)
        x = text_global_pool(x, prompts.tokens, text.pool_type, eos_token_id=text.eos_id)
        projection = text.text_projection
        if projection is None:
            return x
        return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection

    return encode


CUSTOM_TOWERS = {
    "custom-blocks-eos-pool": {
        "qk_norm": True,
        "scale_heads": True,
        "scale_attn": True,
        "scale_attn_inner": True,
        "scale_fc": True,
        "ls_init_value": 0.5,
        "pool_type": "eos",
        "eos_id": 49407,
        "proj_bias": True,
    },
    "layer-scale-last-pool": {"ls_init_value": 0.5, "pool_type": "last"},
    "first-pool-no-projection": {"pool_type": "first", "proj_type": "none"},
}


@pytest.mark.parametrize("text_cfg", CUSTOM_TOWERS.values(), ids=CUSTOM_TOWERS.keys())
def test_custom_text_clip_towers_match_full(text_cfg: dict) -> None:
    model = _custom_text_clip(**text_cfg)
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=16)
    tokens = tokenizer([f"a photo of {a} {o}" for a in ATTRS for o in OBJS])
    table = model.text.token_embedding.weight.detach().clone().requires_grad_(True)
    full = _open_clip_full(model)
    with torch.no_grad():
        torch.testing.assert_close(
            full(PromptRows(tokens, table, tokens)), model.text(tokens), **TOLERANCE
        )
    _assert_prefix_equals_full(
        full, find_text_tower(model), lambda: PromptRows(tokens, table, tokens), [table]
    )


def test_bidirectional_tower_is_refused() -> None:
    model = _custom_text_clip(no_causal_mask=True, pool_type="last")
    tokens = torch.tensor([[49406, 320, 49407]])
    with pytest.raises(ValueError, match="causal"):
        tower = find_text_tower(model)
        encode_prompts(tower, token_prompts(tower, tokens))


def test_pooling_over_all_positions_is_refused() -> None:
    model = _custom_text_clip(pool_type="none")
    with pytest.raises(ValueError, match="pool type"):
        pool_positions(find_text_tower(model), torch.tensor([[49406, 49407]]))


def test_check_tower_refuses_up_front_what_encoding_would_refuse(tiny: OpenClipBackbone) -> None:
    check_tower(tiny.text_tower())
    for text_cfg in CUSTOM_TOWERS.values():
        check_tower(find_text_tower(_custom_text_clip(**text_cfg)))
    with pytest.raises(ValueError, match="causal"):
        check_tower(find_text_tower(_custom_text_clip(no_causal_mask=True, pool_type="last")))
    with pytest.raises(ValueError, match="pool type"):
        check_tower(find_text_tower(_custom_text_clip(pool_type="none")))


def test_model_without_text_tower_is_refused(tiny: OpenClipBackbone) -> None:
    assert find_text_tower(torch.nn.Linear(2, 2)) is None
    towerless = dataclasses.replace(tiny, model=torch.nn.Linear(2, 2))
    with pytest.raises(BenchError, match="no token-level text transformer"):
        towerless.text_tower()
