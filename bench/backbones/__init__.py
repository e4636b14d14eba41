"""Frozen vision-language backbones (open_clip CLIP models) behind one small interface.

``load_backbone("ViT-L-14:openai")`` returns a :class:`Backbone`; see ``parse_backbone`` for
every accepted spec form.
"""

from __future__ import annotations

from bench.backbones.backbone import Backbone, clean_name
from bench.backbones.loader import (
    RANDOM_INIT_SEED,
    backbone_names,
    load_backbone,
    register_configs,
)
from bench.backbones.spec import TINY_RANDOM_MODEL, BackboneSpec, parse_backbone

__all__ = [
    "RANDOM_INIT_SEED",
    "TINY_RANDOM_MODEL",
    "Backbone",
    "BackboneSpec",
    "backbone_names",
    "clean_name",
    "load_backbone",
    "parse_backbone",
    "register_configs",
]
