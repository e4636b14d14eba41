"""Run a ``bench run`` grid on Ray: one task per cell, spread over every GPU of a cluster.

How a grid runs (``bench run ... --executor ray``):

* The driver (the ``bench run`` process) plans the grid once (:func:`~bench.pipeline.plan.
  plan_grid`): the same cells, in the same order, as the local executor.
* Per dataset, one upstream *prepare* task loads the backbone and extracts (or reuses) the
  train/val/test features into the feature cache, then resolves its cells' configurations
  (:func:`~bench.pipeline.plan.plan_cell`, which needs the backbone) and returns them.
  Features are thus computed once per grid; the cell tasks' own ``extract_features`` calls
  are cache hits (the cache lives under ``--results-dir``, on storage every node shares).
* The driver skips finished cells exactly as the local executor does (``inspect_result`` on
  the planned result path) and submits one task per remaining cell with its planned cell,
  and the prepare task's ``ObjectRef`` as an argument so Ray orders the two. Each cell task
  asks for ``gpus_per_job`` GPUs (a quarter of that for methods that do not train) and runs
  the planned cell with :class:`~bench.pipeline.cell.CellRunner`: the cell lock, checkpoint
  resume and result JSON are the local ones. It never re-plans: it only checks that its node
  sees the same dataset files and backbone weights as the prepare task's.
* Tasks never touch MLflow or the terminal: they post their progress events (cell started,
  epoch ended) to a small status-board actor and return their outcome and messages; the
  driver emits them on its event bus, whose observers (MLflow, display) run in the driver
  only (so a sqlite store is written by one process).
* A task that raises (other than a ``BenchError``, which is the user's to fix and is not
  retried) or whose worker dies is retried ``max_retries`` times by Ray; a cell that still
  fails is reported with its error, and the other cells go on.

This module imports Ray lazily (it is an optional extra) and never imports mlflow.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import secrets
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.pipeline.cell import CellRunner, finished_result
from bench.pipeline.config import Cell, CellOutcome, PlannedCell, RunConfig
from bench.pipeline.events import (
    CellAborted,
    CellElsewhere,
    CellFailed,
    CellFinished,
    CellSkipped,
    CellStarted,
    DatasetFinished,
    DatasetPrepared,
    EpochEnded,
    EventBus,
    GridPlanned,
    Message,
    TaskStarted,
)
from bench.pipeline.plan import GridPlan, InitState, plan_cell, plan_grid
from bench.pipeline.prepare import DatasetContext, prepare_dataset
from bench.pipeline.store import check_results_dir

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


def _console_messages(buffer: io.StringIO) -> list[Message]:
    """The ``warning:`` and ``note:`` lines a worker's console printed (the feature cache's)."""
    messages = []
    for line in buffer.getvalue().splitlines():
        level, _, text = line.strip().partition(": ")
        if level in ("warning", "note") and text:
            messages.append(Message(level, text))
    return messages


class _TaskRelay:
    """A task's event observer: progress goes to the driver's board, messages come back with
    the task's result, outcomes are the driver's to emit (from what the task returns)."""

    def __init__(self, board: Any = None, key: int = 0) -> None:
        self.board = board
        self.key = key
        self.messages: list[Message] = []

    def post(self, event: Any) -> None:
        """Send one event to the driver now."""
        if self.board is not None:
            self.board.post.remote((self.key, event))

    def notify(self, event: Any) -> None:
        """Handle one event of the task's pipeline."""
        if isinstance(event, Message):
            self.messages.append(event)
        elif isinstance(event, CellStarted | EpochEnded):
            self.post(event)


def _task_context(
    config: RunConfig,
    spec: str,
    owner: str,
    relay: _TaskRelay,
    console: Any,
    *,
    features_lock: bool,
) -> tuple[EventBus, DatasetContext]:
    """The dataset context in a task, and the event bus the task's pipeline reports to."""
    events = EventBus([relay])
    ctx = prepare_dataset(
        config, spec, events=events, owner=owner, console=console, features_lock=features_lock
    )
    return events, ctx


