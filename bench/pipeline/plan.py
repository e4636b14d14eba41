"""Planning a grid, once, on the driver: its cells in order, and each cell's configuration.

The grid (:func:`plan_grid`) needs only the run's options. A cell's configuration
(:func:`plan_cell`) also needs its dataset and backbone (fingerprint, identifier, word
vectors), so it is resolved once per dataset, where the backbone is loaded, and then
travels with the cell. Its SHA-256 names the cell's result file: the dict's content must
never change for an unchanged cell.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.io import sha256_file, sha256_json
from bench.pipeline.config import Cell, PlannedCell, RunConfig, dataset_label
from bench.pipeline.store import load_state_file, result_path
from bench.protocol import Protocol


@dataclass(frozen=True)
class InitState:
    """The ``--load-state`` state every training cell starts from.

    Attributes:
        tensors: The state (named tensors, plus the name lists saved beside them).
        info: What the cell configuration records: the file name and its sha256 (the content
            names the cell: a moved file is the same state).
    """

    tensors: dict[str, Any]
    info: dict[str, str]


@dataclass(frozen=True)
class GridPlan:
    """A planned grid.

    Attributes:
        cells: Every (method, dataset, seed) cell, dataset-major.
        specs: Each dataset label's spec (registered name or folder), in run order.
        invocation: This ``bench run``'s id (``<UTC time>-<pid>``): MLflow parent runs and
            lock owners carry it.
        init_state: The ``--load-state`` state, if any.
    """

    cells: tuple[Cell, ...]
    specs: dict[str, str]
    invocation: str
    init_state: InitState | None = None

    def by_dataset(self) -> dict[str, list[Cell]]:
        """The cells grouped by dataset label, in plan order."""
        groups: dict[str, list[Cell]] = {}
        for cell in self.cells:
            groups.setdefault(cell.dataset, []).append(cell)
        return groups


def plan_grid(config: RunConfig) -> GridPlan:
    """Every (method, dataset, seed) cell, dataset-major; unknown methods and bad
    ``--load-state`` files fail here, before any work."""
    from bench.methods import get_method_class

    classes = [get_method_class(method) for method in config.methods]
    init_state = None
    if config.load_state is not None:
        if not any(cls.trains for cls in classes):
            raise BenchError(
                f"--load-state: none of the methods {', '.join(config.methods)} "
                "trains, so there is no state to load; use it with coop, csp..."
            )
        path = Path(config.load_state)
        init_state = InitState(
            load_state_file(path), {"file": path.name, "sha256": sha256_file(path)}
        )
    specs = {dataset_label(spec): spec for spec in config.datasets}
    cells = tuple(
        Cell(method, dataset_label(dataset), seed)
        for dataset in config.datasets
        for method in config.methods
        for seed in config.seeds
    )
    invocation = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + f"-{os.getpid()}"
    return GridPlan(cells, specs, invocation, init_state)


def cell_config(
    config: RunConfig, cell: Cell, ctx: Any, init_state: InitState | None = None
) -> dict[str, Any]:
    """The resolved configuration of a cell (its hash names the result file).

    Args:
        config: The run's options.
        cell: The cell.
        ctx: Its dataset's :class:`~bench.pipeline.prepare.DatasetContext`.
        init_state: The ``--load-state`` state (recorded for methods that train).
    """
    from bench.methods import get_method_class

    hparams = cell_hparams(config, cell.method, ctx.dataset.name)
    method_class = get_method_class(cell.method)
    protocol = method_protocol(ctx.protocol, method_class, hparams)
    resolved: dict[str, Any] = {
        "method": cell.method,
        "dataset": cell.dataset,
        "dataset_path": str(ctx.dataset.root),
        "dataset_fingerprint": ctx.dataset.fingerprint,
        "seed": cell.seed,
        "backbone": ctx.backbone.spec.raw,
        "backbone_identifier": ctx.backbone.identifier,
        "augment": protocol.augment,
        "hparams": hparams,
        "eval": {
            "topk": config.topk,
            "feasibility": protocol.feasibility_filter or "none"
            if ctx.word_vectors is not None
            else "none",
            "word_vectors": protocol.word_vectors or "none",
            "protocol": "czsl-calibration-bias",
        },
        "protocol": protocol.as_record(cell.method, method_class.trains),
    }
    resolved.update(
        method_class.config_extras(
            hparams,
            dataset=ctx.dataset,
            backbone=ctx.backbone,
            word_vectors_spec=config.word_vectors,
        )
    )
    if method_class.encodes_prompts:
        resolved["text_encoding"] = config.text_encoding
    if init_state is not None and method_class.trains:
        resolved["init_state"] = dict(init_state.info)
    return resolved


def cell_hparams(config: RunConfig, method: str, dataset_name: str) -> dict[str, Any]:
    """The hyperparameters of ``method`` on ``dataset_name``: its card's values, then the
    run's ``--hparam`` overrides the card defines, then ``--epochs``."""
    from bench.methods.base import resolve_hparams

    hparams = resolve_hparams(method, dataset_name)
    overrides = {k: v for k, v in config.hparam_overrides.items() if k in hparams}
    if config.epochs is not None and "epochs" in hparams:
        overrides["epochs"] = config.epochs
    return resolve_hparams(method, dataset_name, overrides)


def method_protocol(
    protocol: Protocol, method_class: Any, hparams: dict[str, Any] | None = None
) -> Protocol:
    """The dataset's protocol as ``method_class`` runs it (with ``hparams``): a method that
    does not train, or cannot train on augmented views, trains on (or needs) cached features
    only."""
    modes_for = getattr(method_class, "augment_modes_for", None)
    modes = modes_for(hparams or {}) if callable(modes_for) else ("none",)
    if method_class.trains and protocol.augment in modes:
        return protocol
    return replace(protocol, augment="none")


def plan_cell(
    config: RunConfig, cell: Cell, ctx: Any, init_state: InitState | None = None
) -> PlannedCell:
    """A cell with its configuration, configuration hash and result file."""
    resolved = cell_config(config, cell, ctx, init_state)
    config_hash = sha256_json(resolved)
    return PlannedCell(
        cell, resolved, config_hash, result_path(config.results_dir, cell, config_hash)
    )
