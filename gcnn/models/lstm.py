"""LSTMLM: the recurrent baseline the paper compares against.

    words -> embedding -> dropout -> stacked nn.LSTM (optionally projected, LSTMP)
          -> dropout -> (linear to the softmax size, if it differs) -> adaptive softmax

The state (h, c) is carried across contiguous blocks of text (truncated backpropagation through
time: the trainer calls `detach_state` between blocks). No weight normalisation: this is the
standard LSTM of the paper's baselines.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from gcnn.models.base import LanguageModel
from gcnn.models.config import LSTMConfig, softmax_input
from gcnn.models.dropout import Dropout


class LSTMLM(LanguageModel):
    family = "lstm"
    is_recurrent = True

    def __init__(self, config: LSTMConfig):
        super().__init__()
        self.config = config
        if not config.tie_embeddings:  # else make_softmax makes self.embed
            self.embed = nn.Embedding(config.vocab_size, config.embed_dim)
            nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        self.dropout = Dropout(config.dropout)
        self.lstm = nn.LSTM(
            config.embed_dim,
            config.hidden_size,
            num_layers=config.num_layers,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            batch_first=True,
            proj_size=config.proj_size,
        )
        # A forget-gate bias of 1 lets gradients flow through time from the start (Jozefowicz et
        # al. 2015). PyTorch orders the gates input, forget, cell, output.
        h = config.hidden_size
        for name, param in self.lstm.named_parameters():
            if name.startswith("bias_ih"):
                with torch.no_grad():
                    param[h : 2 * h].fill_(1.0)
        out_dim = config.proj_size or config.hidden_size
        softmax_dim = softmax_input(config, out_dim)
        self.fc_out = nn.Linear(out_dim, softmax_dim) if softmax_dim != out_dim else None
        self.softmax = self.make_softmax(softmax_dim)

    @property
    def num_layers(self) -> int:
        return self.config.num_layers

    def set_dropout(self, on: bool) -> None:
        super().set_dropout(on)
        # nn.LSTM's own dropout between its layers, as __init__ sets it
        self.lstm.dropout = self.config.dropout if on and self.config.num_layers > 1 else 0.0

    def forward(self, inputs: torch.Tensor, state=None):
        """inputs (B, T) ids, state (h, c) or None (zeros) -> (hidden (B, T, D), new (h, c)).

        The returned state is always in the weights' dtype, whatever autocast did inside, so a
        state carried across batches (and saved in a checkpoint) does not depend on precision.
        """
        x = self.dropout(self.embed(inputs))
        dtype = self.lstm.weight_hh_l0.dtype
        if x.device.type == "cuda" and torch.is_autocast_enabled("cuda"):
            # cuDNN's RNN autocast wrapper casts input, state and weights to fp16 whatever dtype
            # autocast was asked for, and nothing scales the loss: most LSTM gradients would
            # underflow. Run the recurrence in the weights' own precision instead.
            with torch.autocast("cuda", enabled=False):
                if state is not None:
                    state = tuple(s.to(dtype) for s in state)
                x, state = self.lstm(x.to(dtype), state)
        else:
            # CPU autocast runs oneDNN's bf16 LSTM (bf16 has fp32's range: no underflow).
            x, state = self.lstm(x, state)
        state = tuple(s.to(dtype) for s in state)
        x = self.dropout(x)
        if self.fc_out is not None:
            x = self.fc_out(x)
        return x, state

    def init_state(self, batch_size: int, device=None):
        weight = self.lstm.weight_hh_l0
        device = device if device is not None else weight.device
        c = self.config
        h0 = torch.zeros(
            c.num_layers,
            batch_size,
            c.proj_size or c.hidden_size,
            device=device,
            dtype=weight.dtype,
        )
        c0 = torch.zeros(c.num_layers, batch_size, c.hidden_size, device=device, dtype=weight.dtype)
        return h0, c0

    def detach_state(self, state):
        if state is None:
            return None
        return tuple(s.detach() for s in state)

    def flops_per_token(self, full_softmax: bool = True) -> int:
        flops = 0
        for name, param in self.lstm.named_parameters():
            if name.startswith("weight"):
                flops += 2 * param.numel()
        if self.fc_out is not None:
            flops += 2 * self.fc_out.in_features * self.fc_out.out_features
        return flops + self.softmax.flops_per_token(full_softmax)
