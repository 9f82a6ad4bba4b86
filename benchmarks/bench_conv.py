"""Is oneDNN's convolution the fastest way to train the causal convolutions on this CPU?

    python benchmarks/bench_conv.py [--shapes gcnn-small gcnn-8-small gcnn-8] [--rounds N]

A k-tap causal convolution is also one matrix product of the k shifted inputs, unfolded side by
side, with the (out, k·in) weight matrix: how evaluation runs it (gcnn/evaluation/inference.py).
Training runs nn.Conv1d (oneDNN's convolution, forward and backward). Which is faster depends on
the CPU's kernels, so this times, interleaved in one run, forward + backward (the gradients of
the input, the weight and the bias) of every distinct convolution of each preset at
bench_train_step.py's batch (rows x (receptive field - 1 + 256) tokens), in each precision the
CPU has a path for (bf16 under autocast over fp32 weights, as the step runs it):

- conv: F.conv1d on the left-padded (batch, channels, time) input, what CausalConv1d does;
- gemm: the same input unfolded into (batch·time, k·channels) rows and one F.linear, the output
  handed back as a (batch, channels, time) view: a drop-in for CausalConv1d;
- gemm, time-major: the same with (batch, time, channels) tensors in and out, no transposes:
  what a model kept time-major throughout would pay.

It prints each one's median, and the whole preset's convolutions (each layer times how often it
occurs) as conv's speed over the faster GEMM. Above 1.00x the convolution is the right choice on
this CPU; a CPU where it reads below 1.00x is the case for choosing the layout by measurement.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

from gcnn.errors import GcnnError
from gcnn.evaluation.inference import PRECISIONS
from gcnn.machine import cpu_name, run_benchmark
from gcnn.models import build_model
from gcnn.models.blocks import CausalConv1d
from gcnn.precision import available
from gcnn.timing import interleaved_timings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import SHAPES  # noqa: E402

VARIANTS = ("conv", "gemm", "gemm, time-major")


def conv_layers(preset: str) -> tuple[Counter, int]:
    """(in_channels, out_channels, kernel) -> how many of the preset's convolutions have it; and
    the preset's receptive field."""
    model = build_model(preset, 33_278)  # WikiText-2's vocabulary; it changes no convolution
    layers = Counter(
        (m.in_channels, m.out_channels, m.kernel_size[0])
        for m in model.modules()
        if isinstance(m, CausalConv1d)
    )
    return layers, model.receptive_field


def variants(rows: int, steps: int, layer: tuple[int, int, int], precision: str):
    """The three ways to run one convolution forward and backward, on the same numbers: (calls,
    leaves), each call leaving its gradients on the leaves (weight, bias, x; x_time_major is x's
    (B, T, C) copy, the time-major call's input)."""
    cin, cout, k = layer
    gen = torch.Generator().manual_seed(0)
    dtype = PRECISIONS[precision]
    weight = (torch.randn(cout, cin, k, generator=gen) / (cin * k) ** 0.5).requires_grad_()
    bias = torch.randn(cout, generator=gen).requires_grad_()
    x = torch.randn(rows, cin, steps, generator=gen).to(dtype).requires_grad_()
    x_tm = x.detach().transpose(1, 2).contiguous().requires_grad_()  # (B, T, C)
    grad = torch.randn(rows, cout, steps, generator=gen).to(dtype)
    grad_tm = grad.transpose(1, 2).contiguous()
    leaves = {"weight": weight, "bias": bias, "x": x, "x_time_major": x_tm}

    def autocast():  # bf16 over the fp32 weights, as the training step runs it
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    def windows(xt: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B·T, k·C), tap-major
        padded = F.pad(xt, (0, 0, k - 1, 0))
        return padded.unfold(1, k, 1).transpose(2, 3).reshape(rows * steps, k * cin)

    def matrix() -> torch.Tensor:  # (out, in, k) -> (out, k·in), the order windows() has
        return weight.permute(0, 2, 1).reshape(cout, k * cin)

    def conv():
        with autocast():
            y = F.conv1d(F.pad(x, (k - 1, 0)), weight, bias)
        y.backward(grad)

    def gemm():
        with autocast():
            y = F.linear(windows(x.transpose(1, 2)), matrix(), bias)
        y.view(rows, steps, cout).transpose(1, 2).backward(grad)

    def gemm_time_major():
        with autocast():
            y = F.linear(windows(x_tm), matrix(), bias)
        y.view(rows, steps, cout).backward(grad_tm)

    return dict(zip(VARIANTS, (conv, gemm, gemm_time_major), strict=True)), leaves


def timed_calls(rows: int, steps: int, layer: tuple[int, int, int], precision: str) -> list:
    """variants() as timed: each call clears the gradients it left, as an optimizer step would."""
    calls, leaves = variants(rows, steps, layer, precision)

    def clearing(fn):
        def call():
            fn()
            for t in leaves.values():
                t.grad = None

        return call

    return [clearing(fn) for fn in calls.values()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench_conv.py", description=__doc__)
    parser.add_argument("--shapes", nargs="+", default=["gcnn-small", "gcnn-8-small", "gcnn-8"])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)
    unknown = set(args.shapes) - set(SHAPES)
    if unknown:
        raise GcnnError(f"unknown shape(s) {sorted(unknown)}; choose from {', '.join(SHAPES)}")
    if not 3 <= args.rounds <= 1000:
        raise GcnnError(f"--rounds {args.rounds}: choose 3 to 1000")
    print(f"{cpu_name()}; torch {torch.__version__}; {torch.get_num_threads()} threads")
    print("causal convolutions, forward + backward (input, weight and bias gradients), ms")
    print("| shape | precision | layer (in -> out, k) x count | conv | gemm | gemm, time-major |")
    print("|---|---|---|---:|---:|---:|")
    totals = []
    for shape in args.shapes:
        preset, rows, block, _ = SHAPES[shape]
        layers, field = conv_layers(preset)
        steps = field - 1 + block
        for precision in available(torch.device("cpu")):
            total = dict.fromkeys(VARIANTS, 0.0)
            for layer, count in layers.items():
                calls = timed_calls(rows, steps, layer, precision)
                times = interleaved_timings(calls, args.rounds, 2, "cpu")
                ms = [1e3 * t.median for t in times]
                for name, value in zip(VARIANTS, ms, strict=True):
                    total[name] += count * value
                cells = " | ".join(f"{v:,.2f}" for v in ms)
                print(f"| {shape} {rows}x{steps} | {precision} | {layer[0]} -> {layer[1]}, "
                      f"{layer[2]} x {count} | {cells} |")  # fmt: skip
            totals.append((shape, precision, total))
    print("\nthe preset's convolutions together: conv's speed over each GEMM (>1: conv faster)")
    print("| shape | precision | conv ms | gemm ms | gemm, time-major ms | conv / best gemm |")
    print("|---|---|---:|---:|---:|---:|")
    for shape, precision, total in totals:
        best = min(total["gemm"], total["gemm, time-major"])
        cells = " | ".join(f"{total[v]:,.1f}" for v in VARIANTS)
        print(f"| {shape} | {precision} | {cells} | {best / total['conv']:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_benchmark(main))
