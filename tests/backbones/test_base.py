"""The backbone interfaces: clean names, and which side each backbone implements."""

from __future__ import annotations

import pytest

from bench.backbones import Backbone, ImageEncoder, TextEncoder, clean_name
from bench.backbones.base import BackboneBase, TorchImageEncoder
from bench.backbones.openclip import OpenClipBackbone
from bench.backbones.timm_backbone import TimmBackbone


@pytest.mark.parametrize(
    ("name", "clean"),
    [
        ("Faux.Fur", "faux fur"),
        ("traffic_light", "traffic light"),
        ("  Ankle   Boots_", "ankle boots"),
        ("wet", "wet"),
    ],
)
def test_clean_name(name: str, clean: str) -> None:
    assert clean_name(name) == clean


@pytest.mark.parametrize(
    ("name", "clean"),
    [
        ("Faux.Fur", "faux fur"),
        ("traffic_light", "traffic_light"),
        ("Boots.Mid-Calf", "boots mid-calf"),
        ("dry-erase_board", "dry-erase_board"),
    ],
)
def test_clean_name_official_only_replaces_dots_and_lowercases(name: str, clean: str) -> None:
    assert clean_name(name, "official") == clean


def _members(protocol: type) -> set[str]:
    """The attributes and public methods a protocol declares, with its bases'."""
    names: set[str] = set()
    for klass in protocol.__mro__:
        if klass.__module__ == "bench.backbones.base":
            names |= set(klass.__annotations__)
            names |= {n for n, v in vars(klass).items() if callable(v) and not n.startswith("_")}
    return names


@pytest.mark.parametrize("cls", [OpenClipBackbone, TimmBackbone])
def test_backbones_implement_both_sides(cls: type) -> None:
    assert issubclass(cls, TorchImageEncoder) and issubclass(cls, BackboneBase)
    fields = set(cls.__dataclass_fields__) | set(dir(cls))
    for protocol in (ImageEncoder, TextEncoder, Backbone):
        missing = _members(protocol) - fields
        assert not missing, (cls.__name__, protocol.__name__, missing)


def test_only_clip_backbones_have_a_text_encoder() -> None:
    assert OpenClipBackbone.has_text_encoder is True
    assert TimmBackbone.has_text_encoder is False
