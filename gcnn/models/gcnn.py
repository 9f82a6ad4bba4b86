"""GatedConvLM: the gated convolutional language model (Dauphin et al. 2017).

    words -> embedding -> dropout -> linear to the first width
          -> residual blocks of causal convolutions with gating (gcnn.models.blocks)
          -> (linear to the softmax size, if it differs) -> adaptive softmax

No positional embeddings: the convolutions see order through their kernels. The output at t sees
exactly `receptive_field` = 1 + sum(k - 1) input tokens, x[t - receptive_field + 1 .. t].
"""

from __future__ import annotations

import torch
import torch.nn as nn

from gcnn.models.base import LanguageModel
from gcnn.models.blocks import GatedConvBlock, make_linear
from gcnn.models.config import GCNNConfig, softmax_input
from gcnn.models.dropout import Dropout


class GatedConvLM(LanguageModel):
    family = "gcnn"
    is_recurrent = False

    def __init__(self, config: GCNNConfig):
        super().__init__()
        self.config = config
        layers = config.layers()
        if not config.tie_embeddings:  # else make_softmax makes self.embed
            self.embed = nn.Embedding(config.vocab_size, config.embed_dim)
            nn.init.normal_(self.embed.weight, mean=0.0, std=0.1)
        self.dropout = Dropout(config.dropout)
        width = layers[0][0][1]
        self.fc_in = make_linear(config.embed_dim, width, config.dropout, config.weight_norm)
        self.blocks = nn.ModuleList()
        for block_layers in layers:
            block = GatedConvBlock(
                width, block_layers, config.gating, config.dropout, config.weight_norm
            )
            self.blocks.append(block)
            width = block.out_channels
        softmax_dim = softmax_input(config, width)
        self.fc_out = None
        if softmax_dim != width:
            self.fc_out = make_linear(width, softmax_dim, config.dropout, config.weight_norm)
        self.softmax = self.make_softmax(softmax_dim)

    def convs(self):
        return [conv for block in self.blocks for conv in block.convs]

    @property
    def receptive_field(self) -> int:
        return 1 + sum(conv.context for conv in self.convs())

    @property
    def num_layers(self) -> int:
        return len(self.convs())

    def forward(self, inputs: torch.Tensor, state: list | None = None):
        """inputs (B, T) ids -> (hidden (B, T, D), new state).

        `state` (from init_state or a previous call) holds each layer's last k-1 inputs, so a text
        can be fed in chunks, or one token at a time by `step`; None means the start of the text,
        and then no state is returned (None) either.
        """
        x = self.fc_in(self.dropout(self.embed(inputs)))
        x = x.transpose(1, 2)  # (B, C, T) for the convolutions
        new_state = [] if state is not None else None
        i = 0
        for block in self.blocks:
            n = len(block.convs)
            x, s = block(x, None if state is None else state[i : i + n])
            if new_state is not None:
                new_state.extend(s)
            i += n
        x = x.transpose(1, 2)
        if self.fc_out is not None:
            x = self.fc_out(x)
        return x, new_state

    def init_state(self, batch_size: int, device=None) -> list:
        """Zeros for every layer's k-1 previous inputs: exactly the causal padding of a new text."""
        return [conv.init_state(batch_size, device) for conv in self.convs()]

    def detach_state(self, state):
        if state is None:
            return None
        return [None if s is None else s.detach() for s in state]

    def flops_per_token(self, full_softmax: bool = True) -> int:
        """2 x multiply-adds to score one token (embedding lookup free, gates and sums ignored)."""
        flops = 2 * self.fc_in.in_features * self.fc_in.out_features
        for block in self.blocks:
            for conv in block.convs:
                flops += 2 * conv.in_channels * conv.out_channels * conv.kernel_size[0]
            if block.proj is not None:
                flops += 2 * block.proj.in_channels * block.proj.out_channels
        if self.fc_out is not None:
            flops += 2 * self.fc_out.in_features * self.fc_out.out_features
        return flops + self.softmax.flops_per_token(full_softmax)
