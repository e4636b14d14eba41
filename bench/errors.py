"""User-facing errors: one clear line, exit status 2, never a traceback."""

from __future__ import annotations


class BenchError(Exception):
    """An error caused by the user's input or environment.

    The CLI prints ``str(error)`` as a single line and exits with status 2. The message
    must name the file or value at fault and say what to do about it.
    """

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))
