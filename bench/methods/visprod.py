"""VisProd (the czsl library's ``VisualProductNN``; Misra, Gupta & Hebert, CVPR 2017).

Two MLP classifiers on the cached image feature, one over attributes and one over objects,
trained with the sum of their cross-entropies; a pair's score is the *product* of the two
softmax probabilities ``p(a | x) * p(o | x)`` (as czsl does). It is the non-compositional
lower bound: unseen pairs are scored exactly like seen ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.methods.base import FitContext
from bench.methods.wordemb import FeatureMethod, mlp


class _VisProdModel(nn.Module):
    def __init__(self, feature_dim: int, n_attrs: int, n_objs: int, hp: Mapping[str, Any]):
        super().__init__()
        layers, hidden = int(hp["image_layers"]), int(hp["hidden_dim"])
        dropout = float(hp["dropout"])
        self.attr_clf = mlp(feature_dim, n_attrs, layers, hidden, dropout)
        self.obj_clf = mlp(feature_dim, n_objs, layers, hidden, dropout)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.attr_clf(features), self.obj_clf(features)


class VisProd(FeatureMethod):
    """Independent attribute and object classifiers; pair score = p(a|x) * p(o|x).

    Hyperparameters (methods/visprod.toml): ``epochs``, ``lr``, ``weight_decay``,
    ``batch_size``, ``image_layers``, ``hidden_dim``, ``dropout``.
    """

    name = "visprod"

    def _build(self, ctx: FitContext, feature_dim: int) -> nn.Module:
        dataset = ctx.dataset
        return _VisProdModel(feature_dim, len(dataset.attrs), len(dataset.objs), self.hparams)

    def _targets(self, ctx: FitContext, attr_idx: np.ndarray, obj_idx: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.stack([attr_idx, obj_idx], axis=1), dtype=torch.long)

    def training_loss(self, batch: tuple[torch.Tensor, ...], epoch: int) -> torch.Tensor:
        features, targets = batch
        attr_logits, obj_logits = self._require_model()(features)
        return F.cross_entropy(attr_logits, targets[:, 0]) + F.cross_entropy(
            obj_logits, targets[:, 1]
        )

    def _pair_side(self, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return pairs[:, 0], pairs[:, 1]

    def _block_scores(
        self, features: torch.Tensor, pair_side: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        assert self.model is not None
        attr_logits, obj_logits = self.model(features)
        attr_ids, obj_ids = pair_side
        p_attr = attr_logits.softmax(dim=-1)
        p_obj = obj_logits.softmax(dim=-1)
        return p_attr[:, attr_ids].mul_(p_obj[:, obj_ids])
