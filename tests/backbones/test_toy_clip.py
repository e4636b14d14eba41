"""toy-clip: corpus, cache, loading, CLI, and that methods learn on top of it.

One toy-clip is pretrained per test session (``toy_results``, a couple of minutes on two
CPU cores) and shared by every test that needs real weights; the cache mechanics use a
two-step recipe that builds in about a second.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from rich.console import Console

from bench.backbones import load_backbone, parse_backbone
from bench.backbones import toy_clip as tc
from bench.cli import cli
from bench.data.synthetic import PATTERNS, SYNTHETIC_ATTRS, SYNTHETIC_OBJS, plan_synthetic
from bench.errors import BenchError
from bench.executors.local import run_local
from bench.pipeline.config import RunConfig

#: A recipe that builds in about a second, for the cache mechanics.
QUICK = tc.PretrainConfig(steps=2, batch_size=8, warmup_steps=1)


def _cache(results: Path) -> Path:
    return results / "cache" / "backbones"


@pytest.fixture(scope="session")
def toy_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results folder holding the default toy-clip build (pretrained once per session)."""
    results = tmp_path_factory.mktemp("toy-clip-results")
    folder, built = tc.ensure_toy_clip(_cache(results), show_progress=False)
    assert built and folder.is_dir()
    return results


@pytest.fixture(scope="session")
def toy_run(toy_results: Path, synthetic_root: Path) -> dict[str, dict[str, Any]]:
    """clip, coop and csp on ``synthetic`` with the default backbone (toy-clip), seed 0."""
    config = RunConfig(
        methods=("clip", "coop", "csp"),
        datasets=("synthetic",),
        seeds=(0,),
        data_root=synthetic_root,
        results_dir=toy_results,
        log_mlflow=False,
    )
    outcomes = run_local(config, console=Console(stderr=True))
    assert [o.status for o in outcomes] == ["done"] * 3
    return {o.cell.method: o.result for o in outcomes if o.result is not None}


def _unseen_test_pairs() -> set[tuple[str, str]]:
    plan = plan_synthetic("synthetic", seed=0)
    train = set(plan.train_pairs)
    return {p for p in (*plan.val_pairs, *plan.test_pairs) if p not in train}


# ------------------------------------------------------------------------------ corpus
def test_corpus_never_shows_the_benchmarks_unseen_pairs() -> None:
    unseen = _unseen_test_pairs()
    assert len(unseen) == 24
    pairs = set(tc.corpus_pairs())
    excluded = set(tc.excluded_pairs())
    assert unseen <= excluded
    assert not pairs & excluded
    assert pairs | excluded == {(a, o) for a in SYNTHETIC_ATTRS for o in SYNTHETIC_OBJS}
    plan = plan_synthetic("synthetic", seed=0)
    benchmark = set(plan.train_pairs) | set(plan.val_pairs) | set(plan.test_pairs)
    assert pairs - benchmark, "the corpus also shows compositions outside the benchmark"
    assert {a for a, _ in pairs} == set(SYNTHETIC_ATTRS)
    assert {o for _, o in pairs} == set(SYNTHETIC_OBJS)


def test_corpus_batches_are_deterministic_and_varied() -> None:
    model_transform = tc._eval_transform(tc._create_model(0))
    corpus = tc.Corpus(tc.CorpusRecipe(), seed=0, transform=model_transform)
    images, captions, pairs = corpus.batch(0, 40)
    again, captions_again, _ = corpus.batch(0, 40)
    other, _, _ = corpus.batch(1, 40)
    assert images.shape == (40, 3, 48, 48)
    assert torch.equal(images, again) and captions == captions_again
    assert not torch.equal(images, other)
    assert len(set(pairs)) == 40, "compositions within a batch are distinct"
    assert set(pairs) <= set(tc.corpus_pairs())
    for (attr, obj), caption in zip(pairs, captions, strict=True):
        assert attr in caption.split() and obj in caption.split()
    assert len({c.replace(a, "A").replace(o, "O") for (a, o), c in zip(pairs, captions)}) > 5
    # the benchmark's prompt wording is never a caption (as for a web-pretrained CLIP)
    assert not any(c.startswith("a photo of") for c in captions)


