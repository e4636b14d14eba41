"""Build backbones through open_clip's own factory, offline-friendly and with one-line errors."""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import logging
import os
import pickle
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.backbones.backbone import Backbone, find_text_tower
from bench.backbones.spec import BackboneSpec, parse_backbone
from bench.device import autocast_dtype_for, resolve_device
from bench.errors import BenchError
from bench.io import sha256_file

#: Seed of every random initialisation (tiny-random, bare model names): same weights always.
RANDOM_INIT_SEED = 0

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
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
_configs_registered = False
_file_digests: dict[tuple[str, int, int], str] = {}


@dataclass(frozen=True)
class _Built:
    """A model on the CPU plus what is needed to describe and tokenize for it."""

    model: nn.Module
    weights_digest: str
    random_weights: bool
    tokenizer_name: str


def register_configs() -> None:
    """Register the shipped model configs (``bench-tiny-random``) with open_clip, once."""
    global _configs_registered
    if _configs_registered:
        return
    import open_clip

    known = getattr(open_clip.factory, "_MODEL_CONFIG_PATHS", [])
    if CONFIG_DIR.resolve() not in [Path(p).resolve() for p in known]:
        open_clip.add_model_config(CONFIG_DIR)
    _configs_registered = True


def backbone_names() -> list[str]:
    """Short names and example specs for help texts."""
    return [
        "tiny-random",
        "toy-clip",
        "ViT-B-32:openai",
        "ViT-L-14:openai",
        "ViT-B-32:laion2b_s34b_b79k",
        "ViT-L-14:/path/to/weights.safetensors",
        "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
        "local-dir:/path/to/open_clip_folder",
    ]


def random_weights_warning(spec: BackboneSpec) -> str:
    """The warning every result of a randomly initialised backbone carries."""
    return (
        f"backbone {spec.raw} has RANDOMLY INITIALISED weights (seed {RANDOM_INIT_SEED}): "
        "its numbers say nothing about CZSL; use it only to exercise the pipeline"
    )


def load_backbone(
    spec: str | BackboneSpec,
    device: str | None = None,
    cache_dir: Path | None = None,
    *,
    show_progress: bool | Any = True,
) -> Backbone:
    """Load a frozen backbone.

    Args:
        spec: A backbone spec string (see ``parse_backbone``) or a parsed spec.
        device: Torch device string; None picks CUDA when available, else the CPU.
        cache_dir: Where pretrained weights are cached/downloaded (open_clip's
            ``cache_dir``); None uses the Hugging Face default (``HF_HOME``).
        show_progress: toy-clip only: a progress bar while it is pretrained, or a running
            ``rich.progress.Progress`` to add the bar to (one live display at a time).

    Raises:
        BenchError: Unknown model or tag, weights missing offline, or a checkpoint that does
            not fit the model (always one line).
    """
    parsed = spec if isinstance(spec, BackboneSpec) else parse_backbone(spec)
    torch_device = resolve_device(device)
    if parsed.source == "toy-clip":
        return _load_toy_clip(parsed, torch_device, cache_dir, show_progress)
    if parsed.source == "timm":  # image-only, no text side (bench.backbones.timm_backbone)
        from bench.backbones.timm_backbone import load_timm_backbone

        return load_timm_backbone(parsed, torch_device, cache_dir)  # type: ignore[return-value]
    register_configs()
    cache = str(Path(cache_dir).expanduser()) if cache_dir is not None else None
    builders = {
        "tiny-random": _build_random,
        "open_clip": _build_open_clip,
        "checkpoint": _build_checkpoint,
        "local-dir": _build_local_dir,
        "hf-hub": _build_hf_hub,
    }
    if parsed.source not in builders:
        raise BenchError(f"--backbone {parsed.raw}: unknown source {parsed.source!r}")
    built = builders[parsed.source](parsed, cache)
    return _assemble(parsed, built, torch_device, cache)


# ------------------------------------------------------------------------------ builders
def _build_random(spec: BackboneSpec, cache: str | None) -> _Built:
    model = _create(spec, spec.model_name, cache_dir=cache)
    return _Built(model, _state_dict_digest(model), True, spec.model_name)


