"""The ``bench`` command line: parses options and dispatches to the library API.

Heavy imports (torch, open_clip, mlflow) happen inside the commands so ``bench --help``
stays instant. Every ``BenchError`` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import importlib
import sys

import click

from bench import __version__
from bench.errors import BenchError


class BenchGroup(click.Group):
    """A click group that turns user-fixable errors into one clear line and exit status 2.

    ``BenchError`` prints its message; an ``OSError`` for a full disk, a read-only file
    system or a missing permission (raised by a write that no caller annotated) prints what
    happened and to which file, when known; a bad option value (click's usage errors) prints
    click's message and where to find help.
    """

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise  # a bare group: click shows its help
        except click.UsageError as error:
            where = error.ctx.command_path if error.ctx is not None else "bench"
            _fail(ctx, f"{error.format_message().rstrip('.')}; see '{where} --help'")
        except BenchError as error:
            _fail(ctx, str(error))
        except OSError as error:
            message = _os_error_line(error)
            if message is None:
                raise
            _fail(ctx, message)


def _fail(ctx: click.Context, message: str) -> None:
    click.secho(f"error: {' '.join(message.split())}", err=True, fg="red")
    ctx.exit(BenchError.exit_code)


def _os_error_line(error: OSError) -> str | None:
    import errno

    where = f" {error.filename}" if error.filename else ""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full while writing{where}; free space and rerun"
    if error.errno == errno.EROFS:
        return f"cannot write{where}: read-only file system; write somewhere else"
    if error.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied:{where or ' (file unknown)'}; fix the permissions and rerun"
    return None


@click.group(cls=BenchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bench")
def cli() -> None:
    """Benchmark harness for compositional zero-shot learning (CZSL)."""


def _register() -> None:
    for module_name in ("data", "run", "backbone", "report"):
        module = importlib.import_module(f"bench.cli.{module_name}")
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
    """Console-script entry point."""
    cli.main(prog_name="bench")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
