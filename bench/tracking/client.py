"""The one module that imports mlflow: the client, sqlite retries, run search, batching.

Every store call goes through :func:`retry_locked` (sqlite "database is locked" retried with
backoff, on top of MLflow's own 20 s sqlite busy timeout).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

#: Experiments of the harness are named ``czsl/<dataset>``.
EXPERIMENT_PREFIX = "czsl/"
#: Logged metric name -> key of a result's metric block.
METRIC_KEYS = {
    "auc": "auc",
    "hm": "best_hm",
    "seen": "best_seen",
    "unseen": "best_unseen",
    "attr_acc": "attr_acc",
    "obj_acc": "obj_acc",
    "acc": "closed_acc",
}
#: Runs per page of a search.
PAGE_SIZE = 1000


#: The experiment tag that names a shared view of the runs table, opened with the URL
#: parameter ``viewStateShareKey=<key>`` (see :func:`bench.report.ui.runs_url`).
RUNS_VIEW_KEY = "bench"
#: The metrics every cell's child run carries and the runs table shows.
HEADLINE_METRICS = ("test/cw/auc", "test/cw/hm", "test/ow/auc", "test/ow/hm")
#: A remote tracking server that is down fails a call at once (MLflow's default: 7 retries
#: with backoff, ~4 minutes per call); results are on disk and the next run backfills.
FAIL_FAST_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def runs_view_state(methods: Sequence[str]) -> dict[str, Any]:
    """The runs table as the comparison: finished cells grouped by method, headline columns.

    Only FINISHED cells: a half-logged run of a killed attempt would count twice in the
    group's average.
    """
    columns = [f"params.`{name}`" for name in ("method", "dataset", "seed", "backbone")]
    columns += ["params.`protocol.name`", "params.`protocol.matches_paper`"] + [
        f"metrics.`{name}`" for name in HEADLINE_METRICS
    ]
    return {
        "searchFilter": "tags.`bench.role` = 'cell' and attributes.status = 'FINISHED'",
        "orderByKey": f"metrics.`{HEADLINE_METRICS[0]}`",
        "orderByAsc": False,
        "selectedColumns": columns,
        "groupBy": {
            "aggregateFunction": "average",
            "groupByKeys": [{"mode": "param", "groupByData": "method"}],
        },
        "groupsExpanded": {f"param.method.{method}": True for method in methods},
    }


def experiment_name(dataset: str) -> str:
    """The experiment of ``dataset``'s runs."""
    return f"{EXPERIMENT_PREFIX}{dataset}"


def resolve_tracking_uri(tracking_uri: str | None, results_dir: Path) -> str:
    """``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else a sqlite store in the results dir."""
    if tracking_uri:
        return tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(results_dir).resolve() / 'mlflow.db'}"


def open_client(tracking_uri: str) -> Any:
    """An ``MlflowClient`` for ``tracking_uri`` (MLflow's own logging quietened)."""
    import logging

    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    for key, value in FAIL_FAST_ENV.items():
        os.environ.setdefault(key, value)  # read per request by MLflow's HTTP client
    return mlflow.MlflowClient(tracking_uri=tracking_uri)


def retry_locked(call: Callable[[], T], attempts: int = 8) -> T:
    """Retry sqlite "database is locked" errors with exponential backoff and jitter."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as exc:  # mlflow wraps sqlalchemy errors in its own types
            if "database is locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(min(0.05 * 2**attempt, 2.0) * (1 + random.random()))
    raise AssertionError("unreachable")


def czsl_experiment_ids(client: Any, datasets: Sequence[str] | None = None) -> list[str]:
    """Ids of the ``czsl/*`` experiments (only ``datasets``' when given)."""
    wanted = {experiment_name(d) for d in datasets} if datasets else None
    experiments = retry_locked(lambda: client.search_experiments(max_results=PAGE_SIZE))
    return [
        e.experiment_id
        for e in experiments
        if e.name.startswith(EXPERIMENT_PREFIX) and (wanted is None or e.name in wanted)
    ]


def czsl_experiments(tracking_uri: str) -> list[tuple[str, str]]:
    """(id, name) of the harness's experiments in the store, by name."""
    client = open_client(tracking_uri)
    experiments = retry_locked(lambda: client.search_experiments(max_results=PAGE_SIZE))
    return sorted(
        ((e.experiment_id, e.name) for e in experiments if e.name.startswith(EXPERIMENT_PREFIX)),
        key=lambda item: item[1],
    )


def search_runs(client: Any, experiment_ids: list[str], filter_string: str) -> list[Any]:
    """Every run matching ``filter_string``, newest first (all pages)."""
    runs: list[Any] = []
    token = None
    while experiment_ids:
        page = retry_locked(
            lambda t=token: client.search_runs(
                experiment_ids,
                filter_string,
                max_results=PAGE_SIZE,
                order_by=["attributes.start_time DESC"],
                page_token=t,
            )
        )
        runs.extend(page)
        token = getattr(page, "token", None)
        if not token:
            break
    return runs


def latest_run(client: Any, experiment_ids: list[str], filter_string: str) -> Any | None:
    """The newest run matching ``filter_string``, or None."""
    runs = retry_locked(
        lambda: client.search_runs(
            experiment_ids,
            filter_string,
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
    )
    return runs[0] if runs else None


def log_params(client: Any, run_id: str, params: Mapping[str, Any]) -> None:
    """Log ``params`` (values as text, cut to MLflow's limit), in batches."""
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
    for start in range(0, len(items), 100):
        retry_locked(lambda s=start: client.log_batch(run_id, params=items[s : s + 100]))


def log_metrics(client: Any, run_id: str, metrics: Sequence[tuple[str, float, int, int]]) -> None:
    """Log ``(key, value, timestamp ms, step)`` metrics, in batches."""
    from mlflow.entities import Metric

    items = [Metric(key, value, timestamp, step) for key, value, timestamp, step in metrics]
    for start in range(0, len(items), 500):
        retry_locked(lambda s=start: client.log_batch(run_id, metrics=items[s : s + 500]))


def set_tags(client: Any, run_id: str, tags: Mapping[str, Any]) -> None:
    """Set ``tags`` on a run in one batch."""
    from mlflow.entities import RunTag

    retry_locked(
        lambda: client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
    )
