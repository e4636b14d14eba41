"""``bench backbone``: list backbone specs and pretrain the harness's own toy-clip."""

from __future__ import annotations

from pathlib import Path

import click


@click.group("backbone")
def backbone() -> None:
    """List backbones and pretrain toy-clip."""


@backbone.command("list")
def list_backbones() -> None:
    """Show the accepted --backbone forms (short names and example specs)."""
    from rich.console import Console
    from rich.table import Table

    from bench.backbones.registry import SOURCES

    table = Table(title="--backbone values")
    table.add_column("spec", no_wrap=True)
    table.add_column("what it is")
    for source in SOURCES:
        for example in source.examples:
            table.add_row(example, source.description)
    Console().print(table)


@backbone.command("pretrain")
@click.argument("name", type=click.Choice(["toy-clip"]))
@click.option(
    "--results-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Results folder; the model goes to <results-dir>/cache/backbones "
    "[default: $BENCH_TOY_CLIP_DIR or ./results/cache/backbones].",
)
@click.option(
    "--seed",
    type=click.IntRange(0, 2**32 - 1),
    default=0,
    show_default=True,
    help="Pretraining seed (used later as --backbone toy-clip:SEED; 0 is plain toy-clip).",
)
@click.option("--force", is_flag=True, help="Pretrain again even if a valid build is cached.")
def pretrain(name: str, results_dir: Path | None, seed: int, force: bool) -> None:
    """Pretrain toy-clip (once; later runs reuse the cached build)."""
    import json

    from rich.console import Console

    from bench.backbones.toy_clip import MANIFEST_FILE, PretrainConfig, ensure_toy_clip

    console = Console(stderr=True)
    cache_dir = results_dir / "cache" / "backbones" if results_dir is not None else None
    folder, built = ensure_toy_clip(
        cache_dir, PretrainConfig(seed=seed), force=force, console=console
    )
    manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    training = manifest.get("training", {})
    state = "pretrained" if built else "already cached (use --force to pretrain again)"
    spec = "toy-clip" if seed == 0 else f"toy-clip:{seed}"
    click.echo(f"{name} {state}: {folder}")
    click.echo(
        f"  {manifest.get('parameters', 0) / 1e6:.2f}M parameters, {training.get('steps')} steps, "
        f"final loss {training.get('final_loss', float('nan')):.3f}, "
        f"{training.get('seconds', float('nan')):.0f}s to pretrain; hash {manifest['hash'][:12]}"
    )
    click.echo(f"  use it with: bench run --backbone {spec}")


COMMANDS = [backbone]
