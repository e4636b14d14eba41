"""Planning: the grid and each cell's configuration (hashed into its result file name)."""

from __future__ import annotations

import pytest

from bench.errors import BenchError
from bench.pipeline.config import RunConfig
from bench.pipeline.events import EventBus
from bench.pipeline.plan import cell_config, plan_grid
from bench.pipeline.prepare import prepare_dataset


def _tiny_run(tiny_root, tmp_path, methods, **options):
    """A config over synthetic-tiny (tiny-random) and the dataset's context."""
    config = RunConfig(
        methods=methods,
        datasets=("synthetic-tiny",),
        seeds=(0,),
        backbone="tiny-random",
        data_root=tiny_root,
        results_dir=tmp_path,
        log_mlflow=False,
        **options,
    )
    return config, prepare_dataset(config, "synthetic-tiny", events=EventBus())


def _word_vector_run(tiny_root, tmp_path, methods, word_vectors):
    """A synthetic-tiny config with the word_vectors hparam overridden, and its context."""
    return _tiny_run(tiny_root, tmp_path, methods, hparam_overrides={"word_vectors": word_vectors})


def test_default_word_vectors_are_part_of_the_cell_config(tiny_root, tmp_path, monkeypatch):
    from bench import wordvectors
    from bench.io import sha256_json

    # "auto": not the synthetic table's choice, the card's default chain
    config, ctx = _word_vector_run(tiny_root, tmp_path, ("compcos", "clip"), "auto")
    cells = {cell.method: cell for cell in plan_grid(config).cells}
    chosen = cell_config(config, cells["compcos"], ctx)["word_vectors"]
    assert chosen["source"] == "card default_word_vectors"
    monkeypatch.setattr(wordvectors, "GLOVE50_PACKAGE", "no_such_glove_package_xyz")
    wordvectors.clear_cache()
    without_glove = cell_config(config, cells["compcos"], ctx)
    assert without_glove["word_vectors"] == {
        "spec": "backbone",
        "source": "card default_word_vectors",
    }
    monkeypatch.undo()
    wordvectors.clear_cache()
    if wordvectors.glove50_available():
        with_glove = cell_config(config, cells["compcos"], ctx)
        assert with_glove["word_vectors"]["spec"] == "glove50"
        assert sha256_json(with_glove) != sha256_json(without_glove)  # never the same cell
    assert "word_vectors" not in cell_config(config, cells["clip"], ctx)


def test_word_vectors_hparam_list_takes_the_first_that_loads(tiny_root, tmp_path):
    def chosen(spec: str) -> dict:
        config, ctx = _word_vector_run(tiny_root, tmp_path, ("compcos",), spec)
        return cell_config(config, plan_grid(config).cells[0], ctx)["word_vectors"]

    missing = tmp_path / "absent.txt"
    assert chosen(f"glove:{missing},backbone-text") == {
        "spec": "backbone-text",
        "source": "hparam word_vectors",
    }
    assert chosen("backbone") == {"spec": "backbone", "source": "hparam word_vectors"}
    with pytest.raises(BenchError, match="no word vectors for dataset synthetic-tiny"):
        chosen(f"glove:{missing},glove:{missing}.2")


def test_text_encoding_is_in_the_config_of_prompt_encoding_methods_only(tiny_root, tmp_path):
    configs = {}
    for encoding in ("full", "prefix"):
        config, ctx = _tiny_run(tiny_root, tmp_path, ("clip", "visprod"), text_encoding=encoding)
        configs[encoding] = {c.method: cell_config(config, c, ctx) for c in plan_grid(config).cells}
    assert configs["prefix"]["clip"]["text_encoding"] == "prefix"
    assert configs["full"]["clip"] == {**configs["prefix"]["clip"], "text_encoding": "full"}
    # word-embedding cells keep the configuration (and so the hash) they had before
    assert "text_encoding" not in configs["prefix"]["visprod"]
    assert configs["prefix"]["visprod"] == configs["full"]["visprod"]
    with pytest.raises(BenchError, match="--text-encoding: 'fast'"):
        RunConfig(methods=("clip",), datasets=("synthetic-tiny",), text_encoding="fast")
