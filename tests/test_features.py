"""Feature cache: miss then hit, invalidation, corruption handling, unreadable images."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from rich.console import Console
from torchvision import transforms

from bench.backbones import Backbone, load_backbone
from bench.data.czsl import CZSLDataset, load_dataset
from bench.data.synthetic import generate_synthetic
from bench.errors import BenchError
from bench.features import (
    FeatureSet,
    TrainViews,
    extract_features,
    feature_cache_key,
    view_seed,
)
from bench.io import sha256_file


class CountingBackbone:
    """Delegates to a real backbone and counts encoder calls (Backbone itself is frozen)."""

    def __init__(self, inner: Backbone, **overrides: Any) -> None:
        self._inner = inner
        self._overrides = overrides
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        if name in self._overrides:
            return self._overrides[name]
        return getattr(self._inner, name)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self._inner.encode_images(images)


@pytest.fixture(scope="module")
def tiny() -> Backbone:
    return load_backbone("tiny-random", device="cpu")


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic(tmp_path_factory.mktemp("data") / "synthetic-tiny", "synthetic-tiny")


@pytest.fixture(scope="module")
def dataset(dataset_root: Path) -> CZSLDataset:
    return load_dataset(dataset_root, name="synthetic-tiny")


def _console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=200), buffer


def _extract(backbone: Any, dataset: Any, results: Path, **kwargs: Any) -> tuple[FeatureSet, str]:
    console, buffer = _console()
    features = extract_features(
        backbone, dataset, "val", results, console=console, batch_size=8, **kwargs
    )
    return features, buffer.getvalue()


def _entry_files(results: Path) -> list[Path]:
    return sorted(p for p in (results / "cache" / "features").rglob("*") if p.is_file())


def test_miss_then_hit(tiny: Backbone, dataset: CZSLDataset, tmp_path: Path) -> None:
    backbone = CountingBackbone(tiny)
    first, _ = _extract(backbone, dataset, tmp_path)
    n = len(dataset.splits["val"])
    assert not first.cache_hit and backbone.calls == -(-n // 8)
    assert first.features.shape == (n, tiny.embed_dim) and first.features.dtype == torch.float32
    assert first.features.device.type == "cpu"
    attr_ids, obj_ids = dataset.labels("val")
    np.testing.assert_array_equal(first.attr_idx, attr_ids)
    np.testing.assert_array_equal(first.obj_idx, obj_ids)
    assert first.attr_idx.dtype == np.int64 and first.obj_idx.dtype == np.int64
    assert first.image_paths == tuple(s.image for s in dataset.splits["val"])
    assert first.key == feature_cache_key(tiny, dataset, "val", "eval")

    # The features are exactly what the encoder gives for the preprocessed images.
    from PIL import Image

    sample = dataset.splits["val"][0]
    with Image.open(dataset.image_path(sample)) as image:
        direct = tiny.encode_images(tiny.preprocess(image.convert("RGB"))[None])
    torch.testing.assert_close(first.features[:1], direct, atol=1e-5, rtol=1e-5)

    calls = backbone.calls
    second, output = _extract(backbone, dataset, tmp_path)
    assert second.cache_hit and backbone.calls == calls and "warning" not in output
    assert second.key == first.key
    torch.testing.assert_close(second.features, first.features, atol=0, rtol=0)

    files = _entry_files(tmp_path)
    assert [p.suffix for p in files] == [".json", ".pt"]
    assert not [p for p in files if p.name.endswith(".tmp")]
    manifest = json.loads(files[0].read_text())
    assert manifest["sha256"] == sha256_file(files[1])
    assert manifest["backbone"] == {
        "spec": "tiny-random",
        "identifier": tiny.identifier,
        "random_weights": True,
    }
    assert manifest["dataset"] == {"name": "synthetic-tiny", "fingerprint": dataset.fingerprint}
    assert (manifest["split"], manifest["n"], manifest["dim"]) == ("val", n, tiny.embed_dim)
    assert manifest["transform"]["name"] == "eval" and manifest["bench_version"]


def test_recompute_when_inputs_change(tiny: Backbone, dataset: CZSLDataset, tmp_path: Path) -> None:
    backbone = CountingBackbone(tiny)
    base, _ = _extract(backbone, dataset, tmp_path)

    other_data = dataclasses.replace(dataset, fingerprint="0" * 64)
    changed, _ = _extract(backbone, other_data, tmp_path)
    assert not changed.cache_hit and changed.key != base.key

    flipped, _ = _extract(backbone, dataset, tmp_path, transform="hflip")
    assert not flipped.cache_hit and flipped.key != base.key
    assert not torch.allclose(flipped.features, base.features)

    resized = transforms.Compose([transforms.Resize((32, 32)), *tiny.preprocess.transforms[2:]])
    other_preprocess = CountingBackbone(tiny, preprocess=resized)
    repre, _ = _extract(other_preprocess, dataset, tmp_path)
    assert not repre.cache_hit and repre.key != base.key

    other_weights = CountingBackbone(tiny, identifier="tiny-random-ffffffffffffffff")
    reweighted, _ = _extract(other_weights, dataset, tmp_path)
    assert not reweighted.cache_hit and reweighted.key != base.key

    calls = backbone.calls
    again, _ = _extract(backbone, dataset, tmp_path)
    assert again.cache_hit and backbone.calls == calls
    with pytest.raises(BenchError, match="unknown feature transform"):
        _extract(backbone, dataset, tmp_path, transform="sepia")


def test_the_autocast_dtype_keys_the_features(tiny: Backbone, dataset: CZSLDataset) -> None:
    # fp16 features (the paper protocol on CUDA) never stand in for bf16 or fp32 ones
    keys = {
        dtype: feature_cache_key(dataclasses.replace(tiny, autocast_dtype=dtype), dataset, "val")
        for dtype in (None, torch.bfloat16, torch.float16)
    }
    assert keys[None] == feature_cache_key(tiny, dataset, "val")
    assert len(set(keys.values())) == 3


@pytest.mark.parametrize("damage", ["truncate", "flip-byte", "delete-tensor", "bad-manifest"])
def test_corrupt_entry_is_rebuilt(
    tiny: Backbone, dataset: CZSLDataset, tmp_path: Path, damage: str
) -> None:
    backbone = CountingBackbone(tiny)
    first, _ = _extract(backbone, dataset, tmp_path)
    manifest_path, tensor_path = _entry_files(tmp_path)
    data = tensor_path.read_bytes()
    if damage == "truncate":
        tensor_path.write_bytes(data[: len(data) // 2])
    elif damage == "flip-byte":
        tensor_path.write_bytes(data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:])
    elif damage == "delete-tensor":
        tensor_path.unlink()
    else:
        manifest_path.write_text("{not json")

    calls = backbone.calls
    rebuilt, output = _extract(backbone, dataset, tmp_path)
    assert not rebuilt.cache_hit and backbone.calls > calls
    assert "warning" in output and "rebuilding" in output
    torch.testing.assert_close(rebuilt.features, first.features)

    final, output = _extract(backbone, dataset, tmp_path)
    assert final.cache_hit and "warning" not in output
    assert not [p for p in _entry_files(tmp_path) if p.name.endswith(".tmp")]


def test_tensor_without_manifest_is_a_miss(
    tiny: Backbone, dataset: CZSLDataset, tmp_path: Path
) -> None:
    _extract(tiny, dataset, tmp_path)
    manifest_path, _ = _entry_files(tmp_path)
    manifest_path.unlink()  # as if the run died between the two writes
    again, output = _extract(tiny, dataset, tmp_path)
    assert not again.cache_hit and "warning" not in output
    assert len(_entry_files(tmp_path)) == 2


def test_bad_images(tiny: Backbone, dataset_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(dataset_root, root)
    copy = load_dataset(root, name="synthetic-tiny")
    first, second = copy.splits["val"][:2]

    copy.image_path(first).write_bytes(b"this is not a png")
    with pytest.raises(BenchError) as info:
        _extract(tiny, copy, tmp_path / "results")
    assert str(copy.image_path(first)) in str(info.value) and "\n" not in str(info.value)

    copy.image_path(second).unlink()
    with pytest.raises(BenchError) as info:
        _extract(tiny, copy, tmp_path / "results")
    assert str(copy.image_path(second)) in str(info.value)
    assert not (tmp_path / "results" / "cache" / "features").exists() or not _entry_files(
        tmp_path / "results"
    )


def test_regenerated_images_invalidate(tiny: Backbone, dataset_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(dataset_root, root)
    copy = load_dataset(root, name="synthetic-tiny")
    base, _ = _extract(tiny, copy, tmp_path / "results")
    from PIL import Image

    Image.new("RGB", (20, 20), "red").save(copy.image_path(copy.splits["val"][0]))
    changed, _ = _extract(tiny, copy, tmp_path / "results")
    assert not changed.cache_hit and changed.key != base.key


def test_unknown_split(tiny: Backbone, dataset: CZSLDataset, tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="no split"):
        extract_features(tiny, dataset, "holdout", tmp_path, console=_console()[0])


# ------------------------------------------------------------------ augmented training views
def _views(backbone: Any, dataset: Any, results: Path, seed: int = 0) -> tuple[TrainViews, Any]:
    console, buffer = _console()
    return TrainViews(backbone, dataset, results, seed, batch_size=8, console=console), buffer


def test_train_views_are_encoded_once_per_epoch_and_shared(
    tiny: Backbone, dataset: CZSLDataset, tmp_path: Path
) -> None:
    counting = CountingBackbone(tiny)
    first, printed = _views(counting, dataset, tmp_path)
    epoch1 = first.epoch(1)
    n = len(dataset.splits["train"])
    assert epoch1.features.shape == (n, tiny.embed_dim) and not epoch1.cache_hit
    assert "MB per epoch" in printed.getvalue() and first.encoded == [1]
    calls = counting.calls
    # another method of the grid (same backbone, dataset, seed) reads the stored epoch
    second, _ = _views(counting, dataset, tmp_path)
    again = second.epoch(1)
    assert again.cache_hit and counting.calls == calls and second.cached == [1]
    assert torch.equal(again.features, epoch1.features)
    stored = torch.load(next(tmp_path.rglob("train-paper-s0-e1-*.pt")), weights_only=True)
    assert stored["features"].dtype == torch.float16
    # a new epoch or seed is a new set of views
    assert not torch.equal(first.epoch(2).features, epoch1.features)
    other_seed, _ = _views(counting, dataset, tmp_path, seed=1)
    assert not other_seed.epoch(1).cache_hit


def test_train_views_are_the_seeded_augmented_images(
    tiny: Backbone, dataset: CZSLDataset, tmp_path: Path
) -> None:
    from PIL import Image

    views, _ = _views(tiny, dataset, tmp_path, seed=3)
    got = views.epoch(2).features
    samples = dataset.splits["train"]
    for row in (0, len(samples) - 1):
        image = samples[row].image
        torch.manual_seed(view_seed(3, 2, image))
        with Image.open(dataset.image_path(samples[row])) as pil:
            tensor = tiny.train_transform(pil.convert("RGB"))
        expected = tiny.encode_images(tensor[None]).half().float()[0]
        torch.testing.assert_close(got[row], expected, atol=2e-3, rtol=1e-3)


def test_train_views_refuse_a_full_disk(
    tiny: Backbone, dataset: CZSLDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bench.features as features_module

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(features_module.shutil, "disk_usage", lambda path: usage._replace(free=10))
    views, _ = _views(tiny, dataset, tmp_path)
    with pytest.raises(BenchError, match="disk full.*nothing was written"):
        views.epoch(1)
    assert _entry_files(tmp_path) == []


def test_train_views_disk_full_while_writing(
    tiny: Backbone, dataset: CZSLDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import bench.features as features_module

    def no_space(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(features_module, "atomic_write_bytes", no_space)
    views, _ = _views(tiny, dataset, tmp_path)
    with pytest.raises(BenchError, match="disk full.*nothing was written"):
        views.epoch(1)
    assert _entry_files(tmp_path) == []


# ------------------------------------------------------------------------- image tokens
def _tokens(backbone: Any, dataset: Any, results: Path) -> tuple[Any, str]:
    from bench.features import extract_tokens

    console, buffer = _console()
    tokens = extract_tokens(backbone, dataset, "val", results, console=console, batch_size=8)
    return tokens, buffer.getvalue()


def test_token_cache_shape_dtype_and_pooling(
    tiny: Backbone, dataset: CZSLDataset, tmp_path: Path
) -> None:
    token_set, out = _tokens(tiny, dataset, tmp_path)
    n = len(dataset.splits["val"])
    n_tokens, width = tiny.image_token_shape()
    assert not token_set.cache_hit and "fp16 =" in out
    array = token_set.array()
    assert isinstance(array, np.memmap) and array.dtype == np.float16
    assert array.shape == (n, n_tokens, width) == token_set.shape
    # read in batches, in sample order; pooling the cached tokens gives the pooled features
    batches = list(token_set.batches(5))
    assert [len(b) for b in batches][0] == 5 and sum(len(b) for b in batches) == n
    pooled = tiny.pool_image_tokens(torch.cat(batches))
    features, _ = _extract(tiny, dataset, tmp_path)
    assert torch.allclose(pooled, features.features, atol=1e-2, rtol=1e-2)  # fp16 storage
    again, out = _tokens(tiny, dataset, tmp_path)
    assert again.cache_hit and out == "" and again.path == token_set.path
    assert not list(token_set.path.parent.glob(".*.tmp"))


def test_token_cache_rebuilds_a_truncated_array(
    tiny: Backbone, dataset: CZSLDataset, tmp_path: Path
) -> None:
    token_set, _ = _tokens(tiny, dataset, tmp_path)
    with open(token_set.path, "r+b") as handle:
        handle.truncate(token_set.path.stat().st_size - 10)
    again, out = _tokens(tiny, dataset, tmp_path)
    assert not again.cache_hit and "rebuilding" in out
    assert again.shape == token_set.shape


def test_token_cache_refuses_when_the_disk_is_short(
    tiny: Backbone, dataset: CZSLDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr("bench.features.shutil.disk_usage", lambda path: usage._replace(free=1000))
    with pytest.raises(BenchError, match=r"need .* free; free disk space"):
        _tokens(tiny, dataset, tmp_path)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
