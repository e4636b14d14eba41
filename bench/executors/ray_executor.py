"""Run a ``bench run`` grid on Ray: one task per cell, spread over every GPU of a cluster.

How a grid runs (``bench run ... --executor ray``):

* The driver (the ``bench run`` process) plans the grid with the :class:`~bench.runner.Runner`:
  the same cells, in the same order, as the local executor.
* Per dataset, one upstream *prepare* task loads the backbone and extracts (or reuses) the
  train/val/test features into the feature cache, then resolves every cell's configuration
  (hash and result path) with ``Runner.cell_config`` where the backbone is loaded. Features
  are thus computed once per grid; the cell tasks' own ``extract_features`` calls are cache
  hits (the cache lives under ``--results-dir``, on storage every node shares).
* The driver skips finished cells exactly as the local executor does (``inspect_result`` on
  the planned result path) and submits one task per remaining cell, with the prepare task's
  ``ObjectRef`` as an argument so Ray orders the two. Each cell task asks for
  ``gpus_per_job`` GPUs (a quarter of that for methods that do not train) and runs
  ``Runner.run_cell``: the cell lock, checkpoint resume and result JSON are the local ones.
* Tasks never touch MLflow: they return the result dict and the driver logs it (so a sqlite
  store is written by one process). Runs are created when a cell starts executing and
  closed FAILED when a retry or the final failure follows, as with the local executor.
* A task that raises (other than a ``BenchError``, which is the user's to fix and is not
  retried) or whose worker dies is retried ``max_retries`` times by Ray; a cell that still
  fails is reported with its error, and the other cells go on.

This module imports Ray lazily (it is an optional extra) and never imports mlflow.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import math
import os
import secrets
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bench.errors import BenchError
from bench.io import sha256_json
from bench.runner import (
    Cell,
    CellOutcome,
    RunConfig,
    Runner,
    check_results_dir,
    inspect_result,
    result_path,
)

#: How to install the optional Ray extra.
RAY_INSTALL_HINT = 'pip install "czsl-bench[ray]" (in a source checkout: pip install -e ".[ray]")'
#: Ray retries of a crashed or raising task before its cell is reported as failed.
DEFAULT_MAX_RETRIES = 2
#: Share of ``gpus_per_job`` given to methods that do not train (zero-shot CLIP...).
CHEAP_GPU_SHARE = 0.25
#: Seconds between two looks at the task status board.
POLL_SECONDS = 0.5
#: Environment variables starting with these travel to the workers of a Ray we start.
FORWARDED_ENV_PREFIXES = ("BENCH_",)

CellHook = Callable[[Cell], None]


def import_ray() -> Any:
    """Import Ray, or raise a one-line BenchError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise BenchError(
            f"--executor ray needs Ray, which is not installed; install it with {RAY_INSTALL_HINT}"
        ) from None
    return ray


def task_resources(trains: bool, gpus_per_job: float) -> dict[str, float]:
    """Ray resources of a cell task: ``gpus_per_job`` GPUs, a quarter of it if nothing trains."""
    gpus = gpus_per_job if trains else gpus_per_job * CHEAP_GPU_SHARE
    return {"num_cpus": 1, "num_gpus": gpus}


def check_gpus_per_job(gpus_per_job: float | None) -> None:
    """Raise a one-line BenchError unless ``gpus_per_job`` is None, a fraction or a count."""
    if gpus_per_job is None:
        return
    if not math.isfinite(gpus_per_job) or gpus_per_job < 0:
        raise BenchError(f"--gpus-per-job: {gpus_per_job} must be a number >= 0")
    if gpus_per_job > 1 and not float(gpus_per_job).is_integer():
        raise BenchError(
            f"--gpus-per-job: {gpus_per_job} is not valid; use a fraction of one GPU (e.g. 0.5) "
            "or a whole number of GPUs"
        )


# ------------------------------------------------------------------------------ tasks
@dataclass(frozen=True)
class TaskSetup:
    """What every task needs to see the driver's files.

    Attributes:
        cwd: The driver's working directory: relative ``--results-dir`` and data-root paths
            resolve the same on every node (and give the local executor's config hashes).
        marker: A file the driver wrote under the results folder (relative to ``cwd`` when
            the results folder is relative).
        token: The marker's content: a node that reads another value does not share the
            driver's results folder.
        results_dir: The results folder, for messages.
    """

    cwd: str
    marker: str
    token: str
    results_dir: str


