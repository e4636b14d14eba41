"""Troika: Multi-Path Cross-Modal Traction (Huang et al., CVPR 2024), as its official code does.

* Three prompt paths with one shared attribute/object vocabulary (CSP's, ``attr_dropout``
  on the whole matrix, one mask per step for all paths): the pair path "a photo of x x",
  the attribute path and the object path "a photo of x", each with its own three context
  tokens initialised from "a photo of" (context length 8).
* Image side: the frozen CLIP image encoder with AdaptFormer adapters beside both
  sub-layers of every block (``adapters``: bottleneck ``adapter_dim``, scale
  ``adapter_scale``, dropout ``adapter_dropout``), run live on the (augmented) images; the
  pooled feature feeds the pair path, and an attribute and an object disentangler (Linear,
  BatchNorm, ReLU, dropout 0.5) feed the others. ``adapters = false`` uses the frozen
  encoder's cached tokens instead (no live images, no image augmentation).
* Cross-Modal Traction: each path's unit-norm text features attend (``cmt_layers`` layers:
  cross-attention without a query norm, then a pre-norm QuickGELU MLP, dropout
  ``cross_attn_dropout``) to the image's projected tokens after a LayerNorm; the text
  feature becomes ``t + lambda * cmt(t)`` (``lambda`` a learnable vector initialised at
  ``init_lamda``). As in the official loop, the token LayerNorm is applied once more for
  each path (pair: once, attribute: twice, object: three times).
* Logits ``logit_scale * cosine`` per path; loss ``pair_loss_weight`` x CE(pair over the
  training pairs) + ``attr_loss_weight`` x CE(attribute) + ``obj_loss_weight`` x CE(object);
  Adam with L2 weight decay, StepLR(``lr_step_size``, ``lr_gamma``) after every epoch.
* Inference: pair logit x ``pair_inference_weight`` + (softmax(attribute) x
  ``attr_inference_weight``) x (softmax(object) x ``obj_inference_weight``) at the pair's
  attribute and object (a weight of 0 makes its factor 1, as the official ``logit_infer``).

Scoring streams: image blocks of at most ``block_rows`` images, the pair path's traction
over chunks of candidate pairs (each text query attends to the image on its own, so
chunking changes nothing), so C-GQA's open world never holds images x pairs x width.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.backbones.adapters import ImageAdapters
from bench.errors import BenchError
from bench.features import ImageSet, TokenSet
from bench.methods.base import FitContext
from bench.methods.clip_family import (
    PromptTemplate,
    augmented_views,
    autocast_context,
    device_generator,
    normalize,
)
from bench.methods.csp import CSP
from bench.methods.scoring import as_pair_tensor, block_rows
from bench.methods.training import image_labels, shuffled_batches, step_lr
from bench.prefix_text import PromptRows, Slot, encode_prompts, fill_template

#: The attribute and object paths' template.
PRIMITIVE_TEMPLATE = "a photo of x"
#: Context tokens per path, initialised from "a photo of" (positions 1..3).
N_CONTEXT = 3
#: Dropout of the disentanglers (the official ``F.dropout`` default).
DISENTANGLER_DROPOUT = 0.5
#: Most (image, text) rows the traction layers process at once when scoring.
TRACTION_ROWS = 1 << 15
#: Image-encoder width from which live training on the CPU gets a note (ViT-B/32: 768).
LARGE_ENCODER_WIDTH = 512
#: The paths, in the official order (it sets how often the token LayerNorm is applied).
PATHS: tuple[str, ...] = ("pair", "attr", "obj")


class Disentangler(nn.Module):
    """Linear, BatchNorm, ReLU, dropout: the official attribute/object disentangler."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.norm = nn.BatchNorm1d(width)
        self.dropout = nn.Dropout(DISENTANGLER_DROPOUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(F.relu(self.norm(self.fc(x))))


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class TractionLayer(nn.Module):
    """Text queries attend to image tokens (no norm on the queries, bias-free q/k/v), then a
    pre-norm QuickGELU MLP; both residual (the official ``CrossAttentionLayer``)."""

    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.heads = max(1, width // 64)
        self.q = nn.Linear(width, width, bias=False)
        self.k = nn.Linear(width, width, bias=False)
        self.v = nn.Linear(width, width, bias=False)
        self.out = nn.Linear(width, width)
        self.out_dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width),
            _QuickGELU(),
            nn.Dropout(dropout),
            nn.Linear(4 * width, width),
        )
        self.mlp_dropout = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, width = x.shape
        return x.view(b, n, self.heads, width // self.heads).transpose(1, 2)

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """(b, K, width) queries, (b, T, width) tokens -> (b, K, width)."""
        attended = F.scaled_dot_product_attention(
            self._split(self.q(queries)), self._split(self.k(tokens)), self._split(self.v(tokens))
        )
        attended = attended.transpose(1, 2).reshape(queries.shape)
        x = queries + self.out_dropout(self.out(attended))
        return x + self.mlp_dropout(self.mlp(self.norm(x)))


class CrossModalTraction(nn.Module):
    """The traction layers, the learnable mixing vector ``lamda`` and the token LayerNorm."""

    def __init__(self, width: int, layers: int, dropout: float, init_lamda: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList([TractionLayer(width, dropout) for _ in range(layers)])
        self.lamda = nn.Parameter(torch.full((width,), float(init_lamda)))
        self.token_norm = nn.LayerNorm(width)

    def forward(self, text: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Unit-norm texts (K, width) pulled towards each image's normed tokens (b, T, width):
        (b, K, width) unit-norm features."""
        x = text.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        for layer in self.layers:
            x = layer(x, tokens)
        return normalize(text + self.lamda * x)


class TroikaHeads(nn.Module):
    """Everything Troika trains besides the prompts and the adapters."""

    def __init__(self, width: int, hparams: Mapping[str, Any]) -> None:
        super().__init__()
        self.attr_disentangler = Disentangler(width)
        self.obj_disentangler = Disentangler(width)
        self.traction = CrossModalTraction(
            width,
            int(hparams["cmt_layers"]),
            float(hparams["cross_attn_dropout"]),
            float(hparams["init_lamda"]),
        )


class Troika(CSP):
    """Three prompt paths over CSP's vocabulary, disentangled image features, cross-modal
    traction and image-encoder adapters (see the module doc and methods/troika.toml)."""

    name = "troika"
    #: No higher-order prompts: the scores pass through the traction layers and the
    #: attribute/object paths, which CSP's triple prompts would bypass.
    score_triples = None  # type: ignore[assignment]
    needs = ("images",)
    augment_modes = ("none", "paper")
    trains_on_views = False

    @classmethod
    def needs_for(cls, hparams: Mapping[str, Any]) -> tuple[str, ...]:
        """Live images with adapters; the frozen encoder's cached tokens without."""
        return ("images",) if _adapters_on(hparams) else ("tokens",)

    @classmethod
    def augment_modes_for(cls, hparams: Mapping[str, Any]) -> tuple[str, ...]:
        """Cached tokens are un-augmented: ``adapters = false`` trains with "none" only."""
        return cls.augment_modes if _adapters_on(hparams) else ("none",)

    def __init__(self, hparams: Mapping[str, Any]) -> None:
        super().__init__(hparams)
        self.heads: TroikaHeads | None = None
        self.adapters: ImageAdapters | None = None
        self._train_source: ImageSet | TokenSet | None = None
        self._labels: tuple[torch.Tensor, ...] = ()
        self._augment = "none"
        self._seed = 0

    # ------------------------------------------------------------------ setup
    def _setup(self, ctx: FitContext) -> None:
        super()._setup(ctx)
        backbone = self.backbone
        context_length = int(self.hparams.get("context_length", 0) or 0)
        self.templates = {
            "pair": self.template,
            "attr": PromptTemplate.build(backbone, PRIMITIVE_TEMPLATE, context_length),
            "obj": PromptTemplate.build(backbone, PRIMITIVE_TEMPLATE, context_length),
        }
        if self.templates["attr"].eot < N_CONTEXT + 2:
            raise BenchError(
                f"template tokenised too short for Troika's {N_CONTEXT} context tokens"
            )
        self.contexts = nn.ParameterDict(
            {
                path: nn.Parameter(template.embeddings[0, 1 : 1 + N_CONTEXT].detach().clone())
                for path, template in self.templates.items()
            }
        ).to(backbone.device)
        self.heads = TroikaHeads(int(backbone.embed_dim), self.hparams).to(backbone.device)
        self.heads.eval()
        self.adapters = None
        if _adapters_on(self.hparams):
            if not hasattr(backbone, "adapted_image_tokens"):
                raise BenchError(
                    f"backbone {backbone.spec.raw} cannot run image adapters; use an open_clip "
                    "ViT (e.g. ViT-L-14:openai) or --hparam adapters=false"
                )
            blocks, width = backbone.image_blocks()
            self.adapters = ImageAdapters(
                blocks,
                width,
                int(self.hparams["adapter_dim"]),
                float(self.hparams["adapter_scale"]),
                float(self.hparams["adapter_dropout"]),
            ).to(backbone.device)
            self.adapters.eval()

    def _modules(self) -> list[nn.Module]:
        assert self.heads is not None
        return [self.heads] + ([self.adapters] if self.adapters is not None else [])

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [
            self.vocabulary,
            *self.contexts.values(),
            *(p for module in self._modules() for p in module.parameters()),
        ]

    def trainable_state(self) -> dict[str, Any]:
        """CSP's state, ``context.<path>``, ``heads.<name>`` (BatchNorm statistics included)
        and, with adapters, ``adapters.<name>``."""
        state = super().trainable_state()
        if not state:
            return state
        assert self.heads is not None
        for path, context in self.contexts.items():
            state[f"context.{path}"] = context.detach().cpu().clone()
        for prefix, module in (("heads", self.heads), ("adapters", self.adapters)):
            if module is not None:
                for key, value in module.state_dict().items():
                    state[f"{prefix}.{key}"] = value.detach().cpu().clone()
        return state

    def apply_trainable_state(self, state: Mapping[str, Any]) -> None:
        super().apply_trainable_state(state)
        missing = [f"context.{path}" for path in PATHS if f"context.{path}" not in state]
        if missing:
            raise BenchError(f"saved state has no {missing[0]}; it is not a Troika artifact")
        for prefix, module in (("heads", self.heads), ("adapters", self.adapters)):
            saved = {
                k.removeprefix(f"{prefix}."): torch.as_tensor(v)
                for k, v in state.items()
                if k.startswith(f"{prefix}.")
            }
            if module is None:
                if saved:
                    raise BenchError("saved Troika state has adapters; run with adapters=true")
                continue
            try:
                module.load_state_dict(saved)
            except RuntimeError as exc:
                raise BenchError(
                    f"saved Troika {prefix} do not fit dataset "
                    f"{getattr(self.dataset, 'name', '?')} with backbone {self.backbone_name()} "
                    f"and these hyperparameters: {' '.join(str(exc).split())[:200]}"
                ) from None
        with torch.no_grad():
            for path, context in self.contexts.items():
                context.copy_(torch.as_tensor(state[f"context.{path}"]).to(context.device))

    # ------------------------------------------------------------------ text side
    def _path_prompts(self, path: str, ids: torch.Tensor, vocabulary: torch.Tensor) -> PromptRows:
        """The prompts of ``path`` for ``ids`` ((P, 2) pairs, or (n,) attribute/object ids)."""
        template = self.templates[path]
        eot = template.eot
        every = torch.arange(N_CONTEXT, device=ids.device).expand(ids.shape[0], -1)
        slots = [Slot(tuple(range(1, 1 + N_CONTEXT)), self.contexts[path], every)]
        offset = len(self.attrs)
        if path == "pair":
            slots += [
                Slot((eot - 2,), vocabulary, ids[:, 0]),
                Slot((eot - 1,), vocabulary, ids[:, 1] + offset),
            ]
        else:
            slots.append(Slot((eot - 1,), vocabulary, ids + (offset if path == "obj" else 0)))
        return fill_template(template.tokens, template.embeddings, slots)

    def _path_text(self, path: str, ids: torch.Tensor, vocabulary: torch.Tensor) -> torch.Tensor:
        """(n, D) unit-norm text features of one path (prefix or full text encoding)."""
        backbone = self._require_setup()
        prompts = self._path_prompts(path, ids, vocabulary)
        if self.text_encoding == "prefix":
            return normalize(encode_prompts(backbone.text_tower(), prompts))
        return normalize(backbone.encode_text_embeddings(prompts.embeddings(), prompts.tokens))

    def _text_features(self, pairs: torch.Tensor, train: bool) -> torch.Tensor:
        return self._path_text("pair", pairs, self._prompt_inputs(train)[0])

    def _texts(
        self, pairs: torch.Tensor, vocabulary: torch.Tensor, chunk: int
    ) -> dict[str, torch.Tensor]:
        """Unit-norm text features of every path: ``pairs`` and all attributes and objects."""
        device = pairs.device
        primitives = {
            "attr": torch.arange(len(self.attrs), device=device),
            "obj": torch.arange(len(self.objs), device=device),
        }
        texts = {
            "pair": torch.cat(
                [self._path_text("pair", part, vocabulary) for part in pairs.split(chunk)]
            )
        }
        for path, ids in primitives.items():
            texts[path] = torch.cat(
                [self._path_text(path, part, vocabulary) for part in ids.split(chunk)]
            )
        return texts

    # ------------------------------------------------------------------ image side
    def _image_tokens(self, batch: torch.Tensor) -> torch.Tensor:
        """Last-block tokens of a batch: adapted live images, or cached tokens as given."""
        backbone = self._require_setup()
        if self.adapters is None:
            return batch.to(backbone.device)
        return backbone.adapted_image_tokens(batch, self.adapters)

    def _image_side(
        self, tokens: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """Per path: the unit-norm image feature, and the normed tokens its traction reads."""
        backbone = self._require_setup()
        heads = self.heads
        assert heads is not None
        pooled = backbone.pool_image_tokens(tokens)
        projected = backbone.project_image_tokens(tokens)
        features = {
            "pair": normalize(pooled),
            "attr": normalize(heads.attr_disentangler(pooled)),
            "obj": normalize(heads.obj_disentangler(pooled)),
        }
        normed, per_path = projected, []
        for _ in PATHS:  # the official loop re-applies the norm for each path
            normed = heads.traction.token_norm(normed)
            per_path.append(normed)
        return features, per_path

    def _path_logits(
        self, feature: torch.Tensor, text: torch.Tensor, tokens: torch.Tensor
    ) -> torch.Tensor:
        """``logit_scale * cos(image feature, traction(text, tokens))``: (b, K), the traction
        over chunks of at most ``TRACTION_ROWS`` (image, text) rows (each text query attends
        on its own, so chunks change nothing but memory)."""
        heads = self.heads
        assert heads is not None
        scale = float(self._require_setup().logit_scale)
        chunk = max(1, TRACTION_ROWS // max(1, feature.shape[0]))
        return torch.cat(
            [
                scale * torch.einsum("bd,bkd->bk", feature, heads.traction(part, tokens).float())
                for part in text.split(chunk)
            ],
            dim=1,
        )

    def _all_logits(
        self, tokens: torch.Tensor, texts: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        features, normed = self._image_side(tokens)
        return {
            path: self._path_logits(features[path], texts[path], normed[i])
            for i, path in enumerate(PATHS)
        }

    # ------------------------------------------------------------------ training
    def start_training(self, ctx: FitContext) -> None:
        """The training images (live) or tokens, the labels and the dropout generator."""
        backbone = self._require_setup()
        train_pairs = np.asarray(ctx.dataset.seen_pairs_ids(), dtype=np.int64)
        level = self.input_level()
        sources = ctx.images if level == "images" else ctx.tokens
        if "train" not in sources:
            what = "images" if level == "images" else "cached image tokens"
            raise BenchError(f"Troika trains on the train split's {what}; none were given")
        source = sources["train"]
        if len(source) == 0:
            raise BenchError(f"dataset {ctx.dataset.name} has no training images")
        self._train_source = source
        self._augment, self._seed = ctx.augment, ctx.seed
        self._train_pairs = torch.as_tensor(train_pairs, device=backbone.device)
        self._labels = image_labels(source, train_pairs, ctx.dataset.name)
        self._dropout_generator = device_generator(ctx.seed, backbone.device)
        blocks, width = backbone.image_blocks() if self.adapters is not None else (0, 0)
        if backbone.device.type == "cpu" and width >= LARGE_ENCODER_WIDTH:
            note = ctx.extras.get("note", lambda message: None)
            note(
                f"Troika trains through the {blocks}-block image encoder on every step (live "
                "adapters); on the CPU that takes very long. --hparam adapters=false trains on "
                "cached image tokens instead"
            )

    def epoch_batches(self, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
        """(images or tokens, pair labels, attr labels, obj labels), shuffled.

        A last batch of one image joins the one before it: BatchNorm cannot train on one.
        """
        source = self._train_source
        assert source is not None
        rows = torch.arange(len(source))
        batches = list(
            shuffled_batches(generator, int(self.hparams["batch_size"]), rows, *self._labels)
        )
        if len(batches) > 1 and batches[-1][0].shape[0] == 1:
            last = batches.pop()
            batches[-1] = tuple(torch.cat([a, b]) for a, b in zip(batches[-1], last, strict=True))
        if isinstance(source, TokenSet):
            return ((source.rows(index), *labels) for index, *labels in batches)
        backbone = self._require_setup()
        order = [batch[0] for batch in batches]
        if self._augment == "paper":
            images = augmented_views(source, backbone, order, self._seed, self._epoch)
        else:
            images = source.loader(
                backbone.preprocess, [index.tolist() for index in order], device=backbone.device
            )
        return ((image, *batch[1:]) for image, batch in zip(images, batches, strict=True))

    def start_epoch(self, epoch: int) -> None:
        super().start_epoch(epoch)
        for module in self._modules():
            module.train()

    def finish_epoch(self, epoch: int) -> None:
        for module in self._modules():
            module.eval()

    def build_scheduler(
        self, optimizer: torch.optim.Optimizer
    ) -> torch.optim.lr_scheduler.LRScheduler | None:
        """StepLR(``lr_step_size``, ``lr_gamma``), stepped after every epoch (official)."""
        return step_lr(optimizer, self.hparams)

    def training_losses(self, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        """The three cross-entropy terms of a batch (unweighted)."""
        backbone = self._require_setup()
        images, labels, attr_labels, obj_labels = batch
        pairs = self._train_pairs
        assert pairs is not None
        device = backbone.device
        with autocast_context(backbone):
            texts = self._texts(pairs, self._prompt_inputs(True)[0], max(1, len(pairs)))
            logits = self._all_logits(self._image_tokens(images), texts)
        return {
            "pair": F.cross_entropy(logits["pair"], labels.to(device)),
            "attr": F.cross_entropy(logits["attr"], attr_labels.to(device)),
            "obj": F.cross_entropy(logits["obj"], obj_labels.to(device)),
        }

    def training_loss(self, batch: tuple[torch.Tensor, ...], epoch: int) -> torch.Tensor:
        """The weighted sum of the pair, attribute and object cross-entropies."""
        terms = self.training_losses(batch)
        return sum(float(self.hparams[f"{path}_loss_weight"]) * terms[path] for path in PATHS)  # type: ignore[return-value]

    # ------------------------------------------------------------------ scoring
    def candidate_texts(self, pairs: np.ndarray) -> dict[str, torch.Tensor]:
        """Unit-norm text features of the candidate pairs and of every primitive."""
        backbone = self._require_setup()
        with torch.no_grad(), autocast_context(backbone):
            return self._texts(
                as_pair_tensor(pairs, backbone.device), self.vocabulary, self.text_batch_size
            )

    def _image_batches(self, images: Any, rows: int) -> Iterator[torch.Tensor]:
        backbone = self._require_setup()
        if isinstance(images, ImageSet):
            if self.adapters is None:
                raise BenchError("Troika with adapters=false scores cached tokens, not images")
            return images.batches(backbone.preprocess, rows, device=backbone.device)
        if self.adapters is not None:
            raise BenchError("Troika with adapters scores images (an ImageSet), not tokens")
        if isinstance(images, TokenSet):
            return images.batches(rows)
        return iter(torch.as_tensor(images).split(rows))

    def _inference_factor(self, probabilities: torch.Tensor, weight: float) -> torch.Tensor:
        if weight == 0:  # the official logit_infer: weight 0 means a factor of 1
            return torch.ones_like(probabilities)
        return probabilities * weight

    def score(
        self, image_features: Any, pairs: np.ndarray, block_size: int = 1024
    ) -> Iterator[np.ndarray]:
        """Yield float32 score blocks (n_i, P) of an ``ImageSet`` (with adapters) or a
        ``TokenSet`` / (N, T, width) tokens (without), in image order."""
        backbone = self._require_setup()
        texts = self.text_cache.get(pairs, lambda: self.candidate_texts(pairs))
        pair_ids = as_pair_tensor(pairs, backbone.device)
        weights = {path: float(self.hparams[f"{path}_inference_weight"]) for path in PATHS}
        for module in self._modules():
            module.eval()
        rows = block_rows(block_size, max(1, len(pairs)))
        for batch in self._image_batches(image_features, rows):
            with torch.no_grad(), autocast_context(backbone):
                logits = self._all_logits(self._image_tokens(batch), texts)
            attr = F.softmax(logits["attr"], dim=-1)[:, pair_ids[:, 0]]
            obj = F.softmax(logits["obj"], dim=-1)[:, pair_ids[:, 1]]
            scores = logits["pair"] * weights["pair"] + self._inference_factor(
                attr, weights["attr"]
            ) * self._inference_factor(obj, weights["obj"])
            yield scores.float().cpu().numpy()


def _adapters_on(hparams: Mapping[str, Any]) -> bool:
    value = hparams.get("adapters", True)
    if isinstance(value, str):
        return value.lower() in ("true", "1", "yes")
    return bool(value)
