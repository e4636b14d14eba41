"""The loaded frozen backbone: image/text encoders and token-level text access."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bench.backbones.spec import BackboneSpec
from bench.device import autocast
from bench.errors import BenchError


def clean_name(name: str) -> str:
    """Normalise a dataset attribute/object name for prompts.

    Lowercases, turns ``.`` and ``_`` into spaces and collapses whitespace:
    ``"Faux.Fur"`` -> ``"faux fur"``, ``"traffic_light"`` -> ``"traffic light"``.
    """
    return " ".join(re.sub(r"[._]", " ", name).lower().split())


@dataclass(frozen=True)
class _TextTower:
    """The token-level pieces of an open_clip text encoder."""

    token_embedding: nn.Embedding
    positional_embedding: torch.Tensor
    transformer: nn.Module
    attn_mask: torch.Tensor | None
    ln_final: nn.Module
    text_projection: Any
    pool_type: str
    eos_id: int | None


@dataclass(frozen=True, eq=False)
class Backbone:
    """A frozen open_clip CLIP model with its tokenizer and image transforms.

    Attributes:
        spec: The parsed spec it was loaded from.
        model: The open_clip model (eval mode, no parameter requires grad, on ``device``).
        tokenizer: open_clip tokenizer, ``list[str] -> LongTensor (B, context_length)``.
        preprocess: Eval image transform (PIL image -> tensor).
        train_transform: The official CSP training augmentation (horizontal flip,
            perspective, rotation by up to 5 degrees) followed by ``preprocess``.
        device: Where the model lives.
        autocast_dtype: Mixed-precision dtype on CUDA (bf16 if supported, else fp16);
            None on the CPU (fp32).
        random_weights: True when the weights are randomly initialised.
        identifier: Stable, filesystem-safe id for caches (spec + weights hash).
        embed_dim: Dimension of the image/text features.
        width: Text transformer width (token-embedding dimension).
        context_length: Tokenizer/text-encoder context length.
        logit_scale: ``model.logit_scale.exp()``.
        warning: A line to print/log with every output of a run, or None.
        preprocess_cfg: open_clip's preprocessing config (size, mean, std, ...).
    """

    spec: BackboneSpec
    model: nn.Module
    tokenizer: Callable[..., torch.Tensor]
    preprocess: Callable[[Any], torch.Tensor]
    train_transform: Callable[[Any], torch.Tensor]
    device: torch.device
    autocast_dtype: torch.dtype | None
    random_weights: bool
    identifier: str
    embed_dim: int
    width: int
    context_length: int
    logit_scale: float
    warning: str | None = None
    preprocess_cfg: dict[str, Any] | None = None

    # ------------------------------------------------------------------ images
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Encode a batch of preprocessed images.

        Args:
            images: (N, 3, H, W) tensor from ``preprocess`` (any device).

        Returns:
            (N, embed_dim) float32 features on ``device``, not normalised.
        """
        images = images.to(self.device, non_blocking=True)
        with torch.no_grad(), autocast(self.device, self.autocast_dtype):
            features = self.model.encode_image(images)
        return features.float()

    # -------------------------------------------------------------------- text
    def encode_text(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Encode prompts without gradients.

        Returns:
            (len(texts), embed_dim) float32 features on ``device``, not normalised.
        """
        if not texts:
            return torch.zeros(0, self.embed_dim, device=self.device)
        chunks = []
        with torch.no_grad(), autocast(self.device, self.autocast_dtype):
            for start in range(0, len(texts), batch_size):
                tokens = self.tokenizer(list(texts[start : start + batch_size]))
                chunks.append(self.model.encode_text(tokens.to(self.device)).float())
        return torch.cat(chunks)

    def token_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """Look up token embeddings: (B, L) token ids -> (B, L, width)."""
        tower = self._text_tower()
        return tower.token_embedding(tokens.to(self.device))

    def encode_text_embeddings(
        self, embeddings: torch.Tensor, tokens: torch.Tensor
    ) -> torch.Tensor:
        """Run the text encoder on custom token embeddings (differentiable).

        Does exactly what open_clip's ``CLIP.encode_text`` does after the token lookup:
        cast, add positional embeddings, causal transformer, final layer norm, pool at the
        end-of-text position (``tokens.argmax(-1)`` for CLIP), project.

        Args:
            embeddings: (B, L, width) token embeddings, e.g. with learned soft tokens;
                L may be shorter than the context length.
            tokens: (B, L) token ids the embeddings stand for (used for pooling).

        Returns:
            (B, embed_dim) float32 features on ``device``, not normalised.
        """
        from open_clip.transformer import text_global_pool

        tower = self._text_tower()
        tokens = tokens.to(self.device)
        with autocast(self.device, self.autocast_dtype):
            cast_dtype = tower.transformer.get_cast_dtype()
            x = embeddings.to(self.device).to(cast_dtype)
            # Prompts may be shorter than the context (CSP truncates to 8 tokens): under the
            # causal mask positions after end-of-text never reach it, so slicing is exact.
            length = x.shape[1]
            x = x + tower.positional_embedding[:length].to(cast_dtype)
            mask = tower.attn_mask
            if mask is not None:
                mask = mask[:length, :length]
            x = tower.transformer(x, attn_mask=mask)
            x = tower.ln_final(x)
            x = text_global_pool(x, tokens, tower.pool_type, eos_token_id=tower.eos_id)
            projection = tower.text_projection
            if projection is not None:
                x = projection(x) if isinstance(projection, nn.Linear) else x @ projection
        return x.float()

    def name_embedding(self, name: str) -> torch.Tensor:
        """Mean token embedding of ``clean_name(name)``'s sub-tokens (no SOT/EOT/padding).

        Returns:
            (width,) float32 tensor on ``device`` (detached).
        """
        text = clean_name(name)
        ids = self._subtoken_ids(text)
        if not ids:
            raise BenchError(
                f"name {name!r} has no tokens after cleaning; rename it in the dataset"
            )
        tower = self._text_tower()
        with torch.no_grad():
            index = torch.tensor(ids, dtype=torch.long, device=self.device)
            return tower.token_embedding(index).float().mean(dim=0)

    # ----------------------------------------------------------------- helpers
    def _subtoken_ids(self, text: str) -> list[int]:
        encode = getattr(self.tokenizer, "encode", None)
        if encode is not None and hasattr(self.tokenizer, "sot_token_id"):
            # open_clip SimpleTokenizer: BPE ids without SOT/EOT, truncated like __call__.
            return list(encode(text))[: self.context_length - 2]
        row = self.tokenizer([text])[0].tolist()
        special = {0}
        for attr in ("sot_token_id", "eot_token_id", "pad_token_id"):
            value = getattr(self.tokenizer, attr, None)
            if isinstance(value, int):
                special.add(value)
        inner = getattr(self.tokenizer, "tokenizer", None)
        special.update(getattr(inner, "all_special_ids", []) or [])
        return [token for token in row if token not in special]

    def _text_tower(self) -> _TextTower:
        tower = find_text_tower(self.model)
        if tower is None:
            raise BenchError(
                f"backbone {self.spec.raw} ({type(self.model).__name__}) has no token-level "
                "text transformer; methods that learn prompt tokens need a standard CLIP text "
                "tower (e.g. ViT-L-14:openai)"
            )
        return tower


def find_text_tower(model: nn.Module) -> _TextTower | None:
    """Return the token-level text encoder parts of an open_clip model, or None.

    Supports ``CLIP`` and ``CustomTextCLIP`` with an open_clip ``TextTransformer`` without a
    class token or padding mask (not Hugging Face text towers, CoCa or SigLIP-style pools).
    """
    if hasattr(model, "token_embedding") and hasattr(model, "ln_final"):
        return _TextTower(
            token_embedding=model.token_embedding,
            positional_embedding=model.positional_embedding,
            transformer=model.transformer,
            attn_mask=model.attn_mask,
            ln_final=model.ln_final,
            text_projection=model.text_projection,
            pool_type=getattr(model, "text_pool_type", "argmax"),
            eos_id=getattr(model, "text_eos_id", None),
        )
    text = getattr(model, "text", None)
    if (
        text is not None
        and hasattr(text, "token_embedding")
        and getattr(text, "cls_emb", None) is None
        and not getattr(text, "use_pad_mask", False)
    ):
        return _TextTower(
            token_embedding=text.token_embedding,
            positional_embedding=text.positional_embedding,
            transformer=text.transformer,
            attn_mask=text.attn_mask,
            ln_final=text.ln_final,
            text_projection=text.text_projection,
            pool_type=text.pool_type,
            eos_id=getattr(text, "eos_id", None),
        )
    return None
