"""DFSP on cached image tokens: learning, exact resume, and the official details."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bench.backbones import Backbone, load_backbone
from bench.data.czsl import CZSLDataset
from bench.features import TokenSet, extract_features, extract_tokens
from bench.methods import get_method_class
from bench.methods.base import FitContext, resolve_hparams
from bench.methods.dfsp import DFSP, concept_means, concept_sums, decomposed_logits


@functools.cache
def backbone() -> Backbone:
    return load_backbone("tiny-random", device="cpu")


@pytest.fixture(scope="module")
def cached(
    tiny_dataset: CZSLDataset, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], dict[str, TokenSet]]:
    results = tmp_path_factory.mktemp("dfsp-cache")
    splits = ("train", "val", "test")
    features = {s: extract_features(backbone(), tiny_dataset, s, results) for s in splits}
    tokens = {s: extract_tokens(backbone(), tiny_dataset, s, results) for s in splits}
    return features, tokens


class _Stop(Exception):
    pass


def _fit(
    dataset: CZSLDataset,
    cached: tuple[dict[str, Any], dict[str, TokenSet]],
    checkpoint_dir: Path | None = None,
    stop_after: int | None = None,
    **hparams: Any,
) -> tuple[DFSP, dict[str, Any], list[float]]:
    features, tokens = cached
    hp = resolve_hparams("dfsp", dataset.name, {"epochs": 3, **hparams})
    method = get_method_class("dfsp")(hp)
    losses: list[float] = []

    def on_epoch_end(epoch: int, metrics: Any) -> None:
        losses.append(float(metrics["train/loss"]))
        if epoch == stop_after:
            raise _Stop

    def validate(m: Any) -> float:  # a function of the state: the same after resume
        scores = np.concatenate(list(m.score(tokens["val"], dataset.candidate_pairs("closed"))))
        return float(scores.max(axis=1).mean())

    ctx = FitContext(
        dataset=dataset,
        backbone=backbone(),
        features=features,
        tokens=tokens,
        hparams=hp,
        seed=0,
        validate=validate,
        on_epoch_end=on_epoch_end,
        checkpoint_dir=checkpoint_dir,
        extras={"checkpoint_key": "k", "note": lambda message: None},
    )
    return method, method.fit(ctx), losses


def test_dfsp_is_registered_after_csp_and_needs_tokens() -> None:
    from bench.methods import method_names

    names = list(method_names())
    assert names.index("dfsp") == names.index("csp") + 1
    assert DFSP.needs == ("tokens",)
    hp = resolve_hparams("dfsp", "cgqa")
    assert (hp["lr"], hp["batch_size"], hp["gradient_accumulation_steps"]) == (5e-5, 256, 1)
    hp = resolve_hparams("dfsp", "ut-zappos")
    assert (hp["lr"], hp["batch_size"], hp["gradient_accumulation_steps"]) == (5e-4, 128, 2)
    hp = resolve_hparams("dfsp", "mit-states")
    assert (hp["lr"], hp["res_w"], hp["att_obj_w"], hp["sp_w"]) == (1e-4, 0.8, 0.01, 0.1)
    assert (hp["epochs"], hp["weight_decay"], hp["attr_dropout"], hp["context_length"]) == (
        20,
        1e-5,
        0.3,
        8,
    )


@pytest.mark.slow
def test_dfsp_learns_and_resumes_exactly(
    tiny_dataset: CZSLDataset, cached: Any, tmp_path: Path
) -> None:
    untrained, _, _ = _fit(tiny_dataset, cached, epochs=0)
    reference, reference_log, losses = _fit(tiny_dataset, cached)
    assert losses[-1] < losses[0]
    state = reference.trainable_state()
    for key, value in untrained.trainable_state().items():
        if torch.is_tensor(value) and key != "fusion.concepts_to_positions.weight":
            assert not torch.equal(state[key], value) or "ln" in key, key
    assert not torch.equal(state["context"], untrained.trainable_state()["context"])
    with pytest.raises(_Stop):
        _fit(tiny_dataset, cached, tmp_path, stop_after=2)
    resumed, log, _ = _fit(tiny_dataset, cached, tmp_path)
    assert log["resumed_from_epoch"] == 2
    for key, value in state.items():
        if torch.is_tensor(value):
            assert torch.equal(resumed.trainable_state()[key], value), key
    assert {k: v for k, v in log.items() if k != "resumed_from_epoch"} == reference_log
    # the saved state restores the same scores in a fresh method
    pairs = tiny_dataset.candidate_pairs("open")
    fresh = get_method_class("dfsp")(reference.hparams)
    fresh.load_trainable_state(state)
    fresh.prepare(
        FitContext(dataset=tiny_dataset, backbone=backbone(), features={}, hparams={}, seed=0)
    )
    _, tokens = cached
    expected = np.concatenate(list(reference.score(tokens["test"], pairs)))
    np.testing.assert_array_equal(
        np.concatenate(list(fresh.score(tokens["test"], pairs))), expected
    )


def test_steplr_halves_every_three_epochs(tiny_dataset: CZSLDataset, cached: Any) -> None:
    method, _, _ = _fit(tiny_dataset, cached, epochs=0)
    optimizer = method.build_optimizer(method.trainable_parameters())
    scheduler = method.build_scheduler(optimizer)
    lrs = []
    for _ in range(7):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    lr = method.hparams["lr"]
    assert lrs == pytest.approx([lr] * 3 + [lr / 2] * 3 + [lr / 4])
    assert optimizer.param_groups[0]["weight_decay"] == method.hparams["weight_decay"]


def test_loss_is_the_official_weighted_sum(tiny_dataset: CZSLDataset, cached: Any) -> None:
    method, _, _ = _fit(tiny_dataset, cached, epochs=0)
    method.start_training(
        FitContext(
            dataset=tiny_dataset,
            backbone=backbone(),
            features={},
            tokens=cached[1],
            hparams={},
            seed=0,
        )
    )
    batch = next(iter(method.epoch_batches(torch.Generator().manual_seed(0))))
    method.fusion.eval()
    method.hparams["attr_dropout"] = 0.0
    terms = method.training_losses(batch)
    loss = method.training_loss(batch, 1)
    expected = terms["fused"] + 0.01 * (terms["attr"] + terms["obj"]) + 0.1 * terms["soft_prompt"]
    torch.testing.assert_close(loss, expected)


def test_context_starts_as_a_photo_of_and_fuses_at_the_right_positions(
    tiny_dataset: CZSLDataset, cached: Any
) -> None:
    method, _, _ = _fit(tiny_dataset, cached, epochs=0)
    bb = backbone()
    ids = bb.tokenizer(["a photo of"])[0, 1:4]
    torch.testing.assert_close(method.context.detach(), bb.token_embeddings(ids).float())
    # the prompt: context at 1..3, attribute and object rows just before end-of-text
    pairs = torch.tensor([[0, 1]])
    tokens, embeddings = method.template.batch(1)
    eot = method.template.eot
    assert method.template.tokens.shape[1] == 8 and eot == 6
    embeddings[:, 1:4] = method.context
    embeddings[:, eot - 2] = method.vocabulary[0]
    embeddings[:, eot - 1] = method.vocabulary[len(method.attrs) + 1]
    hidden, _ = method._pair_hidden(pairs, method.vocabulary)
    torch.testing.assert_close(hidden, bb.encode_text_hidden(embeddings))
    # the image context has one row per image token position, at the image width
    n_tokens, width_img = bb.image_token_shape()
    sums, counts = concept_sums(hidden, pairs, len(method.attrs), len(method.objs))
    context = method.fusion.image_context(concept_means(sums, counts))
    assert context.shape == (n_tokens, width_img)
    fused = method.fusion.fuse_image(cached[1]["val"].rows(slice(0, 2)), context)
    assert fused.shape == (2, n_tokens, width_img)


def test_decomposition_means_over_the_pairs_holding_a_concept() -> None:
    logits = torch.tensor([[1.0, 3.0, 5.0]])
    pairs = torch.tensor([[0, 0], [0, 1], [1, 1]])
    attr, obj = decomposed_logits(logits, pairs, 3, 2)
    assert attr.tolist() == [[2.0, 5.0, float("-inf")]] and obj.tolist() == [[1.0, 4.0]]
    hidden = torch.arange(3.0).view(3, 1, 1)
    sums, counts = concept_sums(hidden, pairs, 3, 2)
    assert concept_means(sums, counts).flatten().tolist() == [0.5, 2.0, 0.0, 0.0, 1.5]


def test_open_world_scores_stream_in_bounded_blocks(
    tiny_dataset: CZSLDataset, cached: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    method, _, _ = _fit(tiny_dataset, cached, epochs=0)
    pairs = tiny_dataset.candidate_pairs("open")
    tokens = cached[1]["test"]
    dense = np.concatenate(list(method.score(tokens, pairs)))
    monkeypatch.setattr("bench.methods.scoring.MAX_BLOCK_ELEMENTS", 3 * len(pairs))
    method.invalidate()
    blocks = list(method.score(tokens, pairs))
    assert all(len(b) <= 3 for b in blocks) and sum(len(b) for b in blocks) == len(tokens)
    np.testing.assert_allclose(np.concatenate(blocks), dense, rtol=1e-5, atol=1e-5)
    assert dense.shape == (len(tokens), len(pairs)) and np.isfinite(dense).all()
