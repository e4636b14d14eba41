"""Tests of the CLIP-family methods (clip, coop, csp) on the tiny-random backbone."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest
import torch

from bench.data.czsl import CZSLDataset, Sample
from bench.errors import BenchError
from bench.features import FeatureSet, extract_features
from bench.methods import get_method_class, method_names
from bench.methods.base import FitContext, resolve_hparams

ATTRS = ("blue", "green", "red")
OBJS = ("car", "cat", "dog")
TRAIN_PAIRS = (("red", "cat"), ("blue", "dog"), ("green", "car"), ("red", "car"), ("blue", "cat"))
VAL_PAIRS = (("red", "cat"), ("green", "dog"))
TEST_PAIRS = (("blue", "dog"), ("red", "dog"), ("blue", "car"))
PER_PAIR = 6
#: Names of several tokens, of different lengths (sorted like the names they replace).
MULTI_TOKEN = {
    "blue": "ancient_wet",
    "green": "faux.fur",
    "car": "apple pie slice",
    "dog": "traffic_light",
}


@functools.cache
def backbone() -> Any:
    from bench.backbones import load_backbone

    return load_backbone("tiny-random", device="cpu")


def make_dataset(root: Path | None = None, names: dict[str, str] | None = None) -> CZSLDataset:
    """A 3 x 3 dataset with single-token names; images (if ``root``) are tiny PNGs.

    ``names`` renames attributes/objects (e.g. ``MULTI_TOKEN``), keeping their order.
    """
    names = names or {}

    def rename(pairs: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        return tuple((names.get(a, a), names.get(o, o)) for a, o in pairs)

    train_pairs, val_pairs, test_pairs = rename(TRAIN_PAIRS), rename(VAL_PAIRS), rename(TEST_PAIRS)
    splits: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    for split, pairs in (("train", train_pairs), ("val", val_pairs), ("test", test_pairs)):
        for attr, obj in pairs:
            for k in range(PER_PAIR if split == "train" else 2):
                splits[split].append(
                    Sample(image=f"{attr}_{obj}/{split}{k}.png", attr=attr, obj=obj)
                )
    if root is not None:
        from PIL import Image

        rng = np.random.default_rng(0)
        for sample in splits["train"]:
            path = root / "images" / sample.image
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
    union = sorted(set(train_pairs) | set(val_pairs) | set(test_pairs))
    return CZSLDataset(
        name="toy",
        root=root or Path("/nonexistent"),
        attrs=tuple(names.get(a, a) for a in ATTRS),
        objs=tuple(names.get(o, o) for o in OBJS),
        pairs=tuple(union),
        train_pairs=train_pairs,
        val_pairs=val_pairs,
        test_pairs=test_pairs,
        splits=MappingProxyType({k: tuple(v) for k, v in splits.items()}),
        fingerprint="toy",
    )


def make_features(dataset: CZSLDataset, split: str, seed: int = 0) -> FeatureSet:
    """Image features near the zero-shot text feature of each image's pair (plus noise)."""
    attr_ids, obj_ids = dataset.labels(split)
    bb = backbone()
    prompts = [
        f"a photo of {dataset.attrs[a]} {dataset.objs[o]}"
        for a, o in zip(attr_ids, obj_ids, strict=True)
    ]
    text = torch.nn.functional.normalize(bb.encode_text(prompts), dim=-1).cpu()
    gen = torch.Generator().manual_seed(seed)
    feats = text + 0.5 * torch.randn(text.shape, generator=gen) / text.shape[1] ** 0.5
    paths = tuple(s.image for s in dataset.splits[split])
    return FeatureSet(feats.float(), attr_ids, obj_ids, paths, cache_hit=False, key=split)


def make_ctx(dataset: CZSLDataset, hparams: dict[str, Any], **kwargs: Any) -> FitContext:
    features = {
        split: make_features(dataset, split, i) for i, split in enumerate(("train", "val", "test"))
    }
    kwargs.setdefault("seed", 0)
    return FitContext(
        dataset=dataset, backbone=backbone(), features=features, hparams=hparams, **kwargs
    )


def make_method(name: str, **hparams: Any) -> Any:
    return get_method_class(name)(resolve_hparams(name, "synthetic", hparams))


