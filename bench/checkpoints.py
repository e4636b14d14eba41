"""Resumable training: per-epoch checkpoints of everything an epoch loop needs to go on.

A checkpoint holds, after a finished epoch: the method's trainable state, the optimiser
state (and the learning-rate scheduler's, if any), every random generator the loop draws from (python, numpy, torch CPU and CUDA, and
named ``torch.Generator`` objects such as the shuffling and dropout generators), the best
epoch so far with its state, the per-epoch metrics reported so far and a few loop values.
Restoring all of it and continuing with the next epoch gives the same result as a run that
was never interrupted (bit-identical on the CPU).

Files are ``<checkpoint_dir>/epoch-NNN.pt``, written atomically (a kill while writing leaves
the previous checkpoint) and loaded with ``torch.load(weights_only=True)``: they contain only
tensors, numbers, strings, lists and dicts, never pickled objects. Each carries a ``key``
(the runner passes the cell's config hash); a checkpoint with another key, another format or
unreadable content is ignored with a note, and training starts from the newest good one or
from scratch.

Hooking an epoch loop in (see ``TrainableMethod.fit`` in ``bench.methods.training``)::

    checkpointer = EpochCheckpointer(ctx, method, optimizer,
                                     generators={"shuffle": g, "dropout": g2}, tracker=tracker,
                                     scheduler=scheduler)
    # restore(): state, optimiser, RNGs, best epoch; saved epochs replayed to ctx.on_epoch_end
    start, loss = checkpointer.resume_point(log)
    for epoch in range(start, epochs + 1):
        ...train, collecting the batch losses...
        loss = checkpointer.end_epoch(epoch, losses)   # validate, track, save, report
    log.update(checkpointer.fit_summary(epochs, loss))

The method must implement ``trainable_state()``/``load_trainable_state()`` (tensors, plus
lists/strings/numbers) and create every generator and the optimiser before ``restore``.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.errors import BenchError
from bench.io import atomic_open, sha256_json

#: Bumped when the checkpoint layout changes (older files are then ignored).
CHECKPOINT_FORMAT = 1
CHECKPOINT_KIND = "bench-training-checkpoint"
_NAME = re.compile(r"^epoch-(\d{3,})\.pt$")

_log = logging.getLogger("bench")


# --------------------------------------------------------------------------- RNG states
def capture_rng(generators: Mapping[str, torch.Generator | None] | None = None) -> dict[str, Any]:
    """The state of python's, numpy's and torch's global RNGs and of named generators.

    Everything is stored as tensors, numbers and lists so ``weights_only`` loading works.
    """
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    state: dict[str, Any] = {
        "python": {
            "version": int(version),
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss,
        },
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": [],
        "generators": {},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    for name, generator in (generators or {}).items():
        if generator is not None:
            state["generators"][name] = generator.get_state()
    return state


def restore_rng(
    state: Mapping[str, Any], generators: Mapping[str, torch.Generator | None] | None = None
) -> None:
    """Put back what ``capture_rng`` returned (CUDA states only if the device count matches)."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    nps = state["numpy"]
    np.random.set_state(
        (
            nps["kind"],
            nps["keys"].numpy().astype(np.uint32),
            nps["pos"],
            nps["has_gauss"],
            nps["cached"],
        )
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    saved = state.get("generators", {})
    for name, generator in (generators or {}).items():
        if generator is None:
            continue
        if name not in saved:
            raise BenchError(f"checkpoint has no state for generator {name!r}")
        generator.set_state(saved[name])


# --------------------------------------------------------------------------- the store
@dataclass
class TrainingCheckpoint:
    """One epoch's checkpoint.

    Attributes:
        epoch: The last finished epoch (1-based).
        trainable: The method's ``trainable_state()`` after that epoch.
        optimizer: ``optimizer.state_dict()`` (None if the loop has no optimiser).
        scheduler: The learning-rate scheduler's ``state_dict()`` (None without one).
        rng: ``capture_rng(...)`` after that epoch.
        best: ``{"epoch", "auc", "state"}`` of the best epoch so far (values may be None).
        history: ``[{"epoch": e, "metrics": {...}}, ...]`` reported so far, in order.
        extra: Loop values to carry over (e.g. the last epoch's mean loss).
    """

    epoch: int
    trainable: dict[str, Any]
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    rng: dict[str, Any] = field(default_factory=dict)
    best: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def _cpu(value: Any) -> Any:
    """Detached CPU copies of every tensor in a nested dict/list/tuple."""
    if torch.is_tensor(value):
        return value.detach().cpu().clone()
    if isinstance(value, Mapping):
        return {k: _cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu(v) for v in value)
    return value


class CheckpointStore:
    """``epoch-NNN.pt`` files in one folder, keyed so that foreign checkpoints are ignored.

    Args:
        directory: The folder (None: saving and loading do nothing).
        key: What the checkpoints must have been written for (e.g. the cell's config hash).
        keep: How many of the newest checkpoints to keep (None: all).
        note: Receives one-line notes (ignored or corrupt checkpoints); default: logging.
    """

    def __init__(
        self,
        directory: Path | None,
        key: str,
        *,
        keep: int | None = 1,
        note: Callable[[str], None] | None = None,
    ) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.key = key
        self.keep = keep
        self.note = note or _log.warning

    def path(self, epoch: int) -> Path:
        """Where epoch ``epoch``'s checkpoint goes."""
        assert self.directory is not None
        return self.directory / f"epoch-{epoch:03d}.pt"

    def files(self) -> list[tuple[int, Path]]:
        """``(epoch, path)`` of the checkpoint files present, oldest first."""
        if self.directory is None or not self.directory.is_dir():
            return []
        found = []
        for child in self.directory.iterdir():
            match = _NAME.match(child.name)
            if match and child.is_file():
                found.append((int(match.group(1)), child))
        return sorted(found)

    def save(self, checkpoint: TrainingCheckpoint) -> Path | None:
        """Write ``checkpoint`` atomically, then drop checkpoints beyond ``keep``."""
        if self.directory is None:
            return None
        payload = {
            "kind": CHECKPOINT_KIND,
            "format": CHECKPOINT_FORMAT,
            "key": self.key,
            "epoch": int(checkpoint.epoch),
            "trainable": _cpu(dict(checkpoint.trainable)),
            "optimizer": _cpu(checkpoint.optimizer) if checkpoint.optimizer is not None else None,
            "rng": _cpu(checkpoint.rng),
            "best": _cpu(dict(checkpoint.best)),
            "history": [dict(h) for h in checkpoint.history],
            "extra": dict(checkpoint.extra),
        }
        if checkpoint.scheduler is not None:  # loops without one keep the original layout
            payload["scheduler"] = _cpu(checkpoint.scheduler)
        path = self.path(checkpoint.epoch)
        with atomic_open(path, "wb") as handle:
            torch.save(payload, handle)
        # Later epochs on disk are leftovers of another attempt (restore took the newest good
        # one, so they were ignored): they go, then all but the newest ``keep``.
        kept = []
        for epoch, other in self.files():
            if epoch > checkpoint.epoch:
                other.unlink(missing_ok=True)
            else:
                kept.append(other)
        if self.keep is not None:
            for other in kept[: -max(1, self.keep)]:
                other.unlink(missing_ok=True)
        return path

    def _read(self, path: Path) -> TrainingCheckpoint | None:
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - truncated, corrupt or unsafe: never trusted
            reason = " ".join(str(exc).split())[:120] or type(exc).__name__
            self.note(f"checkpoint {path} cannot be loaded safely ({reason}); ignoring it")
            return None
        if not isinstance(payload, dict) or payload.get("kind") != CHECKPOINT_KIND:
            self.note(f"checkpoint {path} is not a bench training checkpoint; ignoring it")
            return None
        if payload.get("format") != CHECKPOINT_FORMAT:
            self.note(
                f"checkpoint {path} has format {payload.get('format')!r}, not "
                f"{CHECKPOINT_FORMAT}; ignoring it"
            )
            return None
        if payload.get("key") != self.key:
            self.note(
                f"checkpoint {path} was written for another configuration (key "
                f"{str(payload.get('key'))[:12]}, this cell {self.key[:12]}); ignoring it"
            )
            return None
        try:
            return TrainingCheckpoint(
                epoch=int(payload["epoch"]),
                trainable=dict(payload["trainable"]),
                optimizer=payload.get("optimizer"),
                scheduler=payload.get("scheduler"),
                rng=dict(payload["rng"]),
                best=dict(payload.get("best") or {}),
                history=list(payload.get("history") or []),
                extra=dict(payload.get("extra") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            self.note(f"checkpoint {path} is incomplete ({exc}); ignoring it")
            return None

    def latest(self) -> TrainingCheckpoint | None:
        """The newest checkpoint that loads and matches ``key`` (older ones are fallbacks)."""
        for _, path in reversed(self.files()):
            checkpoint = self._read(path)
            if checkpoint is not None:
                return checkpoint
        return None

    def clear(self) -> None:
        """Delete every checkpoint file (and the folder if it is then empty)."""
        for _, path in self.files():
            path.unlink(missing_ok=True)
        if self.directory is not None:
            with contextlib.suppress(OSError):
                self.directory.rmdir()


# --------------------------------------------------------------------------- the loop glue
def default_checkpoint_key(ctx: Any, method_name: str, hparams: Mapping[str, Any]) -> str:
    """A key for checkpoints when the caller gives none: method, hparams, seed, data, backbone."""
    backbone = getattr(ctx, "backbone", None)
    return sha256_json(
        {
            "method": method_name,
            "hparams": dict(hparams),
            "seed": getattr(ctx, "seed", None),
            "augment": getattr(ctx, "augment", None),
            "dataset": getattr(getattr(ctx, "dataset", None), "fingerprint", None),
            "backbone": None if backbone is None else backbone.identifier,
        }
    )


class EpochCheckpointer:
    """Saves and restores an epoch loop through a ``CheckpointStore`` (see the module doc).

    The store comes from the fit context: ``ctx.checkpoint_dir`` (None: nothing is written),
    ``ctx.extras["checkpoint_key"]`` (default: ``default_checkpoint_key``),
    ``ctx.extras["checkpoint_keep"]`` (default None: every epoch is kept) and
    ``ctx.extras["note"]`` (where notes go).

    Args:
        ctx: The ``FitContext``.
        method: Has ``name``, ``hparams``, ``trainable_state()`` and ``load_trainable_state()``.
        optimizer: The optimiser (or None).
        generators: Named generators the loop draws from (besides the global RNGs).
        tracker: A best-epoch tracker with ``best_epoch``, ``best_auc`` and ``best_state``.
        scheduler: The learning-rate scheduler (or None).
    """

    def __init__(
        self,
        ctx: Any,
        method: Any,
        optimizer: torch.optim.Optimizer | None = None,
        generators: Mapping[str, torch.Generator | None] | None = None,
        tracker: Any = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    ) -> None:
        extras = getattr(ctx, "extras", None) or {}
        key = extras.get("checkpoint_key") or default_checkpoint_key(
            ctx, getattr(method, "name", type(method).__name__), getattr(method, "hparams", {})
        )
        self.store = CheckpointStore(
            getattr(ctx, "checkpoint_dir", None),
            str(key),
            keep=extras.get("checkpoint_keep"),
            note=extras.get("note"),
        )
        self.ctx = ctx
        self.method = method
        self.optimizer = optimizer
        self.generators = dict(generators or {})
        self.tracker = tracker
        self.scheduler = scheduler
        self.history: list[dict[str, Any]] = []

    def restore(self) -> TrainingCheckpoint | None:
        """Load the newest matching checkpoint into the loop, or return None.

        The trainable state, optimiser, scheduler, RNGs and best-epoch tracker are restored, and each
        saved epoch's metrics are passed to ``ctx.on_epoch_end`` again, in order, so callers
        that collect a history see every epoch.

        Raises:
            BenchError: A matching checkpoint that does not fit the method (shapes, names).
        """
        checkpoint = self.store.latest()
        if checkpoint is None:
            return None
        try:
            self.method.load_trainable_state(checkpoint.trainable)
        except BenchError as exc:
            raise BenchError(
                f"checkpoint {self.store.path(checkpoint.epoch)} does not fit: {exc}; delete "
                f"{self.store.directory} to start this cell over"
            ) from None
        if self.optimizer is not None and checkpoint.optimizer is not None:
            self.optimizer.load_state_dict(checkpoint.optimizer)
        if self.scheduler is not None and checkpoint.scheduler is not None:
            self.scheduler.load_state_dict(checkpoint.scheduler)
        restore_rng(checkpoint.rng, self.generators)
        if self.tracker is not None and checkpoint.best:
            self.tracker.best_epoch = checkpoint.best.get("epoch")
            self.tracker.best_auc = checkpoint.best.get("auc")
            self.tracker.best_state = checkpoint.best.get("state")
        self.history = [dict(h) for h in checkpoint.history]
        for entry in self.history:
            self.ctx.on_epoch_end(int(entry["epoch"]), dict(entry["metrics"]))
        note = self.store.note
        note(f"resuming from {self.store.path(checkpoint.epoch)} (epoch {checkpoint.epoch} done)")
        return checkpoint

    def resume_point(self, log: dict[str, Any]) -> tuple[int, float]:
        """``restore()`` for loops that save ``extra={"epoch_loss": ...}``.

        Returns:
            (first epoch to train, the last finished epoch's loss or NaN); a resumed fit
            also gets ``log["resumed_from_epoch"]``.
        """
        restored = self.restore()
        if restored is None:
            return 1, float("nan")
        log["resumed_from_epoch"] = restored.epoch
        return restored.epoch + 1, float(restored.extra.get("epoch_loss", float("nan")))

    def end_epoch(self, epoch: int, losses: Sequence[float]) -> float:
        """Close a finished epoch: validate (``ctx.validate``), let the tracker keep the best
        state, write the checkpoint, then report ``train/loss`` and ``val/cw/auc`` through
        ``ctx.on_epoch_end``.

        Returns:
            The epoch's mean training loss (NaN without batches).
        """
        epoch_loss = float(np.mean(losses)) if len(losses) else float("nan")
        auc = float(self.ctx.validate(self.method))
        if self.tracker is not None:
            self.tracker.update(epoch, auc, self.method.trainable_state())
        metrics = {"train/loss": epoch_loss, "val/cw/auc": auc}
        self.save(epoch, metrics, extra={"epoch_loss": epoch_loss})
        self.ctx.on_epoch_end(epoch, metrics)
        return epoch_loss

    def fit_summary(self, epochs: int, final_loss: float) -> dict[str, Any]:
        """``best_epoch`` (``epochs`` if none was better), ``epochs_run``, ``best_val_auc``
        and ``final_loss`` for a fit's log."""
        best_epoch = getattr(self.tracker, "best_epoch", None)
        return {
            "best_epoch": best_epoch if best_epoch is not None else epochs,
            "epochs_run": epochs,
            "best_val_auc": getattr(self.tracker, "best_auc", None),
            "final_loss": final_loss,
        }

    def save(
        self, epoch: int, metrics: Mapping[str, float], extra: Mapping[str, Any] | None = None
    ) -> Path | None:
        """Record ``epoch``'s metrics and write its checkpoint (call before ``on_epoch_end``)."""
        self.history.append(
            {"epoch": int(epoch), "metrics": {k: float(v) for k, v in metrics.items()}}
        )
        if self.store.directory is None:
            return None
        best: dict[str, Any] = {}
        if self.tracker is not None:
            best = {
                "epoch": self.tracker.best_epoch,
                "auc": self.tracker.best_auc,
                "state": self.tracker.best_state,
            }
        return self.store.save(
            TrainingCheckpoint(
                epoch=epoch,
                trainable=self.method.trainable_state(),
                optimizer=self.optimizer.state_dict() if self.optimizer is not None else None,
                scheduler=self.scheduler.state_dict() if self.scheduler is not None else None,
                rng=capture_rng(self.generators),
                best=best,
                history=self.history,
                extra=dict(extra or {}),
            )
        )


def clear_checkpoints(directory: Path | None) -> None:
    """Delete the ``epoch-NNN.pt`` files of ``directory`` (e.g. once a cell's result is written)."""
    CheckpointStore(directory, "").clear()


__all__: Sequence[str] = [
    "CHECKPOINT_FORMAT",
    "CheckpointStore",
    "EpochCheckpointer",
    "TrainingCheckpoint",
    "capture_rng",
    "clear_checkpoints",
    "default_checkpoint_key",
    "restore_rng",
]
