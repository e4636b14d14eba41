"""CGE (Naeem, Xian, Tombari & Akata, CVPR 2021), frozen-feature variant.

"Learning Graph Embeddings for Compositional Zero-shot Learning", following the czsl
library's ``GraphFull``, but on the cached image features (czsl fine-tunes the CNN):

* graph nodes: attributes, objects, and the pairs of the graph (``graph = "closed"``: the
  closed-world pairs, as czsl; ``"open"``: every attr x obj pair). Node inputs: the unit word
  vectors; a pair node starts as the mean of its attribute's and object's vectors;
* edges: self loops, attribute-object for every pair, pair-attribute and pair-object; the
  adjacency is symmetrically normalised, ``D^-1/2 (A + I) D^-1/2``;
* a 2-layer graph convolution (dropout, ``Linear(D, gcn_hidden)``, aggregation,
  LeakyReLU(0.2), dropout, ``Linear(gcn_hidden, emb_dim)``, aggregation);
* image side: identity (``image_layers = 0``, czsl on MIT-States and C-GQA; the embedding
  dimension is then the feature dimension) or an MLP to ``emb_dim``;
* score: dot(image embedding, pair node output); cross-entropy over the training pairs.

Scoring pairs that are no node of the graph (open world with ``graph = "closed"``): each is
attached inductively, as a node with a self loop and edges to its attribute and object whose
messages flow into it only, so the graph (and every score of its own pairs) is unchanged.
For a pair of the graph this formula gives exactly its node's output, so one code path
scores every candidate. The open-world graph (``graph = "open"``) is built only when its
estimated training memory fits ``graph_memory_gb``; C-GQA's (279,449 nodes) does not, and
fails with a one-line error saying so.
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
from bench.methods.wordemb import FeatureMethod, mlp

GRAPHS = ("closed", "open")
#: Candidate pairs whose hidden layer is computed at once when scoring.
_SCORE_CHUNK = 4096
_LEAKY_SLOPE = 0.2


def graph_memory_bytes(n_nodes: int, in_dim: int, hidden: int, out_dim: int) -> int:
    """Rough float32 bytes of one training step over the whole graph.

    Counts inputs (and their dropout copy), six hidden-size activations/gradients per node
    (projection, aggregation, activation, dropout and their gradients) and four of the
    output size.
    """
    return 4 * n_nodes * (2 * in_dim + 6 * hidden + 4 * out_dim)


class Graph:
    """The CGE graph over attributes, objects and a set of pairs.

    Attributes:
        pairs: (G, 2) pairs that are nodes (node index ``A + O + i``).
        adjacency: Sparse (N, N) ``D^-1/2 (A + I) D^-1/2``.
        degree: (N,) node degrees, self loop included.
    """

    def __init__(self, n_attrs: int, n_objs: int, pairs: np.ndarray, device: torch.device):
        self.n_attrs, self.n_objs = n_attrs, n_objs
        self.pairs = np.asarray(pairs, dtype=np.int64)
        n_pairs = len(self.pairs)
        n_nodes = n_attrs + n_objs + n_pairs
        attr_nodes = self.pairs[:, 0]
        obj_nodes = n_attrs + self.pairs[:, 1]
        pair_nodes = n_attrs + n_objs + np.arange(n_pairs)
        nodes = np.arange(n_nodes)
        # self loops, attr-obj, obj-attr, pair-attr, attr-pair, pair-obj, obj-pair
        rows = np.concatenate(
            [nodes, attr_nodes, obj_nodes, pair_nodes, attr_nodes, pair_nodes, obj_nodes]
        )
        cols = np.concatenate(
            [nodes, obj_nodes, attr_nodes, attr_nodes, pair_nodes, obj_nodes, pair_nodes]
        )
        degree = np.bincount(rows, minlength=n_nodes).astype(np.float64)
        values = 1.0 / np.sqrt(degree[rows] * degree[cols])
        self.n_nodes = n_nodes
        self.degree = torch.as_tensor(degree, dtype=torch.float32, device=device)
        self.adjacency = (
            torch.sparse_coo_tensor(
                torch.as_tensor(np.stack([rows, cols])),
                torch.as_tensor(values, dtype=torch.float32),
                (n_nodes, n_nodes),
                check_invariants=False,
            )
            .coalesce()
            .to(device)
        )
        self.pair_nodes = torch.as_tensor(pair_nodes, device=device)


class CGEModel(nn.Module):
    """Image embedder and the two graph-convolution layers (node inputs are buffers)."""

    def __init__(
        self,
        feature_dim: int,
        attr_vectors: np.ndarray,
        obj_vectors: np.ndarray,
        hp: Mapping[str, Any],
    ) -> None:
        super().__init__()
        layers = int(hp["image_layers"])
        emb_dim = int(hp["emb_dim"]) if layers > 0 else feature_dim
        self.image_embedder = mlp(
            feature_dim, emb_dim, layers, int(hp["hidden_dim"]), float(hp["dropout"])
        )
        self.register_buffer("attr_vectors", torch.from_numpy(attr_vectors))
        self.register_buffer("obj_vectors", torch.from_numpy(obj_vectors))
        hidden = int(hp["gcn_hidden"])
        self.gcn1 = nn.Linear(attr_vectors.shape[1], hidden)
        self.gcn2 = nn.Linear(hidden, emb_dim)
        self.gcn_dropout = nn.Dropout(float(hp["gcn_dropout"]))

    def node_inputs(self, pairs: torch.Tensor) -> torch.Tensor:
        """(A + O + G, D): attribute, object and pair-node (mean) input vectors."""
        attr, obj = self.attr_vectors, self.obj_vectors
        pair_inputs = (attr[pairs[:, 0]] + obj[pairs[:, 1]]) / 2
        return torch.cat([attr, obj, pair_inputs])

    def propagate(self, graph: Graph) -> tuple[torch.Tensor, torch.Tensor]:
        """(layer-1 output (N, hidden), layer-2 output (N, emb_dim)) of every node."""
        x = self.node_inputs(torch.as_tensor(graph.pairs, device=self.attr_vectors.device))
        h = torch.sparse.mm(graph.adjacency, self.gcn_dropout(x) @ self.gcn1.weight.t())
        h = F.leaky_relu(h + self.gcn1.bias, _LEAKY_SLOPE)
        out = torch.sparse.mm(graph.adjacency, self.gcn_dropout(h) @ self.gcn2.weight.t())
        return h, out + self.gcn2.bias

    def pair_outputs(self, graph: Graph, pairs: torch.Tensor, chunk: int) -> torch.Tensor:
        """(P, emb_dim) outputs of candidate pairs attached to ``graph`` (eval mode).

        A candidate (a, o) is a node with a self loop and edges to a and o (degree 3) whose
        neighbours keep their degrees and layer-1 outputs; for a pair of the graph this is
        exactly its node's output.
        """
        n_attrs = graph.n_attrs
        hidden, _ = self.propagate(graph)
        n_base = n_attrs + graph.n_objs
        base_inputs = torch.cat([self.attr_vectors, self.obj_vectors])
        z1 = base_inputs @ self.gcn1.weight.t()  # (A + O, hidden), bias added after aggregation
        z2 = hidden[:n_base] @ self.gcn2.weight.t()  # (A + O, emb_dim)
        degree = graph.degree[:n_base]
        outputs = []
        for part in pairs.split(chunk):
            a, o = part[:, 0], n_attrs + part[:, 1]
            w_self = 1.0 / 3.0
            w_a = (1.0 / torch.sqrt(3.0 * degree[a]))[:, None]
            w_o = (1.0 / torch.sqrt(3.0 * degree[o]))[:, None]
            z_self = (z1[a] + z1[o]) / 2
            h_self = F.leaky_relu(
                w_self * z_self + w_a * z1[a] + w_o * z1[o] + self.gcn1.bias, _LEAKY_SLOPE
            )
            out = w_self * (h_self @ self.gcn2.weight.t()) + w_a * z2[a] + w_o * z2[o]
            outputs.append(out + self.gcn2.bias)
        if not outputs:
            return torch.zeros(0, self.gcn2.out_features, device=z1.device)
        return torch.cat(outputs)


class CGE(FeatureMethod):
    """Graph-convolved pair embeddings matched with image features by dot product.

    Hyperparameters (methods/cge.toml): ``epochs``, ``lr``, ``weight_decay``,
    ``batch_size``, ``image_layers``, ``emb_dim``, ``hidden_dim``, ``dropout``,
    ``gcn_hidden``, ``gcn_dropout``, ``graph``, ``graph_memory_gb``, ``word_vectors``.
    """

    name = "cge"

    def __init__(self, hparams: Mapping[str, Any]) -> None:
        super().__init__(hparams)
        self.graph: Graph | None = None
        self._train_nodes: torch.Tensor | None = None

    def _build(self, ctx: FitContext, feature_dim: int) -> nn.Module:
        dataset = ctx.dataset
        kind = str(self.hparams.get("graph", "closed"))
        if kind not in GRAPHS:
            raise BenchError(
                f"cge: hyperparameter graph={kind!r} is not one of {', '.join(GRAPHS)}"
            )
        pairs = np.asarray(dataset.candidate_pairs(kind), dtype=np.int64)
        n_nodes = len(dataset.attrs) + len(dataset.objs) + len(pairs)
        attr_vectors, obj_vectors = self._word_vectors(ctx)
        layers = int(self.hparams["image_layers"])
        out_dim = int(self.hparams["emb_dim"]) if layers > 0 else feature_dim
        needed = graph_memory_bytes(
            n_nodes, attr_vectors.shape[1], int(self.hparams["gcn_hidden"]), out_dim
        )
        budget = float(self.hparams["graph_memory_gb"]) * 1e9
        if needed > budget:
            raise BenchError(
                f"cge: the {kind}-world graph of {getattr(dataset, 'name', '?')} has "
                f"{n_nodes:,} nodes and needs about {needed / 1e9:.1f} GB per training step, "
                f"over the graph_memory_gb budget of {budget / 1e9:g} GB; use graph=closed "
                "(open-world pairs are then attached to the closed-world graph at scoring) "
                "or raise graph_memory_gb"
            )
        self.graph = Graph(len(dataset.attrs), len(dataset.objs), pairs, self.device)
        node_of = {(int(a), int(o)): i for i, (a, o) in enumerate(pairs)}
        seen = np.asarray(dataset.seen_pairs_ids(), dtype=np.int64)
        offset = len(dataset.attrs) + len(dataset.objs)
        self._train_nodes = torch.as_tensor(
            [offset + node_of[(int(a), int(o))] for a, o in seen], device=self.device
        )
        self.fit_info.update(
            graph=kind, graph_nodes=n_nodes, graph_memory_gb=round(needed / 1e9, 3)
        )
        return CGEModel(feature_dim, attr_vectors, obj_vectors, self.hparams)

    def _targets(self, ctx: FitContext, attr_idx: np.ndarray, obj_idx: np.ndarray) -> torch.Tensor:
        return self._pair_targets(ctx, attr_idx, obj_idx)

    def training_loss(self, batch: tuple[torch.Tensor, ...], epoch: int) -> torch.Tensor:
        features, targets = batch
        model = self.model
        assert isinstance(model, CGEModel) and self.graph is not None
        _, nodes = model.propagate(self.graph)
        logits = model.image_embedder(features) @ nodes[self._train_nodes].t()
        return F.cross_entropy(logits, targets[:, 0])

    def _pair_side(self, pairs: torch.Tensor) -> torch.Tensor:
        model = self.model
        assert isinstance(model, CGEModel) and self.graph is not None
        return model.pair_outputs(self.graph, pairs, _SCORE_CHUNK).t().contiguous()

    def _block_scores(self, features: torch.Tensor, pair_side: torch.Tensor) -> torch.Tensor:
        model = self.model
        assert isinstance(model, CGEModel)
        return model.image_embedder(features) @ pair_side
