"""MLflow logging. The only module that imports mlflow; only the driver process calls it.

Layout: one experiment per dataset (``czsl/<dataset>``), a parent run per ``bench run``
invocation and dataset, a child run per (method, seed) named ``<method>|<dataset>|s<seed>``.
Everything is logged from result dicts (the result JSONs are the source of truth), so a
worker process never touches the store.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from bench.errors import BenchError

T = TypeVar("T")

METRIC_KEYS = {
    "auc": "auc",
    "hm": "best_hm",
    "seen": "best_seen",
    "unseen": "best_unseen",
    "attr_acc": "attr_acc",
    "obj_acc": "obj_acc",
    "acc": "closed_acc",
}


def resolve_tracking_uri(tracking_uri: str | None, results_dir: Path) -> str:
    """``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else a sqlite store in the results dir."""
    if tracking_uri:
        return tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(results_dir).resolve() / 'mlflow.db'}"


def _retry_locked(call: Callable[[], T], attempts: int = 8) -> T:
    """Retry sqlite "database is locked" errors with exponential backoff and jitter."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as exc:  # mlflow wraps sqlalchemy errors in its own types
            if "database is locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(min(0.05 * 2**attempt, 2.0) * (1 + random.random()))
    raise AssertionError("unreachable")


def flatten_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """``{split}/{world}/{metric}`` metrics (fractions) from a cell result."""
    metrics: dict[str, float] = {}
    for split in ("val", "test"):
        for world in ("cw", "ow"):
            block = result.get("metrics", {}).get(split, {}).get(world)
            if not block:
                continue
            for name, key in METRIC_KEYS.items():
                if block.get(key) is not None:
                    metrics[f"{split}/{world}/{name}"] = float(block[key])
    for name, seconds in result.get("timings", {}).items():
        metrics[f"time/{name}"] = float(seconds)
    return metrics


