"""The synthetic generator: vocabulary, rendering, split planning, files on disk."""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import bench.data.synthetic as synthetic
from bench.data.czsl import CZSLDataset, describe, load_dataset
from bench.data.registry import dataset_card, prepare_synthetic, registered_datasets
from bench.data.synthetic import (
    PRESETS,
    SYNTHETIC_ATTRS,
    SYNTHETIC_OBJS,
    SyntheticPreset,
    generate_synthetic,
    plan_synthetic,
    render,
)
from bench.errors import BenchError

REAL_OF_PRESET = {
    "synthetic-mit-states": "mit-states",
    "synthetic-ut-zappos": "ut-zappos",
    "synthetic-cgqa": "cgqa",
}


def card_as_counts(counts: dict) -> dict:
    """A card's [counts] in describe()'s shape (closed-world pairs derived)."""
    out = {k: counts[k] for k in ("attrs", "objs", "open_world_pairs")}
    out["pairs"] = (
        counts["train"]["pairs"] + counts["val"]["unseen_pairs"] + counts["test"]["unseen_pairs"]
    )
    for split in ("train", "val", "test"):
        out[split] = {k: counts[split][k] for k in ("images", "seen_pairs", "unseen_pairs")}
    return out


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


# -------------------------------------------------------------------------------- vocabulary


def test_vocabulary_names_are_single_lowercase_clip_tokens() -> None:
    import open_clip

    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    names = SYNTHETIC_ATTRS + SYNTHETIC_OBJS
    assert len(set(names)) == len(names)
    tokens = tokenizer(list(names))
    for name, row in zip(names, tokens, strict=True):
        assert name.isalpha() and name.islower(), name
        assert int((row != 0).sum()) == 3, f"{name!r} is not a single BPE token"  # SOT, word, EOT


def test_render_is_deterministic_and_shaped() -> None:
    a = render("striped", "star", np.random.default_rng(5), size=32)
    b = render("striped", "star", np.random.default_rng(5), size=32)
    assert a.mode == "RGB" and a.size == (32, 32)
    assert a.tobytes() == b.tobytes()
    c = render("striped", "star", np.random.default_rng(6), size=32)
    assert a.tobytes() != c.tobytes()
    with pytest.raises(ValueError):
        render("sparkly", "star", np.random.default_rng(0))
    with pytest.raises(ValueError):
        render("red", "blob", np.random.default_rng(0))


def test_render_shows_the_attribute_colour() -> None:
    """The centre of a red circle is red, of a blue circle blue."""
    for attr, channel in (("red", 0), ("green", 1), ("blue", 2)):
        image = np.asarray(render(attr, "circle", np.random.default_rng(1), size=48), dtype=float)
        centre = image[20:28, 20:28].mean(axis=(0, 1))
        assert centre.argmax() == channel, (attr, centre)


# ---------------------------------------------------------------------------------- planning


@pytest.mark.parametrize(
    "preset", ["synthetic-mit-states", "synthetic-ut-zappos", "synthetic-cgqa"]
)
def test_scale_presets_have_exactly_the_real_counts(preset: str) -> None:
    plan = plan_synthetic(preset)
    real = card_as_counts(dataset_card(REAL_OF_PRESET[preset])["counts"])
    assert plan.counts() == real


def test_every_synthetic_card_matches_its_plan() -> None:
    names = [n for n in registered_datasets() if dataset_card(n)["kind"] == "synthetic"]
    assert {"synthetic", "synthetic-mit-states", "synthetic-ut-zappos", "synthetic-cgqa"} <= set(
        names
    )
    for name in names:
        card = dataset_card(name)
        gen = card["generator"]
        plan = plan_synthetic(gen["preset"], seed=gen["seed"], layout=gen["layout"])
        assert plan.counts() == card_as_counts(card["counts"]), name
        assert gen["image_size"] == PRESETS[gen["preset"]].image_size
        assert card["layout"] == gen["layout"]


