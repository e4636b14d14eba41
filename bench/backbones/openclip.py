"""open_clip CLIP models as backbones: the image and text encoders, and how to build them.

Every open_clip source (open_clip tags, checkpoints, hf-hub, local-dir, tiny-random,
toy-clip) builds its model on the CPU with :func:`create_model`, loads its weights with
:func:`load_weights` and hands a :class:`BuiltModel` to :func:`assemble_backbone`.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from bench.backbones.adapters import ImageAdapters
from bench.backbones.base import (
    RANDOM_INIT_SEED,
    TextTower,
    TorchImageEncoder,
    clean_name,
    random_weights_warning,
)
from bench.backbones.build import csp_train_transform, quiet, short_error
from bench.backbones.spec import BackboneSpec
from bench.device import autocast, autocast_dtype_for
from bench.errors import BenchError

#: The shipped open_clip model configs (``bench-tiny-random``, ``toy-clip``).
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
_configs_registered = False


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


# --------------------------------------------------------------------------- text tower
def find_text_tower(model: nn.Module) -> TextTower | None:
    """Return the token-level text encoder parts of an open_clip model, or None.

    Supports ``CLIP`` and ``CustomTextCLIP`` with an open_clip ``TextTransformer`` without a
    class token or padding mask (not Hugging Face text towers, CoCa or SigLIP-style pools).
    """
    if hasattr(model, "token_embedding") and hasattr(model, "ln_final"):
        return TextTower(
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
        return TextTower(
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


# ----------------------------------------------------------------------------- backbone
@dataclass(frozen=True, kw_only=True, eq=False)
class OpenClipBackbone(TorchImageEncoder):
    """A frozen open_clip CLIP model: its image encoder and its token-level text encoder.

    Image-token access (the last block's tokens, and pooling cached tokens) and trainable
    modules inside the image encoder belong here, beside :meth:`image_features`.

    Attributes:
        model: The open_clip model (eval mode, no parameter requires grad, on ``device``).
        tokenizer: open_clip tokenizer, ``list[str] -> LongTensor (B, context_length)``.
        width: Text transformer width (token-embedding dimension; 0 without a text tower).
        context_length: Tokenizer/text-encoder context length.
        logit_scale: ``model.logit_scale.exp()``.
    """

    tokenizer: Callable[..., torch.Tensor]
    width: int
    context_length: int
    logit_scale: float
    has_text_encoder: ClassVar[bool] = True

    # ------------------------------------------------------------------ images
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """open_clip's pooled, projected image features."""
        return self.model.encode_image(images)

    def encode_image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The token sequence of the image transformer's last block, before its final norm.

        Args:
            images: (N, 3, H, W) tensor from ``preprocess`` (any device).

        Returns:
            (N, T, width) float32 tokens on ``device`` (T = 1 + patches: 257 at ViT-L/14).
        """
        visual = self._vision_tower()
        images = images.to(self.device, non_blocking=True)
        with torch.no_grad(), autocast(self.device, self.autocast_dtype):
            tokens = visual.transformer(visual._embeds(images))
        return tokens.float()

    def image_token_shape(self) -> tuple[int, int]:
        """(T, width) of ``encode_image_tokens``' output per image."""
        n_tokens, width = self._vision_tower().positional_embedding.shape
        return int(n_tokens), int(width)

    def pool_image_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final norm, pooling and projection of ``encode_image_tokens``' output.

        ``pool_image_tokens(encode_image_tokens(x))`` is ``encode_images(x)``; it is
        differentiable, so methods that change tokens (fusion) pool them the model's way.

        Returns:
            (N, embed_dim) float32 features on ``device``, not normalised.
        """
        visual = self._vision_tower()
        with autocast(self.device, self.autocast_dtype):
            pooled, _ = visual._pool(tokens.to(self.device))
            if visual.proj is not None:
                pooled = pooled @ visual.proj
        return pooled.float()

    def project_image_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final norm and projection of every token of ``encode_image_tokens``' output.

        For a class-token ViT (open_clip's ``tok`` pooling, every OpenAI CLIP), row 0 is
        ``pool_image_tokens``' feature. Differentiable.

        Returns:
            (N, T, embed_dim) float32 tokens on ``device``.
        """
        visual = self._vision_tower()
        with autocast(self.device, self.autocast_dtype):
            projected = visual.ln_post(tokens.to(self.device))
            if visual.proj is not None:
                projected = projected @ visual.proj
        return projected.float()

    def image_blocks(self) -> tuple[int, int]:
        """(number of transformer blocks, token width) of the image encoder: the shape an
        :class:`~bench.backbones.adapters.ImageAdapters` for it takes."""
        transformer = self._vision_tower().transformer
        return len(transformer.resblocks), int(transformer.width)

    def adapted_image_tokens(self, images: torch.Tensor, adapters: ImageAdapters) -> torch.Tensor:
        """``encode_image_tokens`` with trainable adapters beside every block's sub-layers.

        Each block computes ``x + attn(ln_1(x)) + a_i(x)``, then ``y + mlp(ln_2(y)) + m_i(y)``
        (AdaptFormer's parallel adapters, as the official Troika code places them). The
        frozen weights are untouched; gradients reach the adapters (and the images). With
        every adapter's scale at 0 the output equals ``encode_image_tokens``.

        Args:
            images: (N, 3, H, W) tensor from ``preprocess`` or ``train_transform``.
            adapters: Two adapters per block (see ``image_blocks``), on ``device``.

        Returns:
            (N, T, width) float32 last-block tokens before the final norm, with gradients
            when grad mode is on.
        """
        visual = self._vision_tower()
        transformer = visual.transformer
        blocks = list(transformer.resblocks)
        if len(adapters) != len(blocks) or not all(_is_plain_block(b) for b in blocks):
            raise BenchError(
                f"backbone {self.spec.raw}: image adapters need a plain open_clip ViT with "
                f"{len(adapters)} residual blocks (it has {len(blocks)} of type "
                f"{type(blocks[0]).__name__ if blocks else '-'})"
            )
        with autocast(self.device, self.autocast_dtype):
            x = visual._embeds(images.to(self.device, non_blocking=True))
            batch_first = getattr(transformer, "batch_first", True)
            if not batch_first:
                x = x.transpose(0, 1)
            for block, (attention_adapter, mlp_adapter) in zip(
                blocks, adapters.per_block(), strict=True
            ):
                x = x + block.ls_1(block.attention(q_x=block.ln_1(x))) + attention_adapter(x)
                x = x + block.ls_2(block.mlp(block.ln_2(x))) + mlp_adapter(x)
            if not batch_first:
                x = x.transpose(0, 1)
        return x.float()

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
        tower = self.text_tower()
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
        return self.pool_text_tokens(self.encode_text_hidden(embeddings), tokens)

    def encode_text_hidden(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The text transformer's last-block outputs for custom token embeddings.

        Args:
            embeddings: (B, L, width) token embeddings (L may be below the context length).

        Returns:
            (B, L, width) outputs before the final norm, in the autocast dtype
            (differentiable); ``pool_text_tokens`` finishes them.
        """
        tower = self.text_tower()
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
            return tower.transformer(x, attn_mask=mask)

    def pool_text_tokens(self, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Final norm, end-of-text pooling and projection of text-transformer outputs.

        Args:
            hidden: (B, L, width) outputs of the text transformer's last block (e.g. after
                a method changed them).
            tokens: (B, L) token ids (used for pooling).

        Returns:
            (B, embed_dim) float32 features on ``device``, not normalised (differentiable).
        """
        from open_clip.transformer import text_global_pool

        tower = self.text_tower()
        with autocast(self.device, self.autocast_dtype):
            x = tower.ln_final(hidden)
            x = text_global_pool(
                x, tokens.to(self.device), tower.pool_type, eos_token_id=tower.eos_id
            )
            projection = tower.text_projection
            if projection is not None:
                x = projection(x) if isinstance(projection, nn.Linear) else x @ projection
        return x.float()

    def name_embedding(self, name: str, cleaning: str = "words") -> torch.Tensor:
        """Mean token embedding of ``clean_name(name, cleaning)``'s sub-tokens (no
        SOT/EOT/padding).

        Returns:
            (width,) float32 tensor on ``device`` (detached).
        """
        text = clean_name(name, cleaning)
        ids = self._subtoken_ids(text)
        if not ids:
            raise BenchError(
                f"name {name!r} has no tokens after cleaning; rename it in the dataset"
            )
        tower = self.text_tower()
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

    def _vision_tower(self) -> nn.Module:
        visual = self.model.visual
        if not (hasattr(visual, "_embeds") and hasattr(visual, "_pool")):
            raise BenchError(
                f"backbone {self.spec.raw} ({type(visual).__name__}) has no token-level image "
                "transformer; methods on image tokens need an open_clip ViT (e.g. ViT-L-14:openai)"
            )
        return visual

    def text_tower(self) -> TextTower:
        """The token-level text transformer (see :func:`find_text_tower`).

        Raises:
            BenchError: The model has none (e.g. a Hugging Face text tower).
        """
        tower = find_text_tower(self.model)
        if tower is None:
            raise BenchError(
                f"backbone {self.spec.raw} ({type(self.model).__name__}) has no token-level "
                "text transformer; methods that learn prompt tokens need a standard CLIP text "
                "tower (e.g. ViT-L-14:openai)"
            )
        return tower


def _is_plain_block(block: nn.Module) -> bool:
    """Whether ``block`` is open_clip's pre-norm residual block (the adapters' layout)."""
    from open_clip.transformer import ResidualAttentionBlock

    return isinstance(block, ResidualAttentionBlock) and not hasattr(block, "ln_1_kv")


# ------------------------------------------------------------------------------ building
@dataclass(frozen=True)
class BuiltModel:
    """A model on the CPU plus what is needed to describe and tokenize for it.

    Attributes:
        model: The open_clip model with its weights.
        weights_digest: sha256 standing for the weights (file or state_dict).
        random_weights: Whether the weights are a random initialisation.
        tokenizer_name: The name open_clip knows the tokenizer by.
        label: Readable start of the identifier (e.g. ``ViT-L-14-openai``).
    """

    model: nn.Module
    weights_digest: str
    random_weights: bool
    tokenizer_name: str
    label: str


def create_model(
    spec: BackboneSpec,
    name: str,
    *,
    cache_dir: str | None,
    quick_gelu: bool = False,
    preprocess: dict[str, Any] | None = None,
) -> nn.Module:
    """Build the architecture on the CPU with a fixed seed (weights are loaded separately).

    Raises:
        BenchError: open_clip cannot build ``name`` (one line).
    """
    import open_clip

    try:
        with quiet(), torch.random.fork_rng(devices=[]):
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
            f"--backbone {spec.raw}: cannot build model {name}: {short_error(exc)}"
        ) from None


def load_weights(spec: BackboneSpec, model: nn.Module, path: str) -> None:
    """Load a weights file into ``model`` (``torch.load(weights_only=True)`` or safetensors).

    Raises:
        BenchError: The file is not a plain tensor state_dict or does not fit the model.
    """
    import open_clip

    try:
        with quiet():
            open_clip.load_checkpoint(model, path, strict=True, weights_only=True, device="cpu")
    except pickle.UnpicklingError as exc:
        raise BenchError(
            f"--backbone {spec.raw}: {path} is not a plain tensor state_dict "
            f"(torch.load(weights_only=True) refused it: {short_error(exc, 160)}); re-save it "
            "with torch.save(model.state_dict(), path) or as .safetensors"
        ) from None
    except Exception as exc:
        raise BenchError(
            f"--backbone {spec.raw}: checkpoint {path} does not fit model {spec.model_name} "
            f"({short_error(exc)}); check the MODEL part of MODEL:/path"
        ) from None


def _identifier_slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._-")[:64] or "backbone"


def assemble_backbone(
    spec: BackboneSpec,
    built: BuiltModel,
    device: torch.device,
    cache: str | None,
    precision: str | None = None,
) -> OpenClipBackbone:
    """Freeze ``built.model``, move it to ``device`` and wrap it with its tokenizer and transforms.

    ``precision`` picks the CUDA autocast dtype (``bench.device.autocast_dtype_for``).

    Raises:
        BenchError: The tokenizer cannot be loaded.
    """
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    model = built.model
    model.eval()
    model.requires_grad_(False)
    architecture = hashlib.sha256(repr(model).encode()).hexdigest()
    identity = hashlib.sha256(f"{architecture}|{built.weights_digest}".encode()).hexdigest()
    model.to(device)

    try:
        with quiet():
            tokenizer = open_clip.get_tokenizer(built.tokenizer_name, cache_dir=cache)
    except Exception as exc:
        raise BenchError(
            f"--backbone {spec.raw}: cannot load the tokenizer: {short_error(exc)}"
        ) from None

    preprocess_cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    preprocess = image_transform_v2(PreprocessCfg(**preprocess_cfg), is_train=False)
    context_length = int(
        getattr(tokenizer, "context_length", None) or getattr(model, "context_length", 77)
    )
    with torch.no_grad():
        probe = model.encode_text(tokenizer(["a photo"]).to(device))
    tower = find_text_tower(model)
    return OpenClipBackbone(
        spec=spec,
        identifier=f"{_identifier_slug(built.label)}-{identity[:16]}",
        device=device,
        random_weights=built.random_weights,
        warning=random_weights_warning(spec) if built.random_weights else None,
        model=model,
        preprocess=preprocess,
        train_transform=csp_train_transform(preprocess),
        preprocess_cfg=preprocess_cfg,
        autocast_dtype=autocast_dtype_for(device, precision),
        embed_dim=int(probe.shape[-1]),
        tokenizer=tokenizer,
        width=int(tower.token_embedding.embedding_dim) if tower is not None else 0,
        context_length=context_length,
        logit_scale=float(model.logit_scale.exp().item()),
    )
