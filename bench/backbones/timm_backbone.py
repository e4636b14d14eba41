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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from bench.backbones.base import (
    RANDOM_INIT_SEED,
    BackboneSource,
    LoadRequest,
    TorchImageEncoder,
    random_weights_warning,
)
from bench.backbones.build import csp_train_transform, file_digest, state_dict_digest
from bench.backbones.spec import BackboneSpec
from bench.device import autocast_dtype_for
from bench.errors import BenchError

PREFIX = "timm:"
RANDOM = "random"


def parse_timm_spec(raw: str) -> BackboneSpec | None:
    """Parse ``timm:MODEL[:PATH|:random]`` (syntax only).

    Returns:
        ``BackboneSpec(raw, "timm", MODEL, PATH or "random" or None)``, or None when
        ``raw`` does not start with ``timm:``.

    Raises:
        BenchError: No model name.
    """
    if not raw.startswith(PREFIX):
        return None
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


@dataclass(frozen=True, kw_only=True, eq=False)
class TimmBackbone(TorchImageEncoder):
    """A frozen timm image model (``num_classes=0``: pooled penultimate features); no text side.

    ``preprocess`` is timm's eval transform and ``preprocess_cfg`` timm's resolved data config
    (input size, interpolation, mean, std, crop); ``embed_dim`` is ``model.num_features``.
    Its text calls raise: clip/coop/csp and ``--word-vectors backbone`` cannot use it.
    """

    has_text_encoder: ClassVar[bool] = False
    width: ClassVar[int] = 0
    context_length: ClassVar[int] = 0

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """timm's pooled features (the classifier is removed)."""
        return self.model(images)

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
    text_tower = _no_text
    tokenizer = _no_text
    logit_scale = property(_no_text)


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


def load_timm_backbone(spec: BackboneSpec, request: LoadRequest) -> TimmBackbone:
    """Create the timm model of ``spec`` with its weights, frozen, on ``device``.

    Raises:
        BenchError: Unknown model, missing weights file, download impossible (offline),
            or a weights file that does not fit the model (one line each).
    """
    import timm

    name, weights = spec.model_name, spec.pretrained
    architecture = name.split(".", 1)[0]
    if not timm.is_model(architecture):
        raise BenchError(
            f"--backbone {spec.raw}: timm has no model {architecture!r}; see "
            "timm.list_models() (e.g. resnet18.tv_in1k, the czsl ResNet-18)"
        )
    kwargs: dict[str, Any] = {"num_classes": 0}
    if request.cache_dir is not None:
        kwargs["cache_dir"] = str(request.cache_dir)
    random_weights = weights == RANDOM
    try:
        if random_weights:
            torch.manual_seed(RANDOM_INIT_SEED)
            model = timm.create_model(name, pretrained=False, num_classes=0)
            digest = state_dict_digest(model)
        elif weights is not None:
            path = Path(weights)
            if not path.is_file():
                raise BenchError(
                    f"--backbone {spec.raw}: weights file {path} does not exist; download "
                    f"{name}'s weights (e.g. model.safetensors from huggingface.co/timm) and "
                    "pass its path"
                )
            model = _create_from_file(timm, name, path)
            digest = file_digest(path)
        else:
            model = timm.create_model(name, pretrained=True, **kwargs)
            digest = state_dict_digest(model)
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
    model.to(request.device)
    config = timm.data.resolve_model_data_config(model)
    preprocess = timm.data.create_transform(**config, is_training=False)
    identity = hashlib.sha256(f"{repr(model)}|{digest}".encode()).hexdigest()
    slug = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:48]
    return TimmBackbone(
        spec=spec,
        identifier=f"timm-{slug}-{identity[:16]}",
        device=request.device,
        random_weights=random_weights,
        warning=random_weights_warning(spec) if random_weights else None,
        model=model,
        preprocess=preprocess,
        train_transform=csp_train_transform(preprocess),
        preprocess_cfg={k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
        autocast_dtype=autocast_dtype_for(request.device, request.precision),
        embed_dim=int(model.num_features),
    )


TIMM = BackboneSource(
    name="timm",
    parse=parse_timm_spec,
    load=load_timm_backbone,
    description="image-only timm model (timm's weights, a local file, or random); feature "
    "methods only",
    examples=("timm:resnet18.tv_in1k",),
)
