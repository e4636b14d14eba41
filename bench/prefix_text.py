"""Exact prefix-shared text encoding for CLIP's causal text transformer.

Under the causal mask, a position's hidden state in every layer depends only on the inputs
at it and before it. Prompts that agree on their first ``i + 1`` input rows therefore agree
on the hidden states of those positions, and a batch of prompts forms a prefix tree: CSP's
"SOT a photo of [attr] [obj] EOT" shares "SOT a photo of" across all pairs and the attribute
position across the pairs of one attribute. :func:`encode_prompts` runs every layer once per
tree node, each node attending to the cached keys/values of its ancestors, and only up to
each prompt's pooled position (end-of-text for ``argmax`` pooling). The features equal the
full encoding's up to floating-point summation order, and so do the gradients of every
tensor the input rows come from.

A batch of prompts is given as :class:`PromptRows`: a table of distinct input rows and, per
position, the index of its row. Two positions have the same input exactly when they have the
same row index, so the tree is built from integers only (no comparison of embeddings), and a
learned row used by many prompts (a CSP vocabulary row after its per-step dropout, a CoOp
context vector) stays one row whose gradient sums over all of them, as in the full encoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

if TYPE_CHECKING:
    from bench.backbones import TextTower


@dataclass(frozen=True)
class PromptRows:
    """A batch of prompts as indices into one table of input embedding rows.

    Attributes:
        tokens: (B, L) token ids the prompts stand for (they choose the pooled position).
        rows: (R, width) input embedding rows; may require grad.
        index: (B, L) int64 row of each position: prompt ``b``'s input at position ``i`` is
            ``rows[index[b, i]]``.
    """

    tokens: torch.Tensor
    rows: torch.Tensor
    index: torch.Tensor

    def embeddings(self) -> torch.Tensor:
        """The (B, L, width) input embeddings (what the full encoder takes)."""
        return self.rows[self.index]


@dataclass(frozen=True)
class Slot:
    """Learned or per-prompt rows written into a template at fixed positions.

    Attributes:
        positions: The template positions the slot fills.
        rows: (n, width) table the slot's rows come from (e.g. the CSP vocabulary).
        ids: (B, len(positions)) or, for one position, (B,) row of ``rows`` per prompt.
    """

    positions: tuple[int, ...]
    rows: torch.Tensor
    ids: torch.Tensor


def fill_template(
    tokens: torch.Tensor, embeddings: torch.Tensor, slots: Sequence[Slot]
) -> PromptRows:
    """Prompts made of one tokenised template with slots filled per prompt.

    Slots that share a ``rows`` tensor (the same object) share its table rows, so the same
    row at two positions is one input.

    Args:
        tokens: (1, L) template token ids.
        embeddings: (1, L, width) frozen template embeddings.
        slots: At least one slot; their ``ids`` give the batch size B.

    Returns:
        The (B, L) prompts; template positions index the template's own rows.
    """
    if not slots:
        raise ValueError("fill_template needs at least one slot")
    length = tokens.shape[-1]
    batch = slots[0].ids.shape[0]
    index = torch.arange(length, device=tokens.device).expand(batch, length).clone()
    tables = [embeddings.reshape(length, -1)]
    offsets: dict[int, int] = {}
    size = length
    for slot in slots:
        if id(slot.rows) not in offsets:
            offsets[id(slot.rows)] = size
            tables.append(slot.rows.to(embeddings.dtype))
            size += slot.rows.shape[0]
        ids = slot.ids.reshape(batch, -1).to(index.device)
        index[:, list(slot.positions)] = ids + offsets[id(slot.rows)]
    return PromptRows(tokens.reshape(1, length).expand(batch, length), torch.cat(tables), index)


def token_prompts(tower: TextTower, tokens: torch.Tensor) -> PromptRows:
    """Hard prompts (plain token ids, e.g. CLIP zero-shot) over the token-embedding table."""
    weight = tower.token_embedding.weight
    return PromptRows(tokens.to(weight.device), weight, tokens.to(weight.device))


def pool_positions(tower: TextTower, tokens: torch.Tensor) -> torch.Tensor:
    """(B,) position whose final hidden state is each prompt's feature (open_clip's pooling).

    ``argmax``: the highest token id (CLIP's end-of-text); ``eos``: the first ``eos_id``;
    ``first``/``last``: position 0 / L - 1. Raises ValueError for other pool types.
    """
    if tower.pool_type == "argmax":
        return tokens.argmax(dim=-1)
    if tower.pool_type == "eos":
        return (tokens == tower.eos_id).int().argmax(dim=-1)
    if tower.pool_type in ("first", "last"):
        position = 0 if tower.pool_type == "first" else tokens.shape[1] - 1
        return torch.full((tokens.shape[0],), position, dtype=torch.long, device=tokens.device)
    raise ValueError(f"prefix encoding needs one pooled position; pool type {tower.pool_type!r}")


@dataclass(frozen=True)
class PrefixTree:
    """The prefix tree of a batch of prompts up to their output positions (integers only).

    Nodes are numbered depth by depth (depth = position). A node attends to itself and to
    one ancestor per shallower depth. Ancestors at depths holding a single node (a prefix
    shared by every prompt, such as "SOT a photo of") are the same for all nodes and are
    read once; the others (branch depths) are gathered per node. The tree depends only on
    the row indices and output positions: build it once and reuse it while the rows change
    (e.g. at every training step over the same pairs).

    Attributes:
        node_rows: (N,) input row of each node.
        node_depths: (N,) position of each node.
        shared: (S,) the nodes of the single-node depths shallower than the deepest node.
        branch: (N, G) each node's ancestor at each of the G other shallower depths (the
            node itself where that depth is not above it).
        attention_bias: (N, 1, S + G + 1) float 0 where a node attends to the ``shared``,
            ``branch`` and own key, -inf where that depth is not above it.
        outputs: (B,) node of each prompt's output position.
    """

    node_rows: torch.Tensor
    node_depths: torch.Tensor
    shared: torch.Tensor
    branch: torch.Tensor
    attention_bias: torch.Tensor
    outputs: torch.Tensor

    @classmethod
    def build(cls, index: torch.Tensor, positions: torch.Tensor) -> PrefixTree:
        """Group the (B, L) row indices into shared prefixes up to each (B,) output position."""
        batch, length = index.shape
        positions = positions.to(index.device)
        if batch == 0:
            raise ValueError("cannot encode an empty batch of prompts")
        if int(positions.min()) < 0 or int(positions.max()) >= length:
            raise ValueError(f"output positions must lie in [0, {length})")
        if int(index.min()) < 0:
            raise ValueError("row indices must be non-negative")
        depth = int(positions.max()) + 1
        n_rows = int(index.max()) + 1
        paths = torch.full((batch, depth), -1, dtype=torch.long, device=index.device)
        parent = torch.zeros(batch, dtype=torch.long, device=index.device)
        rows, ancestors, level_starts = [], [], [0]
        for d in range(depth):
            alive = (positions >= d).nonzero().squeeze(1)
            # A node is (parent node, input row); parent ids are < B * L, so this fits int64.
            keys, inverse = torch.unique(
                parent[alive] * n_rows + index[alive, d], return_inverse=True
            )
            ids = inverse + level_starts[-1]
            paths[alive, d] = ids
            parent[alive] = ids
            level = torch.arange(level_starts[-1], level_starts[-1] + len(keys), device=ids.device)
            representative = torch.empty_like(keys).scatter_(0, inverse, alive)
            path = paths[representative]
            ancestors.append(torch.where(path < 0, level.unsqueeze(1), path))
            rows.append(keys % n_rows)
            level_starts.append(level_starts[-1] + len(keys))
        sizes = [end - start for start, end in zip(level_starts, level_starts[1:])]
        single = [d for d in range(depth - 1) if sizes[d] == 1]
        branching = [d for d in range(depth - 1) if sizes[d] > 1]
        node_depths = torch.repeat_interleave(
            torch.arange(depth, device=index.device),
            torch.tensor(sizes, device=index.device),
        )
        key_depths = torch.tensor(single + branching, dtype=torch.long, device=index.device)
        above = key_depths.unsqueeze(0) < node_depths.unsqueeze(1)
        bias = torch.zeros(len(node_depths), len(key_depths) + 1, device=index.device)
        bias[:, :-1].masked_fill_(~above, float("-inf"))
        return cls(
            node_rows=torch.cat(rows),
            node_depths=node_depths,
            shared=torch.tensor([level_starts[d] for d in single], device=index.device).long(),
            branch=torch.cat(ancestors)[:, branching],
            attention_bias=bias.unsqueeze(1),
            outputs=paths[torch.arange(batch, device=index.device), positions],
        )


def encode_prompts(
    tower: TextTower,
    prompts: PromptRows,
    positions: torch.Tensor | None = None,
    *,
    checkpoint_layers: bool = False,
) -> torch.Tensor:
    """Encode prompts through a text tower, once per shared prefix.

    Equals open_clip's ``encode_text`` on ``prompts.embeddings()`` (what
    ``OpenClipBackbone.encode_text_embeddings`` computes), in its features and in the
    gradients of ``prompts.rows``. Runs under the caller's autocast/no_grad.

    Args:
        tower: An open_clip text tower (``find_text_tower``, ``TextEncoder.text_tower``)
            with a causal attention mask, in eval mode.
        prompts: The prompts.
        positions: (B,) output position per prompt; default: the tower's pooled position
            (:func:`pool_positions`).
        checkpoint_layers: Recompute each layer in the backward pass (bounded memory for
            very many nodes, one extra forward).

    Returns:
        (B, embed_dim) float32 pooled, projected features, not normalised.
    """
    if positions is None:
        positions = pool_positions(tower, prompts.tokens)
    tree = PrefixTree.build(prompts.index, positions)
    return encode_tree(tower, tree, prompts.rows, checkpoint_layers=checkpoint_layers)


def encode_tree(
    tower: TextTower,
    tree: PrefixTree,
    rows: torch.Tensor,
    *,
    checkpoint_layers: bool = False,
) -> torch.Tensor:
    """Encode a prebuilt :class:`PrefixTree` over ``rows`` (see :func:`encode_prompts`)."""
    transformer = tower.transformer
    cast_dtype = transformer.get_cast_dtype()
    device = tower.positional_embedding.device
    tree = PrefixTree(*(getattr(tree, name).to(device) for name in _TREE_FIELDS))
    _check_causal(tower.attn_mask, int(tree.node_depths[-1]) + 1)
    x = F.embedding(tree.node_rows, rows.to(device)).to(cast_dtype)
    x = x + tower.positional_embedding.index_select(0, tree.node_depths).to(cast_dtype)
    for block in transformer.resblocks:
        if checkpoint_layers:
            x = checkpoint(_block_forward, block, x, tree, use_reentrant=False)
        else:
            x = _block_forward(block, x, tree)
    pooled = tower.ln_final(F.embedding(tree.outputs, x))
    projection = tower.text_projection
    if projection is not None:
        pooled = projection(pooled) if isinstance(projection, nn.Linear) else pooled @ projection
    return pooled.float()


_TREE_FIELDS = ("node_rows", "node_depths", "shared", "branch", "attention_bias", "outputs")


def check_tower(tower: TextTower) -> None:
    """Raise ValueError unless :func:`encode_prompts` can run ``tower`` exactly.

    It needs a causal attention mask over the whole context, one pooled position and
    open_clip's plain (not scaled-cosine) attention in every block.
    """
    _check_causal(tower.attn_mask, tower.positional_embedding.shape[0])
    pool_positions(tower, torch.zeros(1, 1, dtype=torch.long))
    for block in tower.transformer.resblocks:
        _check_attention(block.attn)


def _check_causal(mask: torch.Tensor | None, depth: int) -> None:
    """Prefix sharing is exact only under a causal mask (no bidirectional towers)."""
    causal = torch.ones(depth, depth, dtype=torch.bool).triu(1)
    if mask is None or mask.shape[-1] < depth:
        raise ValueError("prefix encoding needs a text tower with a causal attention mask")
    blocked = mask[:depth, :depth].cpu()
    blocked = blocked if blocked.dtype == torch.bool else torch.isneginf(blocked)
    if not torch.equal(blocked, causal):
        raise ValueError("prefix encoding needs a text tower with a causal attention mask")


def _block_forward(block: nn.Module, x: torch.Tensor, tree: PrefixTree) -> torch.Tensor:
    """One pre-norm residual block (open_clip ``ResidualAttentionBlock`` or ``Custom...``)."""
    attention = _attention(block.attn, block.ln_1(x), tree)
    ln_attn = getattr(block, "ln_attn", None)
    if ln_attn is not None:
        attention = ln_attn(attention)
    x = x + block.ls_1(attention)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _check_attention(attn: nn.Module) -> None:
    if isinstance(attn, nn.MultiheadAttention):
        if attn.in_proj_weight is None or attn.bias_k is not None or attn.add_zero_attn:
            raise ValueError("unsupported nn.MultiheadAttention configuration")
    elif getattr(attn, "logit_scale", None) is not None:
        raise ValueError("prefix encoding does not support scaled cosine attention")


def _attention(attn: nn.Module, h: torch.Tensor, tree: PrefixTree) -> torch.Tensor:
    """Self-attention of every node over its ancestors, for both open_clip attention types."""
    _check_attention(attn)
    custom = not isinstance(attn, nn.MultiheadAttention)
    nodes, width = h.shape
    heads = attn.num_heads
    head_dim = width // heads
    weight, bias = attn.in_proj_weight, attn.in_proj_bias
    q = F.linear(h, weight[:width], None if bias is None else bias[:width])
    kv = F.linear(h, weight[width:], None if bias is None else bias[width:])
    if custom and not isinstance(attn.ln_k, nn.Identity):
        q = attn.ln_q(q.reshape(nodes, heads, head_dim)).reshape(nodes, width)
        k = attn.ln_k(kv[:, :width].reshape(nodes, heads, head_dim)).reshape(nodes, width)
        kv = torch.cat([k, kv[:, width:]], dim=1)
    k, v = kv.reshape(nodes, 2, width).unbind(1)
    n_shared, n_branch = len(tree.shared), tree.branch.shape[1]
    # Shared ancestors: one block-diagonal (width, heads * S) matrix per layer, so their
    # scores and values are plain matrix products over all nodes.
    shared_k, shared_v = (
        F.embedding(tree.shared, kv).reshape(n_shared, 2, heads, head_dim).unbind(1)
    )
    shared_keys = torch.block_diag(*shared_k.permute(1, 2, 0))  # (width, heads * S)
    shared_values = torch.block_diag(*shared_v.transpose(0, 1))  # (heads * S, width)
    branch_k, branch_v = F.embedding(tree.branch, kv).reshape(nodes, n_branch, 2, width).unbind(2)
    q_heads = q.reshape(nodes, 1, heads, head_dim)
    scores = torch.cat(
        [
            (q @ shared_keys).reshape(nodes, heads, n_shared),
            (q_heads * branch_k.reshape(nodes, n_branch, heads, head_dim)).sum(-1).transpose(1, 2),
            (q * k).reshape(nodes, heads, head_dim).sum(-1, keepdim=True),
        ],
        dim=-1,
    )
    scores = scores * head_dim**-0.5 + tree.attention_bias.to(scores.dtype)
    shared_w, branch_w, own_w = scores.softmax(-1).split([n_shared, n_branch, 1], dim=-1)
    branch_out = branch_w.transpose(1, 2).unsqueeze(-1) * branch_v.reshape(
        nodes, n_branch, heads, head_dim
    )
    out = (
        (shared_w.reshape(nodes, heads * n_shared) @ shared_values).reshape(nodes, heads, head_dim)
        + branch_out.sum(1)
        + own_w * v.reshape(nodes, heads, head_dim)
    )
    if custom and attn.head_scale is not None:
        out = out * attn.head_scale.reshape(heads, 1)
    out = out.reshape(nodes, width)
    return attn.out_proj(attn.ln_inner(out) if custom else out)
