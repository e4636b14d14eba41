"""``benchmarks/troika_open_world_memory.py`` runs end to end, small, on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.mark.slow
def test_benchmark_streams_the_scored_images_and_saves_its_report(tmp_path: Path, load_benchmark):
    benchmark = load_benchmark("troika_open_world_memory")
    out = tmp_path / "report.json"
    report = benchmark.main(["--preset", "synthetic-tiny", "--images", "4", "--out", str(out)])
    assert json.loads(out.read_text()) == report
    assert report["n_scored"] == 4 and report["n_test"] == 32 and report["n_pairs"] == 30
    assert report["variant"].startswith("adapters=false")
    assert report["score_blocks"] == 1  # 4 images x 30 pairs fit one block
    assert report["scoring_s"] > 0 and report["rss_peak_mb"] >= report["rss_start_mb"]
    assert report["extrapolated"]["scoring_all_test_images_s"] == pytest.approx(
        report["scoring_s_per_image"] * 32, rel=0.05, abs=1
    )
    sizes = report["sizes"]
    assert sizes["pairs_per_traction_chunk"] == sizes["traction_rows"] // sizes["rows_per_block"]
