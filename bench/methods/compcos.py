"""CompCos (Mancini, Naeem, Xian & Akata, CVPR 2021), on cached image features.

"Open World Compositional Zero-Shot Learning", following the czsl library's ``CompCos``:

* image side: MLP (Linear, LayerNorm, ReLU, dropout, ..., Linear) -> ``emb_dim``, L2-normalised;
* pair side: ``Linear([e_a; e_o])`` of the attribute's and object's word vectors
  (unit-normalised; trainable unless ``train_word_vectors = false``), L2-normalised;
* loss: cross-entropy over ``scale * cosine``. Closed-world training: the training pairs
  are the classes. Open-world training (``open_world_training = true``): all attr x obj pairs
  are the classes; in epoch 1 unseen pairs are masked (logit -10), from epoch 2 on their
  cosine is lowered by ``margin * min(1, (epoch - 1) / epoch_max_margin) * feasibility``,
  the feasibility being recomputed each epoch from the current word embeddings with
  ``bench.evaluation.feasibility.feasibility_scores`` (czsl's ``update_feasibility``).

Scoring is ``scale * cosine`` for any candidate set; open-world feasibility masking at test
time is done by the runner for every method, so it is not repeated here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.evaluation.feasibility import feasibility_scores, seen_columns
from bench.methods.base import FitContext
from bench.methods.training import train_pair_labels
from bench.methods.wordemb import COMPOSE_CHUNK, FeatureMethod, mlp

#: Logit given to unseen pairs in the first open-world epoch (czsl: -10 before scaling).
_MASKED_COSINE = -10.0


class CompCosModel(nn.Module):
    """Image embedder, word embeddings and the linear composition of CompCos."""

    def __init__(
        self,
        feature_dim: int,
        attr_vectors: np.ndarray,
        obj_vectors: np.ndarray,
        hp: Mapping[str, Any],
    ) -> None:
        super().__init__()
        emb_dim = int(hp["emb_dim"])
        self.image_embedder = mlp(
            feature_dim,
            emb_dim,
            int(hp["image_layers"]),
            int(hp["hidden_dim"]),
            float(hp["dropout"]),
        )
        freeze = not bool(hp["train_word_vectors"])
        self.attr_embedder = nn.Embedding.from_pretrained(torch.from_numpy(attr_vectors), freeze)
        self.obj_embedder = nn.Embedding.from_pretrained(torch.from_numpy(obj_vectors), freeze)
        self.word_dim = int(attr_vectors.shape[1])
        self.projection = nn.Linear(2 * self.word_dim, emb_dim)

    def embed_images(self, features: torch.Tensor) -> torch.Tensor:
        """(n, emb_dim) unit-norm image embeddings."""
        return F.normalize(self.image_embedder(features), dim=-1)

    def compose(self, pairs: torch.Tensor) -> torch.Tensor:
        """(P, emb_dim) unit-norm pair embeddings ``normalize(W [e_a; e_o] + b)``.

        Computed as ``W_a e_a + W_o e_o + b`` from per-attribute and per-object
        projections (the same function, without a (P, 2D) concatenation).
        """
        weight, bias = self.projection.weight, self.projection.bias
        attr_part = self.attr_embedder.weight @ weight[:, : self.word_dim].t()
        obj_part = self.obj_embedder.weight @ weight[:, self.word_dim :].t() + bias
        return F.normalize(attr_part[pairs[:, 0]] + obj_part[pairs[:, 1]], dim=-1)


class CompCos(FeatureMethod):
    """Cosine classifier between an image embedding and composed word embeddings.

    Hyperparameters (methods/compcos.toml): ``epochs``, ``lr``, ``weight_decay``,
    ``batch_size``, ``emb_dim``, ``image_layers``, ``hidden_dim``, ``dropout``, ``scale``,
    ``train_word_vectors``, ``open_world_training``, ``margin``, ``epoch_max_margin``,
    ``word_vectors``.
    """

    name = "compcos"

    def __init__(self, hparams: Mapping[str, Any]) -> None:
        super().__init__(hparams)
        self._class_pairs: torch.Tensor | None = None
        self._seen_mask: torch.Tensor | None = None
        self._seen_pairs: np.ndarray | None = None
        self._offset: torch.Tensor | None = None
        self._frozen_feasibility: np.ndarray | None = None

    @property
    def open_world_training(self) -> bool:
        """Whether training classifies over all attr x obj pairs (with the margin)."""
        return bool(self.hparams.get("open_world_training", False))

    def _build(self, ctx: FitContext, feature_dim: int) -> nn.Module:
        attr_vectors, obj_vectors = self._word_vectors(ctx)
        dataset = ctx.dataset
        seen = np.asarray(dataset.seen_pairs_ids(), dtype=np.int64)
        self._seen_pairs = seen
        if self.open_world_training:
            classes = np.asarray(dataset.candidate_pairs("open"), dtype=np.int64)
            self._seen_mask = torch.as_tensor(seen_columns(classes, seen), device=self.device)
        else:
            classes = seen
            self._seen_mask = None
        self._class_pairs = torch.as_tensor(classes, device=self.device)
        self._offset = None
        self._frozen_feasibility = None
        self.fit_info["train_world"] = "open" if self.open_world_training else "closed"
        return CompCosModel(feature_dim, attr_vectors, obj_vectors, self.hparams)

    def _targets(self, ctx: FitContext, attr_idx: np.ndarray, obj_idx: np.ndarray) -> torch.Tensor:
        assert self._class_pairs is not None
        name = getattr(ctx.dataset, "name", "?")
        if self.open_world_training:
            # every training image's pair must be a training pair (as in closed world)
            train_pair_labels(attr_idx, obj_idx, self._seen_pairs, name)
            n_objs = len(ctx.dataset.objs)
            return torch.as_tensor(attr_idx * n_objs + obj_idx, dtype=torch.long)[:, None]
        assert self._seen_pairs is not None
        return train_pair_labels(attr_idx, obj_idx, self._seen_pairs, name)[:, None]

    def start_epoch(self, epoch: int) -> None:
        """Open-world training: set the per-class cosine offset of this epoch."""
        if self.open_world_training:
            self._set_offset(epoch)
        super().start_epoch(epoch)

    def _set_offset(self, epoch: int) -> None:
        assert self._seen_mask is not None and self._class_pairs is not None
        unseen = (~self._seen_mask).float()
        if epoch <= 1:
            self._offset = None  # masked: unseen logits fixed at _MASKED_COSINE
            return
        ramp = min(1.0, (epoch - 1) / max(float(self.hparams["epoch_max_margin"]), 1e-12))
        feasibility = torch.as_tensor(self._feasibility(), device=self.device)
        self._offset = -float(self.hparams["margin"]) * ramp * feasibility * unseen

    def _feasibility(self) -> np.ndarray:
        """Feasibility of every class pair from the current (or frozen) word embeddings."""
        if self._frozen_feasibility is not None:
            return self._frozen_feasibility
        model = self.model
        assert isinstance(model, CompCosModel) and self._class_pairs is not None
        with torch.no_grad():
            attr = model.attr_embedder.weight.detach().cpu().numpy()
            obj = model.obj_embedder.weight.detach().cpu().numpy()
        scores = feasibility_scores(self._class_pairs.cpu().numpy(), self._seen_pairs, attr, obj)
        if not bool(self.hparams["train_word_vectors"]):
            self._frozen_feasibility = scores
        return scores

    def training_loss(self, batch: tuple[torch.Tensor, ...], epoch: int) -> torch.Tensor:
        features, targets = batch
        model = self.model
        assert isinstance(model, CompCosModel) and self._class_pairs is not None
        cosine = model.embed_images(features) @ model.compose(self._class_pairs).t()
        if self.open_world_training:
            assert self._seen_mask is not None
            if self._offset is None:
                cosine = torch.where(
                    self._seen_mask, cosine, torch.full_like(cosine, _MASKED_COSINE)
                )
            else:
                cosine = cosine + self._offset
        return F.cross_entropy(float(self.hparams["scale"]) * cosine, targets[:, 0])

    def _pair_side(self, pairs: torch.Tensor) -> torch.Tensor:
        model = self.model
        assert isinstance(model, CompCosModel)
        chunks = [model.compose(part) for part in pairs.split(COMPOSE_CHUNK)]
        if not chunks:
            return torch.zeros(0, model.projection.out_features, device=self.device)
        return torch.cat(chunks).t().contiguous()

    def _block_scores(self, features: torch.Tensor, pair_side: torch.Tensor) -> torch.Tensor:
        model = self.model
        assert isinstance(model, CompCosModel)
        return float(self.hparams["scale"]) * (model.embed_images(features) @ pair_side)
