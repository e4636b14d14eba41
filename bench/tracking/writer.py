"""Writing runs to the MLflow store: parent and cell runs, stale runs, report figures.

Runs carry the owner process's tags (``bench.owner.host``, ``.pid``, ``.start``,
``.boot_id``); :meth:`Tracker.mark_stale_runs` closes as KILLED the RUNNING runs whose owner
is gone (same host, and the pid is dead, reused by another process, or from before a
reboot). Runs of other hosts are left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.constants import EVAL_SPLITS, WORLDS
from bench.errors import BenchError
from bench.tracking.client import (
    METRIC_KEYS,
    RUNS_VIEW_KEY,
    czsl_experiment_ids,
    experiment_name,
    latest_run,
    log_metrics,
    log_params,
    open_client,
    retry_locked,
    runs_view_state,
    search_runs,
    set_tags,
)


def flatten_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """``{split}/{world}/{metric}`` metrics (fractions) from a cell result, and
    ``test/{name}/acc`` of its higher-order evaluations (``test/aao/acc``)."""
    metrics: dict[str, float] = {}
    for split in EVAL_SPLITS:
        for world in WORLDS:
            block = result.get("metrics", {}).get(split, {}).get(world)
            if not block:
                continue
            for name, key in METRIC_KEYS.items():
                if block.get(key) is not None:
                    metrics[f"{split}/{world}/{name}"] = float(block[key])
    for name, block in (result.get("higher_order") or {}).items():
        if isinstance(block, Mapping) and block.get("acc") is not None:
            metrics[f"test/{name}/acc"] = float(block["acc"])
    for name, seconds in result.get("timings", {}).items():
        metrics[f"time/{name}"] = float(seconds)
    return metrics


# --------------------------------------------------------------------------- run owners
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


# --------------------------------------------------------------------------- the tracker
class Tracker:
    """Logs ``bench run``'s parent runs and finished cells to MLflow."""

    def __init__(self, tracking_uri: str, artifact_root: Path | None = None) -> None:
        self.tracking_uri = tracking_uri
        # Local stores keep artifacts beside the database, under the results folder.
        self.artifact_root = (
            artifact_root if tracking_uri.startswith(("sqlite:", "file:", "/")) else None
        )
        self.client = open_client(tracking_uri)
        self._parents: dict[str, str] = {}

    def _experiment_id(self, dataset: str) -> str:
        name = experiment_name(dataset)
        experiment = retry_locked(lambda: self.client.get_experiment_by_name(name))
        if experiment is not None:
            return experiment.experiment_id
        try:
            location = (
                (self.artifact_root / name.replace("/", "-")).resolve().as_uri()
                if self.artifact_root
                else None
            )
            return retry_locked(
                lambda: self.client.create_experiment(name, artifact_location=location)
            )
        except Exception:  # created by a concurrent process in the meantime
            experiment = retry_locked(lambda: self.client.get_experiment_by_name(name))
            if experiment is None:
                raise
            return experiment.experiment_id

    def mark_stale_runs(self, alive: Callable[[Mapping[str, str]], bool]) -> int:
        """Mark RUNNING runs of dead processes (every ``czsl/*`` experiment) as KILLED.

        Args:
            alive: Whether the process named by a run's tags still runs (``owner_alive``).

        Returns:
            How many runs were marked.
        """
        runs = search_runs(
            self.client, czsl_experiment_ids(self.client), "attributes.status = 'RUNNING'"
        )
        marked = 0
        for run in runs:
            if not alive(run.data.tags):
                run_id = run.info.run_id
                retry_locked(
                    lambda r=run_id: self.client.set_tag(
                        r, "bench.marked_stale", "owner process gone"
                    )
                )
                self.end_run(run_id, "KILLED")
                marked += 1
        return marked

    def finished_config_hashes(self, dataset: str, config_hash: str | None = None) -> set[str]:
        """Config hashes of the FINISHED cell runs of ``dataset`` (only ``config_hash``'s)."""
        query = "tags.`bench.role` = 'cell' and attributes.status = 'FINISHED'"
        if config_hash is not None:
            query += f" and tags.`bench.config_hash` = '{config_hash}'"
        runs = search_runs(self.client, [self._experiment_id(dataset)], query)
        return {
            r.data.tags["bench.config_hash"] for r in runs if "bench.config_hash" in r.data.tags
        }

    def previous_attempt(self, dataset: str, config_hash: str) -> str | None:
        """The run id of the latest attempt at this cell if it was KILLED or FAILED."""
        run = latest_run(
            self.client,
            [self._experiment_id(dataset)],
            f"tags.`bench.role` = 'cell' and tags.`bench.config_hash` = '{config_hash}'",
        )
        if run is not None and run.info.status in ("KILLED", "FAILED"):
            return run.info.run_id
        return None

    def _create_run(self, dataset: str, run_name: str, tags: Mapping[str, str]) -> str:
        experiment_id = self._experiment_id(dataset)
        run = retry_locked(
            lambda: self.client.create_run(experiment_id, run_name=run_name, tags=dict(tags))
        )
        return run.info.run_id

    def start_cell(
        self, dataset: str, run_name: str, parent_run_id: str, tags: Mapping[str, str]
    ) -> str:
        """Create a RUNNING child run for a cell that starts now; return its id."""
        return self._create_run(
            dataset,
            run_name,
            {**tags, "mlflow.parentRunId": parent_run_id, "bench.role": "cell"},
        )

    def end_run(self, run_id: str, status: str) -> None:
        """Close a run with ``status`` (FINISHED, FAILED, KILLED)."""
        retry_locked(lambda: self.client.set_terminated(run_id, status))

    def parent_run(
        self, dataset: str, invocation: str, params: Mapping[str, Any], tags: Mapping[str, str]
    ) -> str:
        """Create (once per invocation and dataset) the parent run; return its id."""
        key = f"{invocation}/{dataset}"
        if key not in self._parents:
            run_id = self._create_run(
                dataset,
                f"bench run {invocation}",
                {**tags, "bench.invocation": invocation, "bench.role": "parent"},
            )
            self._parents[key] = run_id
            log_params(self.client, run_id, params)
        return self._parents[key]

    def finish_parent(self, dataset: str, invocation: str, status: str = "FINISHED") -> None:
        """Close the parent run of ``dataset`` for this invocation."""
        run_id = self._parents.get(f"{invocation}/{dataset}")
        if run_id:
            self.end_run(run_id, status)

    def set_runs_view(self, dataset: str, methods: Sequence[str]) -> None:
        """Make ``dataset``'s experiment open on its runs, compared (:func:`runs_view_state`).

        ``mlflow.experimentKind`` picks the classic runs view in MLflow 3 UIs that read it
        (3.17 follows a browser setting instead, which :func:`bench.report.ui.runs_url` sets).
        """
        experiment_id = self._experiment_id(dataset)
        for key, value in (
            ("mlflow.experimentKind", "custom_model_development"),
            (f"mlflow.sharedViewState.{RUNS_VIEW_KEY}", json.dumps(runs_view_state(methods))),
        ):
            retry_locked(lambda k=key, v=value: self.client.set_experiment_tag(experiment_id, k, v))

    def log_comparison(self, dataset: str, invocation: str, comparison: Any) -> None:
        """Put a :class:`bench.report.comparison.Comparison` on the dataset's parent run.

        The table and the figure go to its Artifacts tab, the Markdown to its description
        (the run page's Overview).
        """
        run_id = self._parents.get(f"{invocation}/{dataset}")
        if not run_id:
            return
        stem = f"comparison/{dataset}"
        retry_locked(lambda: self.client.log_table(run_id, comparison.table, f"{stem}.json"))
        retry_locked(lambda: self.client.log_figure(run_id, comparison.figure, f"{stem}-auc.png"))
        retry_locked(
            lambda: self.client.set_tag(run_id, "mlflow.note.content", comparison.markdown)
        )

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
        cell = result["cell"]
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
        for key, value in (result.get("executor") or {}).items():
            tags[f"bench.executor.{key}"] = str(value)
        if result.get("resumed_from_run"):
            tags["bench.resumed_from_run"] = result["resumed_from_run"]
        resumed_epoch = (result.get("fit") or {}).get("resumed_from_epoch")
        if resumed_epoch is not None:
            tags["bench.resumed_from_epoch"] = str(resumed_epoch)
        if run_id is None:
            run_id = self._create_run(
                cell["dataset"], f"{cell['method']}|{cell['dataset']}|s{cell['seed']}", tags
            )
        else:
            set_tags(self.client, run_id, tags)
        params = {
            "method": cell["method"],
            "dataset": cell["dataset"],
            "seed": cell["seed"],
            "backbone": result["config"]["backbone"],
        }
        params.update({f"hp.{k}": v for k, v in result["config"]["hparams"].items()})
        params.update({f"eval.{k}": v for k, v in result["config"]["eval"].items()})
        params.update(protocol_params(result["config"].get("protocol")))
        log_params(self.client, run_id, params)
        now = int(time.time() * 1000)
        history = result.get("history", [])
        metrics = []
        for entry in history:
            epoch = int(entry["epoch"])
            for key in ("train/loss", "val/cw/auc"):
                if entry.get(key) is not None:
                    metrics.append((key, float(entry[key]), now, epoch))
        # Final (best-epoch) metrics come after the last epoch, so they are the runs' latest values.
        final_step = max((int(e["epoch"]) for e in history), default=-1) + 1
        metrics += [(k, v, now + 1, final_step) for k, v in flatten_metrics(result).items()]
        log_metrics(self.client, run_id, metrics)
        with tempfile.TemporaryDirectory(prefix="bench-mlflow-") as staging:
            config_path = Path(staging) / "config.json"
            config_path.write_text(json.dumps(result["config"], indent=2, sort_keys=True))
            retry_locked(lambda: self.client.log_artifact(run_id, str(config_path)))
        for artifact_dir, path in artifacts.items():
            if Path(path).exists():
                retry_locked(
                    lambda p=path, d=artifact_dir: self.client.log_artifact(run_id, str(p), d)
                )
        self.end_run(run_id, "FINISHED")
        return run_id


