"""MLflow logging. The only module that imports mlflow; only the driver process calls it.

Layout: one experiment per dataset (``czsl/<dataset>``), a parent run per ``bench run``
invocation and dataset, a child run per (method, seed) named ``<method>|<dataset>|s<seed>``.
Everything is logged from result dicts (the result JSONs are the source of truth), so a
worker process never touches the store.

Runs carry the owner process's tags (``bench.owner.host``, ``.pid``, ``.start``,
``.boot_id``); ``mark_stale_runs`` closes as KILLED the RUNNING runs whose owner is gone
(same host, and the pid is dead, reused by another process, or from before a reboot). Runs
of other hosts are left alone. Every store call goes through ``_retry_locked`` (sqlite
"database is locked" retried with backoff, on top of MLflow's own 20 s sqlite busy timeout).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
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


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> str:
    """The start time of process ``pid`` in clock ticks since boot ("" if unknown)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        return text[text.rindex(")") + 2 :].split()[19]
    except (OSError, ValueError, IndexError):
        return ""


def owner_tags(invocation: str) -> dict[str, str]:
    """Tags naming the process that owns a run (for ``owner_alive``)."""
    pid = os.getpid()
    return {
        "bench.invocation": invocation,
        "bench.owner.host": socket.gethostname(),
        "bench.owner.pid": str(pid),
        "bench.owner.start": _process_start(pid),
        "bench.owner.boot_id": _boot_id(),
    }


def owner_alive(tags: Mapping[str, str]) -> bool:
    """False only when the run's owner process is certainly gone.

    Runs without owner tags or from another host count as alive (they cannot be checked).
    """
    pid_text = tags.get("bench.owner.pid", "")
    if not pid_text.isdigit() or tags.get("bench.owner.host") != socket.gethostname():
        return True
    boot = tags.get("bench.owner.boot_id", "")
    if boot and _boot_id() and boot != _boot_id():
        return False
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    except OSError:
        return True
    start = tags.get("bench.owner.start", "")
    now = _process_start(pid)
    return not (start and now and start != now)


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
            experiment = _retry_locked(lambda: self._client.get_experiment_by_name(name))
            if experiment is None:
                raise
            return experiment.experiment_id

    def _experiment_ids(self, dataset: str | None) -> list[str]:
        if dataset is not None:
            return [self._experiment_id(dataset)]
        experiments = _retry_locked(lambda: self._client.search_experiments(max_results=1000))
        return [e.experiment_id for e in experiments if e.name.startswith("czsl/")]

    def _search(self, experiment_ids: list[str], filter_string: str, **kwargs: Any) -> list[Any]:
        runs: list[Any] = []
        token = None
        while experiment_ids:
            page = _retry_locked(
                lambda t=token: self._client.search_runs(
                    experiment_ids, filter_string, page_token=t, **kwargs
                )
            )
            runs.extend(page)
            token = getattr(page, "token", None)
            if not token or kwargs.get("max_results"):
                break
        return runs

    def mark_stale_runs(
        self, dataset: str | None, alive: Callable[[Mapping[str, str]], bool]
    ) -> int:
        """Mark RUNNING runs of dead processes as KILLED; return how many were marked.

        Args:
            dataset: Only this dataset's experiment (None: every ``czsl/*`` experiment).
            alive: Whether the process named by a run's tags still runs (``owner_alive``).
        """
        runs = self._search(self._experiment_ids(dataset), "attributes.status = 'RUNNING'")
        marked = 0
        for run in runs:
            if not alive(run.data.tags):
                _retry_locked(
                    lambda run=run: self._client.set_tag(
                        run.info.run_id, "bench.marked_stale", "owner process gone"
                    )
                )
                _retry_locked(
                    lambda run=run: self._client.set_terminated(run.info.run_id, "KILLED")
                )
                marked += 1
        return marked

    def finished_config_hashes(self, dataset: str, config_hash: str | None = None) -> set[str]:
        """Config hashes of the FINISHED cell runs of ``dataset`` (only ``config_hash``'s)."""
        query = "tags.`bench.role` = 'cell' and attributes.status = 'FINISHED'"
        if config_hash is not None:
            query += f" and tags.`bench.config_hash` = '{config_hash}'"
        runs = self._search([self._experiment_id(dataset)], query)
        return {
            r.data.tags["bench.config_hash"] for r in runs if "bench.config_hash" in r.data.tags
        }

    def previous_attempt(self, dataset: str, config_hash: str) -> str | None:
        """The run id of the latest attempt at this cell if it was KILLED or FAILED."""
        runs = self._search(
            [self._experiment_id(dataset)],
            f"tags.`bench.role` = 'cell' and tags.`bench.config_hash` = '{config_hash}'",
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
        if runs and runs[0].info.status in ("KILLED", "FAILED"):
            return runs[0].info.run_id
        return None

    def start_cell(
        self, dataset: str, run_name: str, parent_run_id: str, tags: Mapping[str, str]
    ) -> str:
        """Create a RUNNING child run for a cell that starts now; return its id."""
        experiment_id = self._experiment_id(dataset)
        run = _retry_locked(
            lambda: self._client.create_run(
                experiment_id,
                run_name=run_name,
                tags={**tags, "mlflow.parentRunId": parent_run_id, "bench.role": "cell"},
            )
        )
        return run.info.run_id

    def end_run(self, run_id: str, status: str) -> None:
        """Close a run with ``status`` (FINISHED, FAILED, KILLED)."""
        _retry_locked(lambda: self._client.set_terminated(run_id, status))

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
        self,
        result: Mapping[str, Any],
        parent_run_id: str,
        artifacts: Mapping[str, Path],
        run_id: str | None = None,
    ) -> str:
        """Log one finished cell as a child run (``run_id``: one ``start_cell`` created).

        Returns:
            The child run id.
        """
        from mlflow.entities import Metric, RunTag

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
        resumed_epoch = (result.get("fit") or {}).get("resumed_from_epoch")
        if resumed_epoch is not None:
            tags["bench.resumed_from_epoch"] = str(resumed_epoch)
        if run_id is None:
            run = _retry_locked(
                lambda: self._client.create_run(
                    experiment_id,
                    run_name=f"{cell['method']}|{cell['dataset']}|s{cell['seed']}",
                    tags=tags,
                )
            )
            run_id = run.info.run_id
        else:
            existing = run_id
            _retry_locked(
                lambda: self._client.log_batch(
                    existing, tags=[RunTag(k, str(v)) for k, v in tags.items()]
                )
            )
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


