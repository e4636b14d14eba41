"""Run records: the finished cells a report is built from (result JSONs or MLflow runs)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.io import sha256_json

#: ``paper_deviations`` of a result that recorded no protocol.
NO_PROTOCOL = "no protocol recorded"


@dataclass(frozen=True, order=True)
class Setting:
    """Everything besides method, dataset and seed that makes two runs comparable.

    ``protocol`` is the evaluator's; ``run_protocol`` the cell's ``--protocol`` ("paper",
    "harness", "unknown" for results from before protocols were recorded) and
    ``paper_deviations`` why it is not the official CSP protocol ("" when it is).
    """

    backbone: str
    backbone_identifier: str
    augment: str
    topk: int
    feasibility: str
    word_vectors: str
    protocol: str
    hparams_hash: str
    dataset_fingerprint: str
    run_protocol: str = "unknown"
    paper_deviations: str = NO_PROTOCOL


@dataclass(frozen=True)
class RunRecord:
    """One finished cell: who ran, on what, with which setting, and its metrics.

    Attributes:
        method: Method name.
        dataset: Dataset label.
        seed: Random seed.
        setting: The comparability key (runs are averaged only within one setting).
        metrics: ``{split: {world: block}}`` as in the result JSON (fractions, not %).
        higher_order: ``{name: block}`` of the result's higher-order evaluations (``aao``).
        random_weights: The backbone had random weights.
        created_at: ISO timestamp (the latest duplicate wins).
        source: Result path or MLflow run id.
    """

    method: str
    dataset: str
    seed: int
    setting: Setting
    metrics: Mapping[str, Mapping[str, Mapping[str, Any]]]
    random_weights: bool = False
    created_at: str = ""
    source: str = ""
    higher_order: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def block(self, split: str, world: str) -> Mapping[str, Any] | None:
        """The metrics block of ``split``/``world``, or None."""
        block = self.metrics.get(split, {}).get(world)
        return block if block else None


def record_from_result(result: Mapping[str, Any], source: str = "") -> RunRecord:
    """Turn a result dict (result JSON, or MLflow run read by bench.tracking) into a record."""
    config = result.get("config", {})
    evaluation = config.get("eval", {})
    cell = result.get("cell", {})
    backbone = str(config.get("backbone", "unknown"))
    protocol = config.get("protocol") or {}
    setting = Setting(
        backbone=backbone,
        backbone_identifier=str(config.get("backbone_identifier") or backbone),
        augment=str(config.get("augment", "none")),
        topk=int(evaluation.get("topk", 1)),
        feasibility=str(evaluation.get("feasibility", "none")),
        word_vectors=str(evaluation.get("word_vectors", "none")),
        protocol=str(evaluation.get("protocol", "unknown")),
        hparams_hash=sha256_json(config.get("hparams", {}))[:12],
        dataset_fingerprint=str(config.get("dataset_fingerprint", "unknown")),
        run_protocol=str(protocol.get("name", "unknown")),
        paper_deviations="; ".join(protocol.get("deviations", [])) if protocol else NO_PROTOCOL,
    )
    return RunRecord(
        method=str(cell.get("method", config.get("method"))),
        dataset=str(cell.get("dataset", config.get("dataset"))),
        seed=int(cell.get("seed", config.get("seed", 0))),
        setting=setting,
        metrics=result.get("metrics", {}),
        random_weights=bool(result.get("backbone_random_weights", False)),
        created_at=str(result.get("created_at", "")),
        source=source,
        higher_order=result.get("higher_order") or {},
    )


def _select(
    records: Iterable[RunRecord], datasets: Sequence[str] | None, methods: Sequence[str] | None
) -> list[RunRecord]:
    """Filter records and keep the latest of duplicates (same cell, same setting)."""
    latest: dict[tuple[str, str, int, Setting], RunRecord] = {}
    for record in records:
        if datasets and record.dataset not in datasets:
            continue
        if methods and record.method not in methods:
            continue
        key = (record.dataset, record.method, record.seed, record.setting)
        if key not in latest or record.created_at > latest[key].created_at:
            latest[key] = record
    return sorted(latest.values(), key=lambda r: (r.dataset, r.method, r.setting, r.seed))


def load_records(
    results_dir: Path,
    datasets: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
) -> list[RunRecord]:
    """Finished cells from the result JSONs under ``<results_dir>/runs/<dataset>/<method>/``.

    Incomplete or unreadable files are skipped; of duplicates the newest is kept.
    """
    from bench.pipeline.store import load_result

    runs = Path(results_dir) / "runs"
    found = []
    for path in sorted(runs.glob("*/*/*.json")) if runs.is_dir() else []:
        result = load_result(path)
        if result is not None and "cell" in result:
            found.append(record_from_result(result, str(path)))
    return _select(found, datasets, methods)


def load_records_mlflow(
    tracking_uri: str,
    datasets: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    *,
    curves: bool = True,
) -> list[RunRecord]:
    """Finished cells from an MLflow store (child runs of the ``czsl/<dataset>`` experiments)."""
    from bench.tracking.reader import read_cell_results

    results = read_cell_results(tracking_uri, datasets, curves=curves)
    return _select(
        (record_from_result(r, f"mlflow run {r.get('mlflow_run_id')}") for r in results),
        datasets,
        methods,
    )
