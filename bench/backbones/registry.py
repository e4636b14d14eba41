"""The backbone sources, in the order their parsers are tried, and the two entry points.

To add a source, write its parser and loader as a :class:`~bench.backbones.base.BackboneSource`
in its own module and list it in :data:`SOURCES` (before ``OPEN_CLIP``/``CHECKPOINT``,
whose ``MODEL:REST`` form matches almost anything).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.backbones.base import Backbone, BackboneSource, LoadRequest
from bench.backbones.openclip_sources import CHECKPOINT, HF_HUB, LOCAL_DIR, OPEN_CLIP, TINY_RANDOM
from bench.backbones.spec import FORMS_HELP, BackboneSpec
from bench.backbones.timm_backbone import TIMM
from bench.backbones.toy_clip import TOY_CLIP
from bench.device import resolve_device
from bench.errors import BenchError

#: Every source; a spec string belongs to the first whose parser accepts it.
SOURCES: tuple[BackboneSource, ...] = (
    TINY_RANDOM,
    TOY_CLIP,
    TIMM,
    HF_HUB,
    LOCAL_DIR,
    OPEN_CLIP,
    CHECKPOINT,
)
_BY_NAME = {source.name: source for source in SOURCES}


def parse_backbone(spec: str) -> BackboneSpec:
    """Parse a backbone spec string (syntax only: nothing is loaded or looked up).

    Forms:
        ``MODEL:TAG`` (open_clip model + pretrained tag, e.g. ``ViT-L-14:openai``);
        ``MODEL`` (randomly initialised open_clip model); ``MODEL:/path/weights.pt``
        (``.pt``/``.pth``/``.bin``/``.safetensors`` checkpoint for that model);
        ``hf-hub:org/repo``; ``local-dir:PATH``; ``tiny-random``; ``toy-clip[:SEED]``;
        ``timm:MODEL[:/path/weights|:random]``.

    Raises:
        BenchError: The string is empty or malformed.
    """
    raw = spec.strip()
    if not raw:
        raise BenchError("empty --backbone; " + FORMS_HELP)
    for source in SOURCES:
        parsed = source.parse(raw)
        if parsed is not None:
            return parsed
    raise BenchError(f"--backbone {raw!r} is malformed; " + FORMS_HELP)


def load_backbone(
    spec: str | BackboneSpec,
    device: str | None = None,
    cache_dir: Path | None = None,
    *,
    show_progress: bool | Any = True,
    precision: str | None = None,
) -> Backbone:
    """Load a frozen backbone.

    Args:
        spec: A backbone spec string (see ``parse_backbone``) or a parsed spec.
        device: Torch device string; None picks CUDA when available, else the CPU.
        cache_dir: Where pretrained weights are cached/downloaded (open_clip's
            ``cache_dir``); None uses the Hugging Face default (``HF_HOME``).
        show_progress: toy-clip only: a progress bar while it is pretrained, or a running
            ``rich.progress.Progress`` to add the bar to (one live display at a time).
        precision: "fp16" for float16 autocast on CUDA; None for the device's default.

    Raises:
        BenchError: Unknown model or tag, weights missing offline, or a checkpoint that does
            not fit the model (always one line).
    """
    parsed = spec if isinstance(spec, BackboneSpec) else parse_backbone(spec)
    request = LoadRequest(resolve_device(device), cache_dir, show_progress, precision)
    source = _BY_NAME.get(parsed.source)
    if source is None:
        raise BenchError(f"--backbone {parsed.raw}: unknown source {parsed.source!r}")
    return source.load(parsed, request)


def backbone_names() -> list[str]:
    """Short names and example specs for help texts."""
    return [example for source in SOURCES for example in source.examples]
