"""The runner: plans the method x dataset x seed grid, skips finished cells, runs the rest.

Each cell ends in one result JSON under ``<results-dir>/runs/`` (the source of truth), written
atomically after its artifacts; MLflow logging happens in the driver from those results.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import platform
import random
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import __version__
from bench.errors import BenchError
from bench.io import atomic_open, atomic_write_json, sha256_json

SPLITS = ("val", "test")
WORLDS = ("cw", "ow")
FEASIBILITY_CHOICES = ("mask", "csp-multiply", "off")
AUGMENT_CHOICES = ("none", "paper")
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_SYNTHETIC_BACKBONE = "toy-clip"
DEFAULT_REAL_BACKBONE = "ViT-L-14:openai"
MAX_SEED = 2**32 - 1
MAX_EPOCHS = 10_000


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
        rerun: Redo finished cells.
        device: "cpu", "cuda", "cuda:1"...; None = CUDA when available.
        augment: "none" trains on cached features; "paper" re-encodes augmented images.
        topk: Top-k accuracy.
        feasibility: Open-world filter: "mask" (proper masking), "csp-multiply" (CSP's
            variant, for reproduction) or "off".
        word_vectors: Word-vector provider for open-world feasibility (None: no feasibility).
        log_mlflow: Log finished cells to MLflow.
        hparam_overrides: Extra hyperparameter overrides for every method that defines them.
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
        if self.topk < 1:
            raise BenchError(f"--topk: {self.topk} must be at least 1")

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
    """What happened to a cell in this invocation."""

    cell: Cell
    status: str  # "done", "skipped", "failed"
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


def result_path(results_dir: Path, cell: Cell, config_hash: str) -> Path:
    """Where a cell's result JSON lives."""
    return (
        results_dir / "runs" / cell.dataset / cell.method / f"s{cell.seed}-{config_hash[:12]}.json"
    )