def prepare_task(
    config: RunConfig,
    spec: str,
    cells: Sequence[Cell],
    init_state: InitState | None,
    owner: str,
    setup: TaskSetup,
) -> dict[str, Any]:
    """Ray task: extract (or reuse) a dataset's features and resolve its cells.

    Returns:
        ``{"planned": [PlannedCell], "backbone", "host", "messages"}``, or ``{"error": ...}``
        for a BenchError (not retried: the user has to fix it).
    """
    host = socket.gethostname()
    relay = _TaskRelay()
    console, buffer = _quiet_console()
    try:
        host = _enter(setup)
        _, ctx = _task_context(config, spec, owner, relay, console, features_lock=True)
        planned = [plan_cell(config, cell, ctx, init_state) for cell in cells]
    except BenchError as exc:
        messages = relay.messages + _console_messages(buffer)
        return {"error": str(exc), "host": host, "messages": messages}
    return {
        "planned": planned,
        "backbone": ctx.backbone.spec.raw,
        "host": host,
        "messages": relay.messages + _console_messages(buffer),
    }


def _check_same_inputs(planned: PlannedCell, ctx: DatasetContext, host: str, where: Any) -> None:
    """Fail unless this node sees the dataset files and backbone the cell was planned with."""
    config = planned.config
    if (
        config["dataset_fingerprint"] != ctx.dataset.fingerprint
        or config["backbone_identifier"] != ctx.backbone.identifier
    ):
        raise BenchError(
            f"node {host} resolves cell {planned.cell.label} to another configuration than node "
            f"{where} did (different dataset files, backbone weights or bench version); use "
            "shared storage and the same installation on every node"
        )


def cell_task(
    config: RunConfig,
    spec: str,
    planned: PlannedCell,
    init_state: InitState | None,
    owner: str,
    prepared: Mapping[str, Any],
    setup: TaskSetup,
    board: Any = None,
    key: int = 0,
    hook: CellHook | None = None,
) -> dict[str, Any]:
    """Ray task: run one planned cell (no MLflow) and return its outcome.

    Args:
        config: The run's configuration (device adapted to the task's resources).
        spec: The dataset spec.
        planned: The cell with its configuration, as the driver's plan has it.
        init_state: The ``--load-state`` state, if any.
        owner: The driver's invocation id (the cell lock's owner).
        prepared: The prepare task's result; passing its ObjectRef makes Ray run this task
            after the dataset's features exist.
        setup: The driver's folder and results-folder marker.
        board: The driver's status board actor (None: no live status).
        key: This cell's key on the board.
        hook: Called with the cell before it runs (fault injection in tests).

    Returns:
        ``{"status", "result", "error", "path", "host", "node_id", "messages"}``; a
        BenchError comes back as status "failed" (not retried), any other exception
        propagates to Ray.
    """
    host = socket.gethostname()
    node_id = import_ray().get_runtime_context().get_node_id()
    relay = _TaskRelay(board, key)
    relay.post(TaskStarted(planned.cell, host))
    console, buffer = _quiet_console()
    try:
        if hook is not None:
            hook(planned.cell)
        host = _enter(setup)
        # The prepare task made the features: no need to queue on the features lock.
        events, ctx = _task_context(config, spec, owner, relay, console, features_lock=False)
        _check_same_inputs(planned, ctx, host, prepared.get("host"))
        outcome = CellRunner(config, events, owner=owner, init_state=init_state).run(planned, ctx)
    except BenchError as exc:
        return {
            "status": "failed",
            "result": None,
            "error": str(exc),
            "path": None,
            "host": host,
            "node_id": node_id,
            "messages": relay.messages + _console_messages(buffer),
        }
    return {
        "status": outcome.status,
        "result": outcome.result,
        "error": outcome.error,
        "path": outcome.path,
        "host": host,
        "node_id": node_id,
        "messages": relay.messages + _console_messages(buffer),
    }


class StatusBoard:
    """A tiny Ray actor: tasks post ``(job key, event)`` pairs (task started, cell started,
    epoch ended), the driver drains them."""

    def __init__(self) -> None:
        self._posted: list[tuple[int, Any]] = []

    def post(self, posted: tuple[int, Any]) -> None:
        """Record one event of one job."""
        self._posted.append(posted)

    def drain(self) -> list[tuple[int, Any]]:
        """Every event since the last call."""
        posted, self._posted = self._posted, []
        return posted


# ------------------------------------------------------------------------------ driver
@dataclass
class _Job:
    """One submitted cell, as the driver sees it."""

    key: int
    planned: PlannedCell
    attempts: int = 0
    started: bool = False

    @property
    def cell(self) -> Cell:
        """The job's cell."""
        return self.planned.cell


def _one_line(text: Any, limit: int = 300) -> str:
    return " ".join(str(text).split())[:limit]


