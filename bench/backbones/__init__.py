"""Frozen backbones (open_clip CLIP models, timm image models) behind small interfaces.

``load_backbone("ViT-L-14:openai")`` returns a :class:`Backbone` (an image encoder and a
text encoder, see ``base.py``); ``registry.py`` lists every accepted spec form.
"""

from __future__ import annotations

from bench.backbones.base import (
    RANDOM_INIT_SEED,
    Backbone,
    ImageEncoder,
    TextEncoder,
    TextTower,
    clean_name,
)
from bench.backbones.openclip import find_text_tower, register_configs
from bench.backbones.openclip_sources import TINY_RANDOM_MODEL
from bench.backbones.registry import backbone_names, load_backbone, parse_backbone
from bench.backbones.spec import BackboneSpec

__all__ = [
    "RANDOM_INIT_SEED",
    "TINY_RANDOM_MODEL",
    "Backbone",
    "BackboneSpec",
    "ImageEncoder",
    "TextEncoder",
    "TextTower",
    "backbone_names",
    "clean_name",
    "find_text_tower",
    "load_backbone",
    "parse_backbone",
    "register_configs",
]
