"""Causal convolutions and the gated residual blocks of Dauphin et al. 2017.

Tensors inside the convolutional stack are laid out (batch, channels, time), as nn.Conv1d wants.

Causality: every convolution sees its input padded on the left with k-1 zeros (never k/2, which
lets position t see t+1..t+k/2 and silently leaks the future). The same k-1 slots double as the
incremental-decoding state: they hold the layer's last k-1 inputs, so one decoding step is one
k-wide convolution per layer whatever the position.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm as apply_weight_norm

from gcnn.models.config import GATED
from gcnn.models.dropout import Dropout

SQRT_HALF = math.sqrt(0.5)


def fairseq_init_(module: nn.Module, dropout: float, gain: float = 1.0) -> nn.Module:
    """fairseq's initialisation, which keeps the variance of activations roughly constant under
    dropout: weights N(0, gain * (1 - dropout) / fan_in), biases 0. Convolutions use gain 4."""
    fan_in = module.weight[0].numel()  # in_features, or in_channels * kernel_size
    nn.init.normal_(module.weight, mean=0.0, std=math.sqrt(gain * (1.0 - dropout) / fan_in))
    if module.bias is not None:
        nn.init.zeros_(module.bias)
    return module


def make_linear(in_features, out_features, dropout, weight_norm, bias=True) -> nn.Linear:
    layer = fairseq_init_(nn.Linear(in_features, out_features, bias=bias), dropout)
    # g = ||v|| per output unit: the initial weights are unchanged by the reparametrisation.
    return apply_weight_norm(layer) if weight_norm else layer


class CausalConv1d(nn.Conv1d):
    """A 1-D convolution whose output at t depends on inputs <= t only.

    ``forward(x, state)`` returns ``(y, new_state)``: `state` (batch, in_channels, k-1) holds the
    inputs just before `x` (None: the start of the text, i.e. zeros); `new_state` holds the last
    k-1 inputs seen, ready for the next chunk. A 1x1 convolution has no state (None).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__(in_channels, out_channels, kernel_size, padding=0)

    @property
    def context(self) -> int:
        return self.kernel_size[0] - 1

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None):
        k1 = self.context
        if k1 == 0:
            padded = x
        elif state is None:
            padded = F.pad(x, (k1, 0))
        else:
            padded = torch.cat([state.to(x.dtype), x], dim=2)
        if padded.size(2) == k1 + 1:
            # One output (incremental decoding): a single matrix product over the flattened
            # window is much cheaper than a convolution call on a tiny input.
            y = F.linear(padded.flatten(1), self.weight.flatten(1), self.bias).unsqueeze(2)
        else:
            y = self._conv_forward(padded, self.weight, self.bias)
        return y, (padded[:, :, -k1:] if k1 else None)

    def init_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor | None:
        if self.context == 0:
            return None
        device = device if device is not None else self.weight.device
        dtype = dtype if dtype is not None else self.weight.dtype
        return torch.zeros(batch_size, self.in_channels, self.context, device=device, dtype=dtype)


def gate(x: torch.Tensor, gating: str) -> torch.Tensor:
    """The non-linearity of one layer. Gated variants split the 2c channels into halves a, b."""
    if gating == "glu":  # gated linear unit: a linear path modulated by a sigmoid gate
        return F.glu(x, dim=1)  # = a * sigmoid(b) for halves a, b: one kernel each way
    if gating in GATED:
        a, b = x.chunk(2, dim=1)
        if gating == "gtu":  # gated tanh unit (LSTM-style, as in PixelCNN / WaveNet)
            return torch.tanh(a) * torch.sigmoid(b)
        return a * b  # bilinear: (X*W + b) (x) (X*V + c)
    if gating == "relu":
        return torch.relu(x)
    if gating == "tanh":
        return torch.tanh(x)
    return x  # linear: no non-linearity at all


class GatedConvBlock(nn.Module):
    """A residual block: layers of (dropout -> causal conv -> gate); out = (x + residual) * √½.

    `layers` is a list of (kernel, channels); a bottleneck block is [(1, c), (k, c), (1, out)].
    When the block's output width differs from its input width, a weight-normalised linear map
    (a 1x1 convolution here) projects the residual. Scaling the sum by sqrt(0.5) keeps the variance
    of the residual stream from doubling with every block (fairseq).
    """

    def __init__(self, in_channels, layers, gating="glu", dropout=0.0, weight_norm=True):
        super().__init__()
        self.gating = gating
        self.dropout = Dropout(dropout)
        self.convs = nn.ModuleList()
        width = in_channels
        for kernel, channels in layers:
            out = 2 * channels if gating in GATED else channels
            conv = fairseq_init_(CausalConv1d(width, out, kernel), dropout, gain=4.0)
            self.convs.append(apply_weight_norm(conv) if weight_norm else conv)
            width = channels
        self.out_channels = width
        self.proj = None
        if width != in_channels:
            proj = fairseq_init_(nn.Conv1d(in_channels, width, 1), 0.0)
            self.proj = apply_weight_norm(proj) if weight_norm else proj

    def forward(self, x: torch.Tensor, states: list | None = None):
        """x (B, C, T); states: one per conv (see CausalConv1d) or None -> (y, new_states)."""
        residual = x if self.proj is None else self.proj(x)
        new_states = []
        for i, conv in enumerate(self.convs):
            x, s = conv(self.dropout(x), None if states is None else states[i])
            x = gate(x, self.gating)
            new_states.append(s)
        return (x + residual) * SQRT_HALF, new_states
