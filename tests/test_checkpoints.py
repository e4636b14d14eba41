"""Resumable training (bench.checkpoints): an interrupted fit resumes to the identical result."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bench.checkpoints import (
    CheckpointStore,
    TrainingCheckpoint,
    capture_rng,
    clear_checkpoints,
    restore_rng,
)
from bench.errors import BenchError
from bench.methods import FitContext, get_method_class
from bench.methods.base import resolve_hparams
from bench.pipeline.config import RunConfig
from bench.pipeline.evaluate import CellEvaluation
from bench.pipeline.events import EventBus
from bench.pipeline.prepare import prepare_dataset

EPOCHS = 2


class _Stop(Exception):
    """Stands in for a kill between epochs."""


@pytest.fixture(scope="module")
def prepared(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    config = RunConfig(
        methods=("csp",),
        datasets=("synthetic-tiny",),
        seeds=(0,),
        backbone="tiny-random",
        data_root=tiny_root,
        results_dir=tmp_path_factory.mktemp("ckpt-results"),
        log_mlflow=False,
    )
    return prepare_dataset(config, "synthetic-tiny", events=EventBus())


def _fit(
    prepared: Any,
    method_name: str,
    checkpoint_dir: Path | None,
    *,
    stop_after: int | None = None,
    key: str = "cell-key",
    keep: int | None = 1,
    notes: list[str] | None = None,
) -> tuple[Any, dict[str, Any], list[tuple[int, dict[str, float]]]]:
    hparams = resolve_hparams(method_name, "synthetic-tiny", {"epochs": EPOCHS})
    method = get_method_class(method_name)(hparams)
    history: list[tuple[int, dict[str, float]]] = []

    def on_epoch_end(epoch: int, metrics: Any) -> None:
        history.append((epoch, dict(metrics)))
        if stop_after is not None and epoch == stop_after:
            raise _Stop

    ctx = FitContext(
        dataset=prepared.dataset,
        backbone=prepared.backbone,
        features=prepared.features,
        hparams=hparams,
        seed=7,
        validate=CellEvaluation(prepared.dataset, prepared.features, 1).validation_auc,
        on_epoch_end=on_epoch_end,
        checkpoint_dir=checkpoint_dir,
        extras={
            "checkpoint_key": key,
            "checkpoint_keep": keep,
            "note": (notes if notes is not None else []).append,
        },
    )
    # Other code may have drawn from the global RNGs before the fit; it must not matter.
    torch.rand(3)
    random.random()
    return method, method.fit(ctx), history


@pytest.fixture(scope="module")
def uninterrupted(prepared: Any) -> dict[str, Any]:
    out = {}
    # every method trains with one loop (TrainableMethod.fit); compcos's dropout draws from
    # the global torch RNG, csp's from its own generator; le+ also draws
    # negatives (aop: negatives and other attributes) from its own generator.
    for name in ("csp", "compcos", "le+", "aop"):
        method, log, history = _fit(prepared, name, None)
        out[name] = (method.trainable_state(), log, history)
    return out


def _assert_same_fit(reference: tuple, method: Any, log: dict, history: list) -> None:
    state, ref_log, ref_history = reference
    mine = method.trainable_state()
    for key, value in state.items():
        if torch.is_tensor(value):
            assert torch.equal(mine[key], value), key  # bit-identical
        else:
            assert mine[key] == value
    assert history == ref_history
    assert {k: v for k, v in log.items() if k != "resumed_from_epoch"} == ref_log


@pytest.mark.slow
@pytest.mark.parametrize("method_name", ["csp", "compcos", "le+", "aop"])
def test_interrupted_fit_resumes_to_the_same_result(prepared, uninterrupted, tmp_path, method_name):
    stop_after = 1
    with pytest.raises(_Stop):
        _fit(prepared, method_name, tmp_path, stop_after=stop_after)
    assert [p.name for p in sorted(tmp_path.iterdir())] == [f"epoch-{stop_after:03d}.pt"]
    notes: list[str] = []
    method, log, history = _fit(prepared, method_name, tmp_path, notes=notes)
    assert log["resumed_from_epoch"] == stop_after
    assert any("resuming from" in n for n in notes)
    _assert_same_fit(uninterrupted[method_name], method, log, history)


@pytest.mark.slow
def test_resume_after_the_last_epoch_trains_nothing_more(prepared, uninterrupted, tmp_path):
    with pytest.raises(_Stop):
        _fit(prepared, "csp", tmp_path, stop_after=EPOCHS)
    method, log, history = _fit(prepared, "csp", tmp_path)
    assert log["resumed_from_epoch"] == EPOCHS
    _assert_same_fit(uninterrupted["csp"], method, log, history)


@pytest.mark.slow
def test_checkpoint_of_another_configuration_is_ignored(prepared, uninterrupted, tmp_path):
    state = uninterrupted["csp"][0]
    CheckpointStore(tmp_path, "another-cell").save(TrainingCheckpoint(epoch=1, trainable=state))
    notes: list[str] = []
    method, log, history = _fit(prepared, "csp", tmp_path, notes=notes)
    assert "resumed_from_epoch" not in log
    assert any("another configuration" in n for n in notes), notes
    _assert_same_fit(uninterrupted["csp"], method, log, history)


@pytest.mark.slow
def test_corrupt_newest_checkpoint_falls_back_to_the_previous(prepared, uninterrupted, tmp_path):
    with pytest.raises(_Stop):
        _fit(prepared, "csp", tmp_path, stop_after=2, keep=None)
    newest = tmp_path / "epoch-002.pt"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated
    notes: list[str] = []
    method, log, history = _fit(prepared, "csp", tmp_path, notes=notes, keep=None)
    assert log["resumed_from_epoch"] == 1
    assert any("cannot be loaded safely" in n and "epoch-002.pt" in n for n in notes), notes
    _assert_same_fit(uninterrupted["csp"], method, log, history)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"epoch-{e:03d}.pt" for e in (1, 2)]


def test_pickled_object_checkpoint_is_refused(tmp_path):
    class Evil:
        def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
            return (print, ("this must never run",))

    torch.save({"kind": "bench-training-checkpoint", "payload": Evil()}, tmp_path / "epoch-001.pt")
    notes: list[str] = []
    assert CheckpointStore(tmp_path, "k", note=notes.append).latest() is None
    assert "cannot be loaded safely" in notes[0]


@pytest.mark.slow
def test_checkpoint_that_does_not_fit_the_method_is_one_line(prepared, tmp_path):
    store = CheckpointStore(tmp_path, "cell-key")
    store.save(
        TrainingCheckpoint(
            epoch=1, trainable={"vocabulary": torch.zeros(3, 5), "attrs": [], "objs": []}
        )
    )
    with pytest.raises(BenchError, match=r"checkpoint .*epoch-001\.pt does not fit: .*shape"):
        _fit(prepared, "csp", tmp_path)


def test_store_keeps_the_newest_and_drops_later_leftovers(tmp_path):
    store = CheckpointStore(tmp_path, "k", keep=1)
    (tmp_path / "epoch-009.pt").write_bytes(b"left by another attempt")
    for epoch in (1, 2, 3):
        store.save(TrainingCheckpoint(epoch=epoch, trainable={"w": torch.ones(2) * epoch}))
    assert [p.name for p in tmp_path.iterdir()] == ["epoch-003.pt"]
    latest = store.latest()
    assert (
        latest is not None
        and latest.epoch == 3
        and torch.equal(latest.trainable["w"], torch.full((2,), 3.0))
    )
    clear_checkpoints(tmp_path)
    assert not tmp_path.exists()


def test_rng_states_round_trip():
    generator = torch.Generator().manual_seed(3)
    state = capture_rng({"g": generator})
    expected = (
        random.random(),
        np.random.rand(),
        torch.rand(2),
        torch.rand(2, generator=generator),
    )
    restore_rng(state, {"g": generator})
    again = (random.random(), np.random.rand(), torch.rand(2), torch.rand(2, generator=generator))
    assert expected[:2] == again[:2]
    assert torch.equal(expected[2], again[2]) and torch.equal(expected[3], again[3])