def _enter(setup: TaskSetup) -> str:
    """Move into the driver's folder and check the results folder is shared; return the host."""
    host = socket.gethostname()
    try:
        os.chdir(setup.cwd)
    except OSError:
        raise BenchError(
            f"node {host} has no folder {setup.cwd} (where bench run was started); with Ray "
            "on several machines, start bench run from storage every node mounts at the same path"
        ) from None
    try:
        token = Path(setup.marker).read_text(encoding="utf-8")
    except OSError:
        token = None
    if token != setup.token:
        raise BenchError(
            f"node {host} does not see the driver's results folder {setup.results_dir}; "
            "--results-dir and the data root must be on storage shared by every Ray node, "
            "mounted at the same path"
        )
    return host


def _quiet_console() -> tuple[Any, io.StringIO]:
    """A console writing into a buffer: workers send their warnings to the driver."""
    from rich.console import Console

    buffer = io.StringIO()
    console = Console(file=buffer, soft_wrap=True, width=240, no_color=True, force_terminal=False)
    return console, buffer


def _messages(buffer: io.StringIO) -> list[str]:
    """The ``warning:`` and ``note:`` lines a worker's console printed."""
    return [
        line.strip()
        for line in buffer.getvalue().splitlines()
        if line.startswith(("warning:", "note:"))
    ]


def prepare_task(
    config: RunConfig, spec: str, cells: Sequence[Cell], setup: TaskSetup
) -> dict[str, Any]:
    """Ray task: extract (or reuse) a dataset's features and plan its cells.

    Returns:
        ``{"plans": [(cell, config_hash, result_path)], "backbone", "identifier",
        "cache_hit", "feature_seconds", "host", "messages"}``, or ``{"error": ...}`` for a
        BenchError (not retried: the user has to fix it).
    """
    host = socket.gethostname()
    console, buffer = _quiet_console()
    try:
        host = _enter(setup)
        runner = Runner(config, console=console)
        runner.plan()
        ctx = runner.prepare_dataset(spec)
        plans = []
        for cell in cells:
            config_hash = sha256_json(runner.cell_config(cell, ctx))
            plans.append((cell, config_hash, result_path(config.results_dir, cell, config_hash)))
    except BenchError as exc:
        return {"error": str(exc), "host": host, "messages": _messages(buffer)}
    return {
        "plans": plans,
        "backbone": ctx.backbone.spec.raw,
        "identifier": ctx.backbone.identifier,
        "cache_hit": ctx.cache_hit,
        "feature_seconds": ctx.feature_seconds,
        "host": host,
        "messages": _messages(buffer),
    }


def _prepare_dataset(runner: Runner, spec: str) -> Any:
    """``Runner.prepare_dataset`` for a cell task, whose features the prepare task made.

    The cell tasks of one dataset need not queue on its features lock (held while the
    backbone loads) when the runner lets them skip it.
    """
    if "features_lock" in inspect.signature(runner.prepare_dataset).parameters:
        return runner.prepare_dataset(spec, features_lock=False)  # type: ignore[call-arg]
    return runner.prepare_dataset(spec)


class _ProgressRelay:
    """Stands in for rich's Progress in a cell task: forwards the runner's updates to the board."""

    def __init__(self, board: Any, key: int) -> None:
        self._board = board
        self._key = key

    def _post(self, *event: Any) -> None:
        if self._board is not None:
            self._board.post.remote((event[0], self._key, *event[1:]))

    def add_task(self, description: str, total: float | None = None, **_: Any) -> int:
        """The cell starts executing (its lock is held): the driver opens its MLflow run."""
        self._post("run", total, description)
        return 0

    def update(
        self,
        task_id: int,
        *,
        completed: float | None = None,
        total: float | None = None,
        description: str | None = None,
        **_: Any,
    ) -> None:
        """An epoch ended."""
        self._post("update", completed, total, description)

    def advance(self, task_id: int, advance: float = 1) -> None:
        """Progress by ``advance`` steps."""
        self._post("advance", advance)

    def remove_task(self, task_id: int) -> None:
        """The cell's fit ended (nothing to forward)."""


