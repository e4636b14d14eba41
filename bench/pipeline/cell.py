"""Running one planned cell: lock, skip or resume, seed, fit, evaluate, write the result.

Reliability rules (see also :mod:`bench.checkpoints` and :mod:`bench.locks`):

* A cell is done when its result JSON exists and is complete; an unreadable or incomplete
  one is reported with a warning and the cell is redone.
* Each cell is locked (non-blocking ``flock``) while it runs: a cell held by another live
  ``bench run`` comes back as "elsewhere" (the executor decides whether to wait for it).
* A training cell writes a checkpoint after every epoch (only the newest is kept); a rerun
  resumes after the last finished epoch and reaches the same result. The checkpoints are
  deleted once the result JSON is written. ``--rerun`` starts cells over.
* An attempt that raises (Ctrl-C included) emits :class:`~bench.pipeline.events.CellAborted`
  (observers close its runs), releases the lock and leaves finished cells alone.

Nothing here touches MLflow or the terminal: everything is reported as events, so a cell
can run in another process whose events an executor forwards.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import subprocess
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import __version__
from bench.errors import BenchError
from bench.pipeline.config import CellOutcome, PlannedCell, RunConfig
from bench.pipeline.evaluate import CellEvaluation
from bench.pipeline.events import (
    CellAborted,
    CellFinished,
    CellSkipped,
    CellStarted,
    EpochEnded,
    EventBus,
)
from bench.pipeline.plan import InitState
from bench.pipeline.prepare import DatasetContext, random_weights_warning
from bench.pipeline.store import (
    cell_lock,
    cell_temporaries,
    checkpoint_folder,
    inspect_result,
    sweep_temporaries,
    write_artifacts,
    write_result,
    writing,
)

#: Checkpoints kept per cell while it trains (the newest; they hold the best state too).
CHECKPOINTS_KEPT = 1


def git_commit() -> str | None:
    """The commit of the bench checkout, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def versions() -> dict[str, str]:
    """Versions of the packages a result depends on."""
    import numpy as np
    import open_clip
    import torch

    return {
        "bench": __version__,
        "torch": torch.__version__,
        "open_clip": getattr(open_clip, "__version__", "unknown"),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def finished_result(planned: PlannedCell, events: EventBus) -> dict[str, Any] | None:
    """The cell's finished result, or None; an unusable result file is reported (and redone)."""
    existing, problem = inspect_result(planned.path, planned.config_hash)
    if problem is not None:
        events.warn(f"result file {planned.path} {problem}; redoing the cell")
    return existing


class CellRunner:
    """Runs planned cells of one grid, reporting through ``events``.

    Args:
        config: The run's options.
        events: Where the cell's events go.
        owner: Who holds the cell locks (the invocation id).
        init_state: The ``--load-state`` state training methods start from.
    """

    def __init__(
        self,
        config: RunConfig,
        events: EventBus,
        *,
        owner: str = "",
        init_state: InitState | None = None,
    ) -> None:
        self.config = config
        self.events = events
        self.owner = owner
        self.init_state = init_state
        self._versions: dict[str, str] | None = None
        self._git_commit = git_commit()

    def run(self, planned: PlannedCell, ctx: DatasetContext) -> CellOutcome:
        """Run one cell, or skip it if its result exists and ``rerun`` is off.

        A cell locked by another live process comes back with status "elsewhere" and no
        event (the executor reports it once it gives up on it).
        """
        cell, path, config_hash = planned.cell, planned.path, planned.config_hash
        rerun = self.config.rerun
        if not rerun:
            existing = finished_result(planned, self.events)
            if existing is not None:
                return self._skipped(planned, existing, locked=False)
        lock = cell_lock(self.config.results_dir, cell, path, self.owner)
        with writing(lock.path):
            acquired = lock.acquire(blocking=False)
        if not acquired:
            return CellOutcome(cell, "elsewhere", error="running elsewhere", path=path)
        try:
            if not rerun:  # finished by another process since the first look?
                existing, _ = inspect_result(path, config_hash)
                if existing is not None:
                    return self._skipped(planned, existing, locked=True)
            sweep_temporaries(cell_temporaries(path))
            if rerun:
                from bench.checkpoints import clear_checkpoints

                clear_checkpoints(checkpoint_folder(path))
            self.events.emit(CellStarted(planned, planned.config["hparams"].get("epochs")))
            try:
                result = self.execute(planned, ctx)
            except KeyboardInterrupt:
                self.events.emit(CellAborted(cell, "KILLED"))
                raise
            except BaseException:
                self.events.emit(CellAborted(cell, "FAILED"))
                raise
            outcome = CellOutcome(cell, "done", result, path=path)
            self.events.emit(CellFinished(outcome))
            return outcome
        finally:
            lock.release()

    def _skipped(self, planned: PlannedCell, result: dict[str, Any], locked: bool) -> CellOutcome:
        outcome = CellOutcome(planned.cell, "skipped", result, path=planned.path)
        self.events.emit(CellSkipped(outcome, locked=locked))
        return outcome

    def execute(self, planned: PlannedCell, ctx: DatasetContext) -> dict[str, Any]:
        """Fit, score and evaluate one cell; write its artifacts and result JSON.

        Training resumes from the cell's checkpoints; they are deleted once the result JSON
        is written.
        """
        from bench.checkpoints import clear_checkpoints
        from bench.methods import FitContext, get_method_class
        from bench.seeding import seed_everything

        cell, config, config_hash, path = (
            planned.cell,
            planned.config,
            planned.config_hash,
            planned.path,
        )
        start = time.perf_counter()
        seed_everything(cell.seed)
        method = get_method_class(cell.method)(config["hparams"])
        protocol = config["protocol"]
        evaluation = CellEvaluation(
            ctx.dataset,
            ctx.features,
            self.config.topk,
            ctx.tokens,
            protocol["precision"],
            ctx.images,
            spill_path=path.parent / f".{path.name}.val-ow-scores.tmp",
        )
        history: list[dict[str, float]] = []

        def on_epoch_end(epoch: int, metrics: Mapping[str, float]) -> None:
            values = {k: float(v) for k, v in metrics.items()}
            history.append({"epoch": epoch, **values})
            self.events.emit(EpochEnded(cell, epoch, values))

        checkpoint_dir = checkpoint_folder(path)
        fit_context = FitContext(
            dataset=ctx.dataset,
            backbone=ctx.backbone,
            features=ctx.features,
            hparams=config["hparams"],
            seed=cell.seed,
            device=str(ctx.backbone.device),
            augment=protocol["augment"],
            text_encoding=self.config.text_encoding,
            validate=evaluation.validation_auc,
            on_epoch_end=on_epoch_end,
            checkpoint_dir=checkpoint_dir,
            word_vectors=ctx.word_vectors,
            epoch_selection=protocol["epoch_selection"],
            name_cleaning=protocol["name_cleaning"],
            train_views=self._train_views(method, protocol, ctx, cell.seed),
            tokens=ctx.tokens,
            images=ctx.images,
            extras={
                "checkpoint_key": config_hash,
                "checkpoint_keep": CHECKPOINTS_KEPT,
                "note": lambda message: self.events.note(f"{cell.label}: {message}"),
            },
        )
        if self.init_state is not None and method.trains:
            self._apply_init_state(method, fit_context)
        fit_start = time.perf_counter()
        with writing(checkpoint_dir):
            fit_log = method.fit(fit_context)
        fit_seconds = time.perf_counter() - fit_start

        eval_start = time.perf_counter()
        with writing(path.parent):  # the open-world val scores may be spilled there
            path.parent.mkdir(parents=True, exist_ok=True)
            metrics, feasibility = evaluation.evaluate_all(
                method,
                ctx.word_vectors,
                protocol["feasibility"]["filter"] or "off",
            )
        higher_order = self._higher_order(method, ctx, cell.label)
        eval_seconds = time.perf_counter() - eval_start
        write_artifacts(path, cell, metrics, method.trainable_state())

        if self._versions is None:
            self._versions = versions()
        random_weights = ctx.backbone.random_weights
        result = {
            "status": "complete",
            "cell_id": f"{cell.label}|{config_hash[:12]}",
            "cell": asdict(cell),
            "config_hash": config_hash,
            "config": config,
            "metrics": metrics,
            "feasibility": feasibility,
            **({"higher_order": higher_order} if higher_order is not None else {}),
            "history": history,
            "fit": _jsonable(fit_log),
            "timings": {
                "features_s": round(ctx.feature_seconds, 3),
                "fit_s": round(fit_seconds, 3),
                "eval_s": round(eval_seconds, 3),
                "total_s": round(time.perf_counter() - start, 3),
            },
            "versions": self._versions,
            "git_commit": self._git_commit,
            "device": str(ctx.backbone.device),
            "feature_cache_hit": ctx.cache_hit,
            "backbone_random_weights": random_weights,
            "backbone_warning": random_weights_warning(ctx.backbone) if random_weights else None,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        write_result(path, result)
        clear_checkpoints(checkpoint_dir)
        return result

    def _train_views(
        self, method: Any, protocol: Mapping[str, Any], ctx: DatasetContext, seed: int
    ) -> Any:
        """The augmented-view cache for a method that trains on it (others re-encode live
        images or use cached features)."""
        from bench.features import TrainViews

        if protocol["augment"] != "paper" or not getattr(method, "trains_on_views", False):
            return None
        return TrainViews(ctx.backbone, ctx.dataset, self.config.results_dir, seed)

    def _higher_order(
        self, method: Any, ctx: DatasetContext, label: str
    ) -> dict[str, dict[str, Any]] | None:
        """The result's ``higher_order`` block (None when the dataset has no annotations):
        top-1 over the annotations' distinct triples, or why the method is skipped."""
        from bench.evaluation.higher_order import (
            NAME,
            can_score_triples,
            evaluate_triples,
            skipped,
        )

        if ctx.annotations is None:
            return None
        if not can_score_triples(method):
            entry = skipped(method.name)
            self.events.note(f"{label}: {NAME} skipped ({entry['skipped']})")
            return {NAME: entry}
        dataset = ctx.dataset
        features = ctx.annotation_features.features
        return {
            NAME: evaluate_triples(method, features, ctx.annotations, dataset.attrs, dataset.objs)
        }

    def _apply_init_state(self, method: Any, fit_context: Any) -> None:
        """Load the ``--load-state`` state into ``method`` (one line naming the file if unfit)."""
        assert self.init_state is not None
        try:
            prepare = getattr(method, "prepare", None)
            if callable(prepare):
                prepare(fit_context)
            method.load_trainable_state(self.init_state.tensors)
        except BenchError as exc:
            raise BenchError(
                f"--load-state {self.config.load_state}: {exc}; give a state saved by a "
                f"{method.name} run on this dataset with this backbone"
            ) from None
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise BenchError(
                f"--load-state {self.config.load_state}: it does not fit method "
                f"{method.name} ({' '.join(str(exc).split())[:160]})"
            ) from None


def _jsonable(value: Any) -> Any:
    return json.loads(
        json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o))
    )
