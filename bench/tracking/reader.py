"""Reading ``bench run``'s cell runs back from the MLflow store (for ``bench report``)."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.constants import EVAL_SPLITS, WORLDS
from bench.errors import BenchError
from bench.tracking.client import (
    METRIC_KEYS,
    czsl_experiment_ids,
    open_client,
    search_runs,
)


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
        client = open_client(tracking_uri)
        ids = czsl_experiment_ids(client, datasets)
    except Exception as exc:  # noqa: BLE001 - any store failure becomes one line
        raise BenchError(f"cannot read the MLflow store {tracking_uri!r}: {exc}") from exc
    if not ids:
        return []
    runs = search_runs(client, ids, "tags.`bench.role` = 'cell' and attributes.status = 'FINISHED'")
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-mlflow-") as staging_dir:
        staging = Path(staging_dir)
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
            higher_order: dict[str, dict[str, Any]] = {}
            for name, value in run.data.metrics.items():
                parts = name.split("/")
                if len(parts) != 3:
                    continue
                if parts[0] in EVAL_SPLITS and parts[1] in WORLDS and parts[2] in METRIC_KEYS:
                    block = metrics.setdefault(parts[0], {}).setdefault(parts[1], {})
                    block[METRIC_KEYS[parts[2]]] = value
                elif parts[0] == "test" and parts[2] == "acc":
                    higher_order[parts[1]] = {"acc": value}  # test/aao/acc
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
            if higher_order:
                results[key]["higher_order"] = higher_order
    return list(results.values())