def cell_task(
    config: RunConfig,
    spec: str,
    cell: Cell,
    planned_hash: str,
    prepared: Mapping[str, Any],
    setup: TaskSetup,
    board: Any = None,
    key: int = 0,
    hook: CellHook | None = None,
) -> dict[str, Any]:
    """Ray task: run one cell with ``Runner.run_cell`` (no MLflow) and return its outcome.

    Args:
        config: The run's configuration (device adapted to the task's resources).
        spec: The dataset spec.
        cell: The cell.
        planned_hash: Its config hash as the prepare task resolved it.
        prepared: The prepare task's result; passing its ObjectRef makes Ray run this task
            after the dataset's features exist.
        setup: The driver's folder and results-folder marker.
        board: The driver's status board actor (None: no live status).
        key: This cell's key on the board.
        hook: Called with the cell before it runs (fault injection in tests).

    Returns:
        ``{"status", "result", "error", "path", "host", "messages"}``; a BenchError comes
        back as status "failed" (not retried), any other exception propagates to Ray.
    """
    host = socket.gethostname()
    if board is not None:
        board.post.remote(("start", key, host))
    console, buffer = _quiet_console()
    try:
        if hook is not None:
            hook(cell)
        host = _enter(setup)
        runner = Runner(config, console=console, progress=_ProgressRelay(board, key))
        runner.plan()
        ctx = _prepare_dataset(runner, spec)
        if sha256_json(runner.cell_config(cell, ctx)) != planned_hash:
            raise BenchError(
                f"node {host} resolves cell {cell.label} to another configuration than node "
                f"{prepared.get('host')} did (different dataset files, backbone weights or bench "
                "version); use shared storage and the same installation on every node"
            )
        outcome = runner.run_cell(cell, ctx)
    except BenchError as exc:
        return {
            "status": "failed",
            "result": None,
            "error": str(exc),
            "path": None,
            "host": host,
            "messages": _messages(buffer),
        }
    return {
        "status": outcome.status,
        "result": outcome.result,
        "error": outcome.error,
        "path": outcome.path,
        "host": host,
        "messages": _messages(buffer),
    }


class StatusBoard:
    """A tiny Ray actor: tasks post events (start, run, epoch), the driver drains them."""

    def __init__(self) -> None:
        self._events: list[tuple[Any, ...]] = []

    def post(self, event: tuple[Any, ...]) -> None:
        """Record one event."""
        self._events.append(event)

    def drain(self) -> list[tuple[Any, ...]]:
        """Every event since the last call."""
        events, self._events = self._events, []
        return events


# ------------------------------------------------------------------------------ driver
@dataclass
class _Job:
    """One submitted cell, as the driver sees it."""

    key: int
    cell: Cell
    dataset: str
    config_hash: str
    path: Path
    row: Any = None
    run_id: str | None = None
    attempts: int = 0
    host: str | None = None


