"""The ``bench`` command line: parses options and dispatches to the library API.

Heavy imports (torch, open_clip, mlflow) happen inside the commands so ``bench --help``
stays instant. Every ``BenchError`` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import sys

import click

from bench import __version__
from bench.errors import BenchError


class BenchGroup(click.Group):
    """A click group that turns ``BenchError`` into one clear line and exit status 2."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except BenchError as error:
            click.secho(f"error: {error}", err=True, fg="red")
            ctx.exit(BenchError.exit_code)


@click.group(cls=BenchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bench")
def cli() -> None:
    """Benchmark harness for compositional zero-shot learning (CZSL)."""


def _register() -> None:
    for module_name in ("data", "run", "backbone", "report"):
        try:
            module = __import__(f"bench.cli.{module_name}", fromlist=["COMMANDS"])
        except ModuleNotFoundError as exc:  # a command module not written yet
            if exc.name != f"bench.cli.{module_name}":
                raise
            continue
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
    """Console-script entry point."""
    cli.main(prog_name="bench")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
