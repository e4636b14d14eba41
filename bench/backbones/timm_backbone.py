"""Image-only backbones from timm (an ImageNet CNN, the czsl setting), for feature methods.

Spec forms (``--backbone``):

* ``timm:MODEL`` - timm's pretrained weights for MODEL (e.g. ``timm:resnet18.tv_in1k``, the
  torchvision ResNet-18 czsl uses), downloaded through timm / the Hugging Face cache;
* ``timm:MODEL:/path/weights.safetensors`` (or ``.pth``/``.bin``/``.pt``) - a local weights
  file, loaded with ``pretrained_cfg_overlay=dict(file=PATH)`` (works offline);
* ``timm:MODEL:random`` - random initialisation (seeded; exercises the pipeline only).

The model is created with ``num_classes=0`` (pooled penultimate features, ``num_features``
wide), frozen and in eval mode; images are preprocessed with timm's eval transform from the
model's data config. There is no text side: methods that need a text encoder (clip, coop,
csp) cannot run on it, and the ``backbone`` word-vector provider refuses it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.backbones.spec import BackboneSpec
from bench.device import autocast, autocast_dtype_for
from bench.errors import BenchError

PREFIX = "timm:"
RANDOM = "random"


def parse_timm_spec(raw: str) -> BackboneSpec:
    """Parse ``timm:MODEL[:PATH|:random]`` (syntax only).

    Returns:
        ``BackboneSpec(raw, "timm", MODEL, PATH or "random" or None)``.

    Raises:
        BenchError: No model name.
    """
    rest = raw[len(PREFIX) :].strip()
    model, sep, weights = rest.partition(":")
    model, weights = model.strip(), weights.strip()
    if not model or any(c.isspace() for c in model) or (sep and not weights):
        raise BenchError(
            f"--backbone {raw!r}: expected timm:MODEL (timm's pretrained weights), "
            "timm:MODEL:/path/to/weights.safetensors or timm:MODEL:random"
        )
    if weights and weights != RANDOM:
        weights = os.path.expanduser(weights)
    return BackboneSpec(raw, "timm", model, weights or None)


@dataclass(frozen=True, eq=False)
class TimmBackbone:
    """A frozen timm image model; the same image interface as ``Backbone``, no text side.

    Attributes:
        spec: The parsed spec.
        model: The timm model (``num_classes=0``, eval mode, frozen, on ``device``).
        preprocess: timm's eval transform (PIL image -> tensor).
        train_transform: Horizontal flip, perspective, rotation by up to 5 degrees, then
            ``preprocess`` (the CSP augmentation, as for CLIP backbones).
        device: Where the model lives.
        autocast_dtype: Mixed-precision dtype on CUDA, None on the CPU.
        random_weights: True for ``timm:MODEL:random``.
        identifier: Stable id for caches (model name + architecture + weights hash).
        embed_dim: Feature dimension (``model.num_features``).
        preprocess_cfg: timm's resolved data config (input size, interpolation, mean,
            std, crop).
        warning: A line to print with every output (random weights), or None.
    """

    spec: BackboneSpec
    model: nn.Module
    preprocess: Callable[[Any], torch.Tensor]
    train_transform: Callable[[Any], torch.Tensor]
    device: torch.device
    autocast_dtype: torch.dtype | None
    random_weights: bool
    identifier: str
    embed_dim: int
    preprocess_cfg: dict[str, Any]
    warning: str | None = None
    #: No text encoder: clip/coop/csp and ``--word-vectors backbone`` cannot use it.
    has_text_encoder: bool = False
    width: int = 0
    context_length: int = 0

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) preprocessed images -> (N, embed_dim) float32 pooled features."""
        images = images.to(self.device, non_blocking=True)
        with torch.no_grad(), autocast(self.device, self.autocast_dtype):
            features = self.model(images)
        return features.float()

    def _no_text(self, *args: Any, **kwargs: Any) -> Any:
        raise BenchError(
            f"backbone {self.spec.raw} is an image-only timm model with no text encoder; "
            "methods that need one (clip, coop, csp) need a CLIP backbone (e.g. "
            "ViT-L-14:openai), and word vectors must come from glove50 or a file"
        )

    encode_text = _no_text
    encode_text_embeddings = _no_text
    token_embeddings = _no_text
    name_embedding = _no_text
    tokenizer = _no_text


