"""The shared training loop (bench.methods.training) through its hooks, on a minimal method."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.errors import BenchError
from bench.methods.base import FitContext
from bench.methods.training import TrainableMethod, shuffled_batches

N_IMAGES, DIM, CLASSES = 16, 5, 3


class LinearProbe(TrainableMethod):
    """A linear classifier with a StepLR schedule: what a new method plugs into the loop."""

    name = "linear-probe"

    def __init__(self, hparams: Mapping[str, Any]) -> None:
        super().__init__(hparams)
        self.model: torch.nn.Linear | None = None
        self.events: list[str] = []
        self.lrs: list[float] = []
        self.scheduler: torch.optim.lr_scheduler.StepLR | None = None

    def prepare(self, ctx: FitContext) -> None:
        self.model = torch.nn.Linear(DIM, CLASSES)
        self.apply_pending_state()

    def is_prepared(self) -> bool:
        return self.model is not None

    def apply_trainable_state(self, state: Mapping[str, Any]) -> None:
        assert self.model is not None
        self.model.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})

    def invalidate(self) -> None:
        self.events.append("step")

    def trainable_state(self) -> dict[str, Any]:
        assert self.model is not None
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        assert self.model is not None
        return list(self.model.parameters())

    def start_training(self, ctx: FitContext) -> None:
        data = torch.Generator().manual_seed(0)
        self.features = torch.randn(N_IMAGES, DIM, generator=data)
        self.labels = torch.randint(0, CLASSES, (N_IMAGES,), generator=data)

    def epoch_batches(self, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
        return shuffled_batches(
            generator, int(self.hparams["batch_size"]), self.features, self.labels
        )

    def training_loss(self, batch: tuple[torch.Tensor, ...], epoch: int) -> torch.Tensor:
        assert self.model is not None
        features, labels = batch
        return F.cross_entropy(self.model(features), labels)

    def build_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        self.scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        return self.scheduler

    def start_epoch(self, epoch: int) -> None:
        assert self.scheduler is not None
        self.lrs.append(self.scheduler.get_last_lr()[0])
        self.events.append(f"start {epoch}")

    def finish_epoch(self, epoch: int) -> None:
        self.events.append(f"finish {epoch}")

    def score(self, image_features: torch.Tensor, pairs: np.ndarray, block_size: int = 1024):
        raise NotImplementedError


class _Stop(Exception):
    pass


def _fit(
    checkpoint_dir: Path | None = None,
    stop_after: int | None = None,
    epoch_selection: str = "val-auc",
    validate: Any = None,
    **hparams: Any,
) -> tuple[LinearProbe, dict[str, Any], list[int]]:
    hp = {"epochs": 3, "lr": 0.1, "batch_size": 8, **hparams}
    method = LinearProbe(hp)
    epochs: list[int] = []

    def state_validate(m: LinearProbe) -> float:  # a function of the state: same after resume
        m.events.append("validate")
        with torch.no_grad():
            return -float(F.cross_entropy(m.model(m.features), m.labels))

    def on_epoch_end(epoch: int, metrics: Any) -> None:
        epochs.append(epoch)
        if epoch == stop_after:
            raise _Stop

    ctx = FitContext(
        dataset=None,
        backbone=None,
        features={},
        hparams=hp,
        seed=3,
        validate=validate or state_validate,
        on_epoch_end=on_epoch_end,
        checkpoint_dir=checkpoint_dir,
        epoch_selection=epoch_selection,
        extras={"checkpoint_key": "k", "note": lambda message: None},
    )
    return method, method.fit(ctx), epochs


def test_hooks_run_in_order_and_the_scheduler_steps_per_epoch() -> None:
    method, log, epochs = _fit(epochs=2)
    # batch 8 of 16 images: two optimiser steps per epoch, each invalidating the caches
    assert method.events == [
        "start 1", "step", "step", "finish 1", "validate",
        "start 2", "step", "step", "finish 2", "validate",
        "step",  # the best epoch's state restored
    ]  # fmt: skip
    assert method.lrs == [0.1, 0.05]
    assert epochs == [1, 2] and log["best_epoch"] == 2 and log["epochs_run"] == 2
    assert log["augment"] == "none" and np.isfinite(log["final_loss"])


def test_last_epoch_selection_keeps_the_final_state() -> None:
    aucs = iter([0.9, 0.5, 0.1])  # the first epoch is the best on validation

    def worsening(m: LinearProbe) -> float:
        return next(aucs)

    best, best_log, _ = _fit(validate=worsening)
    aucs = iter([0.9, 0.5, 0.1])
    last, last_log, _ = _fit(epoch_selection="last", validate=worsening)
    assert best_log["best_epoch"] == 1 and last_log["best_epoch"] == 3
    assert last_log["best_val_auc"] is None
    assert last.events[-1] == "finish 3"  # no earlier state restored
    assert best.events[-1] == "step"
    unselected, _, _ = _fit()  # validation on the loss picks the last epoch here
    for key, value in last.trainable_state().items():
        assert not torch.equal(best.trainable_state()[key], value)
        torch.testing.assert_close(unselected.trainable_state()[key], value)


def test_unknown_epoch_selection_is_refused() -> None:
    with pytest.raises(BenchError, match="unknown epoch selection 'best'"):
        _fit(epoch_selection="best")


def test_gradient_accumulation_matches_one_large_batch() -> None:
    large, _, _ = _fit(batch_size=8)
    accumulated, _, _ = _fit(batch_size=4, gradient_accumulation_steps=2)
    for key, value in large.trainable_state().items():
        torch.testing.assert_close(accumulated.trainable_state()[key], value)
    assert accumulated.events.count("step") == large.events.count("step")


def test_interrupted_fit_with_a_scheduler_resumes_identically(tmp_path: Path) -> None:
    reference, reference_log, _ = _fit()
    with pytest.raises(_Stop):
        _fit(tmp_path, stop_after=2)
    saved = torch.load(tmp_path / "epoch-002.pt", weights_only=True)
    assert saved["scheduler"]["last_epoch"] == 2
    resumed, log, epochs = _fit(tmp_path)
    assert log["resumed_from_epoch"] == 2 and epochs == [1, 2, 3]
    assert reference_log["best_epoch"] == 3
    assert resumed.lrs == [0.025]  # the scheduler went on where it stopped
    for key, value in reference.trainable_state().items():
        assert torch.equal(resumed.trainable_state()[key], value), key
    assert {k: v for k, v in log.items() if k != "resumed_from_epoch"} == reference_log