def load_result(path: Path) -> dict[str, Any] | None:
    """A finished result at ``path``, or None if absent, unreadable or incomplete."""
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(result, dict) or result.get("status") != "complete":
        return None
    return result


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
        self.invocation = (
            dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + f"-{os.getpid()}"
        )
        self._tracker: Any = None
        self._versions: dict[str, str] | None = None
        self._git_commit = _git_commit()

    # ------------------------------------------------------------------ planning
    def plan(self) -> list[Cell]:
        """Every (method, dataset, seed) cell, dataset-major."""
        from bench.methods import get_method_class

        for method in self.config.methods:
            get_method_class(method)  # unknown names fail before any work
        return [
            Cell(method, _dataset_label(dataset), seed)
            for dataset in self.config.datasets
            for method in self.config.methods
            for seed in self.config.seeds
        ]

    # ------------------------------------------------------------------ helpers
    def _tracker_for(self) -> Any:
        if not self.config.log_mlflow:
            return None
        if self._tracker is None:
            from bench.tracking import open_tracker, resolve_tracking_uri

            self._tracker = open_tracker(
                resolve_tracking_uri(self.config.tracking_uri, self.config.results_dir),
                self.config.results_dir / "mlartifacts",
            )
        return self._tracker

    def prepare_dataset(self, dataset_spec: str) -> DatasetContext:
        """Open the dataset, load the backbone and extract (or reuse) its features."""
        from bench.backbones import load_backbone
        from bench.data.registry import open_dataset
        from bench.features import extract_features

        dataset = open_dataset(dataset_spec, self.config.data_root, prepare=True)
        spec = self.config.backbone_for(dataset_spec)
        # toy-clip is built by the harness itself and cached with the other results.
        cache_dir = (
            self.config.results_dir / "cache" / "backbones" if spec.startswith("toy-clip") else None
        )
        backbone = load_backbone(spec, device=self.config.device, cache_dir=cache_dir)
        if getattr(backbone, "random_weights", False):
            self.console.print(f"[yellow]warning:[/] {_random_warning(backbone)}")
        start = time.perf_counter()
        features = {
            split: extract_features(
                backbone, dataset, split, self.config.results_dir, console=self.console
            )
            for split in ("train", "val", "test")
        }
        seconds = time.perf_counter() - start
        cache_hit = all(f.cache_hit for f in features.values())
        word_vectors = None
        if self.config.word_vectors:
            from bench.wordvectors import load_word_vectors

            word_vectors = load_word_vectors(self.config.word_vectors, dataset, backbone=backbone)
        return DatasetContext(dataset, backbone, features, seconds, cache_hit, word_vectors)

    def cell_config(self, cell: Cell, ctx: DatasetContext) -> dict[str, Any]:
        """The resolved configuration of a cell (its hash names the result file)."""
        from bench.methods.base import resolve_hparams

        hparams = resolve_hparams(cell.method, ctx.dataset.name)
        overrides = {k: v for k, v in self.config.hparam_overrides.items() if k in hparams}
        if self.config.epochs is not None and "epochs" in hparams:
            overrides["epochs"] = self.config.epochs
        hparams = resolve_hparams(cell.method, ctx.dataset.name, overrides)
        return {
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

    # ------------------------------------------------------------------ running
    def run(self) -> list[CellOutcome]:
        """Run the grid: every unfinished cell, dataset by dataset."""
        check_results_dir(self.config.results_dir)
        cells = self.plan()
        outcomes: list[CellOutcome] = []
        by_dataset: dict[str, list[Cell]] = {}
        specs = {_dataset_label(d): d for d in self.config.datasets}
        for cell in cells:
            by_dataset.setdefault(cell.dataset, []).append(cell)
        progress = self.progress
        grid_task = progress.add_task("grid", total=len(cells)) if progress else None
        for label, dataset_cells in by_dataset.items():
            ctx = self.prepare_dataset(specs[label])
            tracker = self._tracker_for()
            parent_id = None
            if tracker is not None:
                parent_id = tracker.parent_run(
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
                    },
                )
            status = "FINISHED"
            try:
                for cell in dataset_cells:
                    outcome = self.run_cell(cell, ctx)
                    outcomes.append(outcome)
                    if (
                        outcome.status == "done"
                        and tracker is not None
                        and outcome.result is not None
                    ):
                        tracker.log_cell(outcome.result, parent_id, _artifacts(outcome.path))
                    if progress is not None:
                        progress.advance(grid_task)
            except KeyboardInterrupt:
                status = "KILLED"
                raise
            finally:
                if tracker is not None:
                    tracker.finish_parent(label, self.invocation, status)
        return outcomes

    def run_cell(self, cell: Cell, ctx: DatasetContext) -> CellOutcome:
        """Run one cell (or skip it if its result exists and ``rerun`` is off)."""
        config = self.cell_config(cell, ctx)
        config_hash = sha256_json(config)
        path = result_path(self.config.results_dir, cell, config_hash)
        existing = load_result(path)
        if existing is not None and not self.config.rerun:
            return CellOutcome(cell, "skipped", existing, path=path)
        result = self.execute(cell, ctx, config, config_hash, path)
        return CellOutcome(cell, "done", result, path=path)

    def execute(
        self, cell: Cell, ctx: DatasetContext, config: dict[str, Any], config_hash: str, path: Path
    ) -> dict[str, Any]:
        """Fit, score and evaluate one cell; write its artifacts and result JSON."""
        import torch

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
            checkpoint_dir=path.with_suffix("") / "checkpoints",
            word_vectors=ctx.word_vectors,
        )
        fit_start = time.perf_counter()
        fit_log = method.fit(fit_context)
        fit_seconds = time.perf_counter() - fit_start
        if self.progress is not None and epoch_task is not None:
            self.progress.remove_task(epoch_task)

        eval_start = time.perf_counter()
        metrics, feasibility = evaluation.evaluate_all(
            method,
            ctx.word_vectors,
            self.config.feasibility if ctx.word_vectors is not None else "off",
        )
        eval_seconds = time.perf_counter() - eval_start

        artifact_dir = path.with_suffix("")
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
            "backbone_random_weights": bool(getattr(ctx.backbone, "random_weights", False)),
            "backbone_warning": _random_warning(ctx.backbone)
            if getattr(ctx.backbone, "random_weights", False)
            else None,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_json(path, result)
        return result


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


def _is_registered(name: str) -> bool:
    from bench.cards import card_names

    return name in card_names("datasets")


def _random_warning(backbone: Any) -> str:
    return getattr(backbone, "warning", None) or (
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