class _Tracking:
    """The driver's MLflow calls, made through the Runner (which owns the tracker and its rules).

    The only place that uses the Runner's tracking internals.
    """

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.parents: dict[str, str | None] = {}

    def start_dataset(self, label: str, backbone: str) -> None:
        """Mark stale runs, read logged cells and open the dataset's parent run."""
        ctx = SimpleNamespace(backbone=SimpleNamespace(spec=SimpleNamespace(raw=backbone)))
        self.parents[label] = self.runner._start_dataset_tracking(label, ctx)  # type: ignore[arg-type]

    def finish_dataset(self, label: str, status: str) -> None:
        """Close the dataset's parent run with ``status``."""
        runner = self.runner
        if self.parents.pop(label, None) is None or runner._tracker is None:
            return
        tracker = runner._tracker
        runner._track(
            "closing the parent run",
            lambda: tracker.finish_parent(label, runner.invocation, status),
        )

    def start_cell(self, job: _Job) -> None:
        """Open a RUNNING child run for a cell that starts executing (closing an earlier try)."""
        if job.run_id is not None:
            self.runner._end_cell_run(job.run_id, "FAILED")
        job.run_id = self.runner._start_cell_run(
            job.cell, job.config_hash, self.parents.get(job.dataset)
        )

    def finished(self, job: _Job, result: dict[str, Any], path: Path) -> None:
        """Log a finished cell into its run."""
        self.runner._log_finished(result, path, self.parents.get(job.dataset), job.run_id)

    def skipped(self, dataset: str, result: dict[str, Any], path: Path) -> None:
        """Log a cell finished earlier if MLflow misses it."""
        self.runner._backfill(result, path, self.parents.get(dataset))

    def end_cell(self, job: _Job, status: str) -> None:
        """Close a cell's run (FAILED, KILLED)."""
        self.runner._end_cell_run(job.run_id, status)
        job.run_id = None

    def close_all(self, jobs: Sequence[_Job], status: str) -> None:
        """Close every open run (interrupt or crash of the driver)."""
        for job in jobs:
            if job.run_id is not None:
                self.end_cell(job, status)
        for label in list(self.parents):
            self.finish_dataset(label, status)


def _dataset_label(spec: str) -> str:
    from bench.runner import _dataset_label as label

    return label(spec)


def _one_line(text: str, limit: int = 300) -> str:
    return " ".join(str(text).split())[:limit]


