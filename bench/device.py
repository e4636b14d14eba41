"""Device and precision helpers: pick the torch device and the autocast dtype for it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from bench.errors import BenchError


def resolve_device(requested: str | None = None) -> torch.device:
    """Return the torch device to run on.

    Args:
        requested: A torch device string ("cpu", "cuda", "cuda:1", "mps"), or None / "auto" to
            pick CUDA when available and the CPU otherwise.

    Raises:
        BenchError: The string is not a device, or names an accelerator this machine lacks.
    """
    if requested is None or requested.strip().lower() in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested.strip())
    except (RuntimeError, ValueError) as exc:
        raise BenchError(
            f"--device {requested!r} is not a torch device; use cpu, cuda, cuda:N or auto"
        ) from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BenchError(
                f"--device {requested} asked for CUDA but torch.cuda.is_available() is False on "
                "this machine (no GPU, driver, or CUDA build of torch); use --device cpu"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise BenchError(
                f"--device {requested}: this machine has {count} CUDA device(s) "
                f"(cuda:0..cuda:{count - 1})"
            )
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise BenchError(f"--device {requested}: MPS is not available here; use --device cpu")
    elif device.type != "cpu":
        raise BenchError(f"--device {requested!r} is not supported; use cpu, cuda, cuda:N or auto")
    return device


def autocast_dtype_for(device: torch.device, precision: str | None = None) -> torch.dtype | None:
    """Mixed-precision dtype for ``device``: None (fp32) off CUDA; on CUDA fp16 when
    ``precision`` is "fp16" (the CSP paper's), else bf16 where supported (fp16 otherwise)."""
    if device.type != "cuda":
        return None
    if precision == "fp16":
        return torch.float16
    index = device.index if device.index is not None else torch.cuda.current_device()
    with torch.cuda.device(index):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def autocast(device: torch.device | str, dtype: torch.dtype | None) -> Iterator[None]:
    """Autocast to ``dtype`` on CUDA; a no-op on other devices or when ``dtype`` is None."""
    device = torch.device(device)
    if device.type != "cuda" or dtype is None:
        yield
        return
    with torch.autocast(device_type="cuda", dtype=dtype):
        yield