def test_corpus_never_shows_the_benchmarks_higher_order_triples() -> None:
    plan = plan_synthetic("synthetic", seed=0)
    triples = set(plan.higher_order_triples())
    assert triples and triples <= set(tc.excluded_triples())
    excluded_pairs = set(tc.excluded_pairs())
    allowed = tc.corpus_second_attrs()
    shown = {(a, p, o) for (a, o), patterns in allowed.items() for p in patterns}
    assert shown, "the corpus teaches second attributes"
    assert not shown & triples
    assert all((p, o) not in excluded_pairs for _, p, o in shown)
    assert {p for _, p, _ in shown} == set(PATTERNS)
    assert {o for _, _, o in triples} <= {o for _, _, o in shown}
    corpus = tc.Corpus(tc.CorpusRecipe(), seed=0, transform=lambda image: torch.zeros(1))
    rng = np.random.default_rng(0)
    seen_triples = 0
    for step in range(5):
        _, captions, pairs = corpus.batch(step, 40)
        for (attr, obj), caption in zip(pairs, captions, strict=True):
            words = caption.split()
            named = [p for p in PATTERNS if p in words and p != attr]
            if named:
                seen_triples += 1
                assert named[0] in allowed[(attr, obj)]
                assert words.index(attr) < words.index(named[0]) < words.index(obj)
    assert seen_triples > 0
    for _ in range(20):  # the benchmark's word order, never its "a photo of" wording
        caption = corpus.caption("red", "star", rng, attr2="striped")
        assert "red striped star" in caption and not caption.startswith("a photo of")


def test_primitive_groups_name_one_word_each() -> None:
    corpus = tc.Corpus(tc.CorpusRecipe(), seed=0, transform=lambda image: torch.zeros(1))
    (attr_images, attr_captions, attr_pairs), (obj_images, obj_captions, obj_pairs) = (
        corpus.primitive_batches(0)
    )
    assert attr_images.shape[0] == len(SYNTHETIC_ATTRS) and obj_images.shape[0] == len(
        SYNTHETIC_OBJS
    )
    assert sorted(a for a, _ in attr_pairs) == sorted(SYNTHETIC_ATTRS)
    assert sorted(o for _, o in obj_pairs) == sorted(SYNTHETIC_OBJS)
    for (attr, obj), caption in zip(attr_pairs, attr_captions, strict=True):
        assert attr in caption.split() and obj not in caption.split()
    for (attr, obj), caption in zip(obj_pairs, obj_captions, strict=True):
        assert obj in caption.split() and attr not in caption.split()
    assert set(attr_pairs + obj_pairs) <= set(tc.corpus_pairs())
    rng = np.random.default_rng(0)
    captions = {corpus.caption("orange", "arrow", rng, "obj") for _ in range(40)}
    captions |= {corpus.caption("orange", "arrow", rng) for _ in range(40)}
    assert not any("a orange" in c or "a arrow" in c for c in captions)


# ------------------------------------------------------------------------------ cache
def test_cache_folder_reuse_and_determinism(tmp_path: Path) -> None:
    folder, built = tc.ensure_toy_clip(tmp_path / "a", QUICK, show_progress=False)
    assert built
    assert folder.name == f"toy-clip-{tc.recipe_hash(QUICK)[:12]}"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [tc.CONFIG_FILE, tc.WEIGHTS_FILE, tc.MANIFEST_FILE]
    )
    assert tc.ensure_toy_clip(tmp_path / "a", QUICK, show_progress=False) == (folder, False)
    twin, _ = tc.ensure_toy_clip(tmp_path / "b", QUICK, show_progress=False)
    manifest, twin_manifest = tc.read_manifest(folder), tc.read_manifest(twin)
    assert manifest is not None and twin_manifest is not None
    assert manifest["weights_sha256"] == twin_manifest["weights_sha256"], "same seed, same weights"
    other_seed = tc.PretrainConfig(seed=1, steps=2, batch_size=8, warmup_steps=1)
    other, _ = tc.ensure_toy_clip(tmp_path / "a", other_seed, show_progress=False)
    assert other != folder
    assert tc.read_manifest(other)["weights_sha256"] != manifest["weights_sha256"]  # type: ignore[index]
    # nothing but the two builds is left in the cache folder (no temporary folders)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted([folder.name, other.name])