def dense_scores(
    method: Any, feats: torch.Tensor, pairs: np.ndarray, block_size: int = 1024
) -> np.ndarray:
    blocks = list(method.score(feats, pairs, block_size=block_size))
    for block in blocks:
        assert block.dtype == np.float32
        assert block.shape[1] == len(pairs)
    return np.concatenate(blocks)


def backbone_state() -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in backbone().model.state_dict().items()}


def assert_backbone_unchanged(before: dict[str, torch.Tensor]) -> None:
    after = backbone().model.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    assert not any(p.requires_grad for p in backbone().model.parameters())


# ----------------------------------------------------------------------------- registry/cards


def test_methods_registered_with_cards() -> None:
    names = method_names()
    for name in ("clip", "coop", "csp"):
        assert name in names
        assert get_method_class(name).needs_text_encoder
    assert get_method_class("clip").trains is False
    assert get_method_class("csp").trains is True


def test_resolve_hparams_precedence() -> None:
    assert resolve_hparams("csp", "mit-states")["lr"] == 5e-5
    zappos = resolve_hparams("csp", "ut-zappos")
    assert zappos["lr"] == 5e-4 and zappos["attr_dropout"] == 0.2 and zappos["batch_size"] == 64
    cgqa = resolve_hparams("csp", "cgqa")
    assert cgqa["batch_size"] * cgqa["gradient_accumulation_steps"] == 128
    assert resolve_hparams("csp", "synthetic-cgqa") == resolve_hparams("csp", "synthetic")
    assert resolve_hparams("csp", "my-own-data") == resolve_hparams("csp", "default")
    assert resolve_hparams("csp", "default")["context_length"] == 8
    # overrides win over the dataset table; None is ignored; strings are converted
    out = resolve_hparams("csp", "ut-zappos", {"lr": 1e-3, "epochs": "3", "attr_dropout": None})
    assert out["lr"] == 1e-3 and out["epochs"] == 3 and out["attr_dropout"] == 0.2
    assert resolve_hparams("csp", "cgqa", {"lr": 1})["lr"] == 1.0
    with pytest.raises(BenchError, match="unknown hyperparameter 'nope'"):
        resolve_hparams("csp", "cgqa", {"nope": 1})
    with pytest.raises(BenchError, match="must be a int"):
        resolve_hparams("csp", "cgqa", {"epochs": "many"})
    with pytest.raises(BenchError, match="unknown method"):
        resolve_hparams("no-such-method", "cgqa")


# ----------------------------------------------------------------------------- behaviour


@pytest.mark.slow
def test_zero_epochs_score_exactly_like_clip() -> None:
    dataset = make_dataset()
    feats = make_features(dataset, "test").features
    results = {}
    for name in ("clip", "coop", "csp"):
        method = make_method(name, **({} if name == "clip" else {"epochs": 0}))
        log = method.fit(make_ctx(dataset, method.hparams))
        assert log["epochs_run"] == 0 and log["best_epoch"] == 0
        for world in ("closed", "open"):
            results[name, world] = dense_scores(method, feats, dataset.candidate_pairs(world))
    for world in ("closed", "open"):
        np.testing.assert_allclose(results["csp", world], results["clip", world], atol=1e-5)
        np.testing.assert_allclose(results["coop", world], results["clip", world], atol=1e-5)


