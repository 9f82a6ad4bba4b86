"""Weight normalisation w = g · v / ‖v‖ as both projects store it, and moves between the two.

torch (old `nn.utils.weight_norm` in fairseq, parametrizations here) keeps one gain per slice
along `dim` and the norm of v over every other dimension. fairseq's convolutions are ConvTBC,
weights (kernel, in, out) normalised per output channel (dim 2), except in checkpoints older than
`decoder.version` 2, normalised per kernel position (dim 0: "old models use incorrect weight norm
dimension"). This project's convolutions are (out, in, kernel), normalised per output channel.
"""

from __future__ import annotations

import torch


def norm_except(v: torch.Tensor, dim: int) -> torch.Tensor:
    """‖v‖ over every dimension but `dim`, shaped to broadcast against v (torch's convention)."""
    dims = [d for d in range(v.dim()) if d != dim]
    return v.norm(dim=dims, keepdim=True)


def fold(g: torch.Tensor, v: torch.Tensor, dim: int) -> torch.Tensor:
    """The weight g · v / ‖v‖, computed in float64."""
    v = v.double()
    return g.double() * v / norm_except(v, dim)


def split(w: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(g, v) with g · v / ‖v‖ = w and v = w: a plain weight as a weight-normalised one.

    A slice of w that is all zeros gets g = 0 and a unit v (its direction is then irrelevant),
    so nothing divides by a zero norm.
    """
    w = w.double()
    g = norm_except(w, dim)
    zero = (g == 0).expand_as(w)
    v = torch.where(zero, torch.ones_like(w), w)
    return g, v


def tbc_to_conv(v: torch.Tensor) -> torch.Tensor:
    """ConvTBC (kernel, in, out) -> nn.Conv1d (out, in, kernel), the same taps in the same order."""
    return v.permute(2, 1, 0).contiguous()


def conv_to_tbc(v: torch.Tensor) -> torch.Tensor:
    return v.permute(2, 1, 0).contiguous()
