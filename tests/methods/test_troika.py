"""Troika: live images through adapters, or cached tokens; learning, exact resume, and the
official details (traction weight, inference term, loss weights, streaming)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.backbones import Backbone, load_backbone
from bench.data.czsl import CZSLDataset
from bench.features import ImageSet, TokenSet, extract_features, extract_tokens
from bench.methods import get_method_class
from bench.methods import troika as troika_module
from bench.methods.base import FitContext, resolve_hparams
from bench.methods.troika import Troika

SPLITS = ("train", "val", "test")


@functools.cache
def backbone() -> Backbone:
    return load_backbone("tiny-random", device="cpu")


@pytest.fixture(scope="module")
def inputs(
    tiny_dataset: CZSLDataset, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Any]]:
    results = tmp_path_factory.mktemp("troika-cache")
    return {
        "features": {s: extract_features(backbone(), tiny_dataset, s, results) for s in SPLITS},
        "tokens": {s: extract_tokens(backbone(), tiny_dataset, s, results) for s in SPLITS},
        "images": {s: ImageSet.of_split(tiny_dataset, s) for s in SPLITS},
    }


class _Stop(Exception):
    pass


def _source(method: Troika, inputs: dict[str, dict[str, Any]], split: str) -> Any:
    return inputs["images" if method.input_level() == "images" else "tokens"][split]


def _fit(
    dataset: CZSLDataset,
    inputs: dict[str, dict[str, Any]],
    checkpoint_dir: Path | None = None,
    stop_after: int | None = None,
    augment: str = "paper",
    give_images: bool = True,
    **hparams: Any,
) -> tuple[Troika, dict[str, Any], list[float]]:
    hp = resolve_hparams("troika", dataset.name, {"epochs": 3, **hparams})
    method = get_method_class("troika")(hp)
    losses: list[float] = []

    def on_epoch_end(epoch: int, metrics: Any) -> None:
        losses.append(float(metrics["train/loss"]))
        if epoch == stop_after:
            raise _Stop

    def validate(m: Any) -> float:  # a function of the state: the same after resume
        scores = m.score(_source(m, inputs, "val"), dataset.candidate_pairs("closed"))
        return float(np.concatenate(list(scores)).max(axis=1).mean())

    ctx = FitContext(
        dataset=dataset,
        backbone=backbone(),
        features=inputs["features"],
        tokens=inputs["tokens"],
        images=inputs["images"] if give_images else {},
        hparams=hp,
        seed=0,
        augment=augment,
        validate=validate,
        on_epoch_end=on_epoch_end,
        checkpoint_dir=checkpoint_dir,
        extras={"checkpoint_key": "k", "note": lambda message: None},
    )
    return method, method.fit(ctx), losses


def _context(dataset: CZSLDataset, **given: Any) -> FitContext:
    """A bare fit context for the hooks (``start_training``...) with ``given`` inputs."""
    return FitContext(
        dataset=dataset, backbone=backbone(), features={}, hparams={}, seed=0, **given
    )


def _scores(method: Troika, inputs: dict[str, dict[str, Any]], pairs: np.ndarray) -> np.ndarray:
    return np.concatenate(list(method.score(_source(method, inputs, "test"), pairs)))


def test_troika_is_registered_with_the_official_configs() -> None:
    from bench.methods import method_names

    names = list(method_names())
    assert names.index("troika") == names.index("dfsp") + 1
    assert Troika.needs_for({"adapters": True}) == ("images",)
    assert Troika.needs_for({"adapters": False}) == ("tokens",)
    assert Troika.augment_modes_for({"adapters": False}) == ("none",)
    assert "paper" in Troika.augment_modes_for({"adapters": True})
    hp = resolve_hparams("troika", "mit-states")
    assert (hp["lr"], hp["batch_size"], hp["epochs"], hp["cmt_layers"]) == (1e-4, 64, 10, 3)
    assert (hp["cross_attn_dropout"], hp["attr_dropout"], hp["attr_loss_weight"]) == (0.1, 0.3, 1)
    assert (hp["lr_step_size"], hp["lr_gamma"], hp["weight_decay"], hp["context_length"]) == (
        5,
        0.5,
        1e-5,
        8,
    )
    assert (hp["adapter_dim"], hp["adapter_scale"], hp["init_lamda"], hp["adapters"]) == (
        64,
        0.1,
        0.1,
        True,
    )
    hp = resolve_hparams("troika", "ut-zappos")
    assert (hp["lr"], hp["batch_size"], hp["epochs"], hp["cmt_layers"]) == (5e-4, 128, 15, 2)
    assert (hp["cross_attn_dropout"], hp["attr_dropout"]) == (0.0, 0.3)
    hp = resolve_hparams("troika", "cgqa")
    assert (hp["lr"], hp["batch_size"], hp["epochs"], hp["cmt_layers"]) == (3.125e-6, 16, 15, 2)
    assert (hp["attr_dropout"], hp["attr_loss_weight"], hp["obj_loss_weight"]) == (0.0, 0.1, 0.1)


def test_setup_starts_from_a_photo_of_with_traction_weight_a_tenth(
    tiny_dataset: CZSLDataset, inputs: Any
) -> None:
    method, _, _ = _fit(tiny_dataset, inputs, epochs=0)
    bb = backbone()
    ids = bb.tokenizer(["a photo of"])[0, 1:4]
    for path in ("pair", "attr", "obj"):
        torch.testing.assert_close(method.contexts[path].detach(), bb.token_embeddings(ids).float())
    assert method.templates["pair"].eot == 6 and method.templates["attr"].eot == 5
    assert method.templates["attr"].tokens.shape[1] == 8
    assert method.heads is not None and method.adapters is not None
    assert torch.equal(method.heads.traction.lamda.detach(), torch.full((bb.embed_dim,), 0.1))
    blocks, width = bb.image_blocks()
    assert len(method.adapters) == blocks and method.adapters.attention[0].down.in_features == width
    assert all(a.scale == 0.1 for pair in method.adapters.per_block() for a in pair)
    assert len(method.heads.traction.layers) == method.hparams["cmt_layers"]


def test_adapters_at_scale_zero_leave_the_encoder_unchanged(
    tiny_dataset: CZSLDataset, inputs: Any
) -> None:
    method, _, _ = _fit(tiny_dataset, inputs, epochs=0)
    bb = backbone()
    adapters = method.adapters
    assert adapters is not None
    images = next(inputs["images"]["val"].batches(bb.preprocess, 4))
    frozen = bb.encode_image_tokens(images)
    # a new adapter adds nothing (its up-projection starts at zero) ...
    torch.testing.assert_close(bb.adapted_image_tokens(images, adapters), frozen)
    # ... a trained one does, unless its scale is 0
    with torch.no_grad():
        for attention, mlp in adapters.per_block():
            torch.nn.init.normal_(attention.up.weight)
            torch.nn.init.normal_(mlp.up.weight)
    assert not torch.allclose(bb.adapted_image_tokens(images, adapters), frozen, atol=1e-3)
    adapters.set_scale(0.0)
    with torch.no_grad():
        assert torch.equal(bb.adapted_image_tokens(images, adapters), frozen)
    torch.testing.assert_close(bb.adapted_image_tokens(images, adapters), frozen)


@pytest.mark.slow
def test_troika_learns_and_resumes_exactly_without_touching_the_encoder(
    tiny_dataset: CZSLDataset, inputs: Any, tmp_path: Path
) -> None:
    frozen = {k: v.clone() for k, v in backbone().model.state_dict().items()}
    untrained, _, _ = _fit(tiny_dataset, inputs, epochs=0)
    reference, reference_log, losses = _fit(tiny_dataset, inputs)
    assert losses[-1] < losses[0]
    state, before = reference.trainable_state(), untrained.trainable_state()
    assert any(k.startswith("adapters.") for k in state) and "context.obj" in state
    for key in ("vocabulary", "context.pair", "context.attr", "heads.traction.lamda"):
        assert not torch.equal(state[key], before[key]), key
    assert not torch.equal(state["adapters.attention.0.up.weight"], torch.zeros(1))
    assert not torch.equal(
        state["heads.attr_disentangler.norm.running_mean"],
        before["heads.attr_disentangler.norm.running_mean"],
    )
    pairs = tiny_dataset.candidate_pairs("open")
    assert not np.allclose(_scores(reference, inputs, pairs), _scores(untrained, inputs, pairs))
    # the frozen encoder is bit-identical after training through it
    for key, value in backbone().model.state_dict().items():
        assert torch.equal(value, frozen[key]), key

    with pytest.raises(_Stop):
        _fit(tiny_dataset, inputs, tmp_path, stop_after=2)
    resumed, log, _ = _fit(tiny_dataset, inputs, tmp_path)
    assert log["resumed_from_epoch"] == 2
    for key, value in state.items():
        if torch.is_tensor(value):
            assert torch.equal(resumed.trainable_state()[key], value), key
    assert {k: v for k, v in log.items() if k != "resumed_from_epoch"} == reference_log

    # the saved state (adapters included) restores the same scores in a fresh method
    fresh = get_method_class("troika")(reference.hparams)
    fresh.load_trainable_state(state)
    fresh.prepare(_context(tiny_dataset))
    np.testing.assert_array_equal(_scores(fresh, inputs, pairs), _scores(reference, inputs, pairs))


def test_adapter_free_troika_needs_no_images(tiny_dataset: CZSLDataset, inputs: Any) -> None:
    method, log, losses = _fit(
        tiny_dataset, inputs, augment="none", give_images=False, adapters=False, epochs=2
    )
    assert method.adapters is None and method.input_level() == "tokens"
    assert log["epochs_run"] == 2 and losses[-1] < losses[0]
    assert not any(k.startswith("adapters.") for k in method.trainable_state())
    scores = _scores(method, inputs, tiny_dataset.candidate_pairs("closed"))
    assert scores.shape == (
        len(inputs["tokens"]["test"]),
        len(tiny_dataset.candidate_pairs("closed")),
    )
    assert np.isfinite(scores).all()
    with pytest.raises(Exception, match="augment"):
        _fit(tiny_dataset, inputs, augment="paper", adapters=False, epochs=1)


def test_inference_adds_the_primitive_probabilities_and_streams(
    tiny_dataset: CZSLDataset, inputs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    method, _, _ = _fit(tiny_dataset, inputs, augment="none", adapters=False, epochs=1)
    tokens: TokenSet = inputs["tokens"]["test"]
    pairs = tiny_dataset.candidate_pairs("open")
    scores = _scores(method, inputs, pairs)
    # by hand: the pair path's logits + softmax(attribute) x softmax(object) at the pair
    with torch.no_grad():
        texts = method.candidate_texts(pairs)
        logits = method._all_logits(tokens.rows(slice(None)), texts)
    attr = F.softmax(logits["attr"], dim=-1)[:, pairs[:, 0]]
    obj = F.softmax(logits["obj"], dim=-1)[:, pairs[:, 1]]
    expected = (logits["pair"] + attr * obj).numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    assert np.abs(scores - logits["pair"].numpy()).max() > 1e-4  # the term is not nothing
    # streaming: tiny image blocks and pair chunks give the same scores
    monkeypatch.setattr(troika_module, "TRACTION_ROWS", 3)
    method.text_cache.invalidate()
    streamed = np.concatenate(list(method.score(tokens, pairs, block_size=2)))
    np.testing.assert_allclose(streamed, scores, rtol=1e-5, atol=1e-5)
    # an inference weight of 0 makes its factor 1 (the official logit_infer)
    method.hparams["attr_inference_weight"] = 0.0
    np.testing.assert_allclose(
        _scores(method, inputs, pairs), (logits["pair"] + obj).numpy(), rtol=1e-5, atol=1e-5
    )


def test_loss_is_the_weighted_sum_of_the_three_paths(
    tiny_dataset: CZSLDataset, inputs: Any
) -> None:
    method, _, _ = _fit(tiny_dataset, inputs, epochs=0, attr_loss_weight=0.1, obj_loss_weight=0.25)
    method.start_training(_context(tiny_dataset, images=inputs["images"]))
    method.start_epoch(1)
    batch = next(iter(method.epoch_batches(torch.Generator().manual_seed(0))))
    method.finish_epoch(1)  # eval mode: no dropout, so both calls see the same network
    method.hparams["attr_dropout"] = 0.0
    terms = method.training_losses(batch)
    loss = method.training_loss(batch, 1)
    torch.testing.assert_close(loss, terms["pair"] + 0.1 * terms["attr"] + 0.25 * terms["obj"])
    # the pair path ranks the training pairs only; the primitives all attributes/objects
    assert batch[1].max() < len(tiny_dataset.seen_pairs_ids())


def test_steplr_halves_every_five_epochs(tiny_dataset: CZSLDataset, inputs: Any) -> None:
    method, _, _ = _fit(tiny_dataset, inputs, epochs=0)
    optimizer = method.build_optimizer(method.trainable_parameters())
    scheduler = method.build_scheduler(optimizer)
    lrs = []
    for _ in range(11):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    lr = method.hparams["lr"]
    assert lrs == pytest.approx([lr] * 5 + [lr / 2] * 5 + [lr / 4])


def test_a_last_batch_of_one_image_joins_the_one_before(
    tiny_dataset: CZSLDataset, inputs: Any
) -> None:
    n = len(inputs["tokens"]["train"])
    method, _, _ = _fit(
        tiny_dataset, inputs, augment="none", adapters=False, epochs=0, batch_size=n - 1
    )
    method.start_training(_context(tiny_dataset, tokens=inputs["tokens"]))
    sizes = [b[0].shape[0] for b in method.epoch_batches(torch.Generator().manual_seed(0))]
    assert sizes == [n]


def test_untrained_pair_path_without_traction_is_csp_before_training(
    tiny_dataset: CZSLDataset, inputs: Any
) -> None:
    """With lambda at 0 the pair path is CSP's prompt "a photo of [attr] [obj]" with the
    frozen "a photo of" context: untrained, its logits are CSP's before training."""
    method, _, _ = _fit(tiny_dataset, inputs, augment="none", adapters=False, epochs=0)
    assert method.heads is not None
    with torch.no_grad():
        method.heads.traction.lamda.zero_()
    csp = get_method_class("csp")(resolve_hparams("csp", tiny_dataset.name))
    csp.prepare(_context(tiny_dataset))
    pairs = tiny_dataset.candidate_pairs("closed")
    tokens: TokenSet = inputs["tokens"]["test"]
    with torch.no_grad():
        logits = method._all_logits(tokens.rows(slice(None)), method.candidate_texts(pairs))
        # the same (fp16-cached) tokens pooled the backbone's way
        pooled = backbone().pool_image_tokens(tokens.rows(slice(None)))
    expected = np.concatenate(list(csp.score(pooled, pairs)))
    np.testing.assert_allclose(logits["pair"].numpy(), expected, rtol=1e-5, atol=1e-5)


def test_live_training_on_the_cpu_with_a_large_encoder_gets_a_note(
    tiny_dataset: CZSLDataset, inputs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    notes: list[str] = []
    method, _, _ = _fit(tiny_dataset, inputs, epochs=0)
    context = _context(tiny_dataset, images=inputs["images"], extras={"note": notes.append})
    method.start_training(context)
    assert notes == []  # tiny-random: width 64
    monkeypatch.setattr(troika_module, "LARGE_ENCODER_WIDTH", 64)
    method.start_training(context)
    assert len(notes) == 1 and "--hparam adapters=false" in notes[0]
