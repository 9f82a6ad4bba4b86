"""Preparing a model for inference, once: no weight norm, one dtype, convolutions as GEMMs.

Weight norm folded into plain weights, eval mode, one dtype, every convolution a single matrix
multiply, weights pre-packed for the CPU. Every model the latency table times gets exactly this
treatment (`prepare_for_inference`), so the GCNN and the LSTM are each measured at their best and
alike. Same outputs as the trained model.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


class GemmConv1d(nn.Module):
    """Inference stand-in for a (causal) nn.Conv1d: the k taps unfolded into one matrix multiply.

    On CPU, oneDNN's convolution measured slower than one GEMM at the shapes of sentence scoring
    (batch 1, ~30 steps, many small layers). A k-tap causal convolution is
    exactly a matmul of the k stacked, shifted inputs with the (out, in·k) weight matrix, so we
    do that, with time-major (B, T, C) memory so that the 1×1 layers (most of a bottleneck
    model) need no copy at all. Same call signature and results as the module it replaces:
    ``forward(x (B, C, T), state)`` → ``(y (B, C', T), new_state)`` for a CausalConv1d, or
    just ``y`` for a plain 1×1 nn.Conv1d (the residual projection).
    """

    def __init__(self, conv: nn.Conv1d, causal: bool):
        super().__init__()
        out_channels, in_channels, k = conv.weight.shape
        self.kernel_size, self.in_channels, self.causal = k, in_channels, causal
        # (out, in, k) -> (out, k·in): the tap-major order that unfolding (B, T, C) produces
        weight = conv.weight.detach().permute(0, 2, 1).reshape(out_channels, k * in_channels)
        self.weight = nn.Parameter(weight.contiguous(), requires_grad=False)
        bias = conv.bias.detach() if conv.bias is not None else None
        self.bias = None if bias is None else nn.Parameter(bias.clone(), requires_grad=False)

    @property
    def context(self) -> int:
        return self.kernel_size - 1

    def init_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor | None:
        """Zeros for the k-1 previous inputs, (B, C, k-1) like CausalConv1d's state."""
        if self.context == 0:
            return None
        return torch.zeros(
            batch_size,
            self.in_channels,
            self.context,
            device=device if device is not None else self.weight.device,
            dtype=dtype if dtype is not None else self.weight.dtype,
        )

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None):
        batch, _, steps = x.shape
        xt = x.transpose(1, 2)  # (B, T, C): a free view when x came from the time-major path
        k1 = self.kernel_size - 1
        if k1 == 0:
            y = self._matmul(xt.reshape(batch * steps, -1), batch, steps)
            return (y, None) if self.causal else y
        if state is None:
            history = xt.new_zeros(batch, k1, xt.size(2))
        else:
            history = state.to(xt.dtype).transpose(1, 2)
        padded = torch.cat([history, xt], dim=1)  # (B, k-1+T, C)
        # windows[b, t] = padded[b, t : t+k] flattened tap-major: (B·T, k·C)
        windows = padded.unfold(1, self.kernel_size, 1).transpose(2, 3).reshape(batch * steps, -1)
        return self._matmul(windows, batch, steps), padded[:, -k1:].transpose(1, 2)

    packed: torch.Tensor | None = None  # set by pack_weights

    def _matmul(self, rows: torch.Tensor, batch: int, steps: int) -> torch.Tensor:
        # always a 2-D GEMM: a 3-D input with odd strides sends F.linear to a batched matmul
        # that copies the weight once per batch row
        y = packed_linear(rows, self.weight, self.packed, self.bias)
        return y.view(batch, steps, -1).transpose(1, 2)


def pack_weight(weight: torch.Tensor) -> torch.Tensor | None:
    """oneDNN's blocked layout of a CPU weight (fp32 or bf16), made once; None where there is
    none.

    A plain matrix product re-lays its weight out for the CPU's vector instructions on every
    call; at a sentence's few rows that reordering costs more than the arithmetic. Measured at 30
    rows on one core of an AMD EPYC: a 4,003 x 2,048 softmax head 3.0 ms packed against 11.4 ms
    (fp32), a 36,000 x 512 tail 3.8 against 9.1 ms (bf16). Every linear layer of every model
    gets it, the LSTM's included (its recurrence runs inside nn.LSTM's own kernel).
    """
    if weight.dtype not in (torch.float32, torch.bfloat16) or weight.device.type != "cpu":
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 32)  # ~a sentence's rows
    except (AttributeError, RuntimeError):  # a torch without this oneDNN entry point
        return None


