"""The baseline for benchmarks/bench_train_step.py: a GCNN written the way most public ports are.

nn.Conv1d with k-1 zeros of left padding, F.glu, torch's weight_norm, residual blocks scaled by
√½, and torch.nn.AdaptiveLogSoftmaxWithLoss: the straightforward PyTorch reading of the paper,
with nothing tuned for speed. It computes the same function family as gcnn's GatedConvLM (same
layer sizes, so the same FLOPs per token); the benchmark times both on the same batches, so
gcnn's own model can be held to "at least as fast as the obvious port".

Not part of the gcnn package: it exists only to be measured against.
"""

from __future__ import annotations

import math

import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm


class PlainBlock(nn.Module):
    def __init__(self, in_channels: int, layers: list[list[int]], dropout: float):
        super().__init__()
        self.convs = nn.ModuleList()
        self.kernels = []
        width = in_channels
        for kernel, channels in layers:
            self.convs.append(weight_norm(nn.Conv1d(width, 2 * channels, kernel)))
            self.kernels.append(kernel)
            width = channels
        self.proj = weight_norm(nn.Conv1d(in_channels, width, 1)) if width != in_channels else None
        self.dropout = dropout

    def forward(self, x):  # (B, C, T)
        residual = x if self.proj is None else self.proj(x)
        for conv, k in zip(self.convs, self.kernels, strict=True):
            x = F.dropout(x, self.dropout, self.training)
            x = F.glu(conv(F.pad(x, (k - 1, 0))), dim=1)
        return (x + residual) * math.sqrt(0.5)


class PlainGCNN(nn.Module):
    def __init__(
        self, vocab_size: int, embed_dim: int, blocks: list[dict], cutoffs, dropout, tail_factor=4
    ):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        width = blocks[0]["layers"][0][1]
        self.fc_in = weight_norm(nn.Linear(embed_dim, width))
        self.blocks = nn.ModuleList()
        for block in blocks:
            for _ in range(block.get("repeat", 1)):
                self.blocks.append(PlainBlock(width, block["layers"], dropout))
                width = block["layers"][-1][1]
        cutoffs = [c for c in cutoffs if c < vocab_size]
        # div_value is gcnn's tail_factor: tail i projects to width / tail_factor**(i + 1)
        self.softmax = nn.AdaptiveLogSoftmaxWithLoss(
            width, vocab_size, cutoffs, div_value=float(tail_factor)
        )
        self.dropout = dropout

    def forward(self, inputs, targets):
        """Mean NLL over the targets that are not -100 (what training minimises)."""
        x = self.fc_in(F.dropout(self.embed(inputs), self.dropout, self.training))
        x = x.transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        hidden = x.transpose(1, 2).reshape(-1, x.size(1))
        targets = targets.reshape(-1)
        keep = targets != -100
        return self.softmax(hidden[keep], targets[keep]).loss


def plain_port(preset: dict, vocab_size: int) -> PlainGCNN:
    """The plain port with a gcnn preset's sizes (`gcnn.PRESETS[name]`)."""
    return PlainGCNN(
        vocab_size,
        preset["embed_dim"],
        preset["blocks"],
        preset.get("cutoffs", []),
        preset.get("dropout", 0.0),
        preset.get("tail_factor", 4),
    )
