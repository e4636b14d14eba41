"""LE+ (label embedding with a learned composition), on cached image features.

The czsl library's ``LabelEmbedPlus`` (after Misra, Gupta & Hebert, CVPR 2017, as extended
by Nagarajan & Grauman, ECCV 2018): an image embedder (czsl ``MLP``: Linear + ReLU) and a
composition network T([e_a; e_o]) (``compose_layers`` Linear layers, ReLU after each, as the
czsl ``MLP`` with its default final ReLU) map into one ``emb_dim`` space; training uses the
triplet margin loss between an image, its pair and a random other training pair; a pair's
score is minus the squared Euclidean distance between the embeddings (czsl's
``val_forward_distance_fast``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.methods.base import FitContext
from bench.methods.wordemb import EmbeddingDistanceMethod, relu_mlp


class LEPlusModel(nn.Module):
    """Image embedder, word embeddings and the composition network of LE+."""

    def __init__(
        self,
        feature_dim: int,
        attr_vectors: np.ndarray,
        obj_vectors: np.ndarray,
        hp: Mapping[str, Any],
    ) -> None:
        super().__init__()
        emb_dim = int(hp["emb_dim"])
        self.image_embedder = relu_mlp(feature_dim, emb_dim, 1, emb_dim)
        freeze = not bool(hp["train_word_vectors"])
        self.attr_embedder = nn.Embedding.from_pretrained(torch.from_numpy(attr_vectors), freeze)
        self.obj_embedder = nn.Embedding.from_pretrained(torch.from_numpy(obj_vectors), freeze)
        word_dim = int(attr_vectors.shape[1])
        self.compose_net = relu_mlp(2 * word_dim, emb_dim, int(hp["compose_layers"]), 2 * word_dim)

    def compose(self, pairs: torch.Tensor) -> torch.Tensor:
        """(P, emb_dim) pair embeddings T([e_a; e_o])."""
        inputs = torch.cat([self.attr_embedder(pairs[:, 0]), self.obj_embedder(pairs[:, 1])], 1)
        return self.compose_net(inputs)


class LEPlus(EmbeddingDistanceMethod):
    """Triplet-trained joint embedding of images and composed word vectors.

    Hyperparameters (methods/leplus.toml): ``epochs``, ``lr``, ``weight_decay``,
    ``batch_size``, ``emb_dim``, ``compose_layers``, ``margin``, ``train_word_vectors``,
    ``word_vectors``.
    """

    name = "le+"

    def __init__(self, hparams: Mapping[str, Any]) -> None:
        super().__init__(hparams)
        self._train_pairs: torch.Tensor | None = None
        self._generator: torch.Generator | None = None

    def _build(self, ctx: FitContext, feature_dim: int) -> nn.Module:
        attr_vectors, obj_vectors = self._word_vectors(ctx)
        seen = np.asarray(ctx.dataset.seen_pairs_ids(), dtype=np.int64)
        self._train_pairs = torch.as_tensor(seen, device=self.device)
        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(ctx.seed + 2)
        return LEPlusModel(feature_dim, attr_vectors, obj_vectors, self.hparams)

    def _targets(self, ctx: FitContext, attr_idx: np.ndarray, obj_idx: np.ndarray) -> torch.Tensor:
        return self._pair_targets(ctx, attr_idx, obj_idx)

    def training_generators(self) -> dict[str, torch.Generator]:
        return {"negatives": self._generator} if self._generator is not None else {}

    def training_loss(self, batch: tuple[torch.Tensor, ...], epoch: int) -> torch.Tensor:
        features, targets = batch
        model = self.model
        assert isinstance(model, LEPlusModel) and self._train_pairs is not None
        labels = targets[:, 0]
        n_pairs = self._train_pairs.shape[0]
        # a random other training pair per image (czsl's sample_negative)
        shift = torch.randint(
            1, max(n_pairs, 2), labels.shape, generator=self._generator, device=labels.device
        )
        negatives = (labels + shift) % max(n_pairs, 1)
        anchor = model.image_embedder(features)
        positive = model.compose(self._train_pairs[labels])
        negative = model.compose(self._train_pairs[negatives])
        return F.triplet_margin_loss(
            anchor, positive, negative, margin=float(self.hparams["margin"])
        )