class RayExecutor:
    """Runs a grid as Ray tasks (see the module docstring).

    Args:
        config: The run's options.
        events: Where every event of the grid goes (observers run in this process).
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
        config: RunConfig,
        events: EventBus,
        *,
        address: str | None = None,
        gpus_per_job: float | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        cell_hook: CellHook | None = None,
    ) -> None:
        check_gpus_per_job(gpus_per_job)
        if max_retries < 0:
            raise BenchError(f"max_retries: {max_retries} must be >= 0")
        device = config.device or ""
        if device.startswith("cuda:"):
            raise BenchError(
                f"--device {device}: with --executor ray, Ray assigns each cell its GPU; "
                "use --device cuda or leave --device out"
            )
        self.ray = import_ray()
        self.config = config
        self.events = events
        self.address = address
        self.gpus_per_job = gpus_per_job
        self.max_retries = max_retries
        self.cell_hook = cell_hook

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
            self.events.note("the Ray cluster has no GPU; cells run on CPUs (--gpus-per-job 0)")
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
        if gpus == 0 and self.config.device is None:
            return replace(self.config, device="cpu")
        return self.config

    # ------------------------------------------------------------------ running
    def run(self) -> list[CellOutcome]:
        """Run the grid; one outcome per cell, in plan order (failed cells included)."""
        config = self.config
        check_results_dir(config.results_dir)
        plan = plan_grid(config)
        self.events.emit(GridPlanned(plan.cells, plan.invocation))
        owned = self._connect()
        marker = Path(config.results_dir) / f".bench-ray-{plan.invocation}"
        token = secrets.token_hex(16)
        try:
            marker.write_text(token, encoding="utf-8")
            setup = TaskSetup(os.getcwd(), str(marker), token, str(config.results_dir))
            return _GridRun(self, plan, setup, self._gpus()).execute()
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
    """The driver's state while one grid runs: submitted tasks and outcomes."""

    def __init__(
        self, executor: RayExecutor, plan: GridPlan, setup: TaskSetup, gpus: float
    ) -> None:
        self.executor = executor
        self.ray = executor.ray
        self.events = executor.events
        self.config = executor.config
        self.plan = plan
        self.setup = setup
        self.gpus = gpus
        self.task_config = executor.task_config(gpus)
        self.retry = {"max_retries": executor.max_retries, "retry_exceptions": True}
        self.by_dataset = plan.by_dataset()
        self.remaining = {label: len(group) for label, group in self.by_dataset.items()}
        self.failed_datasets: set[str] = set()
        self.prepared: set[str] = set()
        self.outcomes: dict[Cell, CellOutcome] = {}
        self.jobs: dict[int, _Job] = {}
        #: ObjectRef -> ("prepare", dataset label) or ("cell", job)
        self.waiting: dict[Any, tuple[str, Any]] = {}
        self.board: Any = None
        self.relayed: set[Message] = set()

    # ------------------------------------------------------------------ main loop
    def execute(self) -> list[CellOutcome]:
        """Submit the prepare tasks, then cells as their datasets are ready; collect outcomes."""
        ray = self.ray
        self.board = ray.remote(num_cpus=0)(StatusBoard).remote()
        prepare = ray.remote(prepare_task)
        try:
            for label, group in self.by_dataset.items():
                options = {"num_cpus": 1, "num_gpus": self.gpus, **self.retry}
                ref = prepare.options(**options, name=f"bench features {label}").remote(
                    self.task_config,
                    self.plan.specs[label],
                    group,
                    self.plan.init_state,
                    self.plan.invocation,
                    self.setup,
                )
                self.waiting[ref] = ("prepare", label)
            while self.waiting:
                ready, _ = ray.wait(list(self.waiting), num_returns=1, timeout=POLL_SECONDS)
                self.forward(self.drain())
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
        return [self.outcomes[cell] for cell in self.plan.cells]

    def abandon(self, status: str) -> None:
        """Cancel every task and close what observers opened (Ctrl-C, driver error)."""
        for ref in self.waiting:
            with contextlib.suppress(Exception):
                self.ray.cancel(ref, force=True)
        with contextlib.suppress(Exception):  # cells that began executing get their run
            self.forward(self.drain())
        for job in self.jobs.values():
            if job.started and job.cell not in self.outcomes:
                self.events.emit(CellAborted(job.cell, status))
        for label in self.by_dataset:
            if label in self.prepared and self.remaining[label] > 0:
                self.events.emit(DatasetFinished(label, status))

    def drain(self) -> list[tuple[int, Any]]:
        """New events from the status board (none if it is gone: only the live view suffers)."""
        try:
            return self.ray.get(self.board.drain.remote())
        except self.ray.exceptions.RayError:
            return []

    def forward(self, posted: Sequence[tuple[int, Any]]) -> None:
        """Emit the tasks' progress events (a task started again, a cell started, an epoch)."""
        for key, event in posted:
            job = self.jobs.get(key)
            if job is None or job.cell in self.outcomes:
                continue
            if isinstance(event, TaskStarted):
                job.attempts += 1
                event = replace(event, attempt=job.attempts)
            elif isinstance(event, CellStarted):
                job.started = True
            self.events.emit(event)

    def relay(self, messages: Sequence[Message]) -> None:
        """Emit a task's warnings and notes (each distinct one once per grid)."""
        for message in messages:
            if message not in self.relayed:
                self.relayed.add(message)
                self.events.emit(message)

    def settle(self, event: Any) -> None:
        """Emit a cell's outcome; close its dataset after its last cell."""
        outcome: CellOutcome = event.outcome
        cell = outcome.cell
        self.outcomes[cell] = outcome
        if outcome.status == "failed":
            self.failed_datasets.add(cell.dataset)
        self.events.emit(event)
        self.remaining[cell.dataset] -= 1
        if self.remaining[cell.dataset] == 0:
            status = "FAILED" if cell.dataset in self.failed_datasets else "FINISHED"
            self.events.emit(DatasetFinished(cell.dataset, status))

    # ------------------------------------------------------------------ task results
    def on_prepared(self, label: str, ref: Any) -> None:
        """A dataset's features exist: skip its finished cells, submit the others."""
        from bench.methods import get_method_class

        try:
            prepared = self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:
            prepared = {"error": self.executor.describe_failure(exc)}
        self.relay(prepared.get("messages", ()))
        if "error" in prepared:
            error = f"preparing {label} failed: {prepared['error']}"
            for cell in self.by_dataset[label]:
                self.settle(CellFailed(CellOutcome(cell, "failed", error=error)))
            return
        self.prepared.add(label)
        self.events.emit(DatasetPrepared(label, prepared["backbone"]))
        run_cell = self.ray.remote(cell_task)
        for planned in prepared["planned"]:
            cell, path = planned.cell, planned.path
            if not self.config.rerun:
                existing = finished_result(planned, self.events)
                if existing is not None:
                    self.settle(CellSkipped(CellOutcome(cell, "skipped", existing, path=path)))
                    continue
            job = _Job(len(self.jobs), planned)
            self.jobs[job.key] = job
            resources = task_resources(get_method_class(cell.method).trains, self.gpus)
            task = run_cell.options(**resources, **self.retry, name=f"bench {cell.label}")
            cell_ref = task.remote(
                self.task_config,
                self.plan.specs[label],
                planned,
                self.plan.init_state,
                self.plan.invocation,
                ref,  # the prepare task's ObjectRef: Ray runs the cell after it
                self.setup,
                self.board,
                job.key,
                self.executor.cell_hook,
            )
            self.waiting[cell_ref] = ("cell", job)

    def on_cell(self, job: _Job, ref: Any) -> None:
        """A cell task ended: emit its outcome."""
        try:
            payload = self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:
            payload = {"status": "failed", "error": self.executor.describe_failure(exc)}
        self.relay(payload.get("messages", ()))
        status = payload["status"]
        path = Path(payload["path"]) if payload.get("path") else job.planned.path
        result = payload.get("result")
        error = payload.get("error")
        if status == "done" and result is not None:
            # Where it ran (the driver's copy; the result file is the local executor's).
            host, node = payload.get("host"), payload.get("node_id") or ""
            result = {**result, "executor": {"kind": "ray", "host": host, "node_id": node}}
            where = f"{host} (Ray node {node[:8]})"
            self.settle(CellFinished(CellOutcome(job.cell, status, result, path=path), where))
        elif status == "skipped" and result is not None:  # finished by another process
            self.settle(CellSkipped(CellOutcome(job.cell, status, result, path=path)))
        elif status == "elsewhere":
            self.settle(CellElsewhere(CellOutcome(job.cell, status, error=error, path=path)))
        else:
            self.settle(CellFailed(CellOutcome(job.cell, "failed", result, error=error, path=path)))