def _sqlite_path(tracking_uri: str) -> Path | None:
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri[len("sqlite:///") :].split("?", 1)[0])


def open_tracker(tracking_uri: str, artifact_root: Path | None = None) -> Tracker:
    """Return a Tracker whose store is ready, or a one-line BenchError if it cannot be opened.

    A new sqlite store is created (MLflow's schema migrations) under a lock file beside the
    database, so that concurrent ``bench run`` processes do not race to create it.
    """
    from bench.locks import hold

    database = _sqlite_path(tracking_uri)
    try:
        lock = (
            hold(database.with_name(database.name + ".lock"))
            if database is not None
            else contextlib.nullcontext()
        )
        with lock:
            tracker = Tracker(tracking_uri, artifact_root)
            _retry_locked(lambda: tracker._client.search_experiments(max_results=1))
        return tracker
    except Exception as exc:  # noqa: BLE001 - any store failure becomes one line
        raise BenchError(f"cannot open the MLflow store {tracking_uri!r}: {exc}") from exc


# ---------------------------------------------------------------------- reading (bench report)
def _client(tracking_uri: str) -> Any:
    import logging

    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    return mlflow.MlflowClient(tracking_uri=tracking_uri)


def _search_all(client: Any, experiment_ids: list[str], filter_string: str) -> list[Any]:
    runs: list[Any] = []
    token = None
    while True:
        page = _retry_locked(
            lambda t=token: client.search_runs(
                experiment_ids,
                filter_string,
                max_results=1000,
                order_by=["attributes.start_time DESC"],
                page_token=t,
            )
        )
        runs.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return runs


def _read_artifact(client: Any, run: Any, path: str, staging: Path) -> str | None:
    """A run's text artifact: read in place from a local store, else downloaded; None if absent."""
    from urllib.parse import unquote, urlparse

    uri = run.info.artifact_uri or ""
    local = None
    if uri.startswith("file:"):
        local = Path(unquote(urlparse(uri).path)) / path
    elif "://" not in uri and uri:
        local = Path(uri) / path
    if local is not None:
        return local.read_text() if local.is_file() else None
    previous = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        return Path(client.download_artifacts(run.info.run_id, path, str(staging))).read_text()
    except Exception:  # noqa: BLE001 - a missing artifact only loses detail
        return None
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = previous


def _curves_from_csv(text: str) -> dict[tuple[str, str], dict[str, list[float]]]:
    import csv
    import io

    curves: dict[tuple[str, str], dict[str, list[float]]] = {}
    rows = sorted(
        csv.DictReader(io.StringIO(text)), key=lambda r: (r["split"], r["world"], int(r["point"]))
    )
    for row in rows:
        block = curves.setdefault(
            (row["split"], row["world"]), {"biases": [], "seen_curve": [], "unseen_curve": []}
        )
        block["biases"].append(float(row["bias"]))
        block["seen_curve"].append(float(row["seen"]))
        block["unseen_curve"].append(float(row["unseen"]))
    return curves


