"""Preparing a dataset: backbone, features, and the live display toy-clip's bar joins."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.pipeline.config import RunConfig
from bench.pipeline.events import EventBus
from bench.pipeline.prepare import prepare_dataset


@pytest.fixture
def toy_clip_requests(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """What toy-clip's loader was last asked for; it returns tiny-random on the CPU."""
    from bench.backbones import load_backbone, toy_clip

    seen: dict[str, object] = {}

    def fake_load_toy_clip(
        spec, device=None, cache_dir=None, *, show_progress=True, precision=None
    ):
        seen.update(show_progress=show_progress, precision=precision)
        return load_backbone("tiny-random", device="cpu")

    monkeypatch.setattr(toy_clip, "load_toy_clip", fake_load_toy_clip)
    return seen


def _config(tiny_root: Path, tmp_path: Path, **kwargs: object) -> RunConfig:
    return RunConfig(
        methods=("clip",),
        datasets=("synthetic-tiny",),
        backbone="toy-clip",
        data_root=tiny_root,
        results_dir=tmp_path,
        log_mlflow=False,
        **kwargs,
    )


def test_toy_clip_pretraining_bar_joins_the_runs_progress_display(
    tiny_root, tmp_path, toy_clip_requests
):
    progress = object()
    config = _config(tiny_root, tmp_path)
    prepare_dataset(config, "synthetic-tiny", events=EventBus(), progress=progress)
    assert toy_clip_requests["show_progress"] is progress  # one live display, not two fighting
    prepare_dataset(config, "synthetic-tiny", events=EventBus())
    assert toy_clip_requests["show_progress"] is True


@pytest.mark.parametrize(("protocol", "precision"), [("paper", "fp16"), ("harness", None)])
def test_the_paper_protocol_asks_the_backbone_for_fp16(
    tiny_root, tmp_path, toy_clip_requests, protocol: str, precision: str | None
):
    config = _config(tiny_root, tmp_path, protocol=protocol)
    ctx = prepare_dataset(config, "synthetic-tiny", events=EventBus())
    assert toy_clip_requests["precision"] == precision  # the LoadRequest's, via load_backbone
    assert ctx.protocol.precision == "fp32"  # on the CPU, whatever was asked
