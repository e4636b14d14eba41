"""End-to-end tests of the local executor and ``bench run`` with the tiny-random backbone."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bench.cli import cli
from bench.errors import BenchError
from bench.executors.local import run_local
from bench.pipeline.config import RunConfig

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


@pytest.mark.slow
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


@pytest.mark.slow
def test_output_says_weights_are_random_and_shows_table(finished_run):
    assert "RANDOM" in finished_run["output"].upper()
    assert "synthetic-tiny" in finished_run["output"] and "cw/AUC" in finished_run["output"]


@pytest.mark.slow
def test_output_not_a_terminal_has_a_line_per_cell_as_it_finishes(finished_run):
    output = finished_run["output"]
    table = output.index("Test results")
    for method in METHODS.split(","):
        pattern = rf"^{method} synthetic-tiny seed 0: done, cw AUC [0-9.]+, [0-9.]+ s$"
        line = re.search(pattern, output, re.M)
        assert line and line.start() < table, output


@pytest.mark.slow
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


@pytest.mark.slow
def test_mlflow_parent_run_is_the_comparison(finished_run, tmp_path):
    """The experiment's saved runs view and the parent's table, figure and description."""
    import mlflow

    from bench.tracking.client import HEADLINE_METRICS, RUNS_VIEW_KEY

    client = mlflow.MlflowClient(f"sqlite:///{finished_run['results'] / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("czsl/synthetic-tiny")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(experiment.tags[f"mlflow.sharedViewState.{RUNS_VIEW_KEY}"])
    assert "attributes.status = 'FINISHED'" in view["searchFilter"]
    assert view["groupsExpanded"] == {f"param.method.{m}": True for m in METHODS.split(",")}
    assert {f"metrics.`{m}`" for m in HEADLINE_METRICS} <= set(view["selectedColumns"])
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`bench.role` = 'parent'")
    for child in client.search_runs([experiment.experiment_id], "tags.`bench.role` = 'cell'"):
        assert set(HEADLINE_METRICS) <= set(child.data.metrics)
    run_id = parent.info.run_id
    logged = json.loads(parent.data.tags["mlflow.loggedArtifacts"])
    assert {"path": "comparison/synthetic-tiny.json", "type": "table"} in logged
    # (MlflowClient.load_table searches the global tracking URI, not the client's)
    table_file = client.download_artifacts(run_id, "comparison/synthetic-tiny.json", str(tmp_path))
    table = json.loads(Path(table_file).read_text())
    table = dict(zip(table["columns"], zip(*table["data"])))
    assert list(table["method"]) == METHODS.split(",")
    assert {"seeds", "cw AUC", "cw HM", "ow AUC", "ow HM"} <= set(table)
    artifacts = {a.path for a in client.list_artifacts(run_id, "comparison")}
    assert "comparison/synthetic-tiny-auc.png" in artifacts
    note = parent.data.tags["mlflow.note.content"]
    assert note.startswith("| Method |") and "| csp |" in note


@pytest.mark.slow
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


@pytest.mark.slow
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
    first = run_local(config)[0].result
    second = run_local(RunConfig(**{**config.__dict__, "results_dir": tmp_path / "b"}))[0].result
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
    results = {o.cell.method: o.result for o in run_local(config)}
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
        (["--methods", "clip", "--hparam", "adapters=false"], "--hparam adapters"),
        (["--methods", "troika", "--hparam", "adapters"], "KEY=VALUE"),
        (["--methods", "troika", "--hparam", "adapters=maybe"], "adapters"),
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
        run_local(config)


# ------------------------------------------------------------------ locks, backfill, owners
def _tiny_config(tiny_root: Path, results: Path, **kwargs) -> RunConfig:
    values = {
        "methods": ("clip",),
        "datasets": ("synthetic-tiny",),
        "seeds": (0, 1),
        "backbone": "tiny-random",
        "epochs": 0,
        "data_root": tiny_root,
        "results_dir": results,
        "log_mlflow": False,
        **kwargs,
    }
    return RunConfig(**values)


def _lock_of(results: Path, seed: int):
    from bench.locks import FileLock

    (path,) = (results / "locks" / "synthetic-tiny" / "clip").glob(f"s{seed}-*.lock")
    return FileLock(path)


@pytest.mark.slow
def test_cell_locked_by_another_process_is_skipped_then_picked_up(tiny_root, tmp_path):
    from io import StringIO

    from rich.console import Console

    first = run_local(_tiny_config(tiny_root, tmp_path))
    assert [o.status for o in first] == ["done", "done"]
    for path in tmp_path.glob("runs/*/clip/s1-*.json"):
        path.unlink()
    other = _lock_of(tmp_path, 1)  # flock: a second open file conflicts, even in one process
    assert other.acquire()
    try:
        stream = StringIO()
        outcomes = run_local(
            _tiny_config(tiny_root, tmp_path), console=Console(file=stream, width=300)
        )
        assert [o.status for o in outcomes] == ["skipped", "elsewhere"]
        assert "clip|synthetic-tiny|s1 is running in another bench process" in stream.getvalue()
        assert not list(tmp_path.glob("runs/*/clip/s1-*.json"))
    finally:
        other.release()
    assert [o.status for o in run_local(_tiny_config(tiny_root, tmp_path))] == [
        "skipped",
        "done",
    ]


@pytest.mark.slow
def test_wait_elsewhere_waits_for_the_other_process(tiny_root, tmp_path):
    import threading

    run_local(_tiny_config(tiny_root, tmp_path, seeds=(0,)))
    (result,) = tmp_path.glob("runs/*/clip/s0-*.json")
    result.unlink()
    other = _lock_of(tmp_path, 0)
    assert other.acquire()
    timer = threading.Timer(1.0, other.release)
    timer.start()
    try:
        config = _tiny_config(tiny_root, tmp_path, seeds=(0,), wait_elsewhere=60.0)
        assert [o.status for o in run_local(config)] == ["done"]
    finally:
        timer.cancel()
        other.release()


@pytest.mark.slow
def test_finished_cells_missing_from_mlflow_are_logged_later(finished_run, tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'other.db'}"
    again = _run([*finished_run["args"], "--tracking-uri", uri])
    assert again.exit_code == 0, again.output
    assert "0 cells run, 3 already done" in again.output
    assert again.output.count("to MLflow (it was missing there)") == 3
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("czsl/synthetic-tiny")
    runs = client.search_runs([experiment.experiment_id], "tags.`bench.role` = 'cell'")
    hashes = {
        json.loads(f.read_text())["config_hash"] for f in _result_files(finished_run["results"])
    }
    assert {r.data.tags["bench.config_hash"] for r in runs} == hashes
    assert {r.info.status for r in runs} == {"FINISHED"}


@pytest.mark.slow
def test_load_state_with_zero_epochs_reproduces_the_trained_cell(finished_run, tmp_path):
    (trained,) = [f for f in _result_files(finished_run["results"]) if f.parent.name == "csp"]
    state = trained.with_suffix("") / "trainable_state.pt"
    args = [*finished_run["args"], "--methods", "csp", "--epochs", "0", "--load-state", str(state)]
    args[args.index("--results-dir") + 1] = str(tmp_path)
    result = _run([*args, "--no-mlflow"])
    assert result.exit_code == 0, result.output
    (evaluated,) = _result_files(tmp_path)
    mine, reference = json.loads(evaluated.read_text()), json.loads(trained.read_text())
    assert mine["config"]["init_state"]["file"] == "trainable_state.pt"
    assert mine["config_hash"] != reference["config_hash"]
    for split in ("val", "test"):
        for world in ("cw", "ow"):
            assert mine["metrics"][split][world]["auc"] == pytest.approx(
                reference["metrics"][split][world]["auc"], abs=1e-6
            )


@pytest.mark.slow
def test_text_encoding_reaches_the_methods_and_their_result_config(
    tiny_root, tmp_path, monkeypatch
):
    import bench.methods.clip_family as clip_family

    trees = {"n": 0}
    build_positions = clip_family.pool_positions

    def counting(*args, **kwargs):
        trees["n"] += 1
        return build_positions(*args, **kwargs)

    monkeypatch.setattr(clip_family, "pool_positions", counting)  # prefix training only
    results = {}
    for encoding in ("full", "prefix"):
        trees["n"] = 0
        results_dir = tmp_path / encoding
        done = _run(
            [
                *("--methods", "csp", "--datasets", "synthetic-tiny", "--seeds", "0"),
                *("--backbone", "tiny-random", "--epochs", "1", "--no-mlflow"),
                *("--data-root", str(tiny_root), "--results-dir", str(results_dir)),
                *("--text-encoding", encoding),
            ]
        )
        assert done.exit_code == 0, done.output
        assert trees["n"] == (encoding == "prefix")
        (path,) = _result_files(results_dir)
        results[encoding] = json.loads(path.read_text())
    full, prefix = results["full"], results["prefix"]
    assert full["config"]["text_encoding"] == "full"
    assert prefix["config"] == {**full["config"], "text_encoding": "prefix"}
    assert prefix["config_hash"] != full["config_hash"]
    for split in ("val", "test"):
        for world in ("cw", "ow"):
            ours, reference = prefix["metrics"][split][world], full["metrics"][split][world]
            for key in ("auc", "best_hm", "best_seen", "best_unseen", "closed_acc"):
                assert ours[key] == pytest.approx(reference[key], abs=1e-5), (split, world, key)


def test_a_method_on_image_tokens_runs_through_the_pipeline(tiny_root, tmp_path):
    config = RunConfig(
        methods=("clip", "dfsp"),
        datasets=("synthetic-tiny",),
        seeds=(0,),
        backbone="tiny-random",
        epochs=1,
        data_root=tiny_root,
        results_dir=tmp_path,
        log_mlflow=False,
    )
    results = {o.cell.method: o.result for o in run_local(config)}
    dfsp = results["dfsp"]
    assert dfsp["status"] == "complete" and dfsp["fit"]["epochs_run"] == 1
    assert len(dfsp["history"]) == 1 and np.isfinite(dfsp["history"][0]["val/cw/auc"])
    for split in ("val", "test"):
        for world in ("cw", "ow"):
            assert 0.0 <= dfsp["metrics"][split][world]["auc"] <= 1.0
    # the tokens were cached once for the run (fp16 arrays beside the pooled features)
    arrays = sorted((tmp_path / "cache" / "features").rglob("*-tokens.npy"))
    assert len(arrays) == 3 and np.load(arrays[0], mmap_mode="r").dtype == np.float16
    assert run_local(RunConfig(**{**config.__dict__, "rerun": True}))[1].result["feature_cache_hit"]


@pytest.mark.slow
def test_troika_runs_live_and_on_tokens_through_the_pipeline(tiny_root, tmp_path):
    """Live images with adapters (augmented views under --augment paper), and with
    ``--hparam adapters=false`` on cached tokens only; both worlds are scored."""
    common = ["--methods", "troika", "--datasets", "synthetic-tiny", "--seeds", "0"]
    common += ["--backbone", "tiny-random", "--epochs", "1", "--data-root", str(tiny_root)]
    common += ["--results-dir", str(tmp_path), "--no-mlflow"]
    _run([*common, "--augment", "paper"])
    _run([*common, "--hparam", "adapters=false"])
    results = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("runs/*/troika/*.json"))]
    by_adapters = {r["config"]["hparams"]["adapters"]: r for r in results}
    assert set(by_adapters) == {True, False}
    live, cached = by_adapters[True], by_adapters[False]
    assert live["config"]["augment"] == "paper" and live["fit"]["augment"] == "paper"
    assert cached["config"]["augment"] == "none"  # tokens are un-augmented
    for result in (live, cached):
        assert result["status"] == "complete" and result["fit"]["epochs_run"] == 1
        for split in ("val", "test"):
            for world in ("cw", "ow"):
                assert 0.0 <= result["metrics"][split][world]["auc"] <= 1.0
    # only the adapter-free run needed image tokens: they were cached once, for it
    assert len(sorted((tmp_path / "cache" / "features").rglob("*-tokens.npy"))) == 3