def test_csp_trains_only_the_vocabulary(tmp_path: Path) -> None:
    dataset = make_dataset()
    method = make_method("csp", epochs=2)
    method.prepare(make_ctx(dataset, method.hparams))
    initial = method.trainable_state()["vocabulary"]
    before = backbone_state()
    log = method.fit(make_ctx(dataset, method.hparams, checkpoint_dir=tmp_path))
    assert_backbone_unchanged(before)
    state = method.trainable_state()
    assert state["attrs"] == list(ATTRS) and state["objs"] == list(OBJS)
    assert state["vocabulary"].shape == (len(ATTRS) + len(OBJS), backbone().width)
    assert not torch.equal(state["vocabulary"], initial)
    assert log["epochs_run"] == 2 and log["augment"] == "none" and np.isfinite(log["final_loss"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-001.pt", "epoch-002.pt"]


def test_coop_trains_only_the_context() -> None:
    dataset = make_dataset()
    method = make_method("coop", epochs=2)
    method.prepare(make_ctx(dataset, method.hparams))
    initial = method.trainable_state()["context"]
    attr_vectors, obj_vectors = method.attr_vectors.clone(), method.obj_vectors.clone()
    assert initial.shape == (3, backbone().width)
    before = backbone_state()
    method.fit(make_ctx(dataset, method.hparams))
    assert_backbone_unchanged(before)
    assert not torch.equal(method.trainable_state()["context"], initial)
    assert torch.equal(method.attr_vectors, attr_vectors)
    assert torch.equal(method.obj_vectors, obj_vectors)
    assert set(method.trainable_state()) == {"context"}


@pytest.mark.slow
def test_same_seed_same_numbers_different_seed_differs() -> None:
    dataset = make_dataset()
    feats = make_features(dataset, "val").features
    pairs = dataset.candidate_pairs("open")
    runs = []
    for seed in (3, 3, 4):
        method = make_method("csp", epochs=2, attr_dropout=0.5)
        method.fit(make_ctx(dataset, method.hparams, seed=seed))
        runs.append((method.trainable_state()["vocabulary"], dense_scores(method, feats, pairs)))
    assert torch.equal(runs[0][0], runs[1][0])
    assert np.array_equal(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][0], runs[2][0])


def test_validate_once_per_epoch_and_best_epoch_restored() -> None:
    dataset = make_dataset()
    method = make_method("csp", epochs=3)
    script = iter([0.1, 0.5, 0.3])
    validated: list[torch.Tensor] = []
    epochs_seen: list[tuple[int, dict[str, float]]] = []

    def validate(m: Any) -> float:
        assert m is method
        validated.append(m.trainable_state()["vocabulary"])
        return next(script)

    ctx = make_ctx(
        dataset,
        method.hparams,
        validate=validate,
        on_epoch_end=lambda epoch, metrics: epochs_seen.append((epoch, dict(metrics))),
    )
    log = method.fit(ctx)
    assert len(validated) == 3
    assert [e for e, _ in epochs_seen] == [1, 2, 3]
    assert [m["val/cw/auc"] for _, m in epochs_seen] == [0.1, 0.5, 0.3]
    assert all(np.isfinite(m["train/loss"]) for _, m in epochs_seen)
    assert log["best_epoch"] == 2 and log["best_val_auc"] == 0.5 and log["epochs_run"] == 3
    assert not torch.equal(validated[1], validated[2])
    assert torch.equal(method.trainable_state()["vocabulary"], validated[1])
    # scoring after the restore uses the restored vocabulary (no stale cache)
    feats = make_features(dataset, "val").features
    pairs = dataset.candidate_pairs("closed")
    fresh = make_method("csp", epochs=0)
    fresh.fit(make_ctx(dataset, fresh.hparams))
    fresh.load_trainable_state(
        {"vocabulary": validated[1], "attrs": list(ATTRS), "objs": list(OBJS)}
    )
    np.testing.assert_array_equal(
        dense_scores(method, feats, pairs), dense_scores(fresh, feats, pairs)
    )


def test_score_blocks_match_dense_computation() -> None:
    dataset = make_dataset()
    method = make_method("csp", epochs=1)
    method.fit(make_ctx(dataset, method.hparams))
    method.text_batch_size = 4  # P = 9 candidates: several text batches
    feats = torch.randn(11, backbone().embed_dim, generator=torch.Generator().manual_seed(1))
    pairs = dataset.candidate_pairs("open")
    blocks = list(method.score(feats, pairs, block_size=3))
    assert [b.shape for b in blocks] == [(3, 9), (3, 9), (3, 9), (2, 9)]
    assert all(b.dtype == np.float32 for b in blocks)
    text = method.pair_text_features(pairs).cpu()
    expected = backbone().logit_scale * torch.nn.functional.normalize(feats, dim=-1) @ text.t()
    np.testing.assert_allclose(np.concatenate(blocks), expected.numpy(), rtol=1e-5, atol=1e-5)
    # a larger candidate set than the text batch and block sizes; pairs in any order
    many = np.concatenate([pairs, pairs[::-1], pairs[:5]])
    out = dense_scores(method, feats, many, block_size=4)
    assert out.shape == (11, len(many))
    np.testing.assert_allclose(out[:, 9:18], out[:, :9][:, ::-1], atol=1e-5)


def test_load_trainable_state_mismatch_raises() -> None:
    dataset = make_dataset()
    csp = make_method("csp", epochs=0)
    csp.fit(make_ctx(dataset, csp.hparams))
    state = csp.trainable_state()
    with pytest.raises(BenchError, match=r"saved vocabulary has shape \(5, 64\) but dataset toy"):
        csp.load_trainable_state({**state, "vocabulary": torch.zeros(5, 64)})
    with pytest.raises(BenchError, match="differ"):
        csp.load_trainable_state({**state, "objs": ["car", "cat", "pig"]})
    with pytest.raises(BenchError):
        csp.load_trainable_state({"context": torch.zeros(3, 64)})
    coop = make_method("coop", epochs=0)
    coop.fit(make_ctx(dataset, coop.hparams))
    with pytest.raises(BenchError, match=r"saved context has shape \(4, 64\)"):
        coop.load_trainable_state({"context": torch.zeros(4, 64)})
    # a state loaded before setup is validated and applied when the method is prepared
    late = make_method("csp", epochs=0)
    late.load_trainable_state({**state, "vocabulary": state["vocabulary"] + 1})
    late.fit(make_ctx(dataset, late.hparams))
    assert torch.equal(late.trainable_state()["vocabulary"], state["vocabulary"] + 1)


def test_paper_augmentation_reencodes_images(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path)
    method = make_method("coop", epochs=1, batch_size=8, gradient_accumulation_steps=2)
    calls = {"n": 0}
    bb = backbone()
    original = bb.encode_images

    def counting(images: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return original(images)

    object.__setattr__(bb, "encode_images", counting)
    try:
        log = method.fit(make_ctx(dataset, method.hparams, augment="paper"))
    finally:
        object.__delattr__(bb, "encode_images")
    assert log["augment"] == "paper" and log["epochs_run"] == 1
    assert calls["n"] == -(-len(dataset.splits["train"]) // 8)
    with pytest.raises(BenchError, match="augment"):
        method.fit(make_ctx(dataset, method.hparams, augment="heavy"))


def test_augmented_views_are_encoded_once_for_csp_and_coop(tmp_path: Path) -> None:
    from bench.features import TrainViews

    dataset = make_dataset(tmp_path)
    bb = backbone()
    calls = {"n": 0}
    original = bb.encode_images

    def counting(images: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return original(images)

    logs, counts = {}, {}
    object.__setattr__(bb, "encode_images", counting)
    try:
        for name in ("csp", "coop"):
            method = make_method(name, epochs=2, batch_size=8)
            views = TrainViews(bb, dataset, tmp_path / "results", seed=0, batch_size=64)
            before = calls["n"]
            logs[name] = method.fit(
                make_ctx(dataset, method.hparams, augment="paper", train_views=views)
            )
            counts[name] = calls["n"] - before
    finally:
        object.__delattr__(bb, "encode_images")
    assert counts == {"csp": 2, "coop": 0}  # one batch of 30 images per epoch, then reused
    assert logs["csp"]["train_views"] == {"encoded": [1, 2], "cached": []}
    assert logs["coop"]["train_views"] == {"encoded": [], "cached": [1, 2]}


def test_official_name_cleaning_in_prompts_and_initial_vectors() -> None:
    from dataclasses import replace

    bb = backbone()
    dataset = replace(
        make_dataset(), attrs=("blue", "green", "Traffic_Light"), objs=("car", "Faux.Fur", "dog")
    )
    vectors = {}
    for cleaning in ("words", "official"):
        csp, coop, clip = (make_method(name) for name in ("csp", "coop", "clip"))
        for method in (csp, coop, clip):
            method.prepare(
                FitContext(dataset, bb, {}, method.hparams, seed=0, name_cleaning=cleaning)
            )
        expected = bb.name_embedding("Traffic_Light", cleaning)
        torch.testing.assert_close(csp.vocabulary[2].detach(), expected)
        torch.testing.assert_close(coop.attr_vectors[2], expected)
        vectors[cleaning] = expected
        prompt = clip.prompts(torch.tensor([[2, 1]]))[0]
        assert (
            prompt
            == {
                "words": "a photo of traffic light faux fur",
                "official": "a photo of traffic_light faux fur",
            }[cleaning]
        )
    assert not torch.equal(vectors["words"], vectors["official"])


# full: 5 train pairs in chunks of 2; prefix: 17 tree nodes, above 8 each layer checkpoints
@pytest.mark.parametrize(("text_encoding", "small"), [("full", 2 * 77), ("prefix", 8)])
def test_checkpointed_training_matches_plain(
    monkeypatch: pytest.MonkeyPatch, text_encoding: str, small: int
) -> None:
    import bench.methods.clip_family as clip_family

    dataset = make_dataset()
    vocabularies = []
    for limit in (clip_family.CHECKPOINT_TOKENS, small):
        monkeypatch.setattr(clip_family, "CHECKPOINT_TOKENS", limit)
        method = make_method("csp", epochs=1, attr_dropout=0.3)
        method.fit(make_ctx(dataset, method.hparams, text_encoding=text_encoding))
        vocabularies.append(method.trainable_state()["vocabulary"])
    torch.testing.assert_close(vocabularies[0], vocabularies[1], rtol=1e-5, atol=1e-6)


def test_context_length_truncation_keeps_scores() -> None:
    """Prompts are truncated to context_length tokens and still score exactly like clip."""
    bb = backbone()
    dataset = make_dataset()
    feats = make_features(dataset, "test").features
    pairs = dataset.candidate_pairs("open")
    clip = make_method("clip")
    clip.fit(make_ctx(dataset, clip.hparams))
    expected = dense_scores(clip, feats, pairs)
    for name in ("csp", "coop"):
        method = make_method(name, epochs=0, context_length=8)
        method.fit(make_ctx(dataset, method.hparams))
        assert method.template.tokens.shape == (1, 8)
        assert bb.context_length > 8
        np.testing.assert_allclose(dense_scores(method, feats, pairs), expected, atol=1e-5)


@pytest.mark.slow
def test_synthetic_dataset_end_to_end(tiny_dataset: CZSLDataset, tmp_path: Path) -> None:
    """Real (multi-token) names and images: cached-feature and augmented training both run."""
    bb = backbone()
    features = {
        split: extract_features(bb, tiny_dataset, split, tmp_path) for split in ("train", "val")
    }
    pairs = tiny_dataset.candidate_pairs("closed")
    for name, augment in (("csp", "none"), ("coop", "paper"), ("clip", "none")):
        method = get_method_class(name)(resolve_hparams(name, tiny_dataset.name, {}))
        if name != "clip":
            method.hparams["epochs"] = 2
        aucs = iter([0.2, 0.1])
        ctx = FitContext(
            dataset=tiny_dataset,
            backbone=bb,
            features=features,
            hparams=method.hparams,
            seed=0,
            augment=augment,
            validate=lambda m, aucs=aucs: next(aucs),
        )
        log = method.fit(ctx)
        assert log["best_epoch"] == (0 if name == "clip" else 1)
        scores = dense_scores(method, features["val"].features, pairs, block_size=7)
        assert scores.shape == (len(tiny_dataset.splits["val"]), len(pairs))
        assert np.isfinite(scores).all()


# ----------------------------------------------------------------------------- text encoding


@contextlib.contextmanager
def counting_calls(name: str) -> Iterator[dict[str, int]]:
    """Count calls of the tiny backbone's ``name`` method while in the block."""
    bb = backbone()
    original = getattr(bb, name)
    calls = {"n": 0}

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        return original(*args, **kwargs)

    object.__setattr__(bb, name, counting)
    try:
        yield calls
    finally:
        object.__delattr__(bb, name)


def _soft_prompt_step(method: Any, ctx: FitContext) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The loss of one training step and the gradients of the trained tensors."""
    method.prepare(ctx)
    method.start_training(ctx)
    batch = next(iter(method.epoch_batches(torch.Generator().manual_seed(0))))
    loss = method.training_loss(batch, 1)
    return loss.detach(), list(torch.autograd.grad(loss, method.trainable_parameters()))


@pytest.mark.parametrize("context_length", [8, 0], ids=["context-8", "context-77"])
@pytest.mark.parametrize("name", ["csp", "coop"])
def test_prefix_encoding_equals_full_for_soft_prompts(name: str, context_length: int) -> None:
    """Training step (loss, gradients) and eval features, with names of several tokens."""
    dataset = make_dataset(names=MULTI_TOKEN)
    pairs = dataset.candidate_pairs("open")
    dropout = {"attr_dropout": 0.3} if name == "csp" else {}
    results = {}
    for encoding in ("full", "prefix"):
        method = make_method(name, epochs=1, context_length=context_length, **dropout)
        ctx = make_ctx(dataset, method.hparams, text_encoding=encoding)
        # preparing checks the template's truncation with the full encoder in both modes
        method.prepare(ctx)
        assert method.text_encoding == encoding
        with counting_calls("encode_text_embeddings") as calls:
            loss, grads = _soft_prompt_step(method, ctx)
            method.text_batch_size = 4  # several text batches
            features = method.pair_text_features(pairs)
        assert (calls["n"] > 0) == (encoding == "full")
        results[encoding] = (loss, grads, features)
    (full_loss, full_grads, full_features), (loss, grads, features) = results.values()
    torch.testing.assert_close(loss, full_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(features, full_features, rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(grads, full_grads, strict=True):
        assert float(theirs.abs().max()) > 0
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


def test_prefix_encoding_equals_full_for_clip_prompts() -> None:
    dataset = make_dataset(names=MULTI_TOKEN)
    pairs = dataset.candidate_pairs("open")
    features = {}
    for encoding in ("full", "prefix"):
        method = make_method("clip")
        method.fit(make_ctx(dataset, method.hparams, text_encoding=encoding))
        method.text_batch_size = 4
        with counting_calls("encode_text") as calls:
            features[encoding] = method.pair_text_features(pairs)
        assert (calls["n"] > 0) == (encoding == "full")
    lengths = {
        int(t.argmax()) for t in backbone().tokenizer(method.prompts(torch.as_tensor(pairs)))
    }
    assert len(lengths) > 2  # names of different token lengths in one batch
    torch.testing.assert_close(features["prefix"], features["full"], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_csp_fit_with_prefix_encoding_matches_full() -> None:
    dataset = make_dataset(names=MULTI_TOKEN)
    feats = make_features(dataset, "test").features
    fits = {}
    for encoding in ("full", "prefix"):
        method = make_method("csp", epochs=2, attr_dropout=0.3)
        aucs = iter([0.2, 0.3])
        log = method.fit(
            make_ctx(
                dataset,
                method.hparams,
                text_encoding=encoding,
                validate=lambda m, aucs=aucs: next(aucs),
            )
        )
        scores = {
            w: dense_scores(method, feats, dataset.candidate_pairs(w)) for w in ("closed", "open")
        }
        fits[encoding] = (method.trainable_state()["vocabulary"], log, scores)
    (full_vocabulary, full_log, full_scores), (vocabulary, log, scores) = fits.values()
    torch.testing.assert_close(vocabulary, full_vocabulary, rtol=1e-5, atol=1e-5)
    assert log["best_epoch"] == full_log["best_epoch"] == 2
    assert log["final_loss"] == pytest.approx(full_log["final_loss"], rel=1e-5, abs=1e-5)
    for world, expected in full_scores.items():
        np.testing.assert_allclose(scores[world], expected, rtol=1e-5, atol=1e-5)


def test_unknown_or_unsupported_text_encoding_is_refused() -> None:
    import open_clip

    method = make_method("csp", epochs=0)
    with pytest.raises(BenchError, match="unknown text encoding 'fast'"):
        method.prepare(make_ctx(make_dataset(), method.hparams, text_encoding="fast"))
    # a bidirectional text tower (SigLIP-like): prefixes do not determine their states
    text_cfg = {"width": 32, "heads": 2, "layers": 1, "no_causal_mask": True, "pool_type": "last"}
    vision_cfg = {"image_size": 16, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16}
    model = open_clip.CustomTextCLIP(embed_dim=24, vision_cfg=vision_cfg, text_cfg=text_cfg)
    bidirectional = dataclasses.replace(backbone(), model=model)
    ctx = FitContext(
        dataset=make_dataset(), backbone=bidirectional, features={}, hparams={}, seed=0
    )
    with pytest.raises(BenchError, match="causal.*run with --text-encoding full"):
        make_method("clip").prepare(ctx)


# ----------------------------------------------------------------------------- triple prompts
TRIPLES = np.array([[2, 0, 1], [1, 2, 0]])  # (red, blue, cat), (green, red, car)


def _prompted(name: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """A fitted (0 epochs) ``name`` with random trainable tensors, and the prompt embeddings
    and tokens it scores TRIPLES with."""
    method = make_method(name, epochs=0)
    method.fit(make_ctx(make_dataset(), method.hparams))
    with torch.no_grad():
        for param in method.trainable_parameters():
            param.normal_(generator=torch.Generator().manual_seed(1))
    cls = type(backbone())  # the backbone is frozen: spy on its class
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    encode = cls.encode_text_embeddings

    def spy(self: Any, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        calls.append((embeddings.detach().clone(), tokens.clone()))
        return encode(self, embeddings, tokens)

    monkeypatch.setattr(cls, "encode_text_embeddings", spy)
    feats = make_features(make_dataset(), "test").features
    scores = method.score_triples(feats, TRIPLES)
    assert scores.shape == (feats.shape[0], len(TRIPLES)) and np.isfinite(scores).all()
    embeddings, tokens = calls[-1]  # building the template may encode it first (truncation)
    return method, embeddings, tokens


def test_csp_triples_put_the_learned_rows_before_eot(monkeypatch: pytest.MonkeyPatch) -> None:
    method, embeddings, tokens = _prompted("csp", monkeypatch)
    template = method.triple_template
    eot = template.eot
    assert tokens[0].tolist() == template.tokens[0].tolist()
    assert eot == int(backbone().tokenizer(["a photo of x x x"])[0].argmax())
    vocab, n_attrs = method.vocabulary.detach(), len(ATTRS)
    for row, (a, b, o) in enumerate(TRIPLES):
        assert torch.equal(embeddings[row, eot - 3], vocab[a])
        assert torch.equal(embeddings[row, eot - 2], vocab[b])
        assert torch.equal(embeddings[row, eot - 1], vocab[o + n_attrs])
        keep = [i for i in range(embeddings.shape[1]) if i not in (eot - 3, eot - 2, eot - 1)]
        assert torch.equal(embeddings[row, keep], template.embeddings[0, keep])


def test_coop_triples_keep_the_context_and_frozen_names(monkeypatch: pytest.MonkeyPatch) -> None:
    method, embeddings, _ = _prompted("coop", monkeypatch)
    eot, n_ctx = method.triple_template.eot, method.n_ctx
    assert eot == n_ctx + 4
    for row, (a, b, o) in enumerate(TRIPLES):
        assert torch.equal(embeddings[row, 1 : 1 + n_ctx], method.context.detach())
        assert torch.equal(embeddings[row, eot - 3], method.attr_vectors[a])
        assert torch.equal(embeddings[row, eot - 2], method.attr_vectors[b])
        assert torch.equal(embeddings[row, eot - 1], method.obj_vectors[o])


def test_clip_triples_are_hand_written_prompts() -> None:
    dataset = make_dataset()
    method = make_method("clip")
    method.fit(make_ctx(dataset, method.hparams))
    assert method.triple_prompts(torch.as_tensor(TRIPLES)) == [
        "a photo of red blue cat",
        "a photo of green red car",
    ]
    bb = backbone()
    feats = make_features(dataset, "test").features
    text = torch.nn.functional.normalize(bb.encode_text(method.triple_prompts(TRIPLES)), dim=-1)
    image = torch.nn.functional.normalize(feats.float(), dim=-1)
    expected = (float(bb.logit_scale) * image @ text.float().t()).numpy()
    np.testing.assert_allclose(method.score_triples(feats, TRIPLES), expected, atol=1e-4)
