"""Device selection and autocast."""

from __future__ import annotations

import pytest
import torch

from bench.device import autocast, autocast_dtype_for, resolve_device
from bench.errors import BenchError


def test_resolve_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(BenchError, match="CUDA"):
        resolve_device("cuda")
    with pytest.raises(BenchError, match="not a torch device"):
        resolve_device("gpu-please")


def test_autocast_is_noop_on_cpu() -> None:
    cpu = torch.device("cpu")
    assert autocast_dtype_for(cpu) is None
    assert autocast_dtype_for(cpu, "fp16") is None
    with autocast(cpu, torch.bfloat16):
        out = torch.ones(2, 2) @ torch.ones(2, 2)
    assert out.dtype == torch.float32


def test_fp16_precision_asks_cuda_for_float16_autocast() -> None:
    # the paper protocol's request; decided without touching a GPU
    assert autocast_dtype_for(torch.device("cuda"), "fp16") is torch.float16