@pytest.mark.parametrize("preset", list(PRESETS))
def test_plan_invariants(preset: str) -> None:
    plan = plan_synthetic(preset, seed=3)
    train = set(plan.train_pairs)
    assert len(train) == len(plan.train_pairs)
    assert {a for a, _ in train} == set(plan.attrs)  # every primitive in a train pair
    assert {o for _, o in train} == set(plan.objs)
    unseen = {}
    for split in ("val", "test"):
        pairs = plan.split_pairs(split)
        assert len(set(pairs)) == len(pairs)
        unseen[split] = set(pairs) - train
        assert unseen[split] and set(pairs) & train  # seen and unseen pairs
    assert not unseen["val"] & unseen["test"]
    for split in ("train", "val", "test"):
        per_pair = Counter(plan.images[split])
        assert set(per_pair) == set(plan.split_pairs(split))  # every pair has images
        assert max(per_pair.values()) - min(per_pair.values()) <= 1  # balanced
    kinds = Counter(
        "attr" if a == "NA" else "set" if s == "NA" else "outside" for a, _, s in plan.skipped
    )
    assert kinds["attr"] >= 1 and kinds["set"] >= 1 and kinds["outside"] >= 1
    closed = train | unseen["val"] | unseen["test"]
    assert all((a, o) not in closed for a, o, s in plan.skipped if a != "NA" and s != "NA")


def test_default_preset_size() -> None:
    counts = plan_synthetic("synthetic").counts()
    assert counts["attrs"] == 12 and counts["objs"] == 10
    assert counts["train"] == {"images": 1440, "seen_pairs": 60, "unseen_pairs": 0}
    assert counts["val"] == {"images": 192, "seen_pairs": 12, "unseen_pairs": 12}
    assert plan_synthetic("synthetic").attrs == tuple(sorted(SYNTHETIC_ATTRS))


def test_plan_as_in_memory_dataset_has_the_plans_counts() -> None:
    plan = plan_synthetic("synthetic", seed=3)
    dataset = plan.as_dataset()
    assert describe(dataset) == plan.counts()
    assert (dataset.name, dataset.fingerprint) == ("synthetic", "synthetic-plan-3")
    assert dataset.labels("val")[0].tolist() == [plan.attrs.index(a) for a, _ in plan.images["val"]]


def test_plan_is_deterministic_in_the_seed() -> None:
    assert plan_synthetic("synthetic", seed=1) == plan_synthetic("synthetic", seed=1)
    assert (
        plan_synthetic("synthetic", seed=1).train_pairs
        != plan_synthetic("synthetic", seed=2).train_pairs
    )


def test_unknown_preset_and_layout() -> None:
    with pytest.raises(BenchError, match="unknown synthetic preset"):
        plan_synthetic("synthetic-imagenet")
    with pytest.raises(BenchError, match="unknown layout"):
        plan_synthetic("synthetic", layout="nested")


# ----------------------------------------------------------------------------------- on disk


def test_default_synthetic_loads_with_planned_counts(synthetic_dataset: CZSLDataset) -> None:
    counts = describe(synthetic_dataset)
    assert counts == plan_synthetic("synthetic").counts()
    assert counts == card_as_counts(dataset_card("synthetic")["counts"])
    sample = synthetic_dataset.splits["train"][0]
    assert sample.image.startswith(f"{sample.attr}_{sample.obj}/")
    path = synthetic_dataset.image_path(sample)
    from PIL import Image

    with Image.open(path) as image:
        assert image.size == (48, 48) and image.mode == "RGB"


def test_metadata_holds_rows_the_loader_skips(synthetic_dataset: CZSLDataset) -> None:
    rows = torch.load(
        synthetic_dataset.root / "metadata_compositional-split-natural.t7", weights_only=True
    )
    assert any(row["attr"] == "NA" for row in rows)
    assert any(row["set"] == "NA" for row in rows)
    closed = set(synthetic_dataset.pairs)
    assert any((row["attr"], row["obj"]) not in closed and row["attr"] != "NA" for row in rows)
    loaded = sum(len(v) for v in synthetic_dataset.splits.values())
    assert len(rows) > loaded
    for row in rows:  # every row's image exists, skipped or not
        assert (synthetic_dataset.root / "images" / row["image"]).is_file()


def test_same_seed_same_bytes_other_seed_other_fingerprint(tmp_path: Path) -> None:
    first = generate_synthetic(tmp_path / "a", "synthetic-tiny", seed=7)
    second = generate_synthetic(tmp_path / "b", "synthetic-tiny", seed=7)
    other = generate_synthetic(tmp_path / "c", "synthetic-tiny", seed=8)
    assert tree_digest(first) == tree_digest(second)
    assert load_dataset(first).fingerprint == load_dataset(second).fingerprint
    assert load_dataset(other).fingerprint != load_dataset(first).fingerprint