def test_pretraining_leaves_global_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    np_state = np.random.get_state()[1].copy()
    tc.ensure_toy_clip(tmp_path, QUICK, show_progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    assert np.array_equal(np.random.get_state()[1], np_state)


def test_corrupt_or_stale_builds_are_rebuilt(tmp_path: Path) -> None:
    folder, _ = tc.ensure_toy_clip(tmp_path, QUICK, show_progress=False)
    good = tc.read_manifest(folder)
    weights = folder / tc.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])
    assert "corrupt" in (tc.check_folder(folder, QUICK) or "")
    assert tc.ensure_toy_clip(tmp_path, QUICK, show_progress=False) == (folder, True)
    assert tc.check_folder(folder, QUICK) is None
    assert tc.read_manifest(folder)["weights_sha256"] == good["weights_sha256"]  # type: ignore[index]

    manifest = tc.read_manifest(folder)
    manifest["hash"] = "0" * 64  # type: ignore[index]
    (folder / tc.MANIFEST_FILE).write_text(json.dumps(manifest))
    assert "hash" in (tc.check_folder(folder, QUICK) or "")
    assert tc.ensure_toy_clip(tmp_path, QUICK, show_progress=False)[1]

    (folder / tc.MANIFEST_FILE).unlink()
    assert tc.check_folder(folder, QUICK) == "no readable manifest"
    assert tc.ensure_toy_clip(tmp_path, QUICK, show_progress=False)[1]
    assert tc.check_folder(folder, QUICK) is None


def test_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(folder: Path, config: tc.PretrainConfig, show_progress: bool) -> None:
        (folder / "partial").write_text("half")
        raise RuntimeError("killed")

    monkeypatch.setattr(tc, "_write_build", boom)
    with pytest.raises(RuntimeError, match="killed"):
        tc.ensure_toy_clip(tmp_path, QUICK, show_progress=False)
    assert list(tmp_path.iterdir()) == []


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(tc.CACHE_ENV, raising=False)
    assert tc.default_cache_dir() == Path("results") / "cache" / "backbones"
    monkeypatch.setenv(tc.CACHE_ENV, str(tmp_path))
    assert tc.default_cache_dir() == tmp_path
    assert tc.cache_folder(None, QUICK).parent == tmp_path


def test_spec_seed() -> None:
    assert tc.seed_from_spec(parse_backbone("toy-clip")) == 0
    assert tc.seed_from_spec(parse_backbone("toy-clip:7")) == 7
    with pytest.raises(BenchError, match="toy-clip:SEED"):
        tc.seed_from_spec(parse_backbone("toy-clip:large"))


# ---------------------------------------------------------------- the pretrained model
@pytest.mark.slow
def test_default_build_manifest(toy_results: Path) -> None:
    folder = tc.cache_folder(_cache(toy_results), tc.PretrainConfig())
    assert tc.check_folder(folder, tc.PretrainConfig()) is None
    manifest = tc.read_manifest(folder)
    assert manifest is not None
    assert manifest["hash"] == tc.recipe_hash(tc.PretrainConfig())
    recipe = manifest["recipe"]
    assert {tuple(p) for p in recipe["excluded_pairs"]} >= _unseen_test_pairs()
    assert recipe["pretrain"]["seed"] == 0 and recipe["generator_version"] >= 1
    assert 2_000_000 < manifest["parameters"] < 10_000_000
    training = manifest["training"]
    assert training["final_loss"] < training["loss_every_20_steps"][0]
    config = json.loads((folder / tc.CONFIG_FILE).read_text())
    assert config["model_cfg"] == tc.model_config()
    assert config["model_cfg"]["vision_cfg"]["image_size"] == 48


