"""``benchmarks/troika_gpu.py``: its tiny CPU dry run, and a clean exit without CUDA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


@pytest.mark.slow
def test_tiny_dry_run_measures_every_dataset(tmp_path: Path, load_benchmark):
    benchmark = load_benchmark("troika_gpu")
    out = tmp_path / "report.json"
    report = benchmark.main(["--tiny", "--device", "cpu", "--out", str(out)])
    assert json.loads(out.read_text()) == report
    assert report["tiny"] and report["device"] == "cpu"
    for card, layers in (("mit-states", 3), ("ut-zappos", 2), ("cgqa", 2)):
        result = report[card]
        assert "error" not in result, result
        assert result["cmt_layers"] == layers and result["train_step_s"] > 0
        assert result["closed_world"]["images_per_s"] > 0
        assert result["extrapolated"]["training_h"] > 0
    assert report["cgqa"]["open_world"]["pairs"] == 30  # synthetic-tiny: 6 x 5
    assert "open_world" not in report["mit-states"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_without_cuda_it_exits_with_one_line_and_writes_nothing(tmp_path: Path, load_benchmark):
    benchmark = load_benchmark("troika_gpu")
    out = tmp_path / "report.json"
    with pytest.raises(SystemExit, match="^no CUDA device") as raised:
        benchmark.main(["--out", str(out)])
    assert "\n" not in str(raised.value.code)
    assert not out.exists()
