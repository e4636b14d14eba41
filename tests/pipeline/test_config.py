"""Run options: which datasets are synthetic (and so get toy-clip by default)."""

from __future__ import annotations

import json
from pathlib import Path

from bench.pipeline.config import (
    DEFAULT_REAL_BACKBONE,
    DEFAULT_SYNTHETIC_BACKBONE,
    RunConfig,
    is_synthetic,
)


def test_registered_datasets_are_judged_by_their_cards_kind() -> None:
    assert is_synthetic("synthetic") and is_synthetic("synthetic-tiny")
    assert not is_synthetic("mit-states") and not is_synthetic("cgqa")
    config = RunConfig(methods=("clip",), datasets=("synthetic", "ut-zappos"))
    assert config.backbone_for("synthetic") == DEFAULT_SYNTHETIC_BACKBONE
    assert config.backbone_for("ut-zappos") == DEFAULT_REAL_BACKBONE
    chosen = RunConfig(methods=("clip",), datasets=("x",), backbone="tiny-random")
    assert chosen.backbone_for("synthetic") == "tiny-random"


def test_folders_by_their_generator_file_else_by_name(tmp_path: Path) -> None:
    generated = tmp_path / "renamed-copy"
    generated.mkdir()
    (generated / "generator.json").write_text(json.dumps({"generator": "bench.data.synthetic"}))
    assert is_synthetic(str(generated))
    other = tmp_path / "synthetic-looking"
    other.mkdir()
    (other / "generator.json").write_text(json.dumps({"generator": "someone-else"}))
    assert not is_synthetic(str(other))
    assert is_synthetic(str(tmp_path / "synthetic-by-name"))
    assert not is_synthetic(str(tmp_path / "my-photos"))
