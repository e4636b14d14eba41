"""Backbone spec strings: what the user passes to ``--backbone``."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from bench.errors import BenchError

#: open_clip model name of the shipped tiny randomly initialised config.
TINY_RANDOM_MODEL = "bench-tiny-random"

SOURCES = ("open_clip", "hf-hub", "local-dir", "checkpoint", "tiny-random", "toy-clip", "timm")

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
_HF_PREFIX = "hf-hub:"
_LOCAL_DIR_PREFIX = "local-dir:"


@dataclass(frozen=True)
class BackboneSpec:
    """A parsed ``--backbone`` value.

    Attributes:
        raw: The string as given (stripped).
        source: Where the weights come from: "open_clip" (a model name and a pretrained tag
            from open_clip's registry), "hf-hub", "local-dir", "checkpoint" (a local file),
            "tiny-random" or "toy-clip".
        model_name: The open_clip model name; the repository id for "hf-hub"; the folder
            for "local-dir".
        pretrained: The open_clip pretrained tag ("open_clip"; None for a randomly
            initialised model), the file path ("checkpoint"), otherwise None.
    """

    raw: str
    source: str
    model_name: str
    pretrained: str | None


def _looks_like_path(value: str) -> bool:
    return (
        "/" in value
        or os.sep in value
        or value.startswith(("~", "."))
        or value.lower().endswith(_CHECKPOINT_SUFFIXES)
    )


def parse_backbone(spec: str) -> BackboneSpec:
    """Parse a backbone spec string (syntax only: nothing is loaded or looked up).

    Forms:
        ``MODEL:TAG`` (open_clip model + pretrained tag, e.g. ``ViT-L-14:openai``);
        ``MODEL`` (randomly initialised open_clip model); ``MODEL:/path/weights.pt``
        (``.pt``/``.pth``/``.bin``/``.safetensors`` checkpoint for that model);
        ``hf-hub:org/repo``; ``local-dir:PATH``; ``tiny-random``; ``toy-clip``.

    Raises:
        BenchError: The string is empty or malformed.
    """
    raw = spec.strip()
    if not raw:
        raise BenchError("empty --backbone; " + _FORMS_HELP)
    if raw == "tiny-random":
        return BackboneSpec(raw, "tiny-random", TINY_RANDOM_MODEL, None)
    if raw == "toy-clip" or raw.startswith("toy-clip:"):
        rest = raw[len("toy-clip:") :] if raw.startswith("toy-clip:") else ""
        return BackboneSpec(raw, "toy-clip", "toy-clip", rest or None)
    if raw.startswith("timm:"):  # image-only timm model (bench.backbones.timm_backbone)
        from bench.backbones.timm_backbone import parse_timm_spec

        return parse_timm_spec(raw)
    if raw.startswith(_HF_PREFIX):
        repo = raw[len(_HF_PREFIX) :].strip()
        if not repo or not re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?", repo):
            raise BenchError(
                f"--backbone {raw!r}: expected hf-hub:ORG/REPO (a Hugging Face repo id)"
            )
        return BackboneSpec(raw, "hf-hub", repo, None)
    if raw.startswith(_LOCAL_DIR_PREFIX):
        path = raw[len(_LOCAL_DIR_PREFIX) :].strip()
        if not path:
            raise BenchError(
                f"--backbone {raw!r}: expected local-dir:PATH (a folder with "
                "open_clip_config.json and a weights file)"
            )
        return BackboneSpec(raw, "local-dir", os.path.expanduser(path), None)
    model, sep, rest = raw.partition(":")
    model, rest = model.strip(), rest.strip()
    if not model or (sep and not rest) or any(c.isspace() for c in model):
        raise BenchError(f"--backbone {raw!r} is malformed; " + _FORMS_HELP)
    if not sep:
        return BackboneSpec(raw, "open_clip", model, None)
    if _looks_like_path(rest):
        return BackboneSpec(raw, "checkpoint", model, os.path.expanduser(rest))
    return BackboneSpec(raw, "open_clip", model, rest)


_FORMS_HELP = (
    "use MODEL:PRETRAINED (e.g. ViT-L-14:openai), MODEL:/path/to/weights.pt, "
    "hf-hub:ORG/REPO, local-dir:PATH, tiny-random, toy-clip or timm:MODEL[:/path/weights]"
)
