"""What a dropout mask costs on this CPU: python benchmarks/bench_dropout.py

CPU dropout is bound by torch's serial random generator, not by arithmetic. One run times,
interleaved, dropout's forward and backward on the default model's activations (8 rows of
256 + 24 tokens x 128 channels; --rows/--tokens/--channels change it), fp32 and bf16:

- nn.Dropout: torch's own (a bernoulli_ draw per element; what the plain port uses);
- float mask: uniform floats compared with p (gcnn's mask before; still its path for a p that
  16 bits cannot realize);
- bit mask: gcnn.models.dropout, 16 raw random bits per element (four per int64 draw);

and prints each one's time and its speed against nn.Dropout, and the mask draw alone. Then
(unless --no-step) the whole training step of the default model (gcnn-8-small, AdamW, WikiText-2's
vocabulary; bench_train_step.py's batch), its Dropout modules drawing bit masks and float masks,
interleaved in the same run: what the mask is worth where it matters.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

from gcnn.errors import GcnnError
from gcnn.evaluation.inference import PRECISIONS
from gcnn.machine import cpu_name, run_benchmark
from gcnn.models import build_model, dropout
from gcnn.models.dropout import Dropout, drop_cut, keep_mask
from gcnn.precision import available
from gcnn.timing import interleaved_timings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import SHAPES, gcnn_step, optimizer_for, training_batch  # noqa: E402


def float_masks():
    """gcnn's Dropout on its float path, as it took it for every p before: patched so that 16
    bits "cannot realize" p."""
    return mock.patch.object(dropout, "drop_cut", lambda p: None)


def variants(shape: tuple[int, ...], p: float, dtype: torch.dtype) -> dict:
    x = torch.randn(shape).to(dtype).requires_grad_()
    grad = torch.randn(shape).to(dtype)
    cut = drop_cut(p)
    if cut is None:
        raise GcnnError(f"--p {p} is not realized by 16 bits: gcnn draws floats for it")
    ours = Dropout(p).train()

    def step(forward, patch=contextlib.nullcontext):
        def call():
            with patch():
                forward().backward(grad)
            x.grad = None

        return call

    return {
        "nn.Dropout": step(lambda: F.dropout(x, p, training=True)),
        "float mask": step(lambda: ours(x), float_masks),
        "bit mask": step(lambda: ours(x)),
        "float mask, draw only": lambda: torch.rand(shape) >= p,
        "bit mask, draw only": lambda: keep_mask(shape, cut),
    }


def step_variants(vocab_size: int = 33_278) -> dict:
    """The default model's training step, bench_train_step.py's shape and batch."""
    preset, rows, block, _ = SHAPES["gcnn-8-small"]
    torch.manual_seed(0)
    model = build_model(preset, vocab_size)
    inputs, targets = training_batch(model, vocab_size, rows, block)
    calls = {}
    for precision in available(torch.device("cpu")):  # bf16 where the CPU has a path for it
        step = gcnn_step(model, inputs, targets, precision == "bf16", optimizer_for(model, "adamw"))
        calls[f"bit masks {precision}"] = step

        def floats(step=step):
            with float_masks():
                step()

        calls[f"float masks {precision}"] = floats
    return calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench_dropout.py", description=__doc__)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=280)
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--p", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--step-rounds", type=int, default=20)
    parser.add_argument("--no-step", action="store_true", help="skip the training step")
    args = parser.parse_args(argv)
    sizes = (args.rows, args.tokens, args.channels)
    if not all(1 <= s <= 65_536 for s in sizes) or args.rows * args.tokens * args.channels > 2**28:
        raise GcnnError("--rows, --tokens, --channels must be in 1..65536, their product <= 2^28")
    if not 0 < args.p < 1 or not 1 <= args.rounds <= 100_000 or not 1 <= args.step_rounds <= 1000:
        raise GcnnError("--p must be in (0, 1), --rounds in 1..100000, --step-rounds in 1..1000")
    print(f"{cpu_name()}; torch {torch.__version__}; {torch.get_num_threads()} threads")
    print(
        f"dropout p={args.p} on {args.rows} x {args.tokens} x {args.channels}, forward + backward"
    )
    print("| variant | precision | us | vs nn.Dropout |")
    print("|---|---|---:|---:|")
    for name in available(torch.device("cpu")):
        calls = variants(sizes, args.p, PRECISIONS[name])
        times = interleaved_timings(list(calls.values()), args.rounds, warmup=5, device="cpu")
        base = times[0].median
        for variant, t in zip(calls, times, strict=True):
            ratio = "" if "draw only" in variant else f"{base / t.median:.2f}x"
            print(f"| {variant} | {name} | {1e6 * t.median:,.0f} | {ratio} |")
    if args.no_step:
        return 0
    calls = step_variants()
    times = interleaved_timings(list(calls.values()), args.step_rounds, warmup=2, device="cpu")
    ms = {name: 1e3 * t.median for name, t in zip(calls, times, strict=True)}
    print("\nthe default model's training step (gcnn-8-small, 8 x (24 + 256) tokens, AdamW)")
    print("| precision | bit masks ms | float masks ms | bit / float speed |")
    print("|---|---:|---:|---:|")
    for precision in available(torch.device("cpu")):
        bits, floats = ms[f"bit masks {precision}"], ms[f"float masks {precision}"]
        print(f"| {precision} | {bits:,.1f} | {floats:,.1f} | {floats / bits:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_benchmark(main))
