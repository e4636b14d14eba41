"""``bench report`` (paper tables, paper comparison, figures) and ``bench ui`` (MLflow UI)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from bench.constants import WORLDS
from bench.errors import BenchError


def _name_list(text: str | None) -> tuple[str, ...] | None:
    if not text or text == "all":
        return None
    return tuple(part.strip() for part in text.split(",") if part.strip()) or None


def _default_store(results_dir: Path) -> Path:
    return (results_dir / "mlflow.db").resolve()


def _figure_store(tracking_uri: str | None, results_dir: Path) -> str | None:
    """Where to log figures: an explicit store, else the default one if it exists."""
    from bench.tracking.client import resolve_tracking_uri

    if tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"):
        return resolve_tracking_uri(tracking_uri, results_dir)
    return (
        resolve_tracking_uri(None, results_dir) if _default_store(results_dir).is_file() else None
    )


@click.command("report")
@click.option("--latex", "fmt", flag_value="latex", help="LaTeX tables (booktabs, multirow).")
@click.option("--markdown", "fmt", flag_value="markdown", help="Markdown pipe tables.")
@click.option("--csv", "fmt", flag_value="csv", help="CSV (full precision, one row per table row).")
@click.option(
    "--datasets", default=None, help="Comma-separated datasets (column order) [default: all]."
)
@click.option("--methods", default=None, help="Comma-separated methods (row order) [default: all].")
@click.option(
    "--setting",
    type=click.Choice([*WORLDS, "both"]),
    default="both",
    show_default=True,
    help="Closed world, open world or both tables.",
)
@click.option(
    "--split",
    type=click.Choice(["test", "val"]),
    default="test",
    show_default=True,
    help="Evaluation split.",
)
@click.option(
    "--results-dir",
    type=click.Path(path_type=Path),
    default=Path("results"),
    show_default=True,
    help="Where bench run wrote its results; figures go to <results-dir>/reports.",
)
@click.option(
    "--tracking-uri",
    default=None,
    help="Read the runs from this MLflow store instead of the result JSONs.",
)
@click.option(
    "--compare-paper",
    is_flag=True,
    help="Published (results/published.csv) vs reproduced numbers with the difference.",
)
@click.option(
    "--figures",
    is_flag=True,
    help="Also write seen-unseen curves and AUC bars (PNG, PDF) to <results-dir>/reports and "
    "log them to the latest MLflow parent run of each dataset.",
)
@click.option("--no-mlflow", is_flag=True, help="With --figures: do not log them to MLflow.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the report to FILE (format from --latex/--markdown/--csv or the suffix .tex/.md/.csv).",
)
def report(
    fmt: str | None,
    datasets: str | None,
    methods: str | None,
    setting: str,
    split: str,
    results_dir: Path,
    tracking_uri: str | None,
    compare_paper: bool,
    figures: bool,
    no_mlflow: bool,
    output: Path | None,
) -> None:
    """Paper-ready tables (mean ± std over seeds) from the results; a terminal table by default."""
    from rich.console import Console

    from bench import report as lib
    from bench.io import atomic_write_text

    err = Console(stderr=True)
    if output is not None and fmt is None:
        fmt = lib.FORMAT_SUFFIXES.get(output.suffix.lower())
        if fmt is None:
            raise BenchError(
                f"-o {output}: cannot tell the format from the suffix; pass --latex, --markdown or --csv"
            )
    if compare_paper and split != "test":
        raise BenchError("--compare-paper: the paper reports the test split; drop --split val")
    dataset_list, method_list = _name_list(datasets), _name_list(methods)
    if tracking_uri:
        records = lib.load_records_mlflow(tracking_uri, dataset_list, method_list, curves=figures)
        where = f"the MLflow store {tracking_uri}"
    else:
        records = lib.load_records(results_dir, dataset_list, method_list)
        where = f"{results_dir / 'runs'}"
    if not records:
        chosen = "".join(
            f" {name} {','.join(values)}"
            for name, values in (("for datasets", dataset_list), ("for methods", method_list))
            if values
        )
        raise BenchError(
            f"no finished runs{chosen} in {where}; run `bench run` first or check --results-dir"
        )
    worlds = WORLDS if setting == "both" else (setting,)
    summary = lib.aggregate(records, split, worlds, dataset_list, method_list)
    if summary.empty:
        raise BenchError(f"the runs in {where} have no {split} metrics for {' and '.join(worlds)}")
    random = sorted({r.setting.backbone for r in records if r.random_weights})
    if random:
        err.print(
            f"[yellow]warning:[/] backbone {', '.join(random)} has RANDOM weights: "
            "its numbers say nothing about any method"
        )

    if compare_paper:
        comparison, notes = lib.compare_with_paper(summary)
        if comparison.empty:
            raise BenchError("nothing to compare with the paper: " + "; ".join(notes))
        for note in notes:
            err.print(f"[yellow]note:[/] {note}")
        text = lib.render_comparison(comparison, fmt) if fmt else None
        tables = lib.render_comparison_rich(comparison) if fmt is None else []
    else:
        higher_order = (
            lib.aggregate_higher_order(records, dataset_list, method_list)
            if split == "test"
            else None
        )
        text = lib.render(summary, fmt, higher_order) if fmt else None
        tables = lib.render_rich(summary, higher_order) if fmt is None else []

    if output is not None and text is not None:
        atomic_write_text(output, text)
        err.print(f"wrote {output}")
    elif text is not None:
        click.echo(text, nl=False)
    else:
        console = Console()
        if not console.is_terminal:  # piped: do not squeeze the table into 80 columns
            console = Console(width=max(console.width, 200))
        for table in tables:
            console.print(table)

    if figures:
        written = lib.write_figures(
            records, results_dir / "reports", split, worlds, dataset_list, method_list
        )
        for dataset, paths in written.items():
            names = ", ".join(sorted({p.stem for p in paths}))
            err.print(
                f"wrote {dataset} figures (PNG and PDF) to {results_dir / 'reports'}: {names}"
            )
        store = None if no_mlflow else _figure_store(tracking_uri, results_dir)
        if store is not None:
            from bench.tracking.writer import log_report_artifacts

            for dataset, paths in written.items():
                run_id = log_report_artifacts(store, dataset, paths)
                if run_id:
                    err.print(
                        f"logged the {dataset} figures to MLflow run {run_id} (artifacts: report/)"
                    )
                else:
                    err.print(
                        f"[yellow]note:[/] no MLflow parent run for {dataset}; figures not logged"
                    )


@click.command("ui")
@click.option(
    "--results-dir",
    type=click.Path(path_type=Path),
    default=Path("results"),
    show_default=True,
    help="Results folder whose MLflow store (mlflow.db) to show.",
)
@click.option(
    "--tracking-uri",
    default=None,
    help="MLflow store to show [default: sqlite in the results dir].",
)
@click.option(
    "--host",
    default=None,
    help="Interface to bind [default: 127.0.0.1]. Anything else exposes the UI, which has no authentication.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=5000,
    show_default=True,
    help="Port to listen on.",
)
def ui(results_dir: Path, tracking_uri: str | None, host: str | None, port: int) -> None:
    """Start the MLflow UI for the harness's tracking store (Ctrl-C stops it)."""
    from bench.report import ui as lib
    from bench.tracking.client import czsl_experiments, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri, results_dir)
    default_store = not tracking_uri and not os.environ.get("MLFLOW_TRACKING_URI")
    if default_store and not _default_store(results_dir).is_file():
        raise BenchError(
            f"no MLflow store at {_default_store(results_dir)}; run `bench run` first, "
            "or pass --results-dir or --tracking-uri"
        )
    warning = lib.ui_warning(host)
    if warning:
        click.secho(f"warning: {warning}", err=True, fg="yellow")
    command = lib.ui_command(
        uri,
        host,
        port,
        artifacts_destination=results_dir / "mlartifacts" if default_store else None,
    )
    base_url = lib.ui_url(host or lib.DEFAULT_UI_HOST, port)
    click.echo(f"MLflow UI for {uri} at {base_url} (Ctrl-C stops it)")
    try:
        experiments = czsl_experiments(uri)
    except Exception:  # noqa: BLE001 - the links are a convenience; the UI reports store errors
        experiments = []
    if experiments:
        links = lib.experiment_links(base_url, experiments)
        click.echo("Runs compared, per experiment:\n" + "\n".join(links))
    try:
        status = lib.serve_ui(command)
    except lib.UiStopped as stopped:
        sys.exit(stopped.exit_status)
    if status:
        raise BenchError(
            f"the MLflow UI exited with status {status} (is port {port} already in use? try --port)"
        )


COMMANDS = [report, ui]
