"""The open_clip backbone sources: ``MODEL:TAG``, ``MODEL:/path``, ``hf-hub:``, ``local-dir:``
and ``tiny-random``, each a parser and a builder behind a :class:`BackboneSource`."""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.backbones.base import BackboneSource, LoadRequest
from bench.backbones.build import file_digest, quiet, short_error, state_dict_digest
from bench.backbones.openclip import (
    BuiltModel,
    OpenClipBackbone,
    assemble_backbone,
    create_model,
    load_weights,
    register_configs,
)
from bench.backbones.spec import BackboneSpec
from bench.errors import BenchError

#: open_clip model name of the shipped tiny randomly initialised config.
TINY_RANDOM_MODEL = "bench-tiny-random"

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
_HF_PREFIX = "hf-hub:"
_LOCAL_DIR_PREFIX = "local-dir:"
_LOCAL_DIR_WEIGHTS = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.pth",
    "model.pth",
)

Builder = Callable[[BackboneSpec, str | None], BuiltModel]


def _loader(build: Builder) -> Callable[[BackboneSpec, LoadRequest], OpenClipBackbone]:
    """The loader of an open_clip source: build on the CPU, then assemble on the device."""

    def load(spec: BackboneSpec, request: LoadRequest) -> OpenClipBackbone:
        register_configs()
        cache = str(Path(request.cache_dir).expanduser()) if request.cache_dir is not None else None
        return assemble_backbone(spec, build(spec, cache), request.device, cache, request.precision)

    return load


# ---------------------------------------------------------------------------- parsers
def _looks_like_path(value: str) -> bool:
    return (
        "/" in value
        or os.sep in value
        or value.startswith(("~", "."))
        or value.lower().endswith(_CHECKPOINT_SUFFIXES)
    )


def _model_and_rest(raw: str) -> tuple[str, str | None] | None:
    """``MODEL[:REST]`` split into its parts, or None when malformed."""
    model, sep, rest = raw.partition(":")
    model, rest = model.strip(), rest.strip()
    if not model or (sep and not rest) or any(c.isspace() for c in model):
        return None
    return model, rest or None


def _parse_tiny_random(raw: str) -> BackboneSpec | None:
    return (
        BackboneSpec(raw, "tiny-random", TINY_RANDOM_MODEL, None) if raw == "tiny-random" else None
    )


def _parse_hf_hub(raw: str) -> BackboneSpec | None:
    if not raw.startswith(_HF_PREFIX):
        return None
    repo = raw[len(_HF_PREFIX) :].strip()
    if not repo or not re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?", repo):
        raise BenchError(f"--backbone {raw!r}: expected hf-hub:ORG/REPO (a Hugging Face repo id)")
    return BackboneSpec(raw, "hf-hub", repo, None)


def _parse_local_dir(raw: str) -> BackboneSpec | None:
    if not raw.startswith(_LOCAL_DIR_PREFIX):
        return None
    path = raw[len(_LOCAL_DIR_PREFIX) :].strip()
    if not path:
        raise BenchError(
            f"--backbone {raw!r}: expected local-dir:PATH (a folder with "
            "open_clip_config.json and a weights file)"
        )
    return BackboneSpec(raw, "local-dir", os.path.expanduser(path), None)


def _parse_open_clip(raw: str) -> BackboneSpec | None:
    parts = _model_and_rest(raw)
    if parts is None or (parts[1] is not None and _looks_like_path(parts[1])):
        return None
    return BackboneSpec(raw, "open_clip", *parts)


def _parse_checkpoint(raw: str) -> BackboneSpec | None:
    parts = _model_and_rest(raw)
    if parts is None or parts[1] is None or not _looks_like_path(parts[1]):
        return None
    return BackboneSpec(raw, "checkpoint", parts[0], os.path.expanduser(parts[1]))


# --------------------------------------------------------------------------- builders
def _build_random(spec: BackboneSpec, cache: str | None, label: str) -> BuiltModel:
    model = create_model(spec, spec.model_name, cache_dir=cache)
    return BuiltModel(model, state_dict_digest(model), True, spec.model_name, label)


