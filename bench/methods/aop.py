"""AoP, Attributes as Operators (Nagarajan & Grauman, ECCV 2018), on cached image features.

An object is a vector (initialised from its word vector), an attribute is a learned square
matrix (initialised to the identity) that operates on it: the pair (a, o) is embedded as
``ReLU(M_a e_o)``. Images are embedded by Linear + ReLU into the same space (its dimension
is the word vectors'). Training, as in the authors' code:

* triplet margin loss between an image, its pair and a random other training pair;
* ``lambda_aux``: attribute and object classifiers (Linear) on the pair embedding, so that it
  keeps both primitives recoverable;
* ``lambda_inv``: inverse consistency: the image embedding with its attribute removed
  (``ReLU(M_a^-1 x)``) and another attribute b of the object applied should be closer to
  ``ReLU(M_b e_o)`` than to the image's own pair;
* ``lambda_comm``: commutativity, ``||ReLU(M_a ReLU(M_c e_o)) - ReLU(M_c ReLU(M_a e_o))||^2``.

The attributes b and c are drawn, per image, among the attributes its object has in the
training pairs (b != a, c != b; any other attribute when the object has no other), never
from val/test pairs. A pair's score is minus the squared Euclidean distance between image and
pair embeddings (as LE+).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import BenchError
from bench.methods.base import FitContext
from bench.methods.wordemb import EmbeddingDistanceMethod, relu_mlp


def apply_operators(
    operators: torch.Tensor, attrs: torch.Tensor, vectors: torch.Tensor, inverse: bool = False
) -> torch.Tensor:
    """``ReLU(M_a v)`` (``inverse``: ``ReLU(M_a^-1 v)``) for each row's attribute ``a`` of
    the (A, D, D) ``operators``.

    One product (or solve) per distinct attribute of the batch: no (B, D, D) gather, whose
    backward (an accumulating scatter) made repeated fits differ in the last bits.
    """
    order: list[torch.Tensor] = []
    parts: list[torch.Tensor] = []
    for attr in torch.unique(attrs).tolist():
        rows = (attrs == attr).nonzero().squeeze(1)
        order.append(rows)
        if inverse:
            moved = torch.linalg.solve(operators[attr], vectors[rows].t()).t()
        else:
            moved = vectors[rows] @ operators[attr].t()
        parts.append(F.relu(moved))
    if not parts:
        return vectors.new_zeros(vectors.shape)
    return torch.cat(parts)[torch.argsort(torch.cat(order))]


class AoPModel(nn.Module):
    """Image embedder, attribute operators, object embeddings and auxiliary classifiers."""

    def __init__(
        self, feature_dim: int, n_attrs: int, obj_vectors: np.ndarray, hp: Mapping[str, Any]
    ) -> None:
        super().__init__()
        dim = int(obj_vectors.shape[1])
        self.image_embedder = relu_mlp(feature_dim, dim, 1, dim)
        self.attr_ops = nn.Parameter(torch.eye(dim).repeat(n_attrs, 1, 1))
        freeze = not bool(hp["train_word_vectors"])
        self.obj_embedder = nn.Embedding.from_pretrained(torch.from_numpy(obj_vectors), freeze)
        if float(hp["lambda_aux"]) > 0:
            self.attr_clf = nn.Linear(dim, n_attrs)
            self.obj_clf = nn.Linear(dim, int(obj_vectors.shape[0]))

    def compose(self, pairs: torch.Tensor) -> torch.Tensor:
        """(P, D) pair embeddings ``ReLU(M_a e_o)``."""
        return apply_operators(self.attr_ops, pairs[:, 0], self.obj_embedder(pairs[:, 1]))


class AttributesAsOperators(EmbeddingDistanceMethod):
    """Attributes as matrices acting on object vectors, trained with a triplet loss.

    Hyperparameters (methods/aop.toml): ``epochs``, ``lr``, ``weight_decay``,
    ``batch_size``, ``margin``, ``lambda_aux``, ``lambda_inv``, ``lambda_comm``,
    ``train_word_vectors``, ``word_vectors``.
    """

    name = "aop"

    def __init__(self, hparams: Mapping[str, Any]) -> None:
        super().__init__(hparams)
        self._train_pairs: torch.Tensor | None = None
        self._generator: torch.Generator | None = None
        self._affordance: torch.Tensor | None = None
        self._affordance_count: torch.Tensor | None = None
        self._n_attrs = 0

    def _build(self, ctx: FitContext, feature_dim: int) -> nn.Module:
        _, obj_vectors = self._word_vectors(ctx)
        dataset = ctx.dataset
        seen = np.asarray(dataset.seen_pairs_ids(), dtype=np.int64)
        self._n_attrs = len(dataset.attrs)
        self._train_pairs = torch.as_tensor(seen, device=self.device)
        # per object, the attributes it has in the training pairs (padded with -1)
        per_obj: list[list[int]] = [[] for _ in dataset.objs]
        for attr, obj in seen.tolist():
            per_obj[obj].append(attr)
        width = max((len(a) for a in per_obj), default=1) or 1
        table = np.full((len(per_obj), width), -1, dtype=np.int64)
        for obj, attrs in enumerate(per_obj):
            table[obj, : len(attrs)] = sorted(attrs)
        self._affordance = torch.as_tensor(table, device=self.device)
        self._affordance_count = torch.as_tensor([len(a) for a in per_obj], device=self.device)
        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(ctx.seed + 3)
        for key in ("lambda_aux", "lambda_inv", "lambda_comm", "margin"):
            if float(self.hparams[key]) < 0:
                raise BenchError(f"aop: {key} must be >= 0, got {self.hparams[key]}")
        return AoPModel(feature_dim, self._n_attrs, obj_vectors, self.hparams)

    def _targets(self, ctx: FitContext, attr_idx: np.ndarray, obj_idx: np.ndarray) -> torch.Tensor:
        return self._pair_targets(ctx, attr_idx, obj_idx)

    def training_generators(self) -> dict[str, torch.Generator]:
        return {"sampling": self._generator} if self._generator is not None else {}

    def _other_attribute(self, objs: torch.Tensor, exclude: torch.Tensor) -> torch.Tensor:
        """Per row, a random training attribute of the object other than ``exclude``
        (any other attribute when the object has none)."""
        assert self._affordance is not None and self._affordance_count is not None
        counts = self._affordance_count[objs]
        row_table = self._affordance[objs]
        has_exclude = (row_table == exclude[:, None]).any(dim=1)
        choices = counts - has_exclude.long()
        draw = torch.rand(objs.shape, generator=self._generator, device=objs.device)
        pick = (draw * choices.clamp(min=1)).long()
        # skip the excluded attribute's slot: the pick-th entry among the others
        position = (row_table == exclude[:, None]).long().argmax(dim=1)
        slot = pick + (has_exclude & (pick >= position)).long()
        from_table = row_table.gather(1, slot.clamp(max=row_table.shape[1] - 1)[:, None])[:, 0]
        shift = torch.randint(
            1, max(self._n_attrs, 2), objs.shape, generator=self._generator, device=objs.device
        )
        fallback = (exclude + shift) % max(self._n_attrs, 1)
        return torch.where(choices > 0, from_table, fallback)

    def training_loss(self, batch: tuple[torch.Tensor, ...], epoch: int) -> torch.Tensor:
        features, targets = batch
        model = self.model
        assert isinstance(model, AoPModel) and self._train_pairs is not None
        hp = self.hparams
        margin = float(hp["margin"])
        labels = targets[:, 0]
        n_pairs = self._train_pairs.shape[0]
        shift = torch.randint(
            1, max(n_pairs, 2), labels.shape, generator=self._generator, device=labels.device
        )
        negatives = self._train_pairs[(labels + shift) % max(n_pairs, 1)]
        pairs = self._train_pairs[labels]
        attrs, objs = pairs[:, 0], pairs[:, 1]

        anchor = model.image_embedder(features)
        obj_emb = model.obj_embedder(objs)
        positive = apply_operators(model.attr_ops, attrs, obj_emb)
        negative = model.compose(negatives)
        loss = F.triplet_margin_loss(anchor, positive, negative, margin=margin)

        if float(hp["lambda_aux"]) > 0:
            aux = F.cross_entropy(model.attr_clf(positive), attrs) + F.cross_entropy(
                model.obj_clf(positive), objs
            )
            loss = loss + float(hp["lambda_aux"]) * aux
        need_other = float(hp["lambda_inv"]) > 0 or float(hp["lambda_comm"]) > 0
        inv_attrs = self._other_attribute(objs, attrs) if need_other else attrs
        if float(hp["lambda_inv"]) > 0:
            without_attr = apply_operators(model.attr_ops, attrs, anchor, inverse=True)
            moved = apply_operators(model.attr_ops, inv_attrs, without_attr)
            target = apply_operators(model.attr_ops, inv_attrs, obj_emb)
            inv = F.triplet_margin_loss(moved, target, positive, margin=margin)
            loss = loss + float(hp["lambda_inv"]) * inv
        if float(hp["lambda_comm"]) > 0:
            comm_attrs = self._other_attribute(objs, inv_attrs)
            ba = apply_operators(model.attr_ops, comm_attrs, positive)
            ab = apply_operators(
                model.attr_ops, attrs, apply_operators(model.attr_ops, comm_attrs, obj_emb)
            )
            loss = loss + float(hp["lambda_comm"]) * ((ab - ba) ** 2).sum(dim=1).mean()
        return loss
