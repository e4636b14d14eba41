"""The evaluation protocol: defaults per dataset kind, option overrides, matches_paper."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.errors import BenchError
from bench.pipeline.config import RunConfig
from bench.protocol import (
    backbone_precision,
    build_protocol,
    default_protocol_name,
    paper_deviations,
)


def _config(**kwargs: object) -> RunConfig:
    return RunConfig(methods=("csp",), datasets=("synthetic-tiny",), **kwargs)


@pytest.mark.parametrize(
    ("dataset", "protocol"),
    [
        ("mit-states", "paper"),
        ("ut-zappos", "paper"),
        ("cgqa", "paper"),
        ("synthetic", "harness"),
        ("synthetic-tiny", "harness"),
        ("/some/folder/my-data", "harness"),
    ],
)
def test_default_protocol_per_dataset_kind(dataset: str, protocol: str) -> None:
    assert _config().protocol_for(dataset) == protocol
    assert _config(protocol="harness").protocol_for(dataset) == "harness"
    assert _config(protocol="paper").protocol_for(dataset) == "paper"


def test_default_protocol_name_from_the_card_kind() -> None:
    assert default_protocol_name("download") == "paper"
    assert default_protocol_name("synthetic") == "harness"
    assert default_protocol_name(None) == "harness"


def test_paper_protocol_fields() -> None:
    record = build_protocol("paper").as_record("csp", trains=True)
    assert record == {
        "name": "paper",
        "epoch_selection": "last",
        "augment": "paper",
        "precision": "fp32",
        "name_cleaning": "official",
        "feasibility": {
            "filter": "csp-multiply",
            "word_vectors": "glove:6B.300d",
            "names": "official",
        },
        "matches_paper": False,
        "deviations": ["precision fp32 on the CPU (paper: fp16 CLIP on CUDA)"],
    }
    fp16 = build_protocol("paper", device="cuda", autocast="fp16")
    assert fp16.precision == "fp16-autocast"


@pytest.mark.parametrize(
    ("name", "device", "autocast", "precision", "deviation"),
    [
        ("paper", "cpu", None, "fp32", "precision fp32 on the CPU (paper: fp16 CLIP on CUDA)"),
        ("paper", "cuda", "float16", "fp16", None),
        ("harness", "cpu", None, "fp32", "precision fp32 on the CPU (paper: fp16 CLIP on CUDA)"),
        (
            "harness",
            "cuda",
            "bfloat16",
            "bfloat16-autocast",
            "precision bfloat16-autocast (paper: fp16 CLIP on CUDA)",
        ),
        # fp16 autocast without the paper protocol (a GPU without bf16) is not its fp16
        (
            "harness",
            "cuda",
            "float16",
            "float16-autocast",
            "precision float16-autocast (paper: fp16 CLIP on CUDA)",
        ),
    ],
)
def test_precision_per_protocol_and_device(
    name: str, device: str, autocast: str | None, precision: str, deviation: str | None
) -> None:
    protocol = build_protocol(name, device=device, autocast=autocast)
    assert protocol.precision == precision
    reasons = paper_deviations(protocol, "csp", trains=True)
    precision_reasons = [r for r in reasons if r.startswith("precision")]
    assert precision_reasons == ([deviation] if deviation else [])
    if name == "paper":
        assert protocol.as_record("csp", trains=True)["matches_paper"] is (deviation is None)


def test_paper_protocol_loads_the_backbone_in_fp16() -> None:
    assert backbone_precision("paper") == "fp16"
    assert backbone_precision("harness") is None


def test_harness_protocol_fields() -> None:
    harness = build_protocol("harness")
    assert (harness.epoch_selection, harness.augment, harness.name_cleaning) == (
        "val-auc",
        "none",
        "words",
    )
    assert harness.feasibility_filter is None and harness.word_vectors is None
    with_vectors = build_protocol("harness", word_vectors="glove50")
    assert with_vectors.feasibility_filter == "mask"
    assert build_protocol("harness", device="cuda", autocast="bfloat16").precision == (
        "bfloat16-autocast"
    )


def test_matches_paper_only_when_every_field_is_official() -> None:
    official = build_protocol("paper")
    # what the paper protocol runs on a CUDA machine with fp16 CLIP
    from dataclasses import replace

    on_gpu = replace(official, precision="fp16")
    assert paper_deviations(on_gpu, "csp", trains=True) == []
    assert on_gpu.as_record("clip", trains=False)["matches_paper"] is True
    offline = replace(on_gpu, word_vectors="glove50")
    assert paper_deviations(offline, "csp", trains=True) == [
        "word_vectors glove50 standing in offline (paper: glove:6B.300d)"
    ]
    explicit = build_protocol("paper", augment="none", feasibility="mask")
    reasons = paper_deviations(replace(explicit, precision="fp16"), "coop", trains=True)
    assert reasons == [
        "augment none (paper: paper)",
        "feasibility_filter mask (paper: csp-multiply)",
    ]
    # training fields do not count for a method that does not train
    assert paper_deviations(replace(explicit, precision="fp16"), "clip", trains=False) == [
        "feasibility_filter mask (paper: csp-multiply)"
    ]
    assert paper_deviations(on_gpu, "compcos", trains=True) == [
        "method compcos is not in the CSP paper"
    ]


def test_bad_protocol_options() -> None:
    with pytest.raises(BenchError, match="unknown protocol 'fast'"):
        build_protocol("fast")
    with pytest.raises(BenchError, match="--protocol: 'fast'"):
        _config(protocol="fast")
    with pytest.raises(BenchError, match="unknown augment mode 'heavy'"):
        build_protocol("paper", augment="heavy")


def test_augment_for_follows_the_protocol(tmp_path: Path) -> None:
    assert _config().augment_for("mit-states") == "paper"
    assert _config().augment_for("synthetic-tiny") == "none"
    assert _config(augment="none").augment_for("mit-states") == "none"
