"""``bench data``: inspect, verify, prepare and download datasets (parse and dispatch only)."""

from __future__ import annotations

import json
from pathlib import Path

import click

ROOT_HELP = "Data root holding the dataset folders [default: $BENCH_DATA_ROOT or ./data]."


def _root_option(func):  # type: ignore[no-untyped-def]
    return click.option(
        "--root",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help=ROOT_HELP,
    )(func)


def _root(root: Path | None) -> Path:
    from bench.data.registry import default_data_root

    return root if root is not None else default_data_root()


@click.group("data")
def data() -> None:
    """Inspect, verify, prepare (synthetic) and download (real) datasets."""


@data.command("info")
@click.argument("name_or_path")
@_root_option
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON only.")
def info(name_or_path: str, root: Path | None, as_json: bool) -> None:
    """Show the counts of a dataset (a registered NAME or a folder PATH).

    A missing synthetic dataset is generated first.
    """
    from bench.constants import DATA_SPLITS
    from bench.data.czsl import describe
    from bench.data.registry import open_dataset

    ds = open_dataset(name_or_path, _root(root), prepare=True)
    counts = describe(ds)
    if as_json:
        click.echo(json.dumps(counts))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{ds.name}  ({ds.root})")
    table.add_column("split")
    for column in ("images", "seen pairs", "unseen pairs"):
        table.add_column(column, justify="right")
    for split in DATA_SPLITS:
        row = counts[split]
        table.add_row(split, str(row["images"]), str(row["seen_pairs"]), str(row["unseen_pairs"]))  # type: ignore[index]
    console = Console()
    console.print(table)
    console.print(
        f"attributes {counts['attrs']}, objects {counts['objs']}, closed-world pairs "
        f"{counts['pairs']}, open-world pairs {counts['open_world_pairs']}"
    )


@data.command("verify")
@click.argument("name_or_path")
@_root_option
@click.option("--workers", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Threads used to open images.")  # fmt: skip
@click.pass_context
def verify(ctx: click.Context, name_or_path: str, root: Path | None, workers: int) -> None:
    """Check counts against the card and that every image is present and readable.

    Exits 0 when all is good, 1 otherwise.
    """
    from bench.data.verify import verify_dataset

    report = verify_dataset(name_or_path, _root(root), workers=workers)
    for line in report.summary():
        click.secho(line, fg="green" if line == "OK" else "red" if line == "FAILED" else None)
    if not report.ok:
        ctx.exit(1)


@data.command("prepare")
@click.argument("name")
@_root_option
@click.option("--seed", type=int, default=None, help="Override the card's seed.")
@click.option("--force", is_flag=True, help="Regenerate even if present.")
def prepare(name: str, root: Path | None, seed: int | None, force: bool) -> None:
    """Generate synthetic dataset NAME under the data root (no-op if already there)."""
    from bench.data.registry import prepare_synthetic

    folder, generated = prepare_synthetic(name, _root(root), seed=seed, force=force, progress=True)
    click.echo(f"{'generated' if generated else 'already present:'} {name} at {folder}")


@data.command("download")
@click.argument("name")
@_root_option
@click.option("--force", is_flag=True, help="Download and extract again even if present.")
def download(name: str, root: Path | None, force: bool) -> None:
    """Download and extract real dataset NAME into the data root.

    NAME may also be a dataset's higher-order annotations (``aao-mit-states``, after
    ``mit-states``): they are fetched and converted to ``aao/annotations.csv``.
    """
    from bench.data.higher_order import higher_order_downloads

    if name in higher_order_downloads():
        from bench.data.download.higher_order import download_higher_order

        path = download_higher_order(name, _root(root))
        click.echo(f"{name} ready at {path}")
        return
    from bench.data.download import download_dataset

    folder = download_dataset(name, _root(root), force=force)
    click.echo(f"{name} ready at {folder}")


@data.command("list")
@_root_option
def list_datasets(root: Path | None) -> None:
    """List the registered datasets, their kind and whether they are under the root."""
    from rich.console import Console
    from rich.table import Table

    from bench.data.registry import dataset_card, dataset_folder, is_present, registered_datasets

    root = _root(root)
    table = Table(title=f"datasets (root: {root})")
    for column in ("name", "kind", "present", "folder", "title"):
        table.add_column(column)
    for name in registered_datasets():
        card = dataset_card(name)
        folder = dataset_folder(name, root)
        table.add_row(
            name,
            str(card.get("kind", "")),
            "yes" if is_present(folder) else "no",
            str(folder),
            str(card.get("title", "")),
        )
    Console().print(table)


COMMANDS = [data]
