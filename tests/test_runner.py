"""End-to-end tests of the runner and ``bench run`` with the tiny-random backbone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bench.cli import cli
from bench.errors import BenchError
from bench.runner import RunConfig, Runner

METHODS = "clip,coop,csp"


def _run(args: list[str]) -> object:
    result = CliRunner().invoke(cli, ["run", *args], catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def finished_run(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    results = tmp_path_factory.mktemp("results")
    args = [
        "--methods",
        METHODS,
        "--datasets",
        "synthetic-tiny",
        "--seeds",
        "0",
        "--backbone",
        "tiny-random",
        "--epochs",
        "1",
        "--data-root",
        str(tiny_root),
        "--results-dir",
        str(results),
    ]
    first = _run(args)
    assert first.exit_code == 0, first.output
    return {"results": results, "args": args, "output": first.output}


def _result_files(results: Path) -> list[Path]:
    return sorted((results / "runs").glob("*/*/*.json"))


def test_every_cell_writes_a_result_json(finished_run):
    files = _result_files(finished_run["results"])
    assert [f.parent.name for f in files] == ["clip", "coop", "csp"]
    for path in files:
        result = json.loads(path.read_text())
        assert result["status"] == "complete"
        assert result["backbone_random_weights"] is True
        assert "RANDOM" in result["backbone_warning"].upper()
        for split in ("val", "test"):
            for world in ("cw", "ow"):
                block = result["metrics"][split][world]
                assert 0.0 <= block["auc"] <= 1.0
                assert (
                    len(block["seen_curve"]) == len(block["unseen_curve"]) == len(block["biases"])
                )
        assert (path.with_suffix("") / "curves.png").stat().st_size > 0
        assert result["versions"]["bench"]
    trained = json.loads(files[2].read_text())
    assert [h["epoch"] for h in trained["history"]] == [1]
    assert (files[2].with_suffix("") / "trainable_state.pt").exists()


def test_output_says_weights_are_random_and_shows_table(finished_run):
    assert "RANDOM" in finished_run["output"].upper()
    assert "synthetic-tiny" in finished_run["output"] and "cw/AUC" in finished_run["output"]


def test_mlflow_runs_params_metrics(finished_run):
    import mlflow

    uri = f"sqlite:///{finished_run['results'] / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("czsl/synthetic-tiny")
    assert experiment is not None
    assert experiment.artifact_location.startswith(
        (finished_run["results"] / "mlartifacts").resolve().as_uri()
    )
    runs = client.search_runs([experiment.experiment_id])
    children = {r.info.run_name: r for r in runs if r.data.tags.get("bench.role") == "cell"}
    parents = [r for r in runs if r.data.tags.get("bench.role") == "parent"]
    assert set(children) == {
        "clip|synthetic-tiny|s0",
        "coop|synthetic-tiny|s0",
        "csp|synthetic-tiny|s0",
    }
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    csp = children["csp|synthetic-tiny|s0"]
    assert csp.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    assert csp.data.params["method"] == "csp"
    assert csp.data.params["seed"] == "0"
    assert csp.data.params["backbone"] == "tiny-random"
    assert csp.data.params["hp.epochs"] == "1"
    assert csp.data.params["eval.topk"] == "1"
    for key in (
        "bench.version",
        "bench.git_commit",
        "bench.config_hash",
        "bench.feature_cache",
        "bench.device",
    ):
        assert key in csp.data.tags
    for split in ("val", "test"):
        for world in ("cw", "ow"):
            for metric in ("auc", "hm", "seen", "unseen", "attr_acc", "obj_acc", "acc"):
                assert f"{split}/{world}/{metric}" in csp.data.metrics
    history = client.get_metric_history(csp.info.run_id, "val/cw/auc")
    # epoch 1, then the final (best-epoch) value after it
    assert [m.step for m in history] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(csp.info.run_id)}
    assert {"config.json", "curves", "state"} <= artifacts


def test_rerun_skips_and_flag_redoes(finished_run):
    files = _result_files(finished_run["results"])
    stamps = {f: f.stat().st_mtime_ns for f in files}
    again = _run(finished_run["args"])
    assert again.exit_code == 0
    assert "0 cells run, 3 already done" in again.output
    assert {f: f.stat().st_mtime_ns for f in files} == stamps
    redo = _run([*finished_run["args"], "--methods", "clip", "--rerun"])
    assert redo.exit_code == 0
    assert "1 cells run" in redo.output
    clip_file = [f for f in files if f.parent.name == "clip"][0]
    assert clip_file.stat().st_mtime_ns != stamps[clip_file]


def test_same_seed_same_numbers(tiny_root, tmp_path):
    config = RunConfig(
        methods=("csp",),
        datasets=("synthetic-tiny",),
        seeds=(3,),
        backbone="tiny-random",
        epochs=2,
        data_root=tiny_root,
        results_dir=tmp_path / "a",
        log_mlflow=False,
    )
    first = Runner(config).run()[0].result
    second = Runner(RunConfig(**{**config.__dict__, "results_dir": tmp_path / "b"})).run()[0].result
    for split in ("val", "test"):
        for world in ("cw", "ow"):
            assert first["metrics"][split][world] == second["metrics"][split][world]
    assert second["feature_cache_hit"] is False


def test_epochs_zero_csp_and_coop_equal_clip_on_every_metric(tiny_root, tmp_path):
    # synthetic names are single CLIP tokens, so untrained soft prompts are CLIP's own prompt.
    config = RunConfig(
        methods=("clip", "coop", "csp"),
        datasets=("synthetic-tiny",),
        seeds=(0,),
        backbone="tiny-random",
        epochs=0,
        data_root=tiny_root,
        results_dir=tmp_path,
        log_mlflow=False,
    )
    results = {o.cell.method: o.result for o in Runner(config).run()}
    for method in ("coop", "csp"):
        for split in ("val", "test"):
            for world in ("cw", "ow"):
                ours, reference = (
                    results[method]["metrics"][split][world],
                    results["clip"]["metrics"][split][world],
                )
                for key in (
                    "auc",
                    "best_hm",
                    "best_seen",
                    "best_unseen",
                    "attr_acc",
                    "obj_acc",
                    "closed_acc",
                ):
                    assert ours[key] == pytest.approx(reference[key], abs=1e-6), (
                        method,
                        split,
                        world,
                        key,
                    )
                np.testing.assert_allclose(
                    ours["unseen_curve"], reference["unseen_curve"], atol=1e-6
                )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", "nosuch"], "unknown method 'nosuch'"),
        (["--datasets", "nosuch-dataset"], "nosuch-dataset"),
        (["--seeds", "-1"], "--seeds"),
        (["--seeds", "a,b"], "--seeds"),
        (["--epochs", "-2"], "--epochs"),
    ],
)
def test_bad_run_options_give_one_line(args, message, tmp_path):
    result = CliRunner().invoke(
        cli,
        ["run", "--backbone", "tiny-random", "--results-dir", str(tmp_path), "--no-mlflow", *args],
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output
    assert "Traceback" not in result.output


def test_unwritable_results_dir(tmp_path, tiny_root):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    config = RunConfig(
        methods=("clip",),
        datasets=("synthetic-tiny",),
        seeds=(0,),
        backbone="tiny-random",
        data_root=tiny_root,
        results_dir=blocker / "results",
        log_mlflow=False,
    )
    with pytest.raises(BenchError, match="not writable"):
        Runner(config).run()