def _build_tiny_random(spec: BackboneSpec, cache: str | None) -> BuiltModel:
    return _build_random(spec, cache, "tiny-random")


def _build_open_clip(spec: BackboneSpec, cache: str | None) -> BuiltModel:
    import open_clip

    _check_model_name(spec)
    if spec.pretrained is None:
        return _build_random(spec, cache, f"{spec.model_name}-random")
    tag_cfg = open_clip.get_pretrained_cfg(spec.model_name, spec.pretrained)
    if not tag_cfg:
        tags = open_clip.list_pretrained_tags_by_model(spec.model_name)
        known = f"available: {', '.join(tags)}" if tags else "it has no pretrained tags"
        raise BenchError(
            f"--backbone {spec.raw}: open_clip has no pretrained tag {spec.pretrained!r} for "
            f"{spec.model_name} ({known}); for a local weights file use "
            f"{spec.model_name}:/path/to/weights.pt"
        )
    try:
        with quiet():
            weights = open_clip.download_pretrained(tag_cfg, cache_dir=cache)
    except Exception as exc:  # network / huggingface_hub / urllib errors
        raise _missing_weights(spec, cache, exc, tag_cfg) from None
    if not weights or not os.path.isfile(weights):
        raise _missing_weights(spec, cache, None, tag_cfg)
    preprocess = {
        key: tag_cfg[key]
        for key in ("mean", "std", "interpolation", "resize_mode")
        if tag_cfg.get(key) is not None
    }
    model = create_model(
        spec,
        spec.model_name,
        cache_dir=cache,
        quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
        preprocess=preprocess,
    )
    load_weights(spec, model, weights)
    label = f"{spec.model_name}-{spec.pretrained}"
    return BuiltModel(model, file_digest(weights), False, spec.model_name, label)


def _build_checkpoint(spec: BackboneSpec, cache: str | None) -> BuiltModel:
    _check_model_name(spec)
    path = spec.pretrained or ""
    if not os.path.isfile(path):
        raise BenchError(f"--backbone {spec.raw}: checkpoint file {path} does not exist")
    model = create_model(spec, spec.model_name, cache_dir=cache)
    load_weights(spec, model, path)
    label = f"{spec.model_name}-{Path(path).stem}"
    return BuiltModel(model, file_digest(path), False, spec.model_name, label)


def _build_local_dir(spec: BackboneSpec, cache: str | None) -> BuiltModel:
    folder = Path(spec.model_name)
    if not folder.is_dir():
        raise BenchError(f"--backbone {spec.raw}: folder {folder} does not exist")
    if not (folder / "open_clip_config.json").is_file():
        raise BenchError(
            f"--backbone {spec.raw}: {folder / 'open_clip_config.json'} is missing (a "
            "local-dir: folder holds open_clip_config.json and a weights file, as on the "
            "Hugging Face Hub)"
        )
    weights = _find_weights_in_dir(folder)
    if weights is None:
        raise BenchError(
            f"--backbone {spec.raw}: no weights file in {folder} (expected one of "
            f"{', '.join(_LOCAL_DIR_WEIGHTS[:3])}, *.safetensors, *.bin or *.pth)"
        )
    name = f"local-dir:{folder}"
    model = create_model(spec, name, cache_dir=cache)
    load_weights(spec, model, str(weights))
    digest = hashlib.sha256(
        (file_digest(weights) + file_digest(folder / "open_clip_config.json")).encode()
    ).hexdigest()
    return BuiltModel(model, digest, False, name, f"local-dir-{folder.resolve().name}")


def _build_hf_hub(spec: BackboneSpec, cache: str | None) -> BuiltModel:
    from open_clip.pretrained import download_pretrained_from_hf

    try:
        with quiet():
            download_pretrained_from_hf(
                spec.model_name, filename="open_clip_config.json", cache_dir=cache
            )
            weights = download_pretrained_from_hf(spec.model_name, cache_dir=cache)
    except Exception as exc:
        raise _missing_weights(spec, cache, exc) from None
    name = f"hf-hub:{spec.model_name}"
    model = create_model(spec, name, cache_dir=cache)
    load_weights(spec, model, weights)
    return BuiltModel(model, file_digest(weights), False, name, f"hf-hub-{spec.model_name}")


