"""``bench run``: every method x dataset x seed, closed and open world, logged to MLflow."""

from __future__ import annotations

import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from bench.constants import TEXT_ENCODING_CHOICES
from bench.errors import BenchError


def _int_list(option: str, text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise BenchError(
            f"{option}: {text!r} is not a comma-separated list of integers, e.g. 0,1,2"
        ) from exc


def _name_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _hparam_overrides(items: tuple[str, ...], methods: tuple[str, ...]) -> dict[str, str]:
    """``--hparam KEY=VALUE`` items as a mapping; each key must be a hyperparameter of one of
    ``methods``' cards, and its value must convert to the card's type (checked now, before
    any work; converted per card again when cells are planned)."""
    from bench.methods.base import resolve_hparams

    defaults = {name: resolve_hparams(name, "default") for name in methods}
    known = {key for table in defaults.values() for key in table}
    overrides: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise BenchError(f"--hparam {item!r}: use KEY=VALUE, e.g. --hparam adapters=false")
        if key not in known:
            raise BenchError(
                f"--hparam {key}: no selected method ({', '.join(methods)}) has a "
                f"hyperparameter {key!r}; see its card under methods/"
            )
        overrides[key] = value.strip()
        for name, table in defaults.items():
            if key in table:
                resolve_hparams(name, "default", {key: overrides[key]})
    return overrides


@click.command("run")
@click.option(
    "--methods", default="all", show_default=True, help="Comma-separated method names, or 'all'."
)
@click.option(
    "--datasets",
    default="synthetic",
    show_default=True,
    help="Comma-separated dataset names or folders; 'all' = mit-states,ut-zappos,cgqa.",
)
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated seeds.")
@click.option(
    "--backbone",
    default=None,
    help="MODEL:PRETRAINED (e.g. ViT-L-14:openai), hf-hub:org/repo, local-dir:PATH, MODEL:/path/ckpt.pt, "
    "tiny-random or toy-clip. Default: toy-clip on synthetic data, ViT-L-14:openai otherwise.",
)
@click.option(
    "--epochs", type=int, default=None, help="Override the card's epochs for training methods."
)
@click.option(
    "--hparam",
    "hparams",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a card hyperparameter for every selected method that defines it "
    "(repeatable), e.g. --hparam adapters=false (Troika on cached image tokens).",
)
@click.option(
    "--data-root",
    type=click.Path(path_type=Path),
    default=None,
    help="Dataset root [default: ./data].",
)
@click.option(
    "--results-dir",
    type=click.Path(path_type=Path),
    default=Path("results"),
    show_default=True,
    help="Where results, caches and the MLflow store go.",
)
@click.option(
    "--tracking-uri", default=None, help="MLflow tracking URI [default: sqlite in the results dir]."
)
@click.option("--rerun", is_flag=True, help="Redo cells that already have a result.")
@click.option("--device", default=None, help="cpu, cuda, cuda:N [default: CUDA when available].")
@click.option(
    "--protocol",
    type=click.Choice(["paper", "harness"]),
    default=None,
    help="paper: the official CSP protocol (last epoch, augmented views in the official order, "
    "official name cleaning, GloVe 6B-300d feasibility with csp-multiply); harness: faster "
    "(best val-AUC epoch, cached un-augmented features, no open-world filter) and a DIFFERENT "
    "protocol (on the synthetic set it moved CSP's test AUC by about +18 points) "
    "[default: paper on mit-states, ut-zappos, cgqa; harness on synthetic and folder datasets].",
)
@click.option(
    "--augment",
    type=click.Choice(["none", "paper"]),
    default=None,
    help="Override the protocol's training images. none: cached un-augmented features (not the "
    "paper's protocol: on the synthetic set it moved CSP's test AUC by about +18 points); "
    "paper: a freshly augmented view of every image each epoch (official transform order), "
    "encoded once per epoch and shared by the grid's methods [default: the protocol's].",
)
@click.option(
    "--text-encoding",
    type=click.Choice(TEXT_ENCODING_CHOICES),
    default="prefix",
    show_default=True,
    help="How clip/coop/csp run the text encoder: prefix: each shared prompt prefix once "
    "(same features up to rounding, faster); full: every position of every prompt.",
)
@click.option("--topk", type=int, default=1, show_default=True, help="Top-k accuracy.")
@click.option(
    "--feasibility",
    type=click.Choice(["mask", "csp-multiply", "off"]),
    default=None,
    help="Open-world feasibility filter; csp-multiply reproduces CSP's code [default: the "
    "protocol's: csp-multiply under paper; mask with --word-vectors under harness].",
)
@click.option(
    "--word-vectors",
    default=None,
    help="Word vectors for open-world feasibility (e.g. backbone, glove50, glove:6B.300d) "
    "[default: the protocol's: glove:6B.300d (glove50 offline) under paper; none under harness].",
)
@click.option(
    "--no-mlflow", is_flag=True, help="Do not log to MLflow (result JSONs are still written)."
)
@click.option(
    "--load-state",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Initialise training methods from a saved trainable_state.pt (with --epochs 0: "
    "evaluate it as it is).",
)
@click.option(
    "--wait-elsewhere",
    type=float,
    default=0.0,
    show_default=True,
    help="Seconds to wait for cells another bench process is running on the same results dir.",
)
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: run the cells one after the other in this process; ray: one Ray task per "
    'cell, over every GPU of this machine or of a Ray cluster (pip install "czsl-bench[ray]").',
)
@click.option(
    "--ray-address",
    default=None,
    help="With --executor ray: the Ray cluster to join (auto, HOST:PORT, ray://HOST:PORT) "
    "[default: start Ray on this machine].",
)
@click.option(
    "--gpus-per-job",
    type=float,
    default=None,
    help="With --executor ray: GPUs per cell (a fraction shares a GPU); methods that do not "
    "train get a quarter of it [default: 1 if the cluster has GPUs, else 0].",
)
def run(
    methods: str,
    datasets: str,
    seeds: str,
    backbone: str | None,
    epochs: int | None,
    hparams: tuple[str, ...],
    data_root: Path | None,
    results_dir: Path,
    tracking_uri: str | None,
    rerun: bool,
    device: str | None,
    protocol: str | None,
    augment: str | None,
    text_encoding: str,
    topk: int,
    feasibility: str | None,
    word_vectors: str | None,
    no_mlflow: bool,
    load_state: Path | None,
    wait_elsewhere: float,
    executor: str,
    ray_address: str | None,
    gpus_per_job: float | None,
) -> None:
    """Run methods on datasets over seeds; skip cells that are already done.

    An interrupted run (Ctrl-C, SIGTERM, a kill, a crash) resumes when the same command is
    run again: finished cells are skipped and training continues from its last checkpoint.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from bench.data.registry import default_data_root, expand_dataset_names
    from bench.executors.observers import default_events
    from bench.methods import method_names
    from bench.pipeline.config import RunConfig

    method_list = tuple(method_names()) if methods == "all" else _name_list(methods)
    config = RunConfig(
        methods=method_list,
        datasets=tuple(expand_dataset_names(datasets)),
        seeds=_int_list("--seeds", seeds),
        backbone=backbone,
        epochs=epochs,
        hparam_overrides=_hparam_overrides(hparams, method_list),
        data_root=data_root or default_data_root(),
        results_dir=results_dir,
        tracking_uri=tracking_uri,
        rerun=rerun,
        device=device,
        protocol=protocol,
        augment=augment,
        text_encoding=text_encoding,
        topk=topk,
        feasibility=feasibility,
        word_vectors=word_vectors,
        log_mlflow=not no_mlflow,
        load_state=load_state,
        wait_elsewhere=wait_elsewhere,
    )
    console = Console(stderr=True)
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )
    # A log file, CI or a cluster job sees no live progress: a line per cell as it settles.
    lines = None if sys.stdout.isatty() else sys.stdout
    events = default_events(config, console, progress, outcome_lines=lines)
    if executor == "ray":
        from bench.executors import RayExecutor

        grid: Any = RayExecutor(config, events, address=ray_address, gpus_per_job=gpus_per_job)
    elif ray_address is not None or gpus_per_job is not None:
        raise BenchError("--ray-address and --gpus-per-job need --executor ray")
    else:
        from bench.executors import LocalExecutor

        grid = LocalExecutor(config, events, console=console, progress=progress)
    previous = _terminate_as_interrupt()
    try:
        with progress:
            outcomes = grid.run()
    except KeyboardInterrupt:
        command = "bench " + " ".join(shlex.quote(arg) for arg in sys.argv[1:])
        console.print(
            f"interrupted: the current cell was abandoned; finished cells are kept under "
            f"{results_dir}/runs. Resume with: {command}",
            style="yellow",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(130)
    finally:
        _restore_handler(previous)
    _print_summary(outcomes)
    if any(outcome.status == "failed" for outcome in outcomes):
        sys.exit(1)


def _terminate_as_interrupt() -> Any:
    """Make SIGTERM (pre-emption, ``kill``) stop the run like Ctrl-C; return the old handler."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


def _restore_handler(previous: Any) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def _print_summary(outcomes) -> None:  # type: ignore[no-untyped-def]
    from rich.console import Console
    from rich.table import Table

    from bench.pipeline.display import summary_rows

    rows = list(summary_rows(outcomes))
    table = Table(title="Test results (%): closed world (cw) and open world (ow)")
    metric_columns = ["cw/S", "cw/U", "cw/HM", "cw/AUC", "ow/S", "ow/U", "ow/HM", "ow/AUC"]
    for column in ("method", "dataset", "seed", "status"):
        table.add_column(column, no_wrap=True)
    for column in metric_columns:
        table.add_column(column, justify="right", no_wrap=True)
    for row in rows:
        cells = [row["method"], row["dataset"], str(row["seed"]), row["status"]]
        cells += [f"{row[c]:.1f}" if c in row else "-" for c in metric_columns]
        table.add_row(*cells)
    # Wide enough for the whole table when the output is a file or a pipe.
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(table)
    warnings = {
        (o.result or {}).get("backbone_warning")
        for o in outcomes
        if (o.result or {}).get("backbone_warning")
    }
    for warning in sorted(warnings):
        console.print(f"[yellow]warning:[/] {warning}")
    done = sum(o.status == "done" for o in outcomes)
    skipped = sum(o.status == "skipped" for o in outcomes)
    line = f"{done} cells run, {skipped} already done (skipped; --rerun redoes them)"
    elsewhere = sum(o.status == "elsewhere" for o in outcomes)
    if elsewhere:
        line += f", {elsewhere} running in another bench process (rerun later to collect them)"
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        line += f", {len(failed)} FAILED (rerun the command to retry them)"
    console.print(line + ".")
    for outcome in failed:
        console.print(
            f"failed: {outcome.cell.label}: {outcome.error}",
            style="red",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


COMMANDS = [run]
