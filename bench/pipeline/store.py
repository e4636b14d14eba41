"""The result store: one result JSON per cell under ``<results-dir>/runs/``, its artifacts
beside it, and the cell locks; the result JSONs are the source of truth of every report.

A cell is done when its result JSON exists and is complete; a result file that cannot be
parsed or is incomplete counts as absent (the caller warns and redoes the cell). The JSON is
written atomically after the artifacts, so a complete result always has them.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.constants import EVAL_SPLITS, WORLDS
from bench.errors import BenchError
from bench.io import atomic_open, atomic_write_json
from bench.locks import FileLock, cell_lock_path
from bench.pipeline.config import Cell


# --------------------------------------------------------------------------- writing
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


def sweep_temporaries(paths: Sequence[Path]) -> None:
    """Remove ``.*.tmp`` files of atomic writes a killed process left behind.

    Only call it on files no other process can be writing (the caller holds their lock).
    """
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()


def cell_temporaries(path: Path) -> list[Path]:
    """Leftover temporary files of a cell's result JSON and artifacts."""
    leftovers = list(path.parent.glob(f".{path.name}.*.tmp"))
    artifact_dir = artifact_folder(path)
    if artifact_dir.is_dir():
        leftovers += artifact_dir.rglob(".*.tmp")
    return leftovers


# --------------------------------------------------------------------------- layout
def result_path(results_dir: Path, cell: Cell, config_hash: str) -> Path:
    """Where a cell's result JSON lives."""
    return (
        results_dir / "runs" / cell.dataset / cell.method / f"s{cell.seed}-{config_hash[:12]}.json"
    )


def artifact_folder(path: Path) -> Path:
    """The folder of a result's artifacts (curves, trainable state, checkpoints)."""
    return path.with_suffix("")


def checkpoint_folder(path: Path) -> Path:
    """Where a cell's training checkpoints live while it is unfinished."""
    return artifact_folder(path) / "checkpoints"


def artifact_paths(path: Path) -> dict[str, Path]:
    """A result's artifacts by MLflow artifact folder."""
    folder = artifact_folder(path)
    return {
        "curves": folder / "curves.png",
        "curves_table": folder / "curves.csv",
        "state": folder / "trainable_state.pt",
        "state_names": folder / "trainable_state_names.json",
    }


def cell_lock(results_dir: Path, cell: Cell, path: Path, owner: str) -> FileLock:
    """The lock a process holds while it runs ``cell`` (result file ``path``)."""
    return FileLock(cell_lock_path(results_dir, cell.dataset, cell.method, path.stem), owner)


# --------------------------------------------------------------------------- reading
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
        for split in EVAL_SPLITS
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

    ``trainable_state_names.json`` beside the file (written with the state) adds the name
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


# --------------------------------------------------------------------------- writing a cell
def write_artifacts(
    path: Path, cell: Cell, metrics: Mapping[str, Mapping[str, Any]], state: Mapping[str, Any]
) -> None:
    """Write a cell's curves (CSV and figure) and trainable state beside its result file."""
    import torch

    folder = artifact_folder(path)
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
        _write_curves(folder, cell, metrics)
        tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
        if tensors:
            with atomic_open(folder / "trainable_state.pt", "wb") as handle:
                torch.save({k: v.detach().cpu() for k, v in tensors.items()}, handle)
            names = {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
            atomic_write_json(folder / "trainable_state_names.json", names)


def write_result(path: Path, result: Mapping[str, Any]) -> None:
    """Write a cell's result JSON atomically (after its artifacts): the cell is done."""
    with writing(path):
        atomic_write_json(path, result)


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