# ----------------------------------------------------------------------------- helpers
def _check_model_name(spec: BackboneSpec) -> None:
    import open_clip

    models = open_clip.list_models()
    if spec.model_name in models:
        return
    close = difflib.get_close_matches(spec.model_name, models, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise BenchError(
        f"--backbone {spec.raw}: unknown open_clip model {spec.model_name!r}{hint}; list the "
        "available ones with: python -c 'import open_clip; print(open_clip.list_models())'"
    )


def _missing_weights(
    spec: BackboneSpec,
    cache: str | None,
    exc: BaseException | None,
    tag_cfg: dict[str, Any] | None = None,
) -> BenchError:
    """The one-line error for pretrained weights that are neither cached nor downloadable."""
    via_url = bool(tag_cfg) and not tag_cfg.get("hf_hub") and bool(tag_cfg.get("url"))
    if cache is not None:
        where = f"cache dir {cache}"
    elif via_url:
        where = "open_clip cache ~/.cache/clip"
    else:
        where = f"Hugging Face cache {_hf_cache_dir()} (HF_HOME)"
    if spec.source == "hf-hub":
        origin = ""
        create = f"open_clip.create_model('hf-hub:{spec.model_name}', cache_dir='DIR')"
        local = "a folder local-dir:PATH (open_clip_config.json + weights)"
    else:
        hub = (tag_cfg or {}).get("hf_hub", "")
        origin = f" (from hf-hub:{hub.rstrip('/')})" if hub else ""
        create = (
            f"open_clip.create_model('{spec.model_name}', pretrained='{spec.pretrained}', "
            "cache_dir='DIR')"
        )
        local = (
            f"a local file {spec.model_name}:/path/to/weights.pt|.safetensors, a folder "
            "local-dir:PATH, or hf-hub:ORG/REPO"
        )
    reason = f" ({short_error(exc, 120)})" if exc is not None else ""
    return BenchError(
        f"pretrained weights for --backbone {spec.raw}{origin} are not in the {where} and "
        f"cannot be downloaded here{reason}. To provide them, download on a machine with "
        f'internet: python -c "import open_clip; {create}", copy DIR here and set '
        f"HF_HUB_CACHE=DIR (or copy a whole HF_HOME folder and set HF_HOME); or use {local}"
    )


def _hf_cache_dir() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover - huggingface_hub missing
        return "~/.cache/huggingface/hub"


def _find_weights_in_dir(folder: Path) -> Path | None:
    for name in _LOCAL_DIR_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    found = sorted(
        p for ext in ("*.safetensors", "*.bin", "*.pth", "*.pt") for p in folder.glob(ext)
    )
    return found[0] if found else None


# ----------------------------------------------------------------------------- sources
TINY_RANDOM = BackboneSource(
    name="tiny-random",
    parse=_parse_tiny_random,
    load=_loader(_build_tiny_random),
    description="tiny randomly initialised CLIP (pipeline tests only; numbers mean nothing)",
    examples=("tiny-random",),
)
HF_HUB = BackboneSource(
    name="hf-hub",
    parse=_parse_hf_hub,
    load=_loader(_build_hf_hub),
    description="open_clip model from the Hugging Face Hub (downloaded once, then cached)",
    examples=("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K",),
)
LOCAL_DIR = BackboneSource(
    name="local-dir",
    parse=_parse_local_dir,
    load=_loader(_build_local_dir),
    description="folder with open_clip_config.json and a weights file",
    examples=("local-dir:/path/to/open_clip_folder",),
)
OPEN_CLIP = BackboneSource(
    name="open_clip",
    parse=_parse_open_clip,
    load=_loader(_build_open_clip),
    description="open_clip model and pretrained tag (downloaded once, then cached)",
    examples=("ViT-B-32:openai", "ViT-L-14:openai", "ViT-B-32:laion2b_s34b_b79k"),
)
CHECKPOINT = BackboneSource(
    name="checkpoint",
    parse=_parse_checkpoint,
    load=_loader(_build_checkpoint),
    description="open_clip architecture with a local .pt/.safetensors checkpoint",
    examples=("ViT-L-14:/path/to/weights.safetensors",),
)
