"""Milliseconds per training step of the CPU presets: python benchmarks/bench_train_step.py.

One step = forward + backward of `loss` on a batch of 16 x (32 + 128) tokens (the GCNN's context
plus a block), in fp32 and under bf16 autocast. Targets follow a Zipf law over the vocabulary, like
real text, so the adaptive-softmax tails run about as often as in training. Prints the median of
several steps after a warm-up: wall time, and the process's CPU time (all threads), which a busy
shared machine inflates much less (with --threads 1 it is the compute time itself).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gcnn.errors import GcnnError, run_cli
from gcnn.models import build_model


def zipf_tokens(vocab_size: int, shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    weights = 1.0 / torch.arange(1, vocab_size + 1, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    return torch.multinomial(weights, shape[0] * shape[1], replacement=True, generator=g).view(
        shape
    )


def time_steps(model, inputs, targets, bf16: bool, steps: int, warmup: int = 2):
    """Median (wall seconds, CPU seconds) of one forward + backward."""
    model.train()
    wall, cpu = [], []
    for i in range(warmup + steps):
        start, start_cpu = time.perf_counter(), time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            nll, count, _ = model.loss(inputs, targets)
        (nll / count).backward()
        model.zero_grad(set_to_none=True)
        if i >= warmup:
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gcnn.models.benchmark", description=__doc__)
    parser.add_argument("--presets", nargs="+", default=["gcnn-small", "lstm-small"])
    parser.add_argument("--vocab-size", type=int, default=33_278, help="default: WikiText-2's")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=160, help="tokens per row (32 + 128)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    args = parser.parse_args(argv)
    for value, flag in ((args.batch_size, "--batch-size"), (args.tokens, "--tokens")):
        if value < 1:
            raise GcnnError(f"{flag} {value} must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = (args.batch_size, args.tokens)
    inputs = zipf_tokens(args.vocab_size, shape, seed=0)
    targets = zipf_tokens(args.vocab_size, shape, seed=1)
    print(
        f"batch {shape[0]}x{shape[1]}, vocab {args.vocab_size:,}, threads {torch.get_num_threads()}"
    )
    for name in args.presets:
        torch.manual_seed(0)
        model = build_model(name, args.vocab_size)
        cells = []
        for bf16 in (False, True):
            wall, cpu = time_steps(model, inputs, targets, bf16, args.steps)
            kind = "bf16" if bf16 else "fp32"
            cells.append(f"{kind} {1000 * wall:6.0f} ms (cpu {1000 * cpu:6.0f} ms)")
        params = model.num_parameters() / 1e6
        print(f"{name:<12} {params:5.1f}M params  " + "  ".join(cells) + "  per step")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
