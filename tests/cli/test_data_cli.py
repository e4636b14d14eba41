"""``bench data``: info, verify, prepare, download, list."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.cli import cli
from bench.data.czsl import describe, load_dataset


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.delenv("BENCH_DATA_ROOT", raising=False)
    return CliRunner()


def test_data_group_is_registered(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0 and "data" in result.output
    result = runner.invoke(cli, ["data", "--help"])
    for command in ("info", "verify", "prepare", "download", "list"):
        assert command in result.output


def test_info_json_is_exactly_describe(runner: CliRunner, tiny_root: Path) -> None:
    result = runner.invoke(
        cli, ["data", "info", "synthetic-tiny", "--root", str(tiny_root), "--json"]
    )
    assert result.exit_code == 0, result.output
    expected = describe(load_dataset(tiny_root / "synthetic-tiny"))
    assert json.loads(result.stdout) == expected
    assert result.stdout.strip() == json.dumps(expected)


def test_info_by_path_table(runner: CliRunner, tiny_root: Path) -> None:
    result = runner.invoke(cli, ["data", "info", str(tiny_root / "synthetic-tiny")])
    assert result.exit_code == 0, result.output
    assert "train" in result.stdout and "72" in result.stdout
    assert "open-world pairs 30" in result.stdout


def test_info_prepares_missing_synthetic(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(
        cli, ["data", "info", "synthetic-tiny", "--root", str(tmp_path), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["attrs"] == 6
    assert (tmp_path / "synthetic-tiny" / "generator.json").is_file()


def test_info_env_root(runner: CliRunner, tiny_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_DATA_ROOT", str(tiny_root))
    result = runner.invoke(cli, ["data", "info", "synthetic-tiny", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["objs"] == 5


def test_unknown_dataset_is_one_line_exit_2(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(cli, ["data", "info", "imagenet", "--root", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown dataset 'imagenet'" in lines[0]


def test_real_dataset_missing_says_download(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(cli, ["data", "info", "ut-zappos", "--root", str(tmp_path)])
    assert result.exit_code == 2
    assert f"bench data download ut-zappos --root {tmp_path}" in result.stderr


def test_verify_ok_then_missing_image(runner: CliRunner, tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert (
        runner.invoke(cli, ["data", "prepare", "synthetic-tiny", "--root", str(root)]).exit_code
        == 0
    )
    result = runner.invoke(cli, ["data", "verify", "synthetic-tiny", "--root", str(root)])
    assert result.exit_code == 0, result.output
    assert "counts match the card" in result.stdout and result.stdout.strip().endswith("OK")

    ds = load_dataset(root / "synthetic-tiny")
    victim = ds.splits["test"][0]
    ds.image_path(victim).unlink()
    result = runner.invoke(cli, ["data", "verify", "synthetic-tiny", "--root", str(root)])
    assert result.exit_code == 1
    assert "1 missing image(s)" in result.stdout and victim.image in result.stdout
    assert result.stdout.strip().endswith("FAILED")


def test_verify_count_mismatch(runner: CliRunner, tmp_path: Path) -> None:
    import torch

    root = tmp_path / "root"
    runner.invoke(cli, ["data", "prepare", "synthetic-tiny", "--root", str(root)])
    meta = root / "synthetic-tiny" / "metadata_compositional-split-natural.t7"
    rows = torch.load(meta, weights_only=True)
    first_train = next(i for i, row in enumerate(rows) if row["set"] == "train")
    del rows[first_train]
    torch.save(rows, meta)
    result = runner.invoke(cli, ["data", "verify", "synthetic-tiny", "--root", str(root)])
    assert result.exit_code == 1
    assert "train.images: card says 72, found 71" in result.stdout


def test_prepare_is_idempotent(runner: CliRunner, tmp_path: Path) -> None:
    args = ["data", "prepare", "synthetic-tiny", "--root", str(tmp_path)]
    first = runner.invoke(cli, args)
    assert first.exit_code == 0 and first.stdout.startswith("generated synthetic-tiny")
    second = runner.invoke(cli, args)
    assert second.exit_code == 0 and second.stdout.startswith("already present")
    other_seed = runner.invoke(cli, [*args, "--seed", "3"])
    assert other_seed.exit_code == 2 and "--force" in other_seed.stderr
    forced = runner.invoke(cli, [*args, "--seed", "3", "--force"])
    assert forced.exit_code == 0 and forced.stdout.startswith("generated")


def test_prepare_real_dataset_says_download(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(cli, ["data", "prepare", "cgqa", "--root", str(tmp_path)])
    assert result.exit_code == 2
    assert "bench data download cgqa" in result.stderr


def test_download_dispatches(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def download_dataset(name: str, root: Path, force: bool = False) -> Path:
        calls.append((name, root, force))
        return root / name

    fake = types.ModuleType("bench.data.download")
    fake.download_dataset = download_dataset  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "bench.data.download", fake)
    import bench.data

    monkeypatch.setattr(bench.data, "download", fake, raising=False)
    result = runner.invoke(
        cli, ["data", "download", "ut-zappos", "--root", str(tmp_path), "--force"]
    )
    assert result.exit_code == 0, result.output
    assert calls == [("ut-zappos", tmp_path, True)]
    assert str(tmp_path / "ut-zappos") in result.stdout


def test_list_shows_kinds_and_presence(
    runner: CliRunner, tiny_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    result = runner.invoke(cli, ["data", "list", "--root", str(tiny_root)])
    assert result.exit_code == 0, result.output
    lines = {
        line.split("│")[1].strip(): line
        for line in result.stdout.splitlines()
        if line.count("│") > 2
    }
    assert "yes" in lines["synthetic-tiny"] and "synthetic" in lines["synthetic-tiny"]
    assert "no" in lines["mit-states"] and "download" in lines["mit-states"]
    assert {"cgqa", "ut-zappos", "synthetic", "synthetic-cgqa", "synthetic-mit-states"} <= set(
        lines
    )
