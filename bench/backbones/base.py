"""What a loaded backbone is: an image encoder, a text encoder, and the identity they share.

Callers hold a :class:`Backbone` and use plain attributes. Every backbone encodes images;
``has_text_encoder`` says whether its text side works (an image-only backbone's text calls
raise a :class:`~bench.errors.BenchError` naming the backbone).

A backbone source (a ``--backbone`` form) is a :class:`BackboneSource`: a parser that
recognises its spec strings and a loader that builds the backbone; ``registry.py`` lists them.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from bench.backbones.spec import BackboneSpec
from bench.device import autocast

#: Seed of every random initialisation (tiny-random, bare model names): same weights always.
RANDOM_INIT_SEED = 0


def clean_name(name: str, style: str = "words") -> str:
    """Normalise a dataset attribute/object name for prompts.

    ``"words"`` lowercases, turns ``.`` and ``_`` into spaces and collapses whitespace:
    ``"Faux.Fur"`` -> ``"faux fur"``, ``"traffic_light"`` -> ``"traffic light"``.
    ``"official"`` is the CSP code's rule, ``.`` -> space and lowercase only:
    ``"traffic_light"`` stays ``"traffic_light"``.
    """
    if style == "official":
        return name.replace(".", " ").lower()
    if style != "words":
        raise ValueError(f"unknown name cleaning {style!r}; use 'official' or 'words'")
    return " ".join(re.sub(r"[._]", " ", name).lower().split())


def random_weights_warning(spec: BackboneSpec) -> str:
    """The warning every result of a randomly initialised backbone carries."""
    return (
        f"backbone {spec.raw} has RANDOMLY INITIALISED weights (seed {RANDOM_INIT_SEED}): "
        "its numbers say nothing about CZSL; use it only to exercise the pipeline"
    )


# ---------------------------------------------------------------------------- interfaces
@dataclass(frozen=True)
class TextTower:
    """The token-level pieces of a CLIP text transformer (open_clip's layout).

    For code that runs the tower itself (``bench.prefix_text``) rather than through
    ``encode_text``.
    """

    token_embedding: nn.Embedding
    positional_embedding: torch.Tensor
    transformer: nn.Module
    attn_mask: torch.Tensor | None
    ln_final: nn.Module
    text_projection: Any
    pool_type: str
    eos_id: int | None


class ImageEncoder(Protocol):
    """The image side: transforms and pooled image features.

    Attributes:
        device: Where the model lives.
        autocast_dtype: Mixed-precision dtype on CUDA; None on the CPU (fp32).
        embed_dim: Dimension of the image features.
        preprocess: Eval image transform (PIL image -> tensor).
        train_transform: The CSP training augmentation followed by ``preprocess``.
        preprocess_cfg: The preprocessing config (size, mean, std, ...); part of the
            feature-cache key.
    """

    device: torch.device
    autocast_dtype: torch.dtype | None
    embed_dim: int
    preprocess: Callable[[Any], torch.Tensor]
    train_transform: Callable[[Any], torch.Tensor]
    preprocess_cfg: dict[str, Any]

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) preprocessed images -> (N, embed_dim) float32 features on ``device``."""
        ...


class TextEncoder(Protocol):
    """The text side, with token-level access for methods that learn prompt tokens.

    Attributes:
        tokenizer: ``list[str] -> LongTensor (B, context_length)``.
        width: Text transformer width (token-embedding dimension).
        context_length: Tokenizer/text-encoder context length.
        logit_scale: The model's learned inverse temperature (``logit_scale.exp()``).
    """

    tokenizer: Callable[..., torch.Tensor]
    width: int
    context_length: int
    logit_scale: float

    def encode_text(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Prompts -> (len(texts), embed_dim) float32 features, without gradients."""
        ...

    def token_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids -> (B, L, width) token embeddings."""
        ...

    def encode_text_embeddings(
        self, embeddings: torch.Tensor, tokens: torch.Tensor
    ) -> torch.Tensor:
        """(B, L, width) token embeddings of ``tokens`` -> (B, embed_dim) (differentiable)."""
        ...

    def name_embedding(self, name: str, cleaning: str = "words") -> torch.Tensor:
        """Mean token embedding of ``clean_name(name, cleaning)``'s sub-tokens: (width,)."""
        ...

    def text_tower(self) -> TextTower:
        """The text transformer's token-level pieces (frozen, on ``device``)."""
        ...


class Backbone(ImageEncoder, TextEncoder, Protocol):
    """A loaded backbone as callers see it (implemented by :class:`BackboneBase` subclasses).

    Attributes:
        spec: The parsed spec it was loaded from.
        identifier: Stable, filesystem-safe id (names feature-cache folders, hashed into
            cell configs).
        random_weights: True when the weights are randomly initialised.
        warning: A line to print/log with every output of a run, or None.
        has_text_encoder: False for image-only backbones, whose text calls raise.
    """

    spec: BackboneSpec
    identifier: str
    random_weights: bool
    warning: str | None
    has_text_encoder: bool


# ---------------------------------------------------------------------- implementations
@dataclass(frozen=True, kw_only=True, eq=False)
class BackboneBase:
    """The identity fields every backbone shares (see :class:`Backbone`)."""

    spec: BackboneSpec
    identifier: str
    device: torch.device
    random_weights: bool
    warning: str | None = None
    has_text_encoder: ClassVar[bool]


@dataclass(frozen=True, kw_only=True, eq=False)
class TorchImageEncoder(BackboneBase, ABC):
    """An :class:`ImageEncoder` around one frozen torch module (eval mode, on ``device``).

    Subclasses say how the module pools an image batch (:meth:`image_features`); that is
    also where token-level image access and trainable modules inside the encoder belong.
    """

    model: nn.Module
    preprocess: Callable[[Any], torch.Tensor]
    train_transform: Callable[[Any], torch.Tensor]
    preprocess_cfg: dict[str, Any]
    autocast_dtype: torch.dtype | None
    embed_dim: int

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Encode a batch of preprocessed images.

        Args:
            images: (N, 3, H, W) tensor from ``preprocess`` (any device).

        Returns:
            (N, embed_dim) float32 features on ``device``, not normalised.
        """
        images = images.to(self.device, non_blocking=True)
        with torch.no_grad(), autocast(self.device, self.autocast_dtype):
            features = self.image_features(images)
        return features.float()

    @abstractmethod
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """The model's pooled features of images already on ``device`` (any dtype)."""


# ----------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class LoadRequest:
    """How to load a parsed spec.

    Attributes:
        device: Where the model goes.
        cache_dir: Where weights are cached/downloaded (None: the source's default).
        show_progress: A progress bar for slow builds (toy-clip pretraining), or a running
            ``rich.progress.Progress`` to add it to.
        precision: "fp16" for float16 autocast on CUDA (the CSP paper's precision); None for
            the device's default (``bench.device.autocast_dtype_for``).
    """

    device: torch.device
    cache_dir: Path | None = None
    show_progress: bool | Any = True
    precision: str | None = None


@dataclass(frozen=True)
class BackboneSource:
    """One ``--backbone`` form, registered once in ``bench.backbones.registry``.

    Attributes:
        name: ``BackboneSpec.source`` of the specs it parses.
        parse: The spec of a raw string of this form, None for another form; raises
            ``BenchError`` for a malformed string of this form.
        load: Builds the backbone of a parsed spec.
        description: One line for ``bench backbone list``.
        examples: Example specs for help texts.
    """

    name: str
    parse: Callable[[str], BackboneSpec | None]
    load: Callable[[BackboneSpec, LoadRequest], Backbone]
    description: str = ""
    examples: tuple[str, ...] = ()
