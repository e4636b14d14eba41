"""Preparing a dataset: backbone, features, and the live display toy-clip's bar joins."""

from __future__ import annotations

from bench.pipeline.config import RunConfig
from bench.pipeline.events import EventBus
from bench.pipeline.prepare import prepare_dataset


def test_toy_clip_pretraining_bar_joins_the_runs_progress_display(tiny_root, tmp_path, monkeypatch):
    from bench.backbones import load_backbone, toy_clip

    seen: dict[str, object] = {}

    def fake_load_toy_clip(spec, device=None, cache_dir=None, *, show_progress=True):
        seen["show_progress"] = show_progress
        return load_backbone("tiny-random", device="cpu")

    monkeypatch.setattr(toy_clip, "load_toy_clip", fake_load_toy_clip)
    progress = object()
    config = RunConfig(
        methods=("clip",),
        datasets=("synthetic-tiny",),
        backbone="toy-clip",
        data_root=tiny_root,
        results_dir=tmp_path,
        log_mlflow=False,
    )
    prepare_dataset(config, "synthetic-tiny", events=EventBus(), progress=progress)
    assert seen["show_progress"] is progress  # one live display, not two fighting
    prepare_dataset(config, "synthetic-tiny", events=EventBus())
    assert seen["show_progress"] is True
