"""The one training loop of every method that trains, and the state handling around it.

``TrainableMethod.fit`` seeds every generator from ``ctx.seed``, prepares the method, then
runs the epochs: shuffled batches, the loss, gradient accumulation
(``gradient_accumulation_steps``, a step also at the end of each epoch), the optimiser and an
optional learning-rate scheduler (stepped after each epoch); after each epoch
``ctx.validate`` (closed-world val AUC), keeping a copy of the best epoch's state, a
checkpoint and ``ctx.on_epoch_end`` (``bench.checkpoints.EpochCheckpointer``, so a killed
fit resumes where it stopped, bit-identical on the CPU). At the end the best epoch's state
is restored and the fit log returned. A method says what differs through hooks:

* ``trainable_parameters()``: what the optimiser updates (prompts, models, adapters);
* ``start_training(ctx)``: what the epochs need (batches, targets, own generators);
* ``epoch_batches(generator)``: one epoch's batches, shuffled with ``generator``;
* ``training_loss(batch, epoch)``: a batch's mean loss (any extra losses included);
* ``training_generators()``: named generators the loss draws from (checkpointed);
* ``build_optimizer(parameters)`` (Adam with L2 ``weight_decay``) and
  ``build_scheduler(optimizer)`` (none; e.g. ``StepLR``);
* ``start_epoch(epoch)`` / ``finish_epoch(epoch)``: train/eval mode, ramped margins...;
* ``prepare``, ``is_prepared``, ``apply_trainable_state``, ``trainable_state`` and
  ``invalidate`` (drop what scoring cached) for the trainable state.
"""

from __future__ import annotations

import abc
import copy
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from bench.checkpoints import EpochCheckpointer
from bench.constants import AUGMENT_CHOICES
from bench.errors import BenchError
from bench.methods.base import FitContext, Method
from bench.protocol import EPOCH_SELECTION_CHOICES
from bench.seeding import seed_everything


def clone_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """Deep copy of a trainable state; tensors are detached CPU clones."""
    return {
        key: value.detach().cpu().clone() if torch.is_tensor(value) else copy.deepcopy(value)
        for key, value in state.items()
    }


class BestEpochTracker:
    """Keeps a copy of the trainable state of the epoch with the strictly best val AUC."""

    def __init__(self) -> None:
        self.best_epoch: int | None = None
        self.best_auc: float | None = None
        self.best_state: dict[str, Any] | None = None

    def update(self, epoch: int, auc: float, state: Mapping[str, Any]) -> bool:
        """Record ``epoch`` if ``auc`` beats every earlier epoch (NaN never does).

        Returns:
            True if this epoch is the new best.
        """
        if auc != auc:  # NaN
            return False
        if self.best_auc is not None and not auc > self.best_auc:
            return False
        self.best_epoch, self.best_auc = epoch, float(auc)
        self.best_state = clone_state(state)
        return True


def train_pair_labels(
    attr_ids: Sequence[int] | np.ndarray,
    obj_ids: Sequence[int] | np.ndarray,
    train_pairs: np.ndarray,
    dataset_name: str,
) -> torch.Tensor:
    """Index of each image's (attr, obj) pair among ``train_pairs``.

    Raises:
        BenchError: If an image's pair is not a training pair.
    """
    index = {(int(a), int(o)): i for i, (a, o) in enumerate(np.asarray(train_pairs))}
    labels = []
    for a, o in zip(np.asarray(attr_ids), np.asarray(obj_ids), strict=True):
        label = index.get((int(a), int(o)))
        if label is None:
            raise BenchError(
                f"dataset {dataset_name}: a training image has pair ({int(a)}, {int(o)}) "
                "that is not among the training pairs; rebuild the dataset split files"
            )
        labels.append(label)
    return torch.tensor(labels, dtype=torch.long)