def test_image_size_changes_the_fingerprint(tmp_path: Path, tiny_dataset: CZSLDataset) -> None:
    folder = generate_synthetic(tmp_path / "big", "synthetic-tiny", image_size=20)
    assert load_dataset(folder).fingerprint != tiny_dataset.fingerprint


def test_flat_layout(tmp_path: Path, tiny_dataset: CZSLDataset) -> None:
    folder = generate_synthetic(tmp_path / "flat", "synthetic-tiny", layout="flat")
    ds = load_dataset(folder)
    assert describe(ds) == describe(tiny_dataset)
    assert all("/" not in s.image for split in ds.splits.values() for s in split)
    assert all(p.is_file() for p in (folder / "images").iterdir())


def test_ut_style_rows_carry_image_key(tmp_path: Path) -> None:
    preset = dataclasses.replace(PRESETS["synthetic-tiny"], name="tiny-ut", ut_style=True)
    folder = generate_synthetic(tmp_path / "ut", preset)
    rows = torch.load(folder / "metadata_compositional-split-natural.t7", weights_only=True)
    assert all(isinstance(row["_image"], str) for row in rows)
    assert describe(load_dataset(folder))["train"]["images"] == 72


def test_generated_vocabulary_preset_renders(tmp_path: Path) -> None:
    preset = SyntheticPreset(
        "mini-generated", 7, 9, 12, 3, 3, 3, 3, 24, 12, 12, image_size=8, vocabulary="generated"
    )
    ds = load_dataset(generate_synthetic(tmp_path / "gen", preset, layout="flat"))
    assert ds.attrs == tuple(f"a{i:03d}" for i in range(7))
    assert describe(ds)["test"] == {"images": 12, "seen_pairs": 3, "unseen_pairs": 3}


def test_killed_generation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real_render = synthetic.render

    def failing_render(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 20:
            raise KeyboardInterrupt
        return real_render(*args, **kwargs)

    monkeypatch.setattr(synthetic, "render", failing_render)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic(tmp_path / "half", "synthetic-tiny")
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_needs_force(tmp_path: Path) -> None:
    folder = generate_synthetic(tmp_path / "ds", "synthetic-tiny", seed=1)
    with pytest.raises(BenchError, match="already exists"):
        generate_synthetic(folder, "synthetic-tiny", seed=2)
    generate_synthetic(folder, "synthetic-tiny", seed=2, force=True)
    assert (
        load_dataset(folder).fingerprint
        == load_dataset(generate_synthetic(tmp_path / "ref", "synthetic-tiny", seed=2)).fingerprint
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "ref"]


def test_prepare_is_idempotent_and_guards_other_params(tmp_path: Path) -> None:
    folder, generated = prepare_synthetic("synthetic-tiny", tmp_path)
    assert generated and folder == tmp_path / "synthetic-tiny"
    stamp = (folder / "metadata_compositional-split-natural.t7").stat().st_mtime_ns
    assert prepare_synthetic("synthetic-tiny", tmp_path) == (folder, False)
    assert (folder / "metadata_compositional-split-natural.t7").stat().st_mtime_ns == stamp
    with pytest.raises(BenchError, match="--force"):
        prepare_synthetic("synthetic-tiny", tmp_path, seed=4)
    assert prepare_synthetic("synthetic-tiny", tmp_path, seed=4, force=True) == (folder, True)
    assert prepare_synthetic("synthetic-tiny", tmp_path, seed=4) == (folder, False)
    with pytest.raises(BenchError, match="bench data download mit-states"):
        prepare_synthetic("mit-states", tmp_path)


def test_a_dataset_from_an_older_generator_is_rendered_again_when_prepared(
    tmp_path: Path,
) -> None:
    import json

    from bench.data.registry import resolve_dataset

    folder, _ = prepare_synthetic("synthetic-tiny", tmp_path)
    params = json.loads((folder / "generator.json").read_text())
    (folder / "generator.json").write_text(json.dumps({**params, "version": 1}))
    assert resolve_dataset("synthetic-tiny", tmp_path) == folder  # no prepare: used as it is
    assert json.loads((folder / "generator.json").read_text())["version"] == 1
    assert resolve_dataset("synthetic-tiny", tmp_path, prepare=True) == folder
    assert json.loads((folder / "generator.json").read_text()) == params