class RayExecutor:
    """Runs a Runner's grid as Ray tasks (see the module docstring).

    Args:
        runner: The Runner of the run (its config, console, progress view and MLflow).
        address: Ray cluster to join ("auto", "HOST:PORT", "ray://HOST:PORT"); None starts
            Ray on this machine (or uses the Ray this process already initialised).
        gpus_per_job: GPUs per training cell (methods that do not train get a quarter);
            None: 1 when the cluster has GPUs, else 0 (cells run on CPUs).
        max_retries: Ray retries of a crashed or raising task.
        cell_hook: Called in the worker with each cell before it runs (fault injection in
            tests); it must be picklable.

    Raises:
        BenchError: Ray is not installed, or an option is invalid.
    """

    def __init__(
        self,
        runner: Runner,
        *,
        address: str | None = None,
        gpus_per_job: float | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        cell_hook: CellHook | None = None,
    ) -> None:
        check_gpus_per_job(gpus_per_job)
        if max_retries < 0:
            raise BenchError(f"max_retries: {max_retries} must be >= 0")
        device = runner.config.device or ""
        if device.startswith("cuda:"):
            raise BenchError(
                f"--device {device}: with --executor ray, Ray assigns each cell its GPU; "
                "use --device cuda or leave --device out"
            )
        self.ray = import_ray()
        self.runner = runner
        self.address = address
        self.gpus_per_job = gpus_per_job
        self.max_retries = max_retries
        self.cell_hook = cell_hook
        self.tracking = _Tracking(runner)
        self._printed: set[str] = set()

    # ------------------------------------------------------------------ connection
    def _connect(self) -> bool:
        """Start or join Ray; True when this call started it (and must shut it down)."""
        ray = self.ray
        if ray.is_initialized():
            return False
        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}
        kwargs: dict[str, Any] = {
            "logging_level": logging.WARNING,
            "runtime_env": {"env_vars": env} if env else None,
        }
        if self.address:
            kwargs["address"] = self.address
        else:
            kwargs["include_dashboard"] = False
        try:
            ray.init(**kwargs)
        except Exception as exc:  # noqa: BLE001 - connection failures become one line
            where = f"the Ray cluster at {self.address}" if self.address else "a local Ray"
            raise BenchError(
                f"cannot start or join {where} ({_one_line(exc, 200)}); start the cluster with "
                "`ray start --head` (and `ray start --address HEAD:6379` on the workers), or leave "
                "--ray-address out to start Ray on this machine"
            ) from None
        return True

    def _gpus(self) -> float:
        """GPUs per training cell, checked against the cluster."""
        ray = self.ray
        total = float(ray.cluster_resources().get("GPU", 0))
        if self.gpus_per_job is None:
            if total >= 1:
                return 1.0
            self.runner.note("the Ray cluster has no GPU; cells run on CPUs (--gpus-per-job 0)")
            return 0.0
        if self.gpus_per_job > 0:
            per_node = max(
                (
                    float(n.get("Resources", {}).get("GPU", 0))
                    for n in ray.nodes()
                    if n.get("Alive")
                ),
                default=0.0,
            )
            if self.gpus_per_job > per_node:
                raise BenchError(
                    f"--gpus-per-job {self.gpus_per_job:g}: no node of the Ray cluster has that "
                    f"many GPUs (the most on one node: {per_node:g}); lower it"
                )
        return float(self.gpus_per_job)

    def task_config(self, gpus: float) -> RunConfig:
        """The config tasks run with: CPU tasks on a GPU machine stay on CPU."""
        config = self.runner.config
        if gpus == 0 and config.device is None:
            return replace(config, device="cpu")
        return config

    # ------------------------------------------------------------------ messages
    def print_line(self, line: str, style: str | None = None, once: bool = False) -> None:
        """Print one line on the run's console (``once``: unless it was printed before)."""
        if once:
            if line in self._printed:
                return
            self._printed.add(line)
        self.runner.console.print(line, style=style, markup=False, highlight=False)

    def relay(self, messages: Sequence[str]) -> None:
        """Print a task's warnings and notes (each distinct line once per grid)."""
        for line in messages:
            self.print_line(line, "yellow" if line.startswith("warning:") else "cyan", once=True)

    # ------------------------------------------------------------------ running
    def run(self) -> list[CellOutcome]:
        """Run the grid; one outcome per cell, in plan order (failed cells included)."""
        config = self.runner.config
        check_results_dir(config.results_dir)
        cells = self.runner.plan()
        owned = self._connect()
        marker = Path(config.results_dir) / f".bench-ray-{self.runner.invocation}"
        token = secrets.token_hex(16)
        try:
            marker.write_text(token, encoding="utf-8")
            setup = TaskSetup(os.getcwd(), str(marker), token, str(config.results_dir))
            return _GridRun(self, cells, setup, self._gpus()).execute()
        finally:
            with contextlib.suppress(OSError):
                marker.unlink()
            if owned:
                self.ray.shutdown()

    def describe_failure(self, exc: Exception) -> str:
        """One line for a task that failed on every attempt."""
        ray = self.ray
        tries = f"gave up after {self.max_retries + 1} attempt(s)"
        if isinstance(exc, ray.exceptions.RayTaskError):
            cause = getattr(exc, "cause", None)
            if cause is not None:
                return f"{type(cause).__name__}: {_one_line(cause)} ({tries})"
            return f"{_one_line(str(exc).strip().splitlines()[-1])} ({tries})"
        if isinstance(exc, ray.exceptions.TaskCancelledError):
            return "cancelled"
        lines = [line for line in str(exc).splitlines() if line.strip()]
        first = _one_line(lines[0]) if lines else type(exc).__name__
        if isinstance(exc, ray.exceptions.WorkerCrashedError | ray.exceptions.NodeDiedError):
            return f"the worker process died ({first}) ({tries})"
        return f"{type(exc).__name__}: {first} ({tries})"