def image_labels(
    source: Any, train_pairs: np.ndarray, dataset_name: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train-pair index, attribute id, object id) of every image of a training split held
    by ``source`` (anything with ``attr_idx``/``obj_idx``: features, tokens, images)."""
    return (
        train_pair_labels(source.attr_idx, source.obj_idx, train_pairs, dataset_name),
        torch.as_tensor(source.attr_idx),
        torch.as_tensor(source.obj_idx),
    )


def shuffled_batches(
    generator: torch.Generator, batch_size: int, *tensors: torch.Tensor
) -> Iterator[tuple[torch.Tensor, ...]]:
    """The rows of ``tensors`` (same length, same device) in one random order drawn from
    ``generator``, ``batch_size`` rows at a time (the last batch may be smaller)."""
    first = tensors[0]
    order = torch.randperm(first.shape[0], generator=generator).to(first.device)
    for index in order.split(batch_size):
        yield tuple(tensor[index] for tensor in tensors)


def step_lr(
    optimizer: torch.optim.Optimizer, hparams: Mapping[str, Any]
) -> torch.optim.lr_scheduler.StepLR:
    """StepLR(``lr_step_size``, ``lr_gamma``) of ``hparams`` (DFSP's and Troika's official
    schedule; the loop steps it after every epoch)."""
    return torch.optim.lr_scheduler.StepLR(
        optimizer, step_size=int(hparams["lr_step_size"]), gamma=float(hparams["lr_gamma"])
    )


class TrainableMethod(Method):
    """Base of the methods that train: the shared ``fit`` loop (see the module doc)."""

    trains = True
    #: The ``ctx.augment`` modes the method trains with ("none": cached features).
    augment_modes: ClassVar[tuple[str, ...]] = ("none",)
    #: Whether ``augment="paper"`` training reads the frozen encoder's augmented views
    #: (``ctx.train_views``, shared by the grid's methods); False: the method needs live
    #: images (e.g. a trainable image adapter) and re-encodes them.
    trains_on_views: ClassVar[bool] = False

    @classmethod
    def augment_modes_for(cls, hparams: Mapping[str, Any]) -> tuple[str, ...]:
        """The augment modes the method trains with under ``hparams`` (default:
        ``augment_modes``)."""
        return cls.augment_modes

    def __init__(self, hparams: Mapping[str, Any]) -> None:
        super().__init__(hparams)
        #: Entries the fit log gets besides the loop's (e.g. the word vectors used).
        self.fit_info: dict[str, Any] = {}
        self._pending_state: dict[str, Any] | None = None

    # ------------------------------------------------------------------ state hooks
    @abc.abstractmethod
    def prepare(self, ctx: FitContext) -> None:
        """Bind ``ctx`` and build the untrained state, then ``apply_pending_state()``."""

    @abc.abstractmethod
    def is_prepared(self) -> bool:
        """Whether ``prepare`` has built the trainable state."""

    @abc.abstractmethod
    def apply_trainable_state(self, state: Mapping[str, Any]) -> None:
        """Validate ``state`` against the prepared setup and copy it in."""

    @abc.abstractmethod
    def invalidate(self) -> None:
        """The trainable state changed: drop what scoring cached."""

    def load_trainable_state(self, state: Mapping[str, Any]) -> None:
        """Restore ``trainable_state()``'s output; before ``prepare`` it is kept for later."""
        if not self.is_prepared():
            self._pending_state = clone_state(state)
            return
        self.apply_trainable_state(state)
        self.invalidate()

    def apply_pending_state(self) -> None:
        """Apply a state loaded before ``prepare`` (the end of ``prepare`` calls this)."""
        if self._pending_state is not None:
            state, self._pending_state = self._pending_state, None
            self.load_trainable_state(state)

    # ------------------------------------------------------------------ training hooks
    @abc.abstractmethod
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The tensors the optimiser updates."""

    @abc.abstractmethod
    def start_training(self, ctx: FitContext) -> None:
        """Build what the epochs need (called once per fit that trains, after ``prepare``)."""

    @abc.abstractmethod
    def epoch_batches(self, generator: torch.Generator) -> Iterable[Any]:
        """One epoch's batches, in an order drawn from ``generator``."""

    @abc.abstractmethod
    def training_loss(self, batch: Any, epoch: int) -> torch.Tensor:
        """The mean loss of ``batch`` (1-based ``epoch``), with gradients."""

    def training_generators(self) -> dict[str, torch.Generator]:
        """Named generators the loss draws from (built in ``start_training``); checkpoints
        save and restore them so that a resumed fit is identical."""
        return {}

    def build_optimizer(self, parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """Adam with learning rate ``lr`` and L2 ``weight_decay``."""
        return torch.optim.Adam(
            parameters,
            lr=float(self.hparams["lr"]),
            weight_decay=float(self.hparams.get("weight_decay", 0.0)),
        )

    def build_scheduler(
        self, optimizer: torch.optim.Optimizer
    ) -> torch.optim.lr_scheduler.LRScheduler | None:
        """A learning-rate scheduler stepped after every epoch (default: none)."""
        return None

    def start_epoch(self, epoch: int) -> None:  # noqa: B027 - optional hook
        """Called before each training epoch."""

    def finish_epoch(self, epoch: int) -> None:  # noqa: B027 - optional hook
        """Called after each epoch's optimiser steps, before validation."""

    # ------------------------------------------------------------------ the loop
    def fit(self, ctx: FitContext) -> dict[str, Any]:
        """Train; keep the epoch with the best val AUC (``ctx.epoch_selection`` "val-auc")
        or the last epoch ("last", as the official CSP code evaluates).

        With ``ctx.checkpoint_dir`` set, every epoch ends with a checkpoint of the whole loop;
        a later fit with the same folder and checkpoint key resumes after the last finished
        epoch and reaches the same result (bit-identical on the CPU).

        Returns:
            ``best_epoch`` (1-based, 0 if nothing trained), ``epochs_run``,
            ``best_val_auc``, ``final_loss`` (mean loss of the last epoch), ``augment``,
            ``fit_info``'s entries and, when it resumed, ``resumed_from_epoch``.
        """
        self._check_augment(ctx.augment)
        if ctx.epoch_selection not in EPOCH_SELECTION_CHOICES:
            raise BenchError(
                f"unknown epoch selection {ctx.epoch_selection!r}; "
                f"use one of {EPOCH_SELECTION_CHOICES}"
            )
        generator = seed_everything(ctx.seed)
        self.prepare(ctx)
        epochs = int(self.hparams["epochs"])
        if epochs < 0:
            raise BenchError(f"epochs must be >= 0, got {epochs}")
        log: dict[str, Any] = {
            "best_epoch": 0,
            "epochs_run": 0,
            "best_val_auc": None,
            "final_loss": None,
            "augment": ctx.augment,
            **self.fit_info,
        }
        if epochs == 0:
            return log

        self.start_training(ctx)
        optimizer = self.build_optimizer(self.trainable_parameters())
        scheduler = self.build_scheduler(optimizer)
        # "last": no tracker, so the final state stays and the summary names the last epoch.
        tracker = BestEpochTracker() if ctx.epoch_selection == "val-auc" else None
        # Resume after the last finished epoch of an interrupted fit (same key = same cell);
        # the checkpoint also restores the global RNGs that nn.Dropout draws from.
        checkpointer = EpochCheckpointer(
            ctx,
            self,
            optimizer,
            {"shuffle": generator, **self.training_generators()},
            tracker,
            scheduler,
        )
        first_epoch, epoch_loss = checkpointer.resume_point(log)
        accumulation = max(1, int(self.hparams.get("gradient_accumulation_steps", 1)))
        for epoch in range(first_epoch, epochs + 1):
            self.start_epoch(epoch)
            losses = self._train_epoch(optimizer, generator, epoch, accumulation)
            if scheduler is not None:
                scheduler.step()
            self.finish_epoch(epoch)
            epoch_loss = checkpointer.end_epoch(epoch, losses)

        if tracker is not None and tracker.best_state is not None:
            self.load_trainable_state(tracker.best_state)
        log.update(checkpointer.fit_summary(epochs, epoch_loss), **self.fit_info)
        return log

    def _check_augment(self, augment: str) -> None:
        if augment not in AUGMENT_CHOICES:
            raise BenchError(f"unknown augment mode {augment!r}; use one of {AUGMENT_CHOICES}")
        modes = type(self).augment_modes_for(self.hparams)
        if augment in modes:
            return
        if modes == ("none",):
            raise BenchError(
                f"method {self.name} trains on cached features only; use --augment none"
            )
        raise BenchError(
            f"method {self.name} does not train with --augment {augment}; use {' or '.join(modes)}"
        )

    def _train_epoch(
        self,
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
        epoch: int,
        accumulation: int,
    ) -> list[float]:
        """One epoch's optimiser steps; returns the batch losses."""
        losses: list[float] = []
        optimizer.zero_grad(set_to_none=True)
        unstepped = False
        for step, batch in enumerate(self.epoch_batches(generator), start=1):
            loss = self.training_loss(batch, epoch)
            (loss / accumulation).backward()
            losses.append(float(loss.detach()))
            unstepped = step % accumulation != 0
            if not unstepped:
                self._step(optimizer)
        if unstepped:
            self._step(optimizer)
        return losses

    def _step(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.invalidate()
