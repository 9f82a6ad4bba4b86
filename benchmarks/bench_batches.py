"""What building a training batch costs at WikiText-103 scale: python benchmarks/bench_batches.py

A fast GPU step leaves the host little time per update: building the batch (rows cut out of the
token stream), its adaptive-softmax plan, and pinning it must take a small fraction of a step, or
the GPU waits. This builds batches from a 103,227,021-token stream (WikiText-103's train split;
random ids, since only the size matters) the way the trainer does, and prints the time per
batch: the trainer's path (the epoch's deal drawn once), the path before it was (a fresh
permutation of all blocks for every batch), and the share of a training step each one takes:
the step of gcnn-8 timed here, on this CPU, and a projected GPU step (FLOPs / assumed rate,
labelled as a projection: no GPU measured it).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from gcnn.data import BlockBatcher
from gcnn.errors import GcnnError
from gcnn.machine import cpu_name, run_benchmark
from gcnn.models import build_model
from gcnn.precision import available

WT103_TRAIN_TOKENS = 103_227_021
WT103_VOCAB = 267_735


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def step_ms(model, inputs, targets, repeats: int) -> float:
    """Forward + backward + SGD step of `model`, bf16 autocast when the CPU has it."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.99, nesterov=True)
    plan = model.plan(targets)

    bf16 = "bf16" in available(torch.device("cpu"))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            nll, count, _ = model.loss(inputs, targets, plan=plan)
        (nll / count).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    return median_ms(step, repeats)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench_batches.py", description=__doc__)
    parser.add_argument("--tokens", type=int, default=WT103_TRAIN_TOKENS)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--step-repeats", type=int, default=3, help="gcnn-8 steps timed on CPU")
    parser.add_argument(
        "--gpu-tflops",
        type=float,
        default=400.0,
        help="achieved bf16 rate assumed for the projected GPU step (default 400 TFLOP/s: an "
        "H100 SXM at ~40%% of its 989 dense bf16 TFLOP/s)",
    )
    args = parser.parse_args(argv)
    if args.tokens < 10_000 or args.repeats < 1 or args.step_repeats < 1:
        raise GcnnError("--tokens must be >= 10000 and --repeats, --step-repeats >= 1")
    print(f"{cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    tokens = np.random.default_rng(0).integers(0, WT103_VOCAB, args.tokens, dtype=np.int32)
    model = build_model("gcnn-8", WT103_VOCAB, dropout=0.0)
    context = model.receptive_field - 1
    print(f"stream of {args.tokens:,} tokens; gcnn-8 (context {context})")

    rows = []
    for batch_size, block in ((16, 256), (1, 1024)):
        batcher = BlockBatcher(tokens, 0, block, batch_size, context, shuffle=True, seed=1)
        index = iter(range(10**9))

        def build(batcher=batcher, index=index):
            _, targets = batcher.batch(0, next(index) % len(batcher))
            model.plan(targets)

        def rebuild(batcher=batcher, index=index):  # the old path: deal again for every batch
            batcher._deal_epoch = None
            build(batcher, index)

        batcher.deal(0)  # the one permutation of the epoch, drawn before the timing
        new, old = median_ms(build, args.repeats), median_ms(rebuild, max(5, args.repeats // 5))
        inputs, targets = (t for t in batcher.batch(0, 0))
        cpu_step = step_ms(model, inputs, targets, args.step_repeats)
        # training FLOPs per token ~ 3 x the forward pass (backward = 2 x forward); the softmax
        # head runs for every token, a tail only for its own words: count the head alone
        flops = 3 * model.flops_per_token(full_softmax=False) * batch_size * (block + context)
        gpu_step = 1e3 * flops / (args.gpu_tflops * 1e12)
        rows.append((batch_size, block, new, old, cpu_step, gpu_step))

    print()
    print("| batch | build, deal once (ms) | build, deal per batch (ms) | gcnn-8 step, this CPU "
          "(ms) | share of it | projected GPU step (ms) | share of it |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    for b, t, new, old, cpu_step, gpu_step in rows:
        print(
            f"| {b}x{t} | {new:.3f} | {old:.2f} | {cpu_step:,.0f} | {100 * new / cpu_step:.3f}% "
            f"| {gpu_step:.1f} | {100 * new / gpu_step:.2f}% (was {100 * old / gpu_step:.0f}%) |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(run_benchmark(main))
