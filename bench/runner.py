"""The runner: plans the method x dataset x seed grid, skips finished cells, runs the rest.

Each cell ends in one result JSON under ``<results-dir>/runs/`` (the source of truth), written
atomically after its artifacts; MLflow logging happens in the driver from those results.

Reliability rules (see also ``bench.checkpoints`` and ``bench.locks``):

* A cell is done when its result JSON exists and is complete. A result file that cannot be
  parsed or is incomplete is reported with a warning and the cell is redone.
* A training cell writes a checkpoint after every epoch to
  ``<artifact folder>/checkpoints/`` (only the newest is kept); a rerun resumes after the last
  finished epoch and reaches the same result. The checkpoints are deleted once the cell's
  result JSON is written. ``--rerun`` starts cells over (their checkpoints are dropped).
* Each cell is locked (``<results>/locks/...``, non-blocking ``flock``) while it runs: a cell
  held by another live ``bench run`` is skipped as "running elsewhere", re-checked after the
  dataset's other cells (waiting up to ``wait_elsewhere`` seconds) and otherwise reported.
  Feature extraction of a dataset is locked too (blocking), so it happens once.
* MLflow: a parent run per invocation and dataset, and a child run per executed cell created
  when the cell starts, both tagged with their owner process (``bench.owner.*``). Runs left
  RUNNING by a dead process are marked KILLED at the next start; a cell that runs again
  after a killed or failed attempt gets a NEW child run tagged ``bench.resumed_from_run``
  (the old run id) and, when training resumed from a checkpoint,
  ``bench.resumed_from_epoch``. A finished cell missing from MLflow (killed between its
  result JSON and its logging, or run with ``--no-mlflow``) is logged when next skipped.
  MLflow failures never lose results: they become a warning and logging stops for the run.
* Ctrl-C (or SIGTERM via the CLI) abandons the current cell: its runs are closed as KILLED,
  its lock is released, temporary files are removed, finished cells are kept.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import errno
import json
import os
import platform
import random
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from bench import __version__
from bench.errors import BenchError
from bench.io import atomic_open, atomic_write_json, sha256_file, sha256_json

SPLITS = ("val", "test")
WORLDS = ("cw", "ow")
FEASIBILITY_CHOICES = ("mask", "csp-multiply", "off")
AUGMENT_CHOICES = ("none", "paper")
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_SYNTHETIC_BACKBONE = "toy-clip"
DEFAULT_REAL_BACKBONE = "ViT-L-14:openai"
MAX_SEED = 2**32 - 1
MAX_EPOCHS = 10_000
MAX_TOPK = 1_000
#: Checkpoints kept per cell while it trains (the newest; they hold the best state too).
CHECKPOINTS_KEPT = 1

T = TypeVar("T")


@dataclass(frozen=True)
class RunConfig:
    """What ``bench run`` was asked to do.

    Attributes:
        methods: Registered method names.
        datasets: Registered dataset names or dataset folder paths.
        seeds: Random seeds; each (method, dataset, seed) is one cell.
        backbone: Backbone spec; None picks ``toy-clip`` for synthetic datasets and
            ``ViT-L-14:openai`` (the CSP paper's) for the others.
        epochs: Overrides the card's epoch count for methods that train.
        data_root: Where registered datasets live.
        results_dir: Where runs, caches, the MLflow store and reports go.
        tracking_uri: MLflow tracking URI (default: sqlite store in results_dir).
        rerun: Redo finished cells (and start unfinished ones over, dropping checkpoints).
        device: "cpu", "cuda", "cuda:1"...; None = CUDA when available.
        augment: "none" trains on cached features; "paper" re-encodes augmented images.
        topk: Top-k accuracy.
        feasibility: Open-world filter: "mask" (proper masking), "csp-multiply" (CSP's
            variant, for reproduction) or "off".
        word_vectors: Word-vector provider for open-world feasibility (None: no feasibility).
        log_mlflow: Log finished cells to MLflow.
        hparam_overrides: Extra hyperparameter overrides for every method that defines them.
        load_state: A saved trainable state (``trainable_state.pt`` of an earlier cell, with
            ``trainable_state_names.json`` beside it when present) that initialises every
            training method; with ``epochs=0`` the state is evaluated as it is.
        wait_elsewhere: Seconds to wait, after a dataset's other cells, for cells that
            another process is running (0: re-check once, then report them).
    """

    methods: tuple[str, ...]
    datasets: tuple[str, ...]
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    backbone: str | None = None
    epochs: int | None = None
    data_root: Path = Path("data")
    results_dir: Path = Path("results")
    tracking_uri: str | None = None
    rerun: bool = False
    device: str | None = None
    augment: str = "none"
    topk: int = 1
    feasibility: str = "mask"
    word_vectors: str | None = None
    log_mlflow: bool = True
    hparam_overrides: Mapping[str, Any] = field(default_factory=dict)
    load_state: Path | None = None
    wait_elsewhere: float = 0.0

    def __post_init__(self) -> None:
        if not self.methods:
            raise BenchError("no method given; pass --methods, e.g. --methods clip,csp")
        if not self.datasets:
            raise BenchError("no dataset given; pass --datasets, e.g. --datasets synthetic")
        if not self.seeds:
            raise BenchError("no seed given; pass --seeds, e.g. --seeds 0,1,2")
        for seed in self.seeds:
            if not 0 <= seed <= MAX_SEED:
                raise BenchError(
                    f"--seeds: {seed} is out of range; use integers in [0, {MAX_SEED}]"
                )
        if self.epochs is not None and not 0 <= self.epochs <= MAX_EPOCHS:
            raise BenchError(
                f"--epochs: {self.epochs} is out of range; use an integer in [0, {MAX_EPOCHS}]"
            )
        if self.augment not in AUGMENT_CHOICES:
            raise BenchError(
                f"--augment: {self.augment!r} is not one of {', '.join(AUGMENT_CHOICES)}"
            )
        if self.feasibility not in FEASIBILITY_CHOICES:
            raise BenchError(
                f"--feasibility: {self.feasibility!r} is not one of {', '.join(FEASIBILITY_CHOICES)}"
            )
        if not 1 <= self.topk <= MAX_TOPK:
            raise BenchError(
                f"--topk: {self.topk} is out of range; use an integer in [1, {MAX_TOPK}]"
            )
        if self.wait_elsewhere < 0:
            raise BenchError(f"--wait-elsewhere: {self.wait_elsewhere} must be >= 0 seconds")

    def backbone_for(self, dataset: str) -> str:
        """The backbone spec used on ``dataset``."""
        if self.backbone:
            return self.backbone
        return (
            DEFAULT_SYNTHETIC_BACKBONE
            if Path(dataset).name.startswith("synthetic")
            else DEFAULT_REAL_BACKBONE
        )


@dataclass(frozen=True)
class Cell:
    """One (method, dataset, seed) job."""

    method: str
    dataset: str
    seed: int

    @property
    def label(self) -> str:
        """``<method>|<dataset>|s<seed>``, the MLflow run name."""
        return f"{self.method}|{self.dataset}|s{self.seed}"


@dataclass
class CellOutcome:
    """What happened to a cell in this invocation.

    ``status``: "done" (run now), "skipped" (finished earlier or by another process),
    "elsewhere" (another live process is running it) or "failed".
    """

    cell: Cell
    status: str
    result: dict[str, Any] | None = None
    error: str | None = None
    path: Path | None = None


def _git_commit() -> str | None:
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


def _versions() -> dict[str, str]:
    import open_clip
    import torch

    return {
        "bench": __version__,
        "torch": torch.__version__,
        "open_clip": getattr(open_clip, "__version__", "unknown"),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) for a cell."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- files
def os_error_message(exc: OSError, path: Path | str | None = None) -> str | None:
    """One line for an OSError the user can fix (full disk, permissions), else None.

    The file named by the error wins over ``path`` (what the caller was writing).
    """
    where = exc.filename or path
    target = f" {where}" if where else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full while writing{target}; free space and rerun (finished cells are kept)"
    if exc.errno == errno.EROFS:
        return f"cannot write{target}: the file system is read-only; pass a writable --results-dir"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied on{target}; fix the permissions or pass another --results-dir"
    return None


@contextlib.contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """Turn a full disk or missing permission while writing ``path`` into one BenchError."""
    try:
        yield
    except OSError as exc:
        message = os_error_message(exc, path)
        if message is None:
            raise
        raise BenchError(message) from exc


def check_results_dir(results_dir: Path) -> None:
    """Create the results folder or fail with one line if it is not writable."""
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        probe = results_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise BenchError(
            f"results folder {results_dir} is not writable ({exc.strerror or exc}); "
            "pass a writable --results-dir"
        ) from exc


def _sweep_temporaries(paths: Sequence[Path]) -> None:
    """Remove ``.*.tmp`` files of atomic writes a killed process left behind.

    Only call it on files no other process can be writing (the caller holds their lock).
    """
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()


def result_path(results_dir: Path, cell: Cell, config_hash: str) -> Path:
    """Where a cell's result JSON lives."""
    return (
        results_dir / "runs" / cell.dataset / cell.method / f"s{cell.seed}-{config_hash[:12]}.json"
    )


def inspect_result(
    path: Path, config_hash: str | None = None
) -> tuple[dict[str, Any] | None, str | None]:
    """``(result, None)`` for a finished result, ``(None, None)`` if absent, else ``(None, why)``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"cannot be read ({exc})"
    try:
        result = json.loads(text)
    except ValueError as exc:
        return None, f"is not valid JSON ({exc})"
    if not isinstance(result, dict) or result.get("status") != "complete":
        return None, "is incomplete (no status 'complete')"
    metrics = result.get("metrics")
    if not isinstance(metrics, dict) or any(
        not isinstance(metrics.get(split), dict)
        or any(not isinstance(metrics[split].get(world), dict) for world in WORLDS)
        for split in SPLITS
    ):
        return None, "is incomplete (metrics missing)"
    if config_hash is not None and result.get("config_hash") != config_hash:
        return None, "belongs to another configuration (config hash differs)"
    return result, None


def load_result(path: Path) -> dict[str, Any] | None:
    """A finished result at ``path``, or None if absent, unreadable or incomplete."""
    return inspect_result(path)[0]


def load_state_file(path: Path) -> dict[str, Any]:
    """A saved trainable state for ``--load-state``, loaded with ``weights_only=True``.

    ``trainable_state_names.json`` beside the file (written by the runner) adds the name
    lists (attributes, objects) that methods check against the dataset.

    Raises:
        BenchError: Missing, unsafe, or not a dict of tensors.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise BenchError(f"--load-state: {path} does not exist; give a trainable_state.pt file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt, truncated or unsafe: one line
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise BenchError(
            f"--load-state: {path} cannot be loaded safely with torch.load(weights_only=True) "
            f"({reason}); give a trainable_state.pt written by bench run"
        ) from None
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    ):
        raise BenchError(
            f"--load-state: {path} is not a dict of named tensors; give a trainable_state.pt "
            "written by bench run"
        )
    names = path.with_name("trainable_state_names.json")
    if names.is_file():
        try:
            extra = json.loads(names.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BenchError(
                f"--load-state: cannot read {names} ({exc}); fix or delete it"
            ) from None
        if not isinstance(extra, dict):
            raise BenchError(f"--load-state: {names} is not a JSON object; fix or delete it")
        state = {**extra, **state}
    return state


@dataclass
class DatasetContext:
    """What every cell of one dataset shares: the dataset, backbone and cached features."""

    dataset: Any
    backbone: Any
    features: dict[str, Any]
    feature_seconds: float
    cache_hit: bool
    word_vectors: Any = None


class Runner:
    """Runs a grid for a ``RunConfig``; the CLI is a thin wrapper around it."""

    def __init__(self, config: RunConfig, console: Any = None, progress: Any = None) -> None:
        from rich.console import Console

        self.config = config
        self.console = console or Console(stderr=True)
        self.progress = progress
        self.invocation = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + f"-{os.getpid()}"
        self._tracker: Any = None
        self._tracking_off = not config.log_mlflow
        self._stale_marked = False
        self._logged_hashes: dict[str, set[str]] = {}
        self._versions: dict[str, str] | None = None
        self._git_commit = _git_commit()
        self._init_state: dict[str, Any] | None = None
        self._init_state_info: dict[str, str] | None = None

    # ------------------------------------------------------------------ messages
    def warn(self, message: str) -> None:
        """Print one warning line on the console."""
        self._line("warning", message, "yellow")

    def note(self, message: str) -> None:
        """Print one note line on the console."""
        self._line("note", message, "cyan")

    def _line(self, label: str, message: str, style: str) -> None:
        self.console.print(
            f"{label}: {' '.join(message.split())}",
            style=style,
            markup=False,
            highlight=False,
            soft_wrap=True,
        )

    # ------------------------------------------------------------------ planning
    def plan(self) -> list[Cell]:
        """Every (method, dataset, seed) cell, dataset-major."""
        from bench.methods import get_method_class

        classes = [get_method_class(method) for method in self.config.methods]
        if self.config.load_state is not None:  # unknown names and bad files fail before work
            if not any(cls.trains for cls in classes):
                raise BenchError(
                    f"--load-state: none of the methods {', '.join(self.config.methods)} "
                    "trains, so there is no state to load; use it with coop, csp..."
                )
            path = Path(self.config.load_state)
            self._init_state = load_state_file(path)
            # The content names the cell (a moved file is the same state); the name is a hint.
            self._init_state_info = {"file": path.name, "sha256": sha256_file(path)}
        return [
            Cell(method, _dataset_label(dataset), seed)
            for dataset in self.config.datasets
            for method in self.config.methods
            for seed in self.config.seeds
        ]

    # ------------------------------------------------------------------ MLflow (driver only)
    def _tracker_for(self) -> Any:
        if self._tracking_off:
            return None
        if self._tracker is None:
            from bench.tracking import open_tracker, resolve_tracking_uri

            self._tracker = open_tracker(
                resolve_tracking_uri(self.config.tracking_uri, self.config.results_dir),
                self.config.results_dir / "mlartifacts",
            )
        return self._tracker

    def _track(self, what: str, call: Callable[[], T]) -> T | None:
        """Run a tracker call; a failure warns once and turns MLflow logging off."""
        if self._tracking_off or self._tracker is None:
            return None
        try:
            return call()
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - results are on disk; MLflow is a copy
            self._tracking_off = True
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            self.warn(
                f"MLflow failed while {what} ({reason}); results are still written under "
                f"{self.config.results_dir}/runs and MLflow logging is off for the rest of this "
                "run (the next bench run logs the missing cells)"
            )
            return None

    def _start_dataset_tracking(self, label: str, ctx: DatasetContext) -> str | None:
        tracker = self._tracker_for()
        if tracker is None:
            return None
        from bench.tracking import owner_alive, owner_tags

        if not self._stale_marked:
            self._stale_marked = True
            marked = self._track(
                "marking stale runs", lambda: tracker.mark_stale_runs(None, owner_alive)
            )
            if marked:
                self.note(
                    f"marked {marked} MLflow run(s) left RUNNING by a bench process that no "
                    "longer exists as KILLED"
                )
        hashes = self._track("reading logged cells", lambda: tracker.finished_config_hashes(label))
        self._logged_hashes[label] = set(hashes or ())
        return self._track(
            "creating the parent run",
            lambda: tracker.parent_run(
                label,
                self.invocation,
                {
                    "methods": ",".join(self.config.methods),
                    "seeds": ",".join(map(str, self.config.seeds)),
                    "backbone": ctx.backbone.spec.raw,
                    "dataset": label,
                    "augment": self.config.augment,
                },
                {
                    "bench.version": __version__,
                    "bench.git_commit": self._git_commit or "unknown",
                    **owner_tags(self.invocation),
                },
            ),
        )

    def _start_cell_run(self, cell: Cell, config_hash: str, parent_id: str | None) -> str | None:
        if parent_id is None or self._tracker is None:
            return None
        from bench.tracking import owner_tags

        tracker = self._tracker
        previous = self._track(
            "looking up earlier attempts",
            lambda: tracker.previous_attempt(cell.dataset, config_hash),
        )
        tags = {
            "bench.cell": f"{cell.label}|{config_hash[:12]}",
            "bench.config_hash": config_hash,
            **owner_tags(self.invocation),
        }
        if previous:
            tags["bench.resumed_from_run"] = previous
        return self._track(
            "creating a cell run",
            lambda: tracker.start_cell(cell.dataset, cell.label, parent_id, tags),
        )

    def _end_cell_run(self, run_id: str | None, status: str) -> None:
        if run_id is not None and self._tracker is not None:
            tracker = self._tracker
            self._track("closing a cell run", lambda: tracker.end_run(run_id, status))

    def _log_finished(
        self, result: dict[str, Any], path: Path, parent_id: str | None, run_id: str | None
    ) -> None:
        if parent_id is None or self._tracker is None:
            return
        tracker = self._tracker
        logged = self._track(
            f"logging cell {result['cell_id']}",
            lambda: tracker.log_cell(result, parent_id, _artifacts(path), run_id=run_id),
        )
        if logged is not None:
            self._logged_hashes.setdefault(result["cell"]["dataset"], set()).add(
                result["config_hash"]
            )

    # ------------------------------------------------------------------ datasets
    def prepare_dataset(self, dataset_spec: str, features_lock: bool = True) -> DatasetContext:
        """Open the dataset, load the backbone and extract (or reuse) its features.

        Backbone building and feature extraction hold the dataset's features lock, so two
        processes on one results folder extract a dataset's features once. ``features_lock``
        False skips the lock (and the sweep of leftover temporary files it allows), for a
        caller that knows the features are already cached.
        """
        from bench.backbones import load_backbone
        from bench.data.registry import open_dataset
        from bench.features import extract_features
        from bench.locks import FileLock, features_lock_path

        dataset = open_dataset(dataset_spec, self.config.data_root, prepare=True)
        spec = self.config.backbone_for(dataset_spec)
        results_dir = self.config.results_dir
        # toy-clip is built by the harness itself and cached with the other results.
        cache_dir = results_dir / "cache" / "backbones" if spec.startswith("toy-clip") else None
        label = _dataset_label(dataset_spec)
        lock = FileLock(features_lock_path(results_dir, label), self.invocation)
        feature_dir = results_dir / "cache" / "features" / _slug(dataset.name)
        if features_lock:
            with writing(lock.path):
                if not lock.acquire(blocking=False):
                    self.note(
                        f"another bench process is preparing {label} in {results_dir}; "
                        "waiting for it"
                    )
                    lock.acquire(blocking=True)
            if feature_dir.is_dir():  # only the lock holder writes there
                _sweep_temporaries(list(feature_dir.rglob(".*.tmp")))
        try:
            with writing(cache_dir or results_dir / "cache"):
                backbone = load_backbone(
                    spec,
                    device=self.config.device,
                    cache_dir=cache_dir,
                    show_progress=self.progress if self.progress is not None else True,
                )
            if backbone.random_weights:
                self.warn(_random_warning(backbone))
            start = time.perf_counter()
            with writing(feature_dir):
                features = {
                    split: extract_features(
                        backbone, dataset, split, results_dir, console=self.console
                    )
                    for split in ("train", "val", "test")
                }
            seconds = time.perf_counter() - start
        finally:
            lock.release()
        cache_hit = all(f.cache_hit for f in features.values())
        word_vectors = None
        if self.config.word_vectors:
            from bench.wordvectors import load_word_vectors

            word_vectors = load_word_vectors(self.config.word_vectors, dataset, backbone=backbone)
        return DatasetContext(dataset, backbone, features, seconds, cache_hit, word_vectors)

    def cell_config(self, cell: Cell, ctx: DatasetContext) -> dict[str, Any]:
        """The resolved configuration of a cell (its hash names the result file)."""
        from bench.methods import get_method_class
        from bench.methods.base import resolve_hparams

        hparams = resolve_hparams(cell.method, ctx.dataset.name)
        overrides = {k: v for k, v in self.config.hparam_overrides.items() if k in hparams}
        if self.config.epochs is not None and "epochs" in hparams:
            overrides["epochs"] = self.config.epochs
        hparams = resolve_hparams(cell.method, ctx.dataset.name, overrides)
        config: dict[str, Any] = {
            "method": cell.method,
            "dataset": cell.dataset,
            "dataset_path": str(ctx.dataset.root),
            "dataset_fingerprint": ctx.dataset.fingerprint,
            "seed": cell.seed,
            "backbone": ctx.backbone.spec.raw,
            "backbone_identifier": ctx.backbone.identifier,
            "augment": self.config.augment,
            "hparams": hparams,
            "eval": {
                "topk": self.config.topk,
                "feasibility": self.config.feasibility if ctx.word_vectors is not None else "none",
                "word_vectors": self.config.word_vectors or "none",
                "protocol": "czsl-calibration-bias",
            },
        }
        if "word_vectors" in hparams:
            from bench.methods.wordemb import choose_word_vectors

            choice = choose_word_vectors(
                cell.method, hparams, self.config.word_vectors, ctx.dataset, ctx.backbone
            )
            config["word_vectors"] = {"spec": choice.spec, "source": choice.source}
        if self._init_state_info is not None and get_method_class(cell.method).trains:
            config["init_state"] = dict(self._init_state_info)
        return config

    # ------------------------------------------------------------------ running
    def run(self) -> list[CellOutcome]:
        """Run the grid: every unfinished cell, dataset by dataset."""
        check_results_dir(self.config.results_dir)
        cells = self.plan()
        self._tracker_for()  # a bad store fails before any work
        outcomes: list[CellOutcome] = []
        by_dataset: dict[str, list[Cell]] = {}
        specs = {_dataset_label(d): d for d in self.config.datasets}
        for cell in cells:
            by_dataset.setdefault(cell.dataset, []).append(cell)
        progress = self.progress
        grid_task = progress.add_task("grid", total=len(cells)) if progress else None
        for label, dataset_cells in by_dataset.items():
            outcomes += self.run_dataset(specs[label], dataset_cells, grid_task)
        return outcomes

    def run_dataset(
        self, spec: str, cells: Sequence[Cell], grid_task: Any = None
    ) -> list[CellOutcome]:
        """Prepare one dataset and run its cells, then re-check cells running elsewhere."""
        label = _dataset_label(spec)
        ctx = self.prepare_dataset(spec)
        parent_id = self._start_dataset_tracking(label, ctx)
        status = "FINISHED"
        outcomes: list[CellOutcome] = []
        try:
            for cell in cells:
                outcomes.append(self.run_cell(cell, ctx, parent_id))
                if self.progress is not None and grid_task is not None:
                    self.progress.advance(grid_task)
            self._recheck_elsewhere(outcomes, ctx, parent_id)
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except BaseException:
            status = "FAILED"
            raise
        finally:
            if parent_id is not None and self._tracker is not None:
                tracker = self._tracker
                self._track(
                    "closing the parent run",
                    lambda: tracker.finish_parent(label, self.invocation, status),
                )
        return outcomes

    def _cell_lock(self, cell: Cell, path: Path) -> Any:
        from bench.locks import FileLock, cell_lock_path

        return FileLock(
            cell_lock_path(self.config.results_dir, cell.dataset, cell.method, path.stem),
            self.invocation,
        )

    def _recheck_elsewhere(
        self, outcomes: list[CellOutcome], ctx: DatasetContext, parent_id: str | None
    ) -> None:
        deadline = time.monotonic() + self.config.wait_elsewhere
        for index, outcome in enumerate(outcomes):
            if outcome.status != "elsewhere" or outcome.path is None:
                continue
            lock = self._cell_lock(outcome.cell, outcome.path)
            if lock.wait(max(0.0, deadline - time.monotonic())):
                lock.release()
                outcomes[index] = self.run_cell(outcome.cell, ctx, parent_id)
            else:
                holder = lock.holder() or {}
                who = (
                    f" (pid {holder.get('pid')} on {holder.get('host')})"
                    if holder.get("pid")
                    else ""
                )
                self.warn(
                    f"cell {outcome.cell.label} is running in another bench process{who}; "
                    "rerun this command later to pick up its result"
                )

    def run_cell(
        self, cell: Cell, ctx: DatasetContext, parent_run_id: str | None = None
    ) -> CellOutcome:
        """Run one cell (or skip it if its result exists and ``rerun`` is off).

        The cell is locked while it runs; a cell locked by another live process comes back
        with status "elsewhere".
        """
        config = self.cell_config(cell, ctx)
        config_hash = sha256_json(config)
        path = result_path(self.config.results_dir, cell, config_hash)
        if not self.config.rerun:
            existing, problem = inspect_result(path, config_hash)
            if existing is not None:
                self._backfill(existing, path, parent_run_id)
                return CellOutcome(cell, "skipped", existing, path=path)
            if problem is not None:
                self.warn(f"result file {path} {problem}; redoing the cell")
        lock = self._cell_lock(cell, path)
        with writing(lock.path):
            acquired = lock.acquire(blocking=False)
        if not acquired:
            return CellOutcome(cell, "elsewhere", error="running elsewhere", path=path)
        try:
            if not self.config.rerun:  # finished by another process since the first look?
                existing, _ = inspect_result(path, config_hash)
                if existing is not None:
                    self._backfill(existing, path, parent_run_id, locked=True)
                    return CellOutcome(cell, "skipped", existing, path=path)
            artifact_dir = path.with_suffix("")
            leftovers = list(path.parent.glob(f".{path.name}.*.tmp"))
            if artifact_dir.is_dir():
                leftovers += artifact_dir.rglob(".*.tmp")
            _sweep_temporaries(leftovers)
            if self.config.rerun:
                from bench.checkpoints import clear_checkpoints

                clear_checkpoints(artifact_dir / "checkpoints")
            run_id = self._start_cell_run(cell, config_hash, parent_run_id)
            try:
                result = self.execute(cell, ctx, config, config_hash, path)
            except KeyboardInterrupt:
                self._end_cell_run(run_id, "KILLED")
                raise
            except BaseException:
                self._end_cell_run(run_id, "FAILED")
                raise
            self._log_finished(result, path, parent_run_id, run_id)
            return CellOutcome(cell, "done", result, path=path)
        finally:
            lock.release()

    def _backfill(
        self, result: dict[str, Any], path: Path, parent_id: str | None, locked: bool = False
    ) -> None:
        """Log a finished cell that MLflow does not have yet.

        Another process that is still running the cell holds its lock and logs it itself, so
        the cell is only logged here under its lock, after a fresh look at the store.
        """
        if parent_id is None or self._tracker is None or self._tracking_off:
            return
        dataset, config_hash = result["cell"]["dataset"], result.get("config_hash")
        if config_hash in self._logged_hashes.get(dataset, set()):
            return
        lock = None
        if not locked:
            lock = self._cell_lock(Cell(**result["cell"]), path)
            with writing(lock.path):
                if not lock.acquire(blocking=False):
                    return  # its owner logs it
        try:
            tracker = self._tracker
            logged = self._track(
                "reading logged cells",
                lambda: tracker.finished_config_hashes(dataset, config_hash),
            )
            if logged is None or logged:
                self._logged_hashes.setdefault(dataset, set()).update(logged or ())
                return
            self._log_finished(result, path, parent_id, None)
            if not self._tracking_off:
                self.note(
                    f"logged finished cell {result['cell_id']} to MLflow (it was missing there)"
                )
        finally:
            if lock is not None:
                lock.release()

    def execute(
        self, cell: Cell, ctx: DatasetContext, config: dict[str, Any], config_hash: str, path: Path
    ) -> dict[str, Any]:
        """Fit, score and evaluate one cell; write its artifacts and result JSON.

        Pure per-cell work (no MLflow): it can run in another process. Training resumes from
        the cell's checkpoints; they are deleted once the result JSON is written.
        """
        import torch

        from bench.checkpoints import clear_checkpoints
        from bench.methods import FitContext, get_method_class

        start = time.perf_counter()
        seed_everything(cell.seed)
        method = get_method_class(cell.method)(config["hparams"])
        dataset = ctx.dataset
        evaluation = CellEvaluation(dataset, ctx.features, self.config.topk)
        history: list[dict[str, float]] = []
        epoch_task = None
        if self.progress is not None:
            epoch_task = self.progress.add_task(
                cell.label, total=config["hparams"].get("epochs") or None
            )

        def on_epoch_end(epoch: int, metrics: Mapping[str, float]) -> None:
            history.append({"epoch": epoch, **{k: float(v) for k, v in metrics.items()}})
            if self.progress is not None and epoch_task is not None:
                loss = metrics.get("train/loss", float("nan"))
                auc = metrics.get("val/cw/auc", float("nan"))
                self.progress.update(
                    epoch_task,
                    completed=epoch,
                    description=f"{cell.label} epoch {epoch} loss {loss:.3f} val AUC {100 * auc:.1f}",
                )

        artifact_dir = path.with_suffix("")
        checkpoint_dir = artifact_dir / "checkpoints"
        fit_context = FitContext(
            dataset=dataset,
            backbone=ctx.backbone,
            features=ctx.features,
            hparams=config["hparams"],
            seed=cell.seed,
            device=str(ctx.backbone.device),
            augment=self.config.augment,
            validate=evaluation.validation_auc,
            on_epoch_end=on_epoch_end,
            checkpoint_dir=checkpoint_dir,
            word_vectors=ctx.word_vectors,
            extras={
                "checkpoint_key": config_hash,
                "checkpoint_keep": CHECKPOINTS_KEPT,
                "note": lambda message: self.note(f"{cell.label}: {message}"),
            },
        )
        try:
            if self._init_state is not None and method.trains:
                self._apply_init_state(method, fit_context)
            fit_start = time.perf_counter()
            with writing(checkpoint_dir):
                fit_log = method.fit(fit_context)
            fit_seconds = time.perf_counter() - fit_start
        finally:
            if self.progress is not None and epoch_task is not None:
                self.progress.remove_task(epoch_task)

        eval_start = time.perf_counter()
        metrics, feasibility = evaluation.evaluate_all(
            method,
            ctx.word_vectors,
            self.config.feasibility if ctx.word_vectors is not None else "off",
        )
        eval_seconds = time.perf_counter() - eval_start

        with writing(artifact_dir):
            artifact_dir.mkdir(parents=True, exist_ok=True)
            _write_curves(artifact_dir, cell, metrics)
            state = method.trainable_state()
            tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
            if tensors:
                with atomic_open(artifact_dir / "trainable_state.pt", "wb") as handle:
                    torch.save({k: v.detach().cpu() for k, v in tensors.items()}, handle)
                names = {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
                atomic_write_json(artifact_dir / "trainable_state_names.json", names)

        if self._versions is None:
            self._versions = _versions()
        result = {
            "status": "complete",
            "cell_id": f"{cell.label}|{config_hash[:12]}",
            "cell": asdict(cell),
            "config_hash": config_hash,
            "config": config,
            "metrics": metrics,
            "feasibility": feasibility,
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
            "backbone_random_weights": ctx.backbone.random_weights,
            "backbone_warning": _random_warning(ctx.backbone)
            if ctx.backbone.random_weights
            else None,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        with writing(path):
            atomic_write_json(path, result)
        clear_checkpoints(checkpoint_dir)
        return result

    def _apply_init_state(self, method: Any, fit_context: Any) -> None:
        """Load the ``--load-state`` state into ``method`` (one line naming the file if unfit)."""
        assert self._init_state is not None
        try:
            prepare = getattr(method, "prepare", None)
            if callable(prepare):
                prepare(fit_context)
            method.load_trainable_state(self._init_state)
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


class CellEvaluation:
    """Scores a method on val/test, closed and open world, through the pure evaluator."""

    def __init__(self, dataset: Any, features: Mapping[str, Any], topk: int) -> None:
        self.dataset = dataset
        self.features = features
        self.topk = topk
        self.seen = dataset.seen_pairs_ids()
        self.closed_pairs = dataset.candidate_pairs("closed")
        self.open_pairs = dataset.candidate_pairs("open")

    def _labels(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        fs = self.features[split]
        return fs.attr_idx, fs.obj_idx

    def closed_world(self, method: Any, split: str) -> dict[str, Any]:
        """Closed-world metrics of ``split``: train pairs plus the split's pairs allowed."""
        from bench.evaluation import evaluate_scores

        attr, obj = self._labels(split)
        return evaluate_scores(
            method.score(self.features[split].features, self.closed_pairs),
            attr,
            obj,
            self.closed_pairs,
            self.seen,
            self.dataset.candidate_mask(split, "closed"),
            self.topk,
        )

    def validation_auc(self, method: Any) -> float:
        """Closed-world validation AUC, for model selection."""
        return float(self.closed_world(method, "val")["auc"])

    def evaluate_all(
        self, method: Any, word_vectors: Any, feasibility_mode: str
    ) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
        """Every split x world; open world calibrated by feasibility when vectors are given."""
        from bench.evaluation import evaluate_scores
        from bench.evaluation.feasibility import (
            csp_multiply,
            feasibility_scores,
            feasible_mask,
            seen_columns,
            select_threshold,
        )

        metrics: dict[str, dict[str, Any]] = {split: {} for split in SPLITS}
        for split in SPLITS:
            metrics[split]["cw"] = self.closed_world(method, split)
        pairs = self.open_pairs
        feasibility_info = None
        if word_vectors is None or feasibility_mode == "off":
            for split in SPLITS:
                attr, obj = self._labels(split)
                metrics[split]["ow"] = evaluate_scores(
                    method.score(self.features[split].features, pairs),
                    attr,
                    obj,
                    pairs,
                    self.seen,
                    None,
                    self.topk,
                )
            return metrics, feasibility_info
        attr_vectors, obj_vectors = word_vectors.vectors_for(self.dataset)
        feasibility = feasibility_scores(pairs, self.seen, attr_vectors, obj_vectors)
        seen = seen_columns(pairs, self.seen)
        attr, obj = self._labels("val")
        selection = select_threshold(
            lambda: method.score(self.features["val"].features, pairs),
            attr,
            obj,
            pairs,
            self.seen,
            feasibility,
            mode=feasibility_mode,
            topk=self.topk,
        )
        threshold = selection["threshold"]
        feasibility_info = {
            "mode": feasibility_mode,
            "threshold": threshold,
            "val_auc_at_threshold": selection["val_auc"],
            "source": getattr(word_vectors, "description", str(word_vectors)),
        }
        for split in SPLITS:
            attr, obj = self._labels(split)
            blocks = method.score(self.features[split].features, pairs)
            if threshold is None:
                metrics[split]["ow"] = evaluate_scores(
                    blocks, attr, obj, pairs, self.seen, None, self.topk
                )
            elif feasibility_mode == "mask":
                mask = feasible_mask(feasibility, seen, threshold)
                metrics[split]["ow"] = evaluate_scores(
                    blocks, attr, obj, pairs, self.seen, mask, self.topk
                )
            else:
                metrics[split]["ow"] = evaluate_scores(
                    csp_multiply(blocks, feasibility, seen, threshold),
                    attr,
                    obj,
                    pairs,
                    self.seen,
                    None,
                    self.topk,
                )
            metrics[split]["ow"]["feasibility_threshold"] = threshold
        return metrics, feasibility_info


def _dataset_label(spec: str) -> str:
    path = Path(spec)
    if os.sep in spec or spec.startswith(".") or path.is_dir() and not _is_registered(spec):
        return path.resolve().name
    return spec


def _slug(text: str) -> str:
    """The folder name ``bench.features`` uses for ``text``."""
    from bench.constants import slug as features_slug

    return features_slug(text)


def _is_registered(name: str) -> bool:
    from bench.cards import card_names

    return name in card_names("datasets")


def _random_warning(backbone: Any) -> str:
    return backbone.warning or (
        f"backbone {backbone.spec.raw} has RANDOM weights: its numbers say nothing about any method"
    )


def _jsonable(value: Any) -> Any:
    return json.loads(
        json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o))
    )


def _write_curves(folder: Path, cell: Cell, metrics: Mapping[str, Mapping[str, Any]]) -> None:
    from bench.plots import save_curves

    rows = []
    for split, worlds in metrics.items():
        for world, block in worlds.items():
            for i, (bias, seen, unseen) in enumerate(
                zip(block["biases"], block["seen_curve"], block["unseen_curve"], strict=True)
            ):
                rows.append(
                    {
                        "split": split,
                        "world": world,
                        "point": i,
                        "bias": bias,
                        "seen": seen,
                        "unseen": unseen,
                    }
                )
    with atomic_open(folder / "curves.csv", "w") as handle:
        writer = csv.DictWriter(
            handle, fieldnames=["split", "world", "point", "bias", "seen", "unseen"]
        )
        writer.writeheader()
        writer.writerows(rows)
    curves = {
        f"{split}/{world}": block
        for split, worlds in metrics.items()
        for world, block in worlds.items()
    }
    save_curves(curves, folder / "curves.png", f"{cell.label}: seen-unseen curves")


def _artifacts(path: Path | None) -> dict[str, Path]:
    if path is None:
        return {}
    folder = path.with_suffix("")
    return {
        "curves": folder / "curves.png",
        "curves_table": folder / "curves.csv",
        "state": folder / "trainable_state.pt",
        "state_names": folder / "trainable_state_names.json",
    }


def summary_rows(outcomes: Sequence[CellOutcome]) -> Iterator[dict[str, Any]]:
    """One row per cell for the end-of-run table (percentages)."""
    for outcome in outcomes:
        row: dict[str, Any] = {
            "cell": outcome.cell.label,
            "method": outcome.cell.method,
            "dataset": outcome.cell.dataset,
            "seed": outcome.cell.seed,
            "status": outcome.status,
        }
        result = outcome.result or {}
        for world in WORLDS:
            block = result.get("metrics", {}).get("test", {}).get(world)
            if block:
                for key, name in (
                    ("best_seen", "S"),
                    ("best_unseen", "U"),
                    ("best_hm", "HM"),
                    ("auc", "AUC"),
                ):
                    row[f"{world}/{name}"] = 100 * block[key]
        yield row