class Tracker:
    """Logs finished cells to MLflow."""

    def __init__(self, tracking_uri: str, artifact_root: Path | None = None) -> None:
        import logging

        import mlflow

        logging.getLogger("mlflow").setLevel(logging.WARNING)
        self._mlflow = mlflow
        self.tracking_uri = tracking_uri
        # Local stores keep artifacts beside the database, under the results folder.
        self.artifact_root = (
            artifact_root if tracking_uri.startswith(("sqlite:", "file:", "/")) else None
        )
        self._client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        self._parents: dict[str, str] = {}

    def _experiment_id(self, dataset: str) -> str:
        name = f"czsl/{dataset}"
        experiment = _retry_locked(lambda: self._client.get_experiment_by_name(name))
        if experiment is not None:
            return experiment.experiment_id
        try:
            location = (
                (self.artifact_root / name.replace("/", "-")).resolve().as_uri()
                if self.artifact_root
                else None
            )
            return _retry_locked(
                lambda: self._client.create_experiment(name, artifact_location=location)
            )
        except Exception:  # created by a concurrent process in the meantime
            experiment = self._client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id

    def mark_stale_runs(self, dataset: str, alive: Callable[[Mapping[str, str]], bool]) -> int:
        """Mark RUNNING runs of dead processes as KILLED; return how many were marked."""
        experiment_id = self._experiment_id(dataset)
        runs = _retry_locked(
            lambda: self._client.search_runs([experiment_id], "attributes.status = 'RUNNING'")
        )
        marked = 0
        for run in runs:
            if not alive(run.data.tags):
                _retry_locked(
                    lambda run=run: self._client.set_terminated(run.info.run_id, "KILLED")
                )
                marked += 1
        return marked

    def parent_run(
        self, dataset: str, invocation: str, params: Mapping[str, Any], tags: Mapping[str, str]
    ) -> str:
        """Create (once per invocation and dataset) the parent run; return its id."""
        key = f"{invocation}/{dataset}"
        if key not in self._parents:
            experiment_id = self._experiment_id(dataset)
            run = _retry_locked(
                lambda: self._client.create_run(
                    experiment_id,
                    run_name=f"bench run {invocation}",
                    tags={**tags, "bench.invocation": invocation, "bench.role": "parent"},
                )
            )
            self._parents[key] = run.info.run_id
            self._log_params(run.info.run_id, params)
        return self._parents[key]

    def finish_parent(self, dataset: str, invocation: str, status: str = "FINISHED") -> None:
        """Close the parent run of ``dataset`` for this invocation."""
        run_id = self._parents.get(f"{invocation}/{dataset}")
        if run_id:
            _retry_locked(lambda: self._client.set_terminated(run_id, status))

    def log_parent_artifact(
        self, dataset: str, invocation: str, path: Path, artifact_path: str | None = None
    ) -> None:
        """Attach a file (e.g. a report figure) to the parent run."""
        run_id = self._parents.get(f"{invocation}/{dataset}")
        if run_id:
            _retry_locked(lambda: self._client.log_artifact(run_id, str(path), artifact_path))

    def _log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        for start in range(0, len(items), 100):
            _retry_locked(lambda s=start: self._client.log_batch(run_id, params=items[s : s + 100]))

    def log_cell(
        self, result: Mapping[str, Any], parent_run_id: str, artifacts: Mapping[str, Path]
    ) -> str:
        """Log one finished cell as a child run; return the child run id."""
        from mlflow.entities import Metric

        cell = result["cell"]
        experiment_id = self._experiment_id(cell["dataset"])
        tags = {
            "mlflow.parentRunId": parent_run_id,
            "bench.role": "cell",
            "bench.cell": result["cell_id"],
            "bench.version": result["versions"]["bench"],
            "bench.git_commit": result.get("git_commit") or "unknown",
            "bench.config_hash": result["config_hash"],
            "bench.feature_cache": "hit" if result.get("feature_cache_hit") else "miss",
            "bench.device": result.get("device", "cpu"),
            "bench.backbone_random_weights": str(
                result.get("backbone_random_weights", False)
            ).lower(),
            "bench.augment": result["config"].get("augment", "none"),
        }
        if result.get("resumed_from_run"):
            tags["bench.resumed_from_run"] = result["resumed_from_run"]
        run = _retry_locked(
            lambda: self._client.create_run(
                experiment_id,
                run_name=f"{cell['method']}|{cell['dataset']}|s{cell['seed']}",
                tags=tags,
            )
        )
        run_id = run.info.run_id
        params = {
            "method": cell["method"],
            "dataset": cell["dataset"],
            "seed": cell["seed"],
            "backbone": result["config"]["backbone"],
        }
        params.update({f"hp.{k}": v for k, v in result["config"]["hparams"].items()})
        params.update({f"eval.{k}": v for k, v in result["config"]["eval"].items()})
        self._log_params(run_id, params)
        now = int(time.time() * 1000)
        history = result.get("history", [])
        metrics = []
        for entry in history:
            epoch = int(entry["epoch"])
            for key in ("train/loss", "val/cw/auc"):
                if entry.get(key) is not None:
                    metrics.append(Metric(key, float(entry[key]), now, epoch))
        # Final (best-epoch) metrics come after the last epoch, so they are the runs' latest values.
        final_step = max((int(e["epoch"]) for e in history), default=-1) + 1
        metrics += [Metric(k, v, now + 1, final_step) for k, v in flatten_metrics(result).items()]
        for start in range(0, len(metrics), 500):
            _retry_locked(
                lambda s=start: self._client.log_batch(run_id, metrics=metrics[s : s + 500])
            )
        with _staging() as staging:
            config_path = staging / "config.json"
            config_path.write_text(json.dumps(result["config"], indent=2, sort_keys=True))
            _retry_locked(lambda: self._client.log_artifact(run_id, str(config_path)))
        for artifact_dir, path in artifacts.items():
            if Path(path).exists():
                _retry_locked(
                    lambda p=path, d=artifact_dir: self._client.log_artifact(run_id, str(p), d)
                )
        _retry_locked(lambda: self._client.set_terminated(run_id, "FINISHED"))
        return run_id


@contextmanager
def _staging() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="bench-mlflow-") as folder:
        yield Path(folder)


def open_tracker(tracking_uri: str, artifact_root: Path | None = None) -> Tracker:
    """Return a Tracker, or a one-line BenchError if the store cannot be opened."""
    try:
        return Tracker(tracking_uri, artifact_root)
    except Exception as exc:  # noqa: BLE001 - any store failure becomes one line
        raise BenchError(f"cannot open the MLflow store {tracking_uri!r}: {exc}") from exc
