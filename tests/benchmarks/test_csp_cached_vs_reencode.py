"""``benchmarks/csp_cached_vs_reencode.py`` runs end to end, small, on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.mark.slow
def test_benchmark_times_every_variant_and_saves_its_report(
    tiny_root: Path, tmp_path: Path, load_benchmark
):
    benchmark = load_benchmark("csp_cached_vs_reencode")
    out = tmp_path / "report.json"
    report = benchmark.main(
        ["--data-root", str(tiny_root), "--epochs-timed", "1", "--device", "cpu", "--out", str(out)]
    )
    assert json.loads(out.read_text()) == report
    assert report["device"] == "cpu" and report["dataset"] == "synthetic-tiny"
    for name in ("cached_prefix", "cached_full", "reencode_full"):
        assert report[f"{name}_epoch_s"] > 0
    ratio = report["reencode_full_epoch_s"] / report["cached_prefix_epoch_s"]
    # the epoch times are saved rounded to 0.1 ms, the ratio from the unrounded times
    assert report["speedup_per_epoch"] == pytest.approx(ratio, rel=0.01, abs=0.01)