def protocol_params(protocol: Mapping[str, Any] | None) -> dict[str, Any]:
    """A cell's ``protocol`` object as flat ``protocol.*`` MLflow params ({} without one)."""
    if not protocol:
        return {}
    params = {
        f"protocol.{k}": v for k, v in protocol.items() if k not in ("feasibility", "deviations")
    }
    params.update({f"protocol.feasibility.{k}": v for k, v in protocol["feasibility"].items()})
    params["protocol.deviations"] = "; ".join(protocol.get("deviations", [])) or "none"
    return params


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
            retry_locked(lambda: tracker.client.search_experiments(max_results=1))
        return tracker
    except Exception as exc:  # noqa: BLE001 - any store failure becomes one line
        raise BenchError(f"cannot open the MLflow store {tracking_uri!r}: {exc}") from exc


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
        client = open_client(tracking_uri)
        experiment = retry_locked(lambda: client.get_experiment_by_name(experiment_name(dataset)))
        if experiment is None:
            return None
        parent = latest_run(client, [experiment.experiment_id], "tags.`bench.role` = 'parent'")
        if parent is None:
            return None
        run_id = parent.info.run_id
        for path in paths:
            retry_locked(lambda p=path: client.log_artifact(run_id, str(p), artifact_path))
        return run_id
    except BenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - any store failure becomes one line
        raise BenchError(
            f"cannot log the report figures to the MLflow store {tracking_uri!r}: {exc}"
        ) from exc