def packed_linear(rows, weight, packed, bias):
    """F.linear(rows, weight, bias) for 2-D rows, through the packed weight when there is one."""
    if packed is None:
        return F.linear(rows, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(rows, packed, bias, "none", [], "")


class PackedLinear(nn.Module):
    """Inference stand-in for an nn.Linear whose weight is packed once (see pack_weight)."""

    def __init__(self, linear: nn.Linear, packed: torch.Tensor):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias, self.packed = linear.weight, linear.bias, packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = packed_linear(x.reshape(-1, self.in_features), self.weight, self.packed, self.bias)
        return y.view(*x.shape[:-1], self.out_features)


def pack_weights(model: nn.Module) -> nn.Module:
    """Pack every linear layer's and every GemmConv1d's weight (on CPU; see pack_weight)."""
    for parent in list(model.modules()):
        if isinstance(parent, GemmConv1d):
            parent.packed = pack_weight(parent.weight)
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and (packed := pack_weight(child.weight)) is not None:
                setattr(parent, name, PackedLinear(child, packed))
    return model


def convolutions_as_matmuls(model: nn.Module) -> nn.Module:
    """Swap every nn.Conv1d of a (weight-norm free) model for an equivalent GemmConv1d."""
    from gcnn.models.blocks import CausalConv1d

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv1d) and child.groups == 1 and child.dilation == (1,):
                causal = isinstance(child, CausalConv1d)
                if not causal and (child.kernel_size != (1,) or child.padding != (0,)):
                    continue  # only causal and pointwise convolutions have a known layout
                setattr(parent, name, GemmConv1d(child, causal))
    return model


def prepare_for_inference(model: nn.Module, dtype: torch.dtype, device: str) -> nn.Module:
    """Weights ready for fast scoring, prepared once: no weight norm, eval mode, one dtype,
    convolutions as single matrix multiplies, weights pre-packed for the CPU."""
    model = model.remove_weight_norm()  # w = g·v/‖v‖ computed once, not per call
    model.eval()
    model = convolutions_as_matmuls(model)
    model.to(device=device, dtype=dtype)
    model = pack_weights(model)
    for module in model.modules():
        if isinstance(module, nn.RNNBase):
            module.flatten_parameters()  # one contiguous weight buffer for the fused kernel
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def inference_dtype(model: nn.Module, precision: str, device: str) -> torch.dtype:
    """The dtype a model is timed in: the precision asked for, except an LSTM on CUDA in bf16.

    cuDNN's fused LSTM has no bf16 kernel: a bf16 nn.LSTM on CUDA falls back to one small kernel
    per time step, which is not the LSTM at its best. Its best reduced precision there is fp16
    (safe for scoring: no gradients to underflow), so that is what it gets.
    """
    if precision == "bf16" and device.startswith("cuda") and getattr(model, "is_recurrent", False):
        return torch.float16
    return PRECISIONS[precision]


@contextlib.contextmanager
def strict_fp32(device: str):
    """The same fp32 for every model: TF32 off for both matrix products and cuDNN (PyTorch's
    defaults differ: cuDNN's LSTM may use TF32 while a GCNN's linear layers do not), restored
    afterwards. No effect on CPU."""
    if not device.startswith("cuda"):
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