@pytest.mark.slow
def test_load_toy_clip_is_a_pretrained_backbone(toy_results: Path) -> None:
    cache = _cache(toy_results)
    before = sorted(p.name for p in cache.iterdir())
    backbone = load_backbone("toy-clip", device="cpu", cache_dir=cache)
    assert sorted(p.name for p in cache.iterdir()) == before, "reused, not rebuilt"
    assert backbone.random_weights is False and backbone.warning is None
    manifest = tc.read_manifest(tc.cache_folder(cache, tc.PretrainConfig()))
    assert backbone.identifier.startswith("toy-clip-")
    assert backbone.identifier == load_backbone("toy-clip", "cpu", cache).identifier
    assert manifest is not None and manifest["weights_sha256"]
    assert backbone.embed_dim == tc.model_config()["embed_dim"]
    assert not any(p.requires_grad for p in backbone.model.parameters())
    text = torch.nn.functional.normalize(
        backbone.encode_text(["a photo of a red circle", "a photo of a blue star"]), dim=-1
    )
    assert float(text[0] @ text[1]) < 0.99
    # the cache folder is a plain open_clip local-dir
    folder = tc.cache_folder(cache, tc.PretrainConfig())
    same = load_backbone(f"local-dir:{folder}", device="cpu")
    prompts = ["a photo of red circle", "a striped star"]
    assert torch.allclose(same.encode_text(prompts), backbone.encode_text(prompts))


# ------------------------------------------------------------------------------ methods
def _test_cw(result: dict[str, Any]) -> dict[str, Any]:
    return result["metrics"]["test"]["cw"]


@pytest.mark.slow
def test_zero_shot_clip_generalises_to_unseen_pairs(toy_run: dict[str, dict[str, Any]]) -> None:
    result = toy_run["clip"]
    assert result["config"]["backbone"] == "toy-clip"
    assert result["backbone_random_weights"] is False
    cw = _test_cw(result)
    chance = 1 / 12  # closed world, bias 1000: only the 12 unseen test pairs compete
    # unseen_curve[-1] is the accuracy at bias 1000, where every unseen candidate outranks
    # every seen one: plain zero-shot classification among the unseen test pairs.
    assert cw["unseen_curve"][-1] >= 3 * chance
    assert cw["best_unseen"] >= cw["unseen_curve"][-1]


@pytest.mark.slow
def test_trained_methods_beat_zero_shot(toy_run: dict[str, dict[str, Any]]) -> None:
    clip_auc = _test_cw(toy_run["clip"])["auc"]
    assert _test_cw(toy_run["csp"])["auc"] > clip_auc
    assert _test_cw(toy_run["coop"])["auc"] > clip_auc


@pytest.mark.slow
def test_higher_order_well_above_chance(toy_run: dict[str, dict[str, Any]]) -> None:
    """toy-clip never saw the benchmark's attribute-attribute-object triples."""
    for method in ("clip", "coop", "csp"):
        block = toy_run[method]["higher_order"]["aao"]
        assert block["n_triples"] == 42 and block["n_images"] == 84
        assert block["acc"] >= 5 * block["chance"], method


@pytest.mark.slow
def test_same_cell_same_metrics(toy_results: Path, synthetic_root: Path) -> None:
    config = RunConfig(
        methods=("csp",),
        datasets=("synthetic",),
        seeds=(1,),
        epochs=2,
        data_root=synthetic_root,
        results_dir=toy_results,
        log_mlflow=False,
        rerun=True,
    )
    first = run_local(config, console=Console(stderr=True))[0].result
    second = run_local(config, console=Console(stderr=True))[0].result
    assert first is not None and second is not None
    assert first["metrics"] == second["metrics"]
    assert first["history"] == second["history"]


# ------------------------------------------------------------------------------ CLI
@pytest.mark.slow
def test_cli_list_and_pretrain(toy_results: Path) -> None:
    runner = CliRunner()
    listed = runner.invoke(cli, ["backbone", "list"])
    assert listed.exit_code == 0 and "toy-clip" in listed.output
    cached = runner.invoke(
        cli, ["backbone", "pretrain", "toy-clip", "--results-dir", str(toy_results)]
    )
    assert cached.exit_code == 0, cached.output
    assert "already cached" in cached.output and "toy-clip-" in cached.output
    bad = runner.invoke(cli, ["backbone", "pretrain", "toy-clip", "--seed", "-1"])
    assert bad.exit_code == 2