def _create_from_file(timm: Any, name: str, path: Path) -> nn.Module:
    """Create ``name`` with the weights of ``path``, strictly, then drop the classifier.

    timm loads a file non-strictly when the model's class count differs from the
    pretrained config's, so the class count is taken from the file (0 for a headless
    file) and passed both to the model and to the config overlay: every key must match.
    """
    from timm.models import get_pretrained_cfg, load_state_dict

    state = load_state_dict(str(path), weights_only=True)
    cfg = get_pretrained_cfg(name)
    classifiers = getattr(cfg, "classifier", None) or ()
    if isinstance(classifiers, str):
        classifiers = (classifiers,)
    n_classes = 0
    for classifier in classifiers:
        weight = state.get(f"{classifier}.weight")
        if weight is not None:
            n_classes = int(weight.shape[0])
    model = timm.create_model(
        name,
        pretrained=True,
        pretrained_cfg_overlay={"file": str(path), "num_classes": n_classes},
        num_classes=n_classes,
    )
    model.reset_classifier(0)
    return model


def load_timm_backbone(
    spec: BackboneSpec, device: torch.device, cache_dir: Path | None = None
) -> TimmBackbone:
    """Create the timm model of ``spec`` with its weights, frozen, on ``device``.

    Raises:
        BenchError: Unknown model, missing weights file, download impossible (offline),
            or a weights file that does not fit the model (one line each).
    """
    import timm
    from torchvision import transforms

    from bench.backbones.loader import (
        RANDOM_INIT_SEED,
        _file_digest,
        _state_dict_digest,
        random_weights_warning,
    )

    name, weights = spec.model_name, spec.pretrained
    architecture = name.split(".", 1)[0]
    if not timm.is_model(architecture):
        raise BenchError(
            f"--backbone {spec.raw}: timm has no model {architecture!r}; see "
            "timm.list_models() (e.g. resnet18.tv_in1k, the czsl ResNet-18)"
        )
    kwargs: dict[str, Any] = {"num_classes": 0}
    if cache_dir is not None:
        kwargs["cache_dir"] = str(cache_dir)
    random_weights = weights == RANDOM
    try:
        if random_weights:
            torch.manual_seed(RANDOM_INIT_SEED)
            model = timm.create_model(name, pretrained=False, num_classes=0)
            digest = _state_dict_digest(model)
        elif weights is not None:
            path = Path(weights)
            if not path.is_file():
                raise BenchError(
                    f"--backbone {spec.raw}: weights file {path} does not exist; download "
                    f"{name}'s weights (e.g. model.safetensors from huggingface.co/timm) and "
                    "pass its path"
                )
            model = _create_from_file(timm, name, path)
            digest = _file_digest(path)
        else:
            model = timm.create_model(name, pretrained=True, **kwargs)
            digest = _state_dict_digest(model)
    except BenchError:
        raise
    except Exception as exc:  # timm/HF raise many types; report one line
        first = " ".join(str(exc).split())[:240] or type(exc).__name__
        hint = (
            "the weights file does not fit the model"
            if weights and not random_weights
            else f"cannot get timm's pretrained weights (offline?); pass a local file: "
            f"--backbone timm:{name}:/path/to/model.safetensors"
        )
        raise BenchError(f"--backbone {spec.raw}: {hint} ({type(exc).__name__}: {first})") from None

    model.eval()
    model.requires_grad_(False)
    model.to(device)
    config = timm.data.resolve_model_data_config(model)
    preprocess = timm.data.create_transform(**config, is_training=False)
    train_transform = transforms.Compose(
        [
            transforms.RandomHorizontalFlip(),
            transforms.RandomPerspective(),
            transforms.RandomRotation(5),
            preprocess,
        ]
    )
    identity = hashlib.sha256(f"{repr(model)}|{digest}".encode()).hexdigest()
    slug = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:48]
    warning = random_weights_warning(spec) if random_weights else None
    return TimmBackbone(
        spec=spec,
        model=model,
        preprocess=preprocess,
        train_transform=train_transform,
        device=device,
        autocast_dtype=autocast_dtype_for(device),
        random_weights=random_weights,
        identifier=f"timm-{slug}-{identity[:16]}",
        embed_dim=int(model.num_features),
        preprocess_cfg={k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
        warning=warning,
    )
