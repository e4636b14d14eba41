"""``bench run`` under each protocol: the protocol object in results and MLflow, the shared
augmented views, a new cell per protocol, glove50 standing in offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.cli import cli


def _run(tiny_root: Path, results: Path, *extra: str) -> str:
    args = [
        "run",
        "--methods",
        "csp,coop,clip",
        "--datasets",
        "synthetic-tiny",
        "--seeds",
        "0",
        "--backbone",
        "tiny-random",
        "--epochs",
        "2",
        "--data-root",
        str(tiny_root),
        "--results-dir",
        str(results),
        *extra,
    ]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _results(results: Path) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for path in sorted((results / "runs").glob("*/*/*.json")):
        result = json.loads(path.read_text())
        found.setdefault(result["cell"]["method"], []).append(result)
    return found


@pytest.fixture(scope="module")
def paper_run(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    results = tmp_path_factory.mktemp("results")
    with pytest.MonkeyPatch.context() as patch:
        # offline: GloVe 6B cannot be downloaded (nothing listens on port 9)
        patch.setenv("BENCH_GLOVE_DIR", str(results / "glove"))
        patch.setenv("BENCH_DOWNLOAD_BASE_URL", "http://127.0.0.1:9")
        output = _run(tiny_root, results, "--protocol", "paper")
    return {"results": results, "output": output}


@pytest.mark.slow
def test_paper_protocol_is_recorded_with_its_deviations(paper_run: dict) -> None:
    results = _results(paper_run["results"])
    csp = results["csp"][0]
    protocol = csp["config"]["protocol"]
    assert protocol["name"] == "paper"
    assert protocol["epoch_selection"] == "last" and protocol["augment"] == "paper"
    assert protocol["name_cleaning"] == "official" and protocol["precision"] == "fp32"
    assert protocol["feasibility"] == {
        "filter": "csp-multiply",
        "word_vectors": "glove50",
        "names": "official",
    }
    assert protocol["matches_paper"] is False
    assert (
        "word_vectors glove50 standing in offline (paper: glove:6B.300d)"
        in (protocol["deviations"])
    )
    assert "glove50 stands in" in " ".join(paper_run["output"].split())
    assert csp["fit"]["best_epoch"] == 2  # the last epoch
    assert csp["feasibility"]["mode"] == "csp-multiply"
    clip = results["clip"][0]["config"]["protocol"]
    assert clip["augment"] == "none" and clip["name"] == "paper"


@pytest.mark.slow
def test_views_are_encoded_once_per_epoch_for_csp_and_coop(paper_run: dict) -> None:
    results = _results(paper_run["results"])
    assert results["csp"][0]["fit"]["train_views"] == {"encoded": [1, 2], "cached": []}
    assert results["coop"][0]["fit"]["train_views"] == {"encoded": [], "cached": [1, 2]}
    views = sorted(p.name for p in paper_run["results"].rglob("train-paper-s0-e*.pt"))
    assert len(views) == 2


@pytest.mark.slow
def test_protocol_is_logged_to_mlflow(paper_run: dict) -> None:
    import mlflow

    uri = f"sqlite:///{paper_run['results'] / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("czsl/synthetic-tiny")
    runs = client.search_runs([experiment.experiment_id])
    csp = next(r for r in runs if r.info.run_name == "csp|synthetic-tiny|s0")
    params = csp.data.params
    assert params["protocol.name"] == "paper"
    assert params["protocol.epoch_selection"] == "last"
    assert params["protocol.augment"] == "paper"
    assert params["protocol.name_cleaning"] == "official"
    assert params["protocol.precision"] == "fp32"
    assert params["protocol.feasibility.filter"] == "csp-multiply"
    assert params["protocol.feasibility.word_vectors"] == "glove50"
    assert params["protocol.matches_paper"] == "False"
    assert "glove50 standing in offline" in params["protocol.deviations"]


@pytest.mark.slow
def test_a_protocol_change_makes_new_cells(paper_run: dict, tiny_root: Path) -> None:
    results = paper_run["results"]
    before = {m: [r["config_hash"] for r in rs] for m, rs in _results(results).items()}
    _run(tiny_root, results, "--protocol", "paper")  # the same protocol: all skipped
    assert {m: [r["config_hash"] for r in rs] for m, rs in _results(results).items()} == before
    _run(tiny_root, results)  # synthetic: the harness protocol by default
    after = _results(results)
    for method in ("csp", "coop", "clip"):
        assert len(after[method]) == 2
        names = sorted(r["config"]["protocol"]["name"] for r in after[method])
        assert names == ["harness", "paper"]
    harness = next(r for r in after["csp"] if r["config"]["protocol"]["name"] == "harness")
    assert harness["config"]["protocol"]["epoch_selection"] == "val-auc"
    assert harness["config"]["protocol"]["feasibility"]["word_vectors"] is None
    assert "train_views" not in harness["fit"]