def _config_from_params(params: Mapping[str, str], tags: Mapping[str, str]) -> dict[str, Any]:
    return {
        "method": params.get("method"),
        "dataset": params.get("dataset"),
        "seed": int(params.get("seed", 0)),
        "backbone": params.get("backbone", "unknown"),
        "backbone_identifier": params.get("backbone", "unknown"),
        "augment": tags.get("bench.augment", "none"),
        "hparams": {k[3:]: v for k, v in params.items() if k.startswith("hp.")},
        "eval": {k[5:]: v for k, v in params.items() if k.startswith("eval.")},
        "dataset_fingerprint": "unknown",
    }


def read_cell_results(
    tracking_uri: str, datasets: Sequence[str] | None = None, *, curves: bool = True
) -> list[dict[str, Any]]:
    """Finished child runs of the ``czsl/<dataset>`` experiments, as result-JSON-shaped dicts.

    The configuration comes from each run's ``config.json`` artifact (params and tags when it
    is missing), the metrics from the logged ``{split}/{world}/{name}`` metrics and, with
    ``curves``, the seen/unseen curves from the ``curves_table/curves.csv`` artifact. When a
    cell was logged more than once (``--rerun``), only its latest run is returned.

    Args:
        tracking_uri: The MLflow tracking URI.
        datasets: Only these datasets' experiments (all ``czsl/*`` experiments if None).
        curves: Also download the curves (needed for figures only).

    Raises:
        BenchError: The store cannot be read.
    """
    if (
        tracking_uri.startswith("sqlite:///")
        and not Path(tracking_uri[len("sqlite:///") :]).is_file()
    ):
        raise BenchError(
            f"no MLflow store at {tracking_uri[len('sqlite:///') :]}; check --tracking-uri"
        )
    try:
        client = _client(tracking_uri)
        experiments = _retry_locked(lambda: client.search_experiments(max_results=1000))
    except Exception as exc:  # noqa: BLE001 - any store failure becomes one line
        raise BenchError(f"cannot read the MLflow store {tracking_uri!r}: {exc}") from exc
    wanted = {f"czsl/{d}" for d in datasets} if datasets else None
    ids = [
        e.experiment_id
        for e in experiments
        if e.name.startswith("czsl/") and (wanted is None or e.name in wanted)
    ]
    if not ids:
        return []
    runs = _search_all(client, ids, "tags.`bench.role` = 'cell' and attributes.status = 'FINISHED'")
    results: dict[str, dict[str, Any]] = {}
    with _staging() as staging:
        for run in runs:  # newest first
            tags, params = dict(run.data.tags), dict(run.data.params)
            key = tags.get("bench.config_hash") or run.info.run_id
            if key in results:
                continue
            folder = staging / run.info.run_id
            folder.mkdir()
            text = _read_artifact(client, run, "config.json", folder)
            config = json.loads(text) if text else _config_from_params(params, tags)
            metrics: dict[str, dict[str, dict[str, Any]]] = {}
            for name, value in run.data.metrics.items():
                parts = name.split("/")
                if len(parts) == 3 and parts[0] in ("val", "test") and parts[2] in METRIC_KEYS:
                    block = metrics.setdefault(parts[0], {}).setdefault(parts[1], {})
                    block[METRIC_KEYS[parts[2]]] = value
            if curves:
                table = _read_artifact(client, run, "curves_table/curves.csv", folder)
                for (split, world), block in (_curves_from_csv(table) if table else {}).items():
                    if world in metrics.get(split, {}):
                        metrics[split][world].update(block)
            results[key] = {
                "status": "complete",
                "cell": {
                    "method": config["method"],
                    "dataset": config["dataset"],
                    "seed": int(config["seed"]),
                },
                "config_hash": tags.get("bench.config_hash"),
                "config": config,
                "metrics": metrics,
                "backbone_random_weights": tags.get("bench.backbone_random_weights") == "true",
                "created_at": time.strftime(
                    "%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(run.info.start_time / 1000)
                ),
                "mlflow_run_id": run.info.run_id,
            }
    return list(results.values())


def log_report_artifacts(
    tracking_uri: str, dataset: str, paths: Sequence[Path], artifact_path: str = "report"
) -> str | None:
    """Attach report files (figures) to the latest parent run of experiment ``czsl/<dataset>``.

    Returns:
        The parent run id, or None when the experiment or a parent run does not exist.

    Raises:
        BenchError: The store cannot be opened or written.
    """
    try:
        client = _client(tracking_uri)
        experiment = _retry_locked(lambda: client.get_experiment_by_name(f"czsl/{dataset}"))
        if experiment is None:
            return None
        parents = _retry_locked(
            lambda: client.search_runs(
                [experiment.experiment_id],
                "tags.`bench.role` = 'parent'",
                max_results=1,
                order_by=["attributes.start_time DESC"],
            )
        )
        if not parents:
            return None
        run_id = parents[0].info.run_id
        for path in paths:
            _retry_locked(lambda p=path: client.log_artifact(run_id, str(p), artifact_path))
        return run_id
    except BenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - any store failure becomes one line
        raise BenchError(
            f"cannot log the report figures to the MLflow store {tracking_uri!r}: {exc}"
        ) from exc
