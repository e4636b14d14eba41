"""Benchmark: the README's main command, ``bench run`` with no options, on a fresh machine.

Runs ``bench run`` in an empty working directory (so ``./data`` and ``./results`` start
empty: the synthetic dataset is generated and toy-clip is pretrained, as on a fresh
machine), then reconstructs a timeline of its stages from what it wrote: dataset generation,
toy-clip pretraining, feature extraction, each cell's fit/eval, and the rest (MLflow, table).
Reports the wall time, the child's CPU time and the load average (other processes on the
machine slow it down: compare wall time with CPU time / cores). Goal: <= 15 min on 2 CPU cores.

Usage: python benchmarks/default_run.py [--workdir DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _bench_command() -> list[str]:
    script = Path(sys.executable).with_name("bench")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "bench.cli"]


def _mtime(path: Path) -> float | None:
    return path.stat().st_mtime if path.exists() else None


def _timeline(work: Path, start: float, end: float) -> dict[str, Any]:
    """Stage durations from the files ``bench run`` wrote (mtimes) and its result JSONs."""
    data_done = _mtime(work / "data" / "synthetic" / "generator.json")
    manifests = sorted((work / "results" / "cache" / "backbones").glob("toy-clip-*/manifest.json"))
    toy_done = _mtime(manifests[0]) if manifests else None
    toy_manifest = json.loads(manifests[0].read_text()) if manifests else {}
    feature_files = sorted((work / "results" / "cache" / "features").rglob("*.json"))
    features_done = max((p.stat().st_mtime for p in feature_files), default=None)
    results = sorted((work / "results" / "runs").glob("*/*/*.json"))
    cells = []
    for path in results:
        result = json.loads(path.read_text())
        metrics = result["metrics"]["test"]
        cells.append(
            {
                "method": result["cell"]["method"],
                "seed": result["cell"]["seed"],
                "fit_s": result["timings"]["fit_s"],
                "eval_s": result["timings"]["eval_s"],
                "total_s": result["timings"]["total_s"],
                "finished_at_s": round(path.stat().st_mtime - start, 1),
                **{
                    f"{world}/{key}": round(100 * metrics[world][key], 2)
                    for world in ("cw", "ow")
                    for key in ("best_seen", "best_unseen", "best_hm", "auc")
                },
                "cw/unseen_at_bias_1000": round(100 * metrics["cw"]["unseen_curve"][-1], 2),
            }
        )
    last_cell = max((start + c["finished_at_s"] for c in cells), default=None)
    marks = [("start", start), ("dataset generated", data_done), ("toy-clip pretrained", toy_done)]
    marks += [("features extracted", features_done), ("last cell done", last_cell), ("end", end)]
    stages = {}
    previous = start
    for name, mark in marks[1:]:
        if mark is not None:
            stages[name] = round(mark - previous, 1)
            previous = mark
    return {
        "stages_s": stages,
        "toy_clip": {
            "pretrain_s": toy_manifest.get("training", {}).get("seconds"),
            "steps": toy_manifest.get("training", {}).get("steps"),
            "final_loss": toy_manifest.get("training", {}).get("final_loss"),
            "parameters": toy_manifest.get("parameters"),
            "hash": toy_manifest.get("hash"),
        },
        "cells": cells,
    }


def _summary(cells: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Mean +- std over seeds per method, in percent."""
    out: dict[str, dict[str, str]] = {}
    for method in dict.fromkeys(c["method"] for c in cells):
        rows = [c for c in cells if c["method"] == method]
        out[method] = {}
        for key in rows[0]:
            if "/" not in key:
                continue
            values = [r[key] for r in rows]
            spread = statistics.pstdev(values) if len(values) > 1 else 0.0
            out[method][key] = f"{statistics.mean(values):.1f} +- {spread:.1f}"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="Keep the run here (empty).")
    parser.add_argument("--out", type=Path, default=REPO / "results/benchmarks/default_run.json")
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-default-run-"))
    work.mkdir(parents=True, exist_ok=True)
    if any(work.iterdir()):
        raise SystemExit(f"{work} is not empty; the benchmark needs a fresh folder")
    env = {
        k: v for k, v in os.environ.items() if k not in ("BENCH_DATA_ROOT", "BENCH_TOY_CLIP_DIR")
    }
    command = [*_bench_command(), "run"]
    load_before = os.getloadavg()
    start = time.time()
    process = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
    end = time.time()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    report = {
        "command": "bench run",
        "exit_code": process.returncode,
        "wall_s": round(end - start, 1),
        "child_cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        **_timeline(work, start, end),
        "stdout_tail": process.stdout[-6000:],
        "stderr_tail": process.stderr[-2000:],
    }
    report["summary_percent"] = _summary(report["cells"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(process.stdout)
    if process.returncode != 0:
        print(process.stderr[-2000:], file=sys.stderr)
    print(
        f"bench run: exit {process.returncode}, {report['wall_s']} s wall, "
        f"{report['child_cpu_s']} s CPU, load {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}"
    )
    for name, seconds in report["stages_s"].items():
        print(f"  {name:>20}: {seconds:7.1f} s")
    for method, row in report["summary_percent"].items():
        print(f"  {method}: " + ", ".join(f"{k} {v}" for k, v in row.items()))
    print(f"written to {args.out}")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
