"""Fault injection: ``bench run`` killed at seeded random moments resumes to identical results.

One uninterrupted run is the reference. A second results folder sees a sequence of attempts,
each a ``bench run`` subprocess stopped by SIGKILL (once by SIGINT): early (backbone loading,
feature extraction, the first cell, at a random time), in the middle of training (MLflow on),
by Ctrl-C in training, and at a random moment after the last epoch (evaluation, result
writing, MLflow logging). A final attempt finishes the grid. Every cell's metrics, per-epoch
history and trained state must equal the reference, nothing half-written may remain, and no
MLflow run may be left RUNNING.

Epochs on synthetic-tiny take anything from milliseconds to seconds depending on the machine,
so "in the middle of training" cannot be hit by timing. The child can therefore be told
(``FAULT_HOLD_EPOCH``) to wait after writing that epoch's checkpoint until the test removes a
flag file; the test signals it while it waits, or releases it and signals after a random
delay. Nothing else in the child changes.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = pytest.mark.slow  # several `bench run` subprocesses, each killed and resumed

EPOCHS = 4
TIMEOUT = 180.0  # seconds an attempt may take before the test gives up (loaded machines)
SEED = int(os.environ.get("BENCH_FAULT_SEED", "20240531"))  # other seeds: other kill moments

#: The child: ``bench run``, optionally holding after the checkpoint of one epoch.
CHILD = """
import os, time
hold = os.environ.get("FAULT_HOLD_EPOCH")
if hold:
    import bench.checkpoints as checkpoints
    save = checkpoints.CheckpointStore.save
    def holding_save(self, checkpoint):
        path = save(self, checkpoint)
        if checkpoint.epoch == int(hold):
            flag = os.environ["FAULT_HOLD_FLAG"]
            open(flag, "w").close()
            while os.path.exists(flag):
                time.sleep(0.005)
        return path
    checkpoints.CheckpointStore.save = holding_save
