"""DFSP: Decomposed Fusion with Soft Prompt (Lu, Liu, Guo & Guo, CVPR 2023).

Built on CSP (the attribute/object vocabulary) with the official code's ``txt2img`` fusion:

* prompts "a photo of x x" (context length 8) whose three context tokens ("a photo of")
  train too, with the attribute's and object's vocabulary rows in the two ``x`` slots;
* the text transformer's outputs of every candidate pair (before the final norm) are
  averaged per attribute and per object (decomposition), mapped to the image width
  (``text_to_image``) and, over the (position x concept) axis, to the image token positions
  (``concepts_to_positions``): one (T, width_img) context shared by every image;
* each image's cached last-block tokens cross-attend to that context, then pass one
  self-attention block; the final norm and projection of the backbone pool the result
  (its class token). The pair texts pass one (non-causal) self-attention block and the
  backbone's final norm, end-of-text pooling and projection;
* image = ``res_w`` x pooled + (1 - ``res_w``) x fused, text likewise; the score is
  ``logit_scale * cosine``;
* loss: CE(fused pair logits) + ``att_obj_w`` x (CE(attr) + CE(obj)), attribute/object
  logits being the means of the plain soft-prompt pair logits over the pairs holding them,
  + ``sp_w`` x CE(plain soft-prompt logits); Adam with L2 weight decay, StepLR per epoch.

The image side of the fusion costs the same per image whatever the number of candidate
pairs (the context is computed once per candidate set), so open world streams like CSP.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import BenchError
from bench.features import TokenSet, image_token_shape
from bench.methods.base import FitContext
from bench.methods.clip_family import autocast_context, device_generator, normalize
from bench.methods.csp import CSP
from bench.methods.scoring import as_pair_tensor, block_rows
from bench.methods.training import image_labels, shuffled_batches, step_lr
from bench.prefix_text import PromptRows

#: Dropout of the official fusion module (after the context map and inside the MLPs).
FUSION_DROPOUT = 0.3
#: Context tokens initialised from "a photo of" (positions 1..3 of the template).
N_CONTEXT = 3


class _SelfAttentionBlock(nn.Module):
    """Pre-norm (non-causal) self-attention block with a QuickGELU MLP (official CLIP-style)."""

    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, max(1, width // 64), batch_first=True)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = _mlp(width, dropout)
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class _CrossAttentionBlock(nn.Module):
    """Pre-norm cross-attention of ``x`` to ``context``, then an MLP (no dropout, official)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, max(1, width // 64), batch_first=True)
        self.ln_x = nn.LayerNorm(width)
        self.ln_y = nn.LayerNorm(width)
        self.mlp = _mlp(width, 0.0)
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        y = self.ln_y(context)
        x = x + self.attn(self.ln_x(x), y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def _mlp(width: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(width, 4 * width), _QuickGELU()]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(4 * width, width))
    return nn.Sequential(*layers)


class Fusion(nn.Module):
    """The official ``FusionTextImageBlock`` in its ``txt2img`` mode (only what it uses).

    Args:
        width_img: Image token width (1024 at ViT-L/14).
        width_txt: Text token width (768 at ViT-L/14).
        n_concepts: Attributes + objects.
        prompt_length: Prompt positions (the context length, 8).
        n_image_tokens: Image token positions (257 at ViT-L/14, 224 px).
        layers: Self-attention blocks on each side (``SA_K``, 1).
    """

    def __init__(
        self,
        width_img: int,
        width_txt: int,
        n_concepts: int,
        prompt_length: int,
        n_image_tokens: int,
        layers: int,
    ) -> None:
        super().__init__()
        self.text_to_image = nn.Linear(width_txt, width_img)
        self.concepts_to_positions = nn.Linear(prompt_length * n_concepts, n_image_tokens)
        self.dropout = nn.Dropout(FUSION_DROPOUT)
        self.cross_image = _CrossAttentionBlock(width_img)
        self.blocks_image = nn.Sequential(
            *[_SelfAttentionBlock(width_img, FUSION_DROPOUT) for _ in range(layers)]
        )
        self.blocks_text = nn.Sequential(
            *[_SelfAttentionBlock(width_txt, FUSION_DROPOUT) for _ in range(layers)]
        )

    def image_context(self, concepts: torch.Tensor) -> torch.Tensor:
        """(n_concepts, L, width_txt) decomposed text tokens -> (T, width_img) context."""
        x = self.text_to_image(concepts)  # (C, L, W)
        # the official order of the flattened axis: position-major ("t l c -> c (t l)")
        x = x.permute(2, 1, 0).reshape(x.shape[2], -1)  # (W, L * C)
        x = self.dropout(self.concepts_to_positions(x))  # (W, T)
        return x.t()

    def fuse_image(self, tokens: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """(b, T, width_img) image tokens attend to the context, then self-attend."""
        x = self.cross_image(tokens, context.unsqueeze(0).expand(tokens.shape[0], -1, -1))
        return self.blocks_image(x)

    def fuse_text(self, hidden: torch.Tensor) -> torch.Tensor:
        """(P, L, width_txt) text tokens through the self-attention block(s)."""
        return self.blocks_text(hidden)


def concept_sums(
    hidden: torch.Tensor, pairs: torch.Tensor, n_attrs: int, n_objs: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-attribute and per-object sums of pair text tokens, and the pair counts.

    Returns:
        ((n_attrs + n_objs, L, width) float32 sums, (n_attrs + n_objs,) float32 counts).
    """
    index = torch.cat([pairs[:, 0], pairs[:, 1] + n_attrs])
    values = torch.cat([hidden, hidden]).float()
    sums = torch.zeros(n_attrs + n_objs, *hidden.shape[1:], device=hidden.device)
    sums.index_add_(0, index, values)
    counts = torch.zeros(n_attrs + n_objs, device=hidden.device)
    counts.index_add_(0, index, torch.ones_like(index, dtype=torch.float32))
    return sums, counts


def concept_means(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Sums divided by counts; a concept in no candidate pair gets zeros (the official
    code's mean over no pairs is NaN)."""
    return sums / counts.clamp(min=1.0).view(-1, *([1] * (sums.ndim - 1)))


def decomposed_logits(
    logits: torch.Tensor, pairs: torch.Tensor, n_attrs: int, n_objs: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attribute and object logits: the mean of the pair logits holding each (official
    ``decompose_logits``); -inf for one held by no pair (it cannot be a training label)."""
    out = []
    for column, size in ((pairs[:, 0], n_attrs), (pairs[:, 1], n_objs)):
        sums = torch.zeros(logits.shape[0], size, device=logits.device, dtype=logits.dtype)
        sums.index_add_(1, column, logits)
        counts = torch.bincount(column, minlength=size).to(logits.dtype)
        means = sums / counts.clamp(min=1.0)
        out.append(means.masked_fill(counts == 0, float("-inf")))
    return out[0], out[1]


class DFSP(CSP):
    """CSP's vocabulary + a trainable "a photo of" context + the txt2img fusion, on tokens.

    Hyperparameters (see methods/dfsp.toml): those of CSP plus ``res_w``, ``att_obj_w``,
    ``sp_w``, ``fusion_layers``, ``lr_step_size`` and ``lr_gamma``.
    """

    name = "dfsp"
    #: No higher-order prompts: its scores fuse image tokens with a context built from the
    #: candidate pairs, which CSP's triple prompts would bypass (the evaluation skips it).
    score_triples = None  # type: ignore[assignment]
    needs = ("tokens",)
    augment_modes = ("none",)
    #: The fusion reads every prompt position, so prompts always run through the full text
    #: encoder; ``--text-encoding`` does not apply (nor enter DFSP's cell configuration).
    encodes_prompts = False

    def __init__(self, hparams: Mapping[str, Any]) -> None:
        super().__init__(hparams)
        self._token_set: TokenSet | None = None
        self._labels: tuple[torch.Tensor, ...] = ()

    # ------------------------------------------------------------------ setup
    def _setup(self, ctx: FitContext) -> None:
        super()._setup(ctx)
        backbone = self.backbone
        if self.template.eot < N_CONTEXT + 3:
            raise BenchError(f"template tokenised too short for DFSP's {N_CONTEXT} context tokens")
        self.context = nn.Parameter(
            self.template.embeddings[0, 1 : 1 + N_CONTEXT].detach().clone().to(backbone.device)
        )
        n_tokens, width_img = image_token_shape(backbone)
        self.fusion = Fusion(
            width_img,
            int(backbone.width),
            len(self.attrs) + len(self.objs),
            int(self.template.tokens.shape[1]),
            n_tokens,
            int(self.hparams["fusion_layers"]),
        ).to(backbone.device)
        self.fusion.eval()

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [self.vocabulary, self.context, *self.fusion.parameters()]

    def trainable_state(self) -> dict[str, Any]:
        """CSP's state plus ``context`` and the fusion's tensors (``fusion.<name>``)."""
        state = super().trainable_state()
        if not state:
            return state
        state["context"] = self.context.detach().cpu().clone()
        for key, value in self.fusion.state_dict().items():
            state[f"fusion.{key}"] = value.detach().cpu().clone()
        return state

    def apply_trainable_state(self, state: Mapping[str, Any]) -> None:
        super().apply_trainable_state(state)
        fusion = {k.removeprefix("fusion."): v for k, v in state.items() if k.startswith("fusion.")}
        if "context" not in state or not fusion:
            raise BenchError("saved state has no DFSP context or fusion; it is not a DFSP artifact")
        try:
            self.fusion.load_state_dict({k: torch.as_tensor(v) for k, v in fusion.items()})
        except RuntimeError as exc:
            raise BenchError(
                f"saved DFSP fusion does not fit dataset {getattr(self.dataset, 'name', '?')} "
                f"with backbone {self.backbone_name()}: {' '.join(str(exc).split())[:200]}"
            ) from None
        with torch.no_grad():
            self.context.copy_(torch.as_tensor(state["context"]).to(self.context.device))

    # ------------------------------------------------------------------ text side
    def _set_text_encoding(self, text_encoding: str, backbone: Any) -> None:
        self.text_encoding = "full"

    def _prompt_embeddings(
        self, pairs: torch.Tensor, *inputs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """CSP's prompts with the trained context at positions 1..3."""
        tokens, embeddings = super()._prompt_embeddings(pairs, *inputs)
        embeddings[:, 1 : 1 + N_CONTEXT, :] = self.context.to(embeddings.dtype)
        return tokens, embeddings

    def _prompt_rows(self, pairs: torch.Tensor, *inputs: torch.Tensor) -> PromptRows:
        raise BenchError("DFSP encodes whole prompts (its fusion reads every position)")

    def _pair_hidden(
        self, pairs: torch.Tensor, vocabulary: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(P, L, width) text-transformer outputs of the pairs' prompts, and their tokens."""
        tokens, embeddings = self._prompt_embeddings(pairs, vocabulary)
        return self.backbone.encode_text_hidden(embeddings), tokens

    def _texts(
        self, hidden: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Plain and mixed (``res_w``) text features (not normalised) of pair tokens."""
        plain = self.backbone.pool_text_tokens(hidden, tokens)
        fused = self.backbone.pool_text_tokens(self.fusion.fuse_text(hidden.float()), tokens)
        weight = float(self.hparams["res_w"])
        return plain, weight * plain + (1 - weight) * fused

    def _images(
        self, tokens: torch.Tensor, context: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Plain pooled and mixed (``res_w``) image features of image tokens."""
        plain = self.backbone.pool_image_tokens(tokens)
        fused = self.backbone.pool_image_tokens(self.fusion.fuse_image(tokens, context))
        weight = float(self.hparams["res_w"])
        return plain, weight * plain + (1 - weight) * fused

    # ------------------------------------------------------------------ training
    def start_training(self, ctx: FitContext) -> None:
        """Train-split tokens and labels (pair, attribute, object), the dropout generator."""
        backbone = self._require_setup()
        train_pairs = np.asarray(ctx.dataset.seen_pairs_ids(), dtype=np.int64)
        if "train" not in ctx.tokens:
            raise BenchError("DFSP trains on cached image tokens; the train split has none")
        token_set: TokenSet = ctx.tokens["train"]
        if len(token_set) == 0:
            raise BenchError(f"dataset {ctx.dataset.name} has no training images")
        self._token_set = token_set
        self._train_pairs = torch.as_tensor(train_pairs, device=backbone.device)
        self._labels = image_labels(token_set, train_pairs, ctx.dataset.name)
        self._dropout_generator = device_generator(ctx.seed, backbone.device)

    def epoch_batches(self, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
        """(row indices, pair labels, attr labels, obj labels), shuffled; rows read later."""
        assert self._token_set is not None
        rows = torch.arange(len(self._token_set))
        return shuffled_batches(generator, int(self.hparams["batch_size"]), rows, *self._labels)

    def start_epoch(self, epoch: int) -> None:
        super().start_epoch(epoch)
        self.fusion.train()

    def finish_epoch(self, epoch: int) -> None:
        self.fusion.eval()

    def build_scheduler(
        self, optimizer: torch.optim.Optimizer
    ) -> torch.optim.lr_scheduler.LRScheduler | None:
        """StepLR(``lr_step_size``, ``lr_gamma``), stepped after every epoch (official)."""
        return step_lr(optimizer, self.hparams)

    def training_losses(self, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        """The three official loss terms of a batch (unweighted)."""
        backbone = self._require_setup()
        rows, labels, attr_labels, obj_labels = batch
        device = backbone.device
        pairs = self._train_pairs
        assert pairs is not None and self._token_set is not None
        images = self._token_set.rows(rows).to(device)
        with autocast_context(backbone):
            hidden, tokens = self._pair_hidden(pairs, *self._prompt_inputs(True))
            plain_text, mixed_text = self._texts(hidden, tokens)
            sums, counts = concept_sums(hidden, pairs, len(self.attrs), len(self.objs))
            context = self.fusion.image_context(concept_means(sums, counts))
            plain_image, mixed_image = self._images(images, context)
        scale = float(backbone.logit_scale)
        fused = scale * normalize(mixed_image) @ normalize(mixed_text).t()
        soft = scale * normalize(plain_image) @ normalize(plain_text).t()
        attr_logits, obj_logits = decomposed_logits(soft, pairs, len(self.attrs), len(self.objs))
        return {
            "fused": F.cross_entropy(fused, labels.to(device)),
            "attr": F.cross_entropy(attr_logits, attr_labels.to(device)),
            "obj": F.cross_entropy(obj_logits, obj_labels.to(device)),
            "soft_prompt": F.cross_entropy(soft, labels.to(device)),
        }

    def training_loss(self, batch: tuple[torch.Tensor, ...], epoch: int) -> torch.Tensor:
        """CE(fused) + att_obj_w x (CE(attr) + CE(obj)) + sp_w x CE(soft prompt)."""
        terms = self.training_losses(batch)
        return (
            terms["fused"]
            + float(self.hparams["att_obj_w"]) * (terms["attr"] + terms["obj"])
            + float(self.hparams["sp_w"]) * terms["soft_prompt"]
        )

    # ------------------------------------------------------------------ scoring
    def candidate_texts(self, pairs: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-norm mixed text features (P, D) and the image context (T, width_img) of a
        candidate set, streamed over pairs (the decomposition is a running sum)."""
        backbone = self._require_setup()
        pair_tensor = as_pair_tensor(pairs, backbone.device)
        sums = counts = None
        chunks = []
        self.fusion.eval()
        with torch.no_grad(), autocast_context(backbone):
            for batch in pair_tensor.split(self.text_batch_size):
                hidden, tokens = self._pair_hidden(batch, self.vocabulary)
                chunks.append(normalize(self._texts(hidden, tokens)[1]))
                part = concept_sums(hidden, batch, len(self.attrs), len(self.objs))
                sums = part[0] if sums is None else sums + part[0]
                counts = part[1] if counts is None else counts + part[1]
            if sums is None or counts is None:
                raise BenchError("DFSP scoring needs at least one candidate pair")
            context = self.fusion.image_context(concept_means(sums, counts))
        return torch.cat(chunks), context

    def score(
        self, image_features: Any, pairs: np.ndarray, block_size: int = 1024
    ) -> Iterator[np.ndarray]:
        """Yield float32 ``logit_scale * cosine`` blocks (n_i, P) of a ``TokenSet`` (or an
        (N, T, width) tensor of tokens), fusing at most ``block_rows`` images at a time."""
        backbone = self._require_setup()
        text, context = self.text_cache.get(pairs, lambda: self.candidate_texts(pairs))
        rows = block_rows(block_size, text.shape[0])
        if isinstance(image_features, TokenSet):
            batches: Any = image_features.batches(rows)
        else:
            batches = torch.as_tensor(image_features).split(rows)
        scale = float(backbone.logit_scale)
        self.fusion.eval()
        for tokens in batches:
            with torch.no_grad(), autocast_context(backbone):
                _, image = self._images(tokens.to(backbone.device), context)
            yield (scale * normalize(image) @ text.t()).float().cpu().numpy()