def _build_open_clip(spec: BackboneSpec, cache: str | None) -> _Built:
    import open_clip

    _check_model_name(spec)
    if spec.pretrained is None:
        return _build_random(spec, cache)
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
        with _quiet():
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
    model = _create(
        spec,
        spec.model_name,
        cache_dir=cache,
        quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
        preprocess=preprocess,
    )
    _load_weights(spec, model, weights)
    return _Built(model, _file_digest(weights), False, spec.model_name)


def _build_checkpoint(spec: BackboneSpec, cache: str | None) -> _Built:
    _check_model_name(spec)
    path = spec.pretrained or ""
    if not os.path.isfile(path):
        raise BenchError(f"--backbone {spec.raw}: checkpoint file {path} does not exist")
    model = _create(spec, spec.model_name, cache_dir=cache)
    _load_weights(spec, model, path)
    return _Built(model, _file_digest(path), False, spec.model_name)


def _build_local_dir(spec: BackboneSpec, cache: str | None) -> _Built:
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
    model = _create(spec, name, cache_dir=cache)
    _load_weights(spec, model, str(weights))
    digest = hashlib.sha256(
        (_file_digest(weights) + _file_digest(folder / "open_clip_config.json")).encode()
    ).hexdigest()
    return _Built(model, digest, False, name)


def _build_hf_hub(spec: BackboneSpec, cache: str | None) -> _Built:
    from open_clip.pretrained import download_pretrained_from_hf

    try:
        with _quiet():
            download_pretrained_from_hf(
                spec.model_name, filename="open_clip_config.json", cache_dir=cache
            )
            weights = download_pretrained_from_hf(spec.model_name, cache_dir=cache)
    except Exception as exc:
        raise _missing_weights(spec, cache, exc) from None
    name = f"hf-hub:{spec.model_name}"
    model = _create(spec, name, cache_dir=cache)
    _load_weights(spec, model, weights)
    return _Built(model, _file_digest(weights), False, name)


def _load_toy_clip(
    spec: BackboneSpec, device: torch.device, cache_dir: Path | None, show_progress: bool | Any
) -> Backbone:
    try:
        module = importlib.import_module("bench.backbones.toy_clip")
    except ModuleNotFoundError as exc:
        if exc.name != "bench.backbones.toy_clip":
            raise
        raise BenchError(
            "--backbone toy-clip is not available in this installation "
            "(bench/backbones/toy_clip.py is missing); use tiny-random or an open_clip model"
        ) from None
    return module.load_toy_clip(
        spec, device=device, cache_dir=cache_dir, show_progress=show_progress
    )