from bench.cli import main
main()
"""


def _command(data_root: Path, results: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        CHILD,
        "run",
        "--methods",
        "clip,csp",
        "--datasets",
        "synthetic-tiny",
        "--seeds",
        "0",
        "--backbone",
        "tiny-random",
        "--epochs",
        str(EPOCHS),
        "--data-root",
        str(data_root),
        "--results-dir",
        str(results),
        *extra,
    ]


class Attempt:
    """A ``bench run`` subprocess whose output goes to a log file.

    Args:
        command: The command line.
        log: Where stdout and stderr go.
        hold_epoch: Make the child wait after writing this epoch's checkpoint.
    """

    def __init__(self, command: list[str], log: Path, hold_epoch: int | None = None) -> None:
        self.log = log
        self.flag = log.with_suffix(".hold")
        self._handle = open(log, "wb")  # noqa: SIM115 - closed in finish()
        env = {**os.environ, "COLUMNS": "200"}
        if hold_epoch is not None:
            env.update(FAULT_HOLD_EPOCH=str(hold_epoch), FAULT_HOLD_FLAG=str(self.flag))
        self.process = subprocess.Popen(
            command, stdout=self._handle, stderr=subprocess.STDOUT, env=env
        )

    def wait_for(self, marker: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
        """Poll until ``marker()`` holds (True) or the process exits first (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if marker():
                return True
            if self.process.poll() is not None:
                return marker()
            time.sleep(0.02)
        self.process.kill()
        raise AssertionError(f"no progress within {timeout:.0f} s; log:\n{self.output()}")

    def held(self) -> bool:
        """Whether the child waits at its hold point."""
        return self.flag.exists()

    def release(self) -> None:
        """Let a holding child go on."""
        self.flag.unlink(missing_ok=True)

    def stop(self, sig: signal.Signals, delay: float = 0.0) -> None:
        """Send ``sig`` after ``delay`` seconds (if the process still runs)."""
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and self.process.poll() is None:
            time.sleep(0.005)
        if self.process.poll() is None:
            self.process.send_signal(sig)

    def finish(self, timeout: float = TIMEOUT) -> int:
        """Wait for the process; return its exit status."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"attempt hung; log:\n{self.output()}") from None
        finally:
            self._handle.close()
            self.release()
        return code

    def output(self) -> str:
        """What the process printed."""
        return self.log.read_text(errors="replace")


def _checkpoint_epochs(results: Path) -> list[int]:
    return sorted(
        int(m.group(1))
        for p in results.glob("runs/*/csp/*/checkpoints/epoch-*.pt")
        if (m := re.match(r"epoch-(\d+)\.pt$", p.name))
    )


def _results(results: Path) -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted(results.glob("runs/*/*/*.json")):
        data = json.loads(path.read_text())
        state_file = path.with_suffix("") / "trainable_state.pt"
        data["_state"] = torch.load(state_file, weights_only=True) if state_file.exists() else None
        found[path.parent.name] = data
    return found


def _runs(results: Path) -> list[Any]:
    import logging

    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("czsl/synthetic-tiny")
    return list(client.search_runs([experiment.experiment_id], max_results=1000))


def _leftover_temporaries(results: Path) -> list[Path]:
    return [p for p in results.rglob(".*.tmp") if "mlartifacts" not in p.parts]


def test_killed_runs_resume_to_identical_results(tiny_root: Path, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    reference_dir, results = tmp_path / "reference", tmp_path / "results"
    logs: list[Path] = []

    def attempt(name: str, *extra: str, hold_epoch: int | None = None) -> Attempt:
        log = tmp_path / f"{len(logs)}-{name}.log"
        logs.append(log)
        return Attempt(_command(tiny_root, results, *extra), log, hold_epoch)

    def history() -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')}" for log in logs)

    def done() -> int:
        return max(_checkpoint_epochs(results), default=0)

    reference = Attempt(
        _command(tiny_root, reference_dir, "--no-mlflow"), tmp_path / "reference.log"
    )
    assert reference.finish() == 0, reference.output()

    # 1. early, at a random time: backbone loading, feature extraction, the first cell or the
    # training setup (it cannot get past the first epoch's checkpoint)
    run = attempt("kill-early", "--no-mlflow", hold_epoch=1)
    run.wait_for(lambda: (results / "locks").is_dir())
    deadline = time.monotonic() + rng.uniform(0.0, 3.0)
    run.wait_for(lambda: time.monotonic() >= deadline or run.held())
    run.stop(signal.SIGKILL)
    run.finish()
    assert done() <= 1

    # 2. in the middle of training, MLflow on: leaves RUNNING parent and cell runs behind
    target = min(done() + rng.choice([1, 2]), EPOCHS - 2)  # epochs left for 3. and 4.
    run = attempt("kill-training-mlflow", hold_epoch=target)
    assert run.wait_for(run.held), history()
    run.stop(signal.SIGKILL)
    assert run.finish() == -signal.SIGKILL, history()
    assert done() == target
    assert any(r.info.status == "RUNNING" for r in _runs(results))

    # 3. Ctrl-C in training: clean stop, exit 130, a resume line, nothing half-written
    run = attempt("sigint-training-mlflow", hold_epoch=done() + 1)
    assert run.wait_for(run.held), history()
    run.stop(signal.SIGINT)
    assert run.finish() == 130, history()
    output = run.output()
    assert "Resume with: bench run" in output and "Traceback" not in output, output
    assert "marked" in output and "KILLED" in output, output  # attempt 2's runs
    assert _leftover_temporaries(results) == []
    interrupted_pid = str(run.process.pid)
    mine = [r for r in _runs(results) if r.data.tags.get("bench.owner.pid") == interrupted_pid]
    assert {(r.data.tags["bench.role"], r.info.status) for r in mine} >= {
        ("parent", "KILLED"),
        ("cell", "KILLED"),
    }, [(r.info.run_name, r.info.status) for r in mine]

    # 4. at a random moment after the last epoch: evaluation, artifacts, result JSON, logging
    run = attempt("kill-late-mlflow", hold_epoch=EPOCHS)
    assert run.wait_for(run.held), history()
    run.release()
    run.stop(signal.SIGKILL, rng.uniform(0.0, 2.0))
    run.finish()

    # 5. finish the grid
    run = attempt("final-mlflow")
    assert run.finish() == 0, history()

    expected, got = _results(reference_dir), _results(results)
    assert sorted(got) == sorted(expected) == ["clip", "csp"]
    for method, ref in expected.items():
        mine = got[method]
        assert mine["config_hash"] == ref["config_hash"]
        assert mine["metrics"] == ref["metrics"], method
        assert mine["history"] == ref["history"], method
        epochs = [h["epoch"] for h in mine["history"]]
        assert epochs == ([] if method == "clip" else list(range(1, EPOCHS + 1)))
        fit = {k: v for k, v in mine["fit"].items() if k != "resumed_from_epoch"}
        assert fit == ref["fit"], method
        if ref["_state"] is not None:
            assert ref["_state"].keys() == mine["_state"].keys()
            for key, tensor in ref["_state"].items():
                assert torch.equal(mine["_state"][key], tensor), (method, key)
    assert got["csp"]["fit"].get("resumed_from_epoch", 0) >= 1  # training did resume

    assert not list(results.glob("runs/**/checkpoints/*.pt"))
    assert _leftover_temporaries(results) == []
    runs = _runs(results)
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    finished = [
        r for r in runs if r.data.tags.get("bench.role") == "cell" and r.info.status == "FINISHED"
    ]
    assert sorted(r.data.tags["bench.config_hash"] for r in finished) == sorted(
        e["config_hash"] for e in expected.values()
    )
    killed = {r.info.run_id for r in runs if r.info.status == "KILLED"}
    resumed = [r for r in runs if r.data.tags.get("bench.resumed_from_run") in killed]
    assert resumed, "no cell run links to the killed attempt it resumed"


def test_two_processes_share_a_results_folder(tiny_root: Path, tmp_path: Path) -> None:
    """Concurrent runs on one folder: every cell runs once, one MLflow run each, both succeed."""
    results = tmp_path / "results"
    command = _command(tiny_root, results, "--wait-elsewhere", "120")
    command[command.index("--methods") + 1] = "clip"
    command[command.index("--seeds") + 1] = "0,1,2"
    runs = [Attempt(command, tmp_path / f"process-{i}.log") for i in range(2)]
    codes = [run.finish() for run in runs]
    outputs = "\n".join(run.output() for run in runs)
    assert codes == [0, 0], outputs
    ran = sum(int(m.group(1)) for m in re.finditer(r"(\d+) cells run", outputs))
    assert ran == 3, outputs  # no cell was run twice
    hashes = sorted(
        json.loads(p.read_text())["config_hash"] for p in results.glob("runs/*/*/*.json")
    )
    assert len(hashes) == 3
    cells = [r for r in _runs(results) if r.data.tags.get("bench.role") == "cell"]
    assert sorted(r.data.tags["bench.config_hash"] for r in cells) == hashes
    assert {r.info.status for r in cells} == {"FINISHED"}
