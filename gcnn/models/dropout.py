"""Dropout for every model in gcnn (a module of its own: blocks, LSTM and softmax share it)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

# A keep decision needs 16 random bits, not a float: p is realized as a multiple of 2^-16.
BITS = 16
# ... where that moves p and 1 - p by at most 0.1% (p from ~0.0076 to ~0.9924); other p
# draw uniform floats.
MAX_RELATIVE_ERROR = 1e-3


def drop_cut(p: float) -> int | None:
    """The number of 16-bit values (of 2^16) that drop an element, or None when 16 bits
    cannot realize p to within MAX_RELATIVE_ERROR of p and of 1 - p."""
    cut = round(p * 2**BITS)
    if 0 < cut < 2**BITS and abs(cut - p * 2**BITS) <= MAX_RELATIVE_ERROR * min(cut, 2**BITS - cut):
        return cut
    return None


def keep_mask(shape: torch.Size, cut: int) -> torch.Tensor:
    """A bool mask, each element kept with probability 1 - cut / 2^16, from the default CPU
    generator's raw bits.

    torch's CPU generator is serial: torch.rand pays for a 32-bit draw and a float conversion
    per element, where one full-range int64 draw gives four elements their 16 bits: less than
    half the time on the EPYC measured (benchmarks/bench_dropout.py)."""
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)
    bits = words.view(torch.int16)[:n].view(shape)  # uniform on [-2^15, 2^15)
    return bits >= cut - 2 ** (BITS - 1)


class Dropout(nn.Dropout):
    """nn.Dropout, with a faster mask on CPU.

    PyTorch's CPU dropout draws its mask with bernoulli_, measured at ~8 ns per element: on
    gcnn-small's training step the seven dropouts cost more than the optimizer. Comparing
    random 16-bit integers with p's cut is the same distribution (to 2^-16 in p; the scale
    uses the realized p, so the expectation is exact). CUDA keeps PyTorch's fused kernel;
    under torch.compile the float mask is traced and the compiler draws it.
    """

    def __init__(self, p: float = 0.5, inplace: bool = False):
        super().__init__(p, inplace)
        self.rate = p  # the configured p; `self.p` is 0 while late dropout holds it off

    def switch(self, on: bool) -> None:
        """Drop at the configured rate (on) or not at all (off): see LanguageModel.set_dropout."""
        self.p = self.rate if on else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        # torch.compile cannot trace the in-place random_ (a graph break per dropout); compiled,
        # the float mask is one traced op whose random numbers the compiler generates itself
        cut = None if torch.compiler.is_compiling() else drop_cut(self.p)
        if cut is None:
            keep, p = torch.rand(x.shape) >= self.p, self.p
        else:
            keep, p = keep_mask(x.shape, cut), cut / 2**BITS
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - p))
