"""Shared machinery of the CLIP-family methods (clip, coop, csp).

Prompt templates, blockwise ``logit_scale * cosine`` scoring, the training batches of the
soft-prompt methods (cached features or re-encoded augmented images) and their loss; the
epoch loop itself is ``bench.methods.training``.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from bench.constants import AUGMENT_CHOICES, TEXT_ENCODING_CHOICES
from bench.device import autocast
from bench.errors import BenchError
from bench.features import ImageSet, view_seed
from bench.methods.base import FitContext, Method, method_hparams
from bench.methods.scoring import CandidateCache, as_pair_tensor, block_rows
from bench.methods.training import TrainableMethod, shuffled_batches, train_pair_labels
from bench.prefix_text import (
    PrefixTree,
    PromptRows,
    check_tower,
    encode_prompts,
    encode_tree,
    pool_positions,
)

if TYPE_CHECKING:
    from bench.backbones import Backbone

#: Pairs encoded per text-encoder call when scoring (does not change results).
TEXT_BATCH_SIZE = 1024
#: The prompt template of CSP and CoOp: the two ``x`` are replaced by attribute and object.
SOFT_TEMPLATE = "a photo of x x"
#: Their higher-order template: attribute, second attribute and object.
SOFT_TRIPLE_TEMPLATE = "a photo of x x x"
#: Above this many prompt tokens per step, training encodes the training pairs' prompts in
#: chunks under activation checkpointing (e.g. C-GQA's 5,592 pairs at 77 tokens); with
#: prefix encoding, above this many prefix-tree nodes it checkpoints each layer instead.
CHECKPOINT_TOKENS = 1 << 16


def device_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A generator on ``device`` (for dropout masks), seeded from ``seed``."""
    generator = torch.Generator(device=torch.device(device))
    generator.manual_seed(seed + 1)
    return generator


