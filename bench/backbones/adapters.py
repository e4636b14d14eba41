"""Trainable modules inside a frozen image encoder: AdaptFormer-style bottleneck adapters.

An :class:`ImageAdapters` holds two parallel adapters per transformer block of the image
encoder: one beside the attention sub-layer and one beside the MLP sub-layer. Each reads the
sub-layer's input and adds ``scale * up(dropout(relu(down(x))))`` to its output, as in
AdaptFormer (Chen et al., NeurIPS 2022) and the official Troika code. The frozen encoder's
weights never change; ``OpenClipBackbone.adapted_image_tokens`` runs the encoder with them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn


class BottleneckAdapter(nn.Module):
    """``x -> scale * up(dropout(relu(down(x))))`` (no residual: the block adds it).

    Initialised as LoRA is (the official ``init_option="lora"``): ``down`` Kaiming-uniform
    with zero bias, ``up`` all zeros, so a new adapter adds exactly nothing.

    Args:
        width: The encoder's token width.
        bottleneck: The hidden width (64 in Troika).
        scale: The fixed output scale (0.1 in Troika).
        dropout: Dropout on the hidden activations in training (0.1 in Troika).
    """

    def __init__(self, width: int, bottleneck: int, scale: float, dropout: float) -> None:
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.up = nn.Linear(bottleneck, width)
        self.dropout = nn.Dropout(dropout)
        self.scale = float(scale)
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.dropout(torch.relu(self.down(x)))) * self.scale


class ImageAdapters(nn.Module):
    """Two adapters per image-encoder block (attention side, MLP side).

    Args:
        blocks: The number of transformer blocks of the image encoder.
        width: Their token width.
        bottleneck: Hidden width of each adapter.
        scale: Output scale of each adapter (0 makes the encoder exactly the frozen one).
        dropout: Hidden dropout in training.
    """

    def __init__(
        self,
        blocks: int,
        width: int,
        bottleneck: int = 64,
        scale: float = 0.1,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.attention = nn.ModuleList(
            [BottleneckAdapter(width, bottleneck, scale, dropout) for _ in range(blocks)]
        )
        self.mlp = nn.ModuleList(
            [BottleneckAdapter(width, bottleneck, scale, dropout) for _ in range(blocks)]
        )

    def __len__(self) -> int:
        return len(self.attention)

    def per_block(self) -> Iterator[tuple[BottleneckAdapter, BottleneckAdapter]]:
        """(attention-side, MLP-side) adapter of each block, in block order."""
        return zip(self.attention, self.mlp, strict=True)  # type: ignore[arg-type]

    def set_scale(self, scale: float) -> None:
        """Set every adapter's output scale (0 turns them all off)."""
        for attention, mlp in self.per_block():
            attention.scale = mlp.scale = float(scale)