# ------------------------------------------------------------------------------- helpers
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


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence open_clip's root-logger chatter (e.g. 'Model initialized randomly')."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _create(
    spec: BackboneSpec,
    name: str,
    *,
    cache_dir: str | None,
    quick_gelu: bool = False,
    preprocess: dict[str, Any] | None = None,
) -> nn.Module:
    """Build the architecture on the CPU with a fixed seed (weights are loaded separately)."""
    import open_clip

    try:
        with _quiet(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            return open_clip.create_model(
                name,
                pretrained=None,
                load_weights=False,
                precision="fp32",
                device="cpu",
                force_quick_gelu=quick_gelu,
                force_preprocess_cfg=preprocess or None,
                pretrained_image=False,
                pretrained_text=False,
                cache_dir=cache_dir,
                weights_only=True,
            )
    except BenchError:
        raise
    except Exception as exc:
        raise BenchError(
            f"--backbone {spec.raw}: cannot build model {name}: {_short(exc)}"
        ) from None


def _load_weights(spec: BackboneSpec, model: nn.Module, path: str) -> None:
    """Load a weights file into ``model`` (``torch.load(weights_only=True)`` or safetensors)."""
    import open_clip

    try:
        with _quiet():
            open_clip.load_checkpoint(model, path, strict=True, weights_only=True, device="cpu")
    except pickle.UnpicklingError as exc:
        raise BenchError(
            f"--backbone {spec.raw}: {path} is not a plain tensor state_dict "
            f"(torch.load(weights_only=True) refused it: {_short(exc, 160)}); re-save it with "
            "torch.save(model.state_dict(), path) or as .safetensors"
        ) from None
    except Exception as exc:
        raise BenchError(
            f"--backbone {spec.raw}: checkpoint {path} does not fit model {spec.model_name} "
            f"({_short(exc)}); check the MODEL part of MODEL:/path"
        ) from None


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
    reason = f" ({_short(exc, 120)})" if exc is not None else ""
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


def _short(exc: BaseException | None, limit: int = 240) -> str:
    """One line of at most ``limit`` characters from an exception (ANSI codes removed)."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _find_weights_in_dir(folder: Path) -> Path | None:
    for name in _LOCAL_DIR_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    found = sorted(
        p for ext in ("*.safetensors", "*.bin", "*.pth", "*.pt") for p in folder.glob(ext)
    )
    return found[0] if found else None


def _file_digest(path: str | os.PathLike[str]) -> str:
    """sha256 of a weights file, memoised per (path, size, mtime) within the process."""
    real = os.path.realpath(path)
    stat = os.stat(real)
    key = (real, stat.st_size, stat.st_mtime_ns)
    if key not in _file_digests:
        _file_digests[key] = sha256_file(real)
    return _file_digests[key]


def _state_dict_digest(model: nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of every state_dict tensor."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _slug(spec: BackboneSpec) -> str:
    if spec.source == "checkpoint":
        base = f"{spec.model_name}-{Path(spec.pretrained or 'ckpt').stem}"
    elif spec.source == "local-dir":
        base = f"local-dir-{Path(spec.model_name).resolve().name}"
    elif spec.source == "hf-hub":
        base = f"hf-hub-{spec.model_name}"
    elif spec.source == "open_clip":
        base = f"{spec.model_name}-{spec.pretrained or 'random'}"
    else:
        base = spec.source
    return re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._-")[:64] or "backbone"


def _assemble(
    spec: BackboneSpec, built: _Built, device: torch.device, cache: str | None
) -> Backbone:
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from torchvision import transforms

    model = built.model
    model.eval()
    model.requires_grad_(False)
    architecture = hashlib.sha256(repr(model).encode()).hexdigest()
    identity = hashlib.sha256(f"{architecture}|{built.weights_digest}".encode()).hexdigest()
    model.to(device)

    try:
        with _quiet():
            tokenizer = open_clip.get_tokenizer(built.tokenizer_name, cache_dir=cache)
    except Exception as exc:
        raise BenchError(
            f"--backbone {spec.raw}: cannot load the tokenizer: {_short(exc)}"
        ) from None

    preprocess_cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    preprocess = image_transform_v2(PreprocessCfg(**preprocess_cfg), is_train=False)
    train_transform = transforms.Compose(
        [
            transforms.RandomHorizontalFlip(),
            transforms.RandomPerspective(),
            transforms.RandomRotation(5),
            preprocess,
        ]
    )
    context_length = int(
        getattr(tokenizer, "context_length", None) or getattr(model, "context_length", 77)
    )
    with torch.no_grad():
        probe = model.encode_text(tokenizer(["a photo"]).to(device))
    tower = find_text_tower(model)
    warning = random_weights_warning(spec) if built.random_weights else None
    return Backbone(
        spec=spec,
        model=model,
        tokenizer=tokenizer,
        preprocess=preprocess,
        train_transform=train_transform,
        device=device,
        autocast_dtype=autocast_dtype_for(device),
        random_weights=built.random_weights,
        identifier=f"{_slug(spec)}-{identity[:16]}",
        embed_dim=int(probe.shape[-1]),
        width=int(tower.token_embedding.embedding_dim) if tower is not None else 0,
        context_length=context_length,
        logit_scale=float(model.logit_scale.exp().item()),
        warning=warning,
        preprocess_cfg=preprocess_cfg,
    )