class _GridRun:
    """The driver's state while one grid runs: submitted tasks, live view, outcomes."""

    def __init__(
        self, executor: RayExecutor, cells: Sequence[Cell], setup: TaskSetup, gpus: float
    ) -> None:
        self.executor = executor
        self.ray = executor.ray
        self.runner = executor.runner
        self.config = executor.runner.config
        self.progress = executor.runner.progress
        self.tracking = executor.tracking
        self.cells = list(cells)
        self.setup = setup
        self.gpus = gpus
        self.task_config = executor.task_config(gpus)
        self.retry = {"max_retries": executor.max_retries, "retry_exceptions": True}
        self.specs = {_dataset_label(spec): spec for spec in self.config.datasets}
        self.by_dataset: dict[str, list[Cell]] = {}
        for cell in self.cells:
            self.by_dataset.setdefault(cell.dataset, []).append(cell)
        self.remaining = {label: len(group) for label, group in self.by_dataset.items()}
        self.failed_datasets: set[str] = set()
        self.outcomes: dict[Cell, CellOutcome] = {}
        self.jobs: dict[int, _Job] = {}
        #: ObjectRef -> ("prepare", dataset label) or ("cell", job)
        self.waiting: dict[Any, tuple[str, Any]] = {}
        self.board: Any = None
        self.grid_row: Any = None

    # ------------------------------------------------------------------ main loop
    def execute(self) -> list[CellOutcome]:
        """Submit the prepare tasks, then cells as their datasets are ready; collect outcomes."""
        ray = self.ray
        self.board = ray.remote(num_cpus=0)(StatusBoard).remote()
        if self.progress is not None:
            self.grid_row = self.progress.add_task("grid", total=len(self.cells))
        prepare = ray.remote(prepare_task)
        try:
            for label, group in self.by_dataset.items():
                options = {"num_cpus": 1, "num_gpus": self.gpus, **self.retry}
                ref = prepare.options(**options, name=f"bench features {label}").remote(
                    self.task_config, self.specs[label], group, self.setup
                )
                self.waiting[ref] = ("prepare", label)
            self.refresh()
            while self.waiting:
                ready, _ = ray.wait(list(self.waiting), num_returns=1, timeout=POLL_SECONDS)
                for event in self.drain():
                    self.on_event(event)
                for ref in ready:
                    kind, item = self.waiting.pop(ref)
                    if kind == "prepare":
                        self.on_prepared(item, ref)
                    else:
                        self.on_cell(item, ref)
        except BaseException as exc:
            self.abandon("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise
        finally:
            with contextlib.suppress(Exception):
                ray.kill(self.board)
            if self.progress is not None and self.grid_row is not None:
                self.progress.remove_task(self.grid_row)
        return [self.outcomes[cell] for cell in self.cells]

    def abandon(self, status: str) -> None:
        """Cancel every task and close the open MLflow runs (Ctrl-C, driver error)."""
        for ref in self.waiting:
            with contextlib.suppress(Exception):
                self.ray.cancel(ref, force=True)
        with contextlib.suppress(Exception):  # cells that began executing get their run
            for event in self.drain():
                self.on_event(event)
        self.tracking.close_all(list(self.jobs.values()), status)

    def drain(self) -> list[tuple[Any, ...]]:
        """New events from the status board (none if it is gone: only the live view suffers)."""
        try:
            return self.ray.get(self.board.drain.remote())
        except self.ray.exceptions.RayError:
            return []

    # ------------------------------------------------------------------ bookkeeping
    def refresh(self) -> None:
        """Update the grid row: done / running / queued / skipped / failed counts."""
        if self.progress is None:
            return
        counts: dict[str, int] = {}
        for outcome in self.outcomes.values():
            counts[outcome.status] = counts.get(outcome.status, 0) + 1
        running = sum(1 for j in self.jobs.values() if j.attempts and j.cell not in self.outcomes)
        queued = len(self.cells) - len(self.outcomes) - running
        parts = [f"{counts.get('done', 0)} done", f"{running} running", f"{queued} queued"]
        parts += [f"{counts[s]} {s}" for s in ("skipped", "failed", "elsewhere") if counts.get(s)]
        self.progress.update(
            self.grid_row, completed=len(self.outcomes), description="grid: " + ", ".join(parts)
        )

    def settle(self, outcome: CellOutcome) -> None:
        """Record a cell's final outcome; close its dataset's parent run after its last cell."""
        cell = outcome.cell
        self.outcomes[cell] = outcome
        if outcome.status == "failed":
            self.failed_datasets.add(cell.dataset)
        self.remaining[cell.dataset] -= 1
        if self.remaining[cell.dataset] == 0:
            status = "FAILED" if cell.dataset in self.failed_datasets else "FINISHED"
            self.tracking.finish_dataset(cell.dataset, status)
        self.refresh()

    # ------------------------------------------------------------------ task results
    def on_prepared(self, label: str, ref: Any) -> None:
        """A dataset's features exist: skip its finished cells, submit the others."""
        from bench.methods import get_method_class

        try:
            prepared = self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:
            prepared = {"error": self.executor.describe_failure(exc)}
        self.executor.relay(prepared.get("messages", ()))
        if "error" in prepared:
            error = f"preparing {label} failed: {prepared['error']}"
            self.executor.print_line(f"{label}: FAILED: {error}", "red")
            for cell in self.by_dataset[label]:
                self.settle(CellOutcome(cell, "failed", error=error))
            return
        self.tracking.start_dataset(label, prepared["backbone"])
        run_cell = self.ray.remote(cell_task)
        for cell, config_hash, path in prepared["plans"]:
            path = Path(path)
            if not self.config.rerun:
                existing, problem = inspect_result(path, config_hash)
                if existing is not None:
                    self.tracking.skipped(label, existing, path)
                    self.settle(CellOutcome(cell, "skipped", existing, path=path))
                    continue
                if problem is not None:
                    self.runner.warn(f"result file {path} {problem}; redoing the cell")
            job = _Job(len(self.jobs), cell, label, config_hash, path)
            self.jobs[job.key] = job
            resources = task_resources(get_method_class(cell.method).trains, self.gpus)
            task = run_cell.options(**resources, **self.retry, name=f"bench {cell.label}")
            cell_ref = task.remote(
                self.task_config,
                self.specs[label],
                cell,
                config_hash,
                ref,  # the prepare task's ObjectRef: Ray runs the cell after it
                self.setup,
                self.board,
                job.key,
                self.executor.cell_hook,
            )
            self.waiting[cell_ref] = ("cell", job)

    def on_event(self, event: tuple[Any, ...]) -> None:
        """A task started (again), began executing its cell, or finished an epoch."""
        kind, key, *rest = event
        job = self.jobs.get(key)
        if job is None or job.cell in self.outcomes:
            return
        progress = self.progress
        if kind == "start":
            job.attempts += 1
            job.host = rest[0]
            attempt = f" (attempt {job.attempts})" if job.attempts > 1 else ""
            description = f"{job.cell.label} on {job.host}{attempt}: loading"
            if progress is not None:
                if job.row is None:
                    job.row = progress.add_task(description, total=None)
                else:
                    progress.reset(job.row, total=None, description=description)
            self.refresh()
        elif kind == "run":
            self.tracking.start_cell(job)
            if progress is not None and job.row is not None:
                progress.update(
                    job.row, total=rest[0] or None, description=f"{job.cell.label} on {job.host}"
                )
        elif kind == "update" and progress is not None and job.row is not None:
            completed, total, description = rest
            fields = {"completed": completed, "total": total, "description": description}
            progress.update(job.row, **{k: v for k, v in fields.items() if v is not None})
        elif kind == "advance" and progress is not None and job.row is not None:
            progress.advance(job.row, rest[0])

    def on_cell(self, job: _Job, ref: Any) -> None:
        """A cell task ended: log its result to MLflow, or report its failure."""
        if self.progress is not None and job.row is not None:
            self.progress.remove_task(job.row)
            job.row = None
        try:
            payload = self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:
            payload = {"status": "failed", "error": self.executor.describe_failure(exc)}
        self.executor.relay(payload.get("messages", ()))
        status = payload["status"]
        path = Path(payload["path"]) if payload.get("path") else job.path
        result = payload.get("result")
        if status == "done" and result is not None:
            if job.run_id is None:  # it finished before its "run" event was seen
                self.tracking.start_cell(job)
            self.tracking.finished(job, result, path)
            seconds = result.get("timings", {}).get("total_s")
            took = f" in {seconds:.1f} s" if isinstance(seconds, int | float) else ""
            self.executor.print_line(
                f"{job.cell.label}: done on {payload.get('host')}{took}", "green"
            )
        elif status == "skipped" and result is not None:  # finished by another process
            self.tracking.skipped(job.dataset, result, path)
        elif status == "elsewhere":
            self.runner.warn(
                f"cell {job.cell.label} is running in another bench process; rerun this "
                "command later to pick up its result"
            )
        else:
            status = "failed"
            if job.run_id is not None:
                self.tracking.end_cell(job, "FAILED")
            self.executor.print_line(f"{job.cell.label}: FAILED: {payload.get('error')}", "red")
        error = payload.get("error")
        self.settle(CellOutcome(job.cell, status, result, error=error, path=path))