def dropout(x: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Inverted dropout, like ``nn.Dropout(p)`` in training mode, drawn from ``generator``.

    Args:
        x: Input tensor.
        p: Probability of zeroing an element.
        generator: Generator on ``x.device`` (keeps the mask independent of global RNG).

    Returns:
        ``x`` with elements zeroed with probability ``p`` and the rest scaled by 1/(1-p).
    """
    if p <= 0.0:
        return x
    if p >= 1.0:
        return torch.zeros_like(x)
    keep = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) >= p
    return x * keep / (1.0 - p)


# --------------------------------------------------------------------------- tensors


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Float32 rows scaled to unit L2 norm."""
    return F.normalize(x.float(), dim=-1)


def autocast_context(backbone: Backbone) -> contextlib.AbstractContextManager[Any]:
    """Autocast to the backbone's mixed-precision dtype on CUDA; a no-op on the CPU."""
    return autocast(backbone.device, backbone.autocast_dtype)


def score_blocks(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: float,
    block_size: int,
) -> Iterator[np.ndarray]:
    """Yield ``logit_scale * cosine`` float32 blocks of image rows against all texts.

    Args:
        image_features: (N, D) image features (any device, not necessarily normalised).
        text_features: (P, D) unit-norm float32 text features (their device is used).
        logit_scale: The fixed CLIP temperature (already exponentiated).
        block_size: Image rows per yielded block (fewer when a block would exceed
            ``MAX_BLOCK_ELEMENTS`` scores, see ``block_rows``).

    Yields:
        Arrays of shape (n_i, P), float32, in image order.
    """
    rows = block_rows(block_size, text_features.shape[0])
    device = text_features.device
    text_t = text_features.t()
    for start in range(0, image_features.shape[0], rows):
        block = normalize(image_features[start : start + rows].to(device))
        yield (logit_scale * (block @ text_t)).float().cpu().numpy()


# --------------------------------------------------------------------------- prompts


@dataclass
class PromptTemplate:
    """A tokenised soft-prompt template and its frozen token embeddings.

    Attributes:
        tokens: (1, L) token ids on the backbone device (possibly truncated, see below).
        embeddings: (1, L, width) float32 frozen token embeddings of ``tokens``.
        eot: Index of the end-of-text token (``tokens.argmax()``).
    """

    tokens: torch.Tensor
    embeddings: torch.Tensor
    eot: int

    @classmethod
    def build(cls, backbone: Backbone, text: str, context_length: int | None) -> PromptTemplate:
        """Tokenise ``text`` once; truncate to ``context_length`` tokens if that is exact.

        The official CSP code tokenises with context length 8 for speed. Positions after
        the end-of-text token never influence it under CLIP's causal mask, so truncation
        changes nothing but speed. It is used only if the backbone's
        ``encode_text_embeddings`` accepts the shorter sequence and gives the same feature.
        """
        tokens = backbone.tokenizer([text]).to(backbone.device)
        eot = int(tokens[0].argmax())
        with torch.no_grad():
            embeddings = backbone.token_embeddings(tokens).float()
        template = cls(tokens=tokens, embeddings=embeddings, eot=eot)
        if context_length and eot < context_length < tokens.shape[1]:
            short = cls(tokens[:, :context_length], embeddings[:, :context_length], eot)
            if _truncation_is_exact(backbone, template, short):
                return short
        return template

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (n, L) and a writable copy of the embeddings (n, L, width)."""
        return self.tokens.expand(n, -1), self.embeddings.expand(n, -1, -1).clone()

    def with_slots(self, rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and embeddings with ``rows[k]`` (each (n, width)) at the ``len(rows)``
        positions just before end-of-text, in order (the template's ``x`` words)."""
        tokens, embeddings = self.batch(rows[0].shape[0])
        start = self.eot - len(rows)
        for k, row in enumerate(rows):
            embeddings[:, start + k, :] = row.to(embeddings.dtype)
        return tokens, embeddings


def _truncation_is_exact(backbone: Backbone, full: PromptTemplate, short: PromptTemplate) -> bool:
    """Whether the backbone encodes the truncated template to the same feature."""
    try:
        with torch.no_grad():
            a = backbone.encode_text_embeddings(full.embeddings, full.tokens).float()
            b = backbone.encode_text_embeddings(short.embeddings, short.tokens).float()
    except (RuntimeError, ValueError, IndexError):
        return False
    if a.shape != b.shape:
        return False
    # float32: equal up to rounding; mixed precision: kernels differ with the length
    tolerance = 1e-4 if backbone.autocast_dtype is None else 2e-2
    return bool((a - b).norm() <= tolerance * a.norm())


# --------------------------------------------------------------------------- training data


class TrainingBatches:
    """Per-epoch (normalised image features, train-pair labels) batches for either path.

    ``augment="none"``: the cached ``ctx.features["train"]`` features, shuffled.
    ``augment="paper"``: each epoch is one augmented view of every training image
    (``backbone.train_transform``, seeded by ``view_seed(seed, epoch, image)``), read from
    ``ctx.train_views`` (encoded once per epoch and shared by the grid's methods) or, without
    it, re-encoded at every step like the official loop.
    """

    def __init__(self, ctx: FitContext, train_pairs: np.ndarray, batch_size: int) -> None:
        backbone = ctx.backbone
        assert backbone is not None
        self.backbone, self.batch_size, self.augment = backbone, batch_size, ctx.augment
        self.device = torch.device(backbone.device)
        self.views, self.seed = ctx.train_views, ctx.seed
        name = getattr(ctx.dataset, "name", "?")
        if ctx.augment == "none":
            if "train" not in ctx.features:
                raise BenchError("training on cached features needs the train split's features")
            feature_set = ctx.features["train"]
            self.features = normalize(torch.as_tensor(feature_set.features)).to(self.device)
            attr_ids, obj_ids = feature_set.attr_idx, feature_set.obj_idx
        elif ctx.augment == "paper":
            self.images = ImageSet.of_split(ctx.dataset, "train")
            attr_ids, obj_ids = self.images.attr_idx, self.images.obj_idx
        else:
            raise BenchError(f"unknown augment mode {ctx.augment!r}; use one of {AUGMENT_CHOICES}")
        self.labels = train_pair_labels(attr_ids, obj_ids, train_pairs, name).to(self.device)
        self.size = int(self.labels.shape[0])
        if self.size == 0:
            raise BenchError(f"dataset {name} has no training images")

    def epoch(
        self, generator: torch.Generator, epoch: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield shuffled (features (b, D) unit-norm float32, labels (b,)) on the device."""
        if self.augment == "none":
            yield from shuffled_batches(generator, self.batch_size, self.features, self.labels)
            return
        if self.views is not None:
            views = normalize(self.views.epoch(epoch).features).to(self.device)
            yield from shuffled_batches(generator, self.batch_size, views, self.labels)
            return
        order = torch.randperm(self.size, generator=generator).split(self.batch_size)
        for index, images in zip(
            order, augmented_views(self.images, self.backbone, order, self.seed, epoch), strict=True
        ):
            yield normalize(self.backbone.encode_images(images)), self.labels[index.to(self.device)]


def augmented_views(
    images: ImageSet, backbone: Backbone, batches: Sequence[torch.Tensor], seed: int, epoch: int
) -> Iterator[torch.Tensor]:
    """One epoch's augmented views (``backbone.train_transform``, image ``i`` seeded by
    ``view_seed(seed, epoch, image)``) of ``batches`` of indices, on the backbone's device."""
    seeds = [view_seed(seed, epoch, image) for image in images.image_paths]
    return images.loader(
        backbone.train_transform,
        [index.tolist() for index in batches],
        seeds=seeds,
        device=backbone.device,
    )


# --------------------------------------------------------------------------- method bases


class TriplePrompts(abc.ABC):
    """Mixin of CLIP-family methods that also prompt ``(attr, attr2, obj)`` triples.

    Gives the optional ``score_triples`` interface of the higher-order evaluation
    (``bench.evaluation.higher_order``); methods without it are skipped there.
    """

    @abc.abstractmethod
    def _triple_text_features(self, triples: torch.Tensor) -> torch.Tensor:
        """(T, D) text features (not normalised) of (attr, attr2, obj) id triples."""

    def score_triples(self, image_features: torch.Tensor, triples: np.ndarray) -> np.ndarray:
        """``logit_scale * cosine`` float32 scores (N, T) of images against triple prompts.

        Args:
            image_features: (N, D) image features.
            triples: (T, 3) int array of (attr_id, attr2_id, obj_id), attribute ids of the
                dataset's vocabulary for both attributes.
        """
        backbone = self._require_setup()  # type: ignore[attr-defined]
        ids = torch.as_tensor(np.asarray(triples, dtype=np.int64), device=backbone.device)
        with torch.no_grad(), autocast_context(backbone):
            text = torch.cat(
                [normalize(self._triple_text_features(part)) for part in ids.split(TEXT_BATCH_SIZE)]
            )
        features = torch.as_tensor(image_features)
        blocks = score_blocks(features, text, float(backbone.logit_scale), 1024)
        return np.concatenate(list(blocks)) if features.shape[0] else np.zeros((0, len(ids)))


class ClipFamilyMethod(Method):
    """Base of methods scoring ``logit_scale * cos(image, text(attr, obj))`` with CLIP.

    Subclasses implement ``_setup`` and ``_text_features``; this class provides blockwise
    scoring with a small cache of the candidate-pair text features.
    """

    needs_text_encoder = True
    encodes_prompts = True

    def __init__(self, hparams: Mapping[str, Any]) -> None:
        super().__init__(method_hparams(self.name, hparams))
        self.backbone: Backbone | None = None
        self.dataset: Any = None
        #: ``clean_name`` style of prompts and name vectors (``FitContext.name_cleaning``).
        self.name_cleaning = "words"
        self.text_batch_size = TEXT_BATCH_SIZE
        self.text_cache = CandidateCache()
        self.text_encoding = "prefix"

    # -- setup
    def prepare(self, ctx: FitContext) -> None:
        """Bind the dataset and backbone and build the prompts; no training (idempotent).

        Non-None values of ``ctx.hparams`` take precedence over the constructor's.
        """
        self.hparams.update({k: v for k, v in ctx.hparams.items() if v is not None})
        if ctx.backbone is None:
            raise BenchError(f"method {self.name} needs a CLIP backbone")
        self._set_text_encoding(ctx.text_encoding, ctx.backbone)
        if (
            self.backbone is ctx.backbone
            and self.dataset is ctx.dataset
            and self.name_cleaning == ctx.name_cleaning
        ):
            return
        self.backbone, self.dataset = ctx.backbone, ctx.dataset
        self.name_cleaning = ctx.name_cleaning
        self.invalidate()
        self._setup(ctx)

    def _set_text_encoding(self, text_encoding: str, backbone: Backbone) -> None:
        if text_encoding not in TEXT_ENCODING_CHOICES:
            raise BenchError(
                f"unknown text encoding {text_encoding!r}; use one of {TEXT_ENCODING_CHOICES}"
            )
        if text_encoding == "prefix":
            try:
                check_tower(backbone.text_tower())
            except (BenchError, ValueError) as exc:
                raise BenchError(
                    f"{self.name}: prefix text encoding cannot run backbone {backbone.spec.raw} "
                    f"({exc}); run with --text-encoding full"
                ) from exc
        if text_encoding != self.text_encoding:
            self.text_encoding = text_encoding
            self.invalidate()

    @abc.abstractmethod
    def _setup(self, ctx: FitContext) -> None:
        """Build prompts / parameters for ``self.dataset`` and ``self.backbone``."""

    @abc.abstractmethod
    def _text_features(self, pairs: torch.Tensor, train: bool) -> torch.Tensor:
        """(P, D) text features (not normalised) of a batch of (attr, obj) id pairs."""

    def invalidate(self) -> None:
        """Mark the prompts as changed (drops cached text features)."""
        self.text_cache.invalidate()

    def _require_setup(self) -> Backbone:
        if self.backbone is None:
            raise RuntimeError(f"{self.name}: call fit() or prepare() before scoring")
        return self.backbone

    # -- scoring
    def pair_text_features(self, pairs: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(P, D) unit-norm float32 text features of ``pairs`` in eval mode, batched."""
        backbone = self._require_setup()
        pair_tensor = as_pair_tensor(pairs, backbone.device)
        chunks = []
        with torch.no_grad(), autocast_context(backbone):
            for batch in pair_tensor.split(self.text_batch_size):
                chunks.append(normalize(self._text_features(batch, train=False)))
        if not chunks:
            return torch.zeros(0, backbone.embed_dim, device=backbone.device)
        return torch.cat(chunks)

    def score(
        self, image_features: torch.Tensor, pairs: np.ndarray, block_size: int = 1024
    ) -> Iterator[np.ndarray]:
        """Yield float32 ``logit_scale * cosine`` blocks (n_i, P) in image order."""
        backbone = self._require_setup()
        text = self.text_cache.get(pairs, lambda: self.pair_text_features(pairs))
        yield from score_blocks(
            torch.as_tensor(image_features), text, float(backbone.logit_scale), block_size
        )

    def backbone_name(self) -> str:
        """A printable name of the bound backbone (for error messages)."""
        return self._require_setup().spec.raw


class SoftPromptMethod(ClipFamilyMethod, TrainableMethod):
    """A CLIP-family method that trains prompt tensors with the CSP recipe.

    Trained by the shared loop (``bench.methods.training``) as the official CSP
    ``train.py`` does: cross-entropy of ``logit_scale * cosine`` over the training pairs,
    ``torch.optim.Adam`` with L2 ``weight_decay``, no schedule, gradient accumulation (loss
    divided by the number of steps; a step also at the end of each epoch), and the epoch
    the protocol selects (``ctx.epoch_selection``: the last, or the best closed-world val
    AUC). Images come from the cached features (``augment="none"``) or augmented views
    (``"paper"``, see ``TrainingBatches``).
    Subclasses give the trainable tensors (``trainable_parameters``,
    ``trainable_state``/``apply_trainable_state``) and how prompts use them.
    """

    augment_modes = AUGMENT_CHOICES
    trains_on_views = True
    template: PromptTemplate

    def __init__(self, hparams: Mapping[str, Any]) -> None:
        super().__init__(hparams)
        self._dropout_generator: torch.Generator | None = None
        self._batches: TrainingBatches | None = None
        self._train_pairs: torch.Tensor | None = None
        self._epoch = 0
        self._train_tree: PrefixTree | None = None

    @abc.abstractmethod
    def _prompt_inputs(self, train: bool) -> tuple[torch.Tensor, ...]:
        """The trainable tensors as the prompts use them (e.g. after dropout in training)."""

    @abc.abstractmethod
    def _prompt_embeddings(
        self, pairs: torch.Tensor, *inputs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The full encoder's input: (P, L) token ids and (P, L, width) embeddings."""

    @abc.abstractmethod
    def _prompt_rows(self, pairs: torch.Tensor, *inputs: torch.Tensor) -> PromptRows:
        """The prefix encoder's input: the pairs' prompts as shared input rows."""

    def _encode_pairs(self, pairs: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        """(P, D) text features (not normalised) of ``pairs`` from ``_prompt_inputs``."""
        backbone = self._require_setup()
        if self.text_encoding == "prefix":
            return encode_prompts(backbone.text_tower(), self._prompt_rows(pairs, *inputs))
        tokens, embeddings = self._prompt_embeddings(pairs, *inputs)
        return backbone.encode_text_embeddings(embeddings, tokens).float()

    def _text_features(self, pairs: torch.Tensor, train: bool) -> torch.Tensor:
        return self._encode_pairs(pairs, *self._prompt_inputs(train))

    def _training_text_features(self) -> torch.Tensor:
        """Unit-norm text features of all training pairs, with gradients.

        One set of prompt inputs (one dropout mask) per step. Prefix encoding runs all
        prompts at once over the prefix tree built in ``start_training``, checkpointing each
        layer above ``CHECKPOINT_TOKENS`` tree nodes. The full encoder, when the prompts hold
        more than ``CHECKPOINT_TOKENS`` tokens, runs in chunks under activation
        checkpointing (same gradients, bounded memory, one extra forward pass).
        """
        backbone = self._require_setup()
        assert self._train_pairs is not None
        pairs = self._train_pairs
        inputs = self._prompt_inputs(True)
        if self._train_tree is not None:
            tree = self._train_tree
            return normalize(
                encode_tree(
                    backbone.text_tower(),
                    tree,
                    self._prompt_rows(pairs, *inputs).rows,
                    checkpoint_layers=len(tree.node_rows) > CHECKPOINT_TOKENS,
                )
            )
        tokens = pairs.shape[0] * self.template.tokens.shape[1]
        if tokens <= CHECKPOINT_TOKENS:
            return normalize(self._encode_pairs(pairs, *inputs))
        chunk = max(1, CHECKPOINT_TOKENS // self.template.tokens.shape[1])
        return torch.cat(
            [
                normalize(checkpoint(self._encode_pairs, part, *inputs, use_reentrant=False))
                for part in pairs.split(chunk)
            ]
        )

    def is_prepared(self) -> bool:
        """Whether the prompts are built (``prepare`` bound a backbone)."""
        return self.backbone is not None

    def prepare(self, ctx: FitContext) -> None:
        """Bind dataset and backbone, build prompts, then apply any state loaded earlier."""
        super().prepare(ctx)
        self.apply_pending_state()

    def start_training(self, ctx: FitContext) -> None:
        """The training batches, the training pairs and the dropout generator.

        With prefix encoding also the training prompts' prefix tree: it depends only on
        which rows the prompts use, not on their values, so it serves every step.
        """
        backbone = self._require_setup()
        train_pairs = np.asarray(ctx.dataset.seen_pairs_ids(), dtype=np.int64)
        self._batches = TrainingBatches(ctx, train_pairs, int(self.hparams["batch_size"]))
        self._train_pairs = torch.as_tensor(train_pairs, device=backbone.device)
        self._dropout_generator = device_generator(ctx.seed, backbone.device)
        if ctx.augment == "paper" and ctx.train_views is not None:
            views = ctx.train_views
            self.fit_info["train_views"] = {"encoded": views.encoded, "cached": views.cached}
        self._train_tree = None
        if self.text_encoding == "prefix":
            prompts = self._prompt_rows(self._train_pairs, *self._prompt_inputs(False))
            tower = backbone.text_tower()
            self._train_tree = PrefixTree.build(
                prompts.index, pool_positions(tower, prompts.tokens)
            )

    def start_epoch(self, epoch: int) -> None:
        """Remember the epoch: it picks the epoch's augmented views."""
        self._epoch = epoch

    def training_generators(self) -> dict[str, torch.Generator]:
        """The dropout masks' generator."""
        generator = self._dropout_generator
        return {"dropout": generator} if generator is not None else {}

    def epoch_batches(self, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
        """(unit-norm image features, train-pair labels) batches (see ``TrainingBatches``)."""
        assert self._batches is not None
        return self._batches.epoch(generator, self._epoch)

    def training_loss(self, batch: tuple[torch.Tensor, ...], epoch: int) -> torch.Tensor:
        """Cross-entropy of ``logit_scale * cosine`` over all training pairs."""
        backbone = self._require_setup()
        feats, labels = batch
        with autocast_context(backbone):
            text = self._training_text_features()
        logits = float(backbone.logit_scale) * feats @ text.t()
        return F.cross_entropy(logits, labels)
