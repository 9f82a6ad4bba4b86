"""Where a training step's time goes: python benchmarks/profile_train_step.py [--shape gcnn-8]

Profiles (torch.profiler, CPU self time per op) the project's training step and the plain
port's (benchmarks/plain_port.py) on the same batch, in fp32 and under bf16 autocast, and prints
for each the top ops with their share of the step, then the ops whose time differs most between
the two. The steps are bench_train_step.py's: forward, backward and the optimizer's update on
a Zipf batch of the shape's size; the project's step uses the trainer's own optimizer.

Profiling adds overhead per op, so read shares and differences here and take speed ratios from
bench_train_step.py. `--json FILE` writes the tables for a record.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from gcnn.errors import GcnnError
from gcnn.machine import cpu_name, run_benchmark
from gcnn.models import PRESETS, build_model
from gcnn.precision import available

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import (  # noqa: E402
    SHAPES,
    add_malloc_option,
    gcnn_step,
    optimizer_for,
    plain_step,
    set_malloc,
    trainer_optimizer,
    training_batch,
)
from plain_port import plain_port  # noqa: E402


def steps_for(shape: str, vocab_size: int) -> tuple[dict, int]:
    """{'gcnn fp32': step, ...} on one shared batch, and the scored tokens per step."""
    preset, rows, block, opt = SHAPES[shape]
    torch.manual_seed(0)
    ours = build_model(preset, vocab_size)
    inputs, targets = training_batch(ours, vocab_size, rows, block)
    torch.manual_seed(0)
    port = plain_port(PRESETS[preset], vocab_size)
    calls = {}
    for precision in available(torch.device("cpu")):  # bf16 where the CPU has a path for it
        bf16 = precision == "bf16"
        optimizer = trainer_optimizer(ours, opt, "cpu")
        calls[f"gcnn {precision}"] = gcnn_step(ours, inputs, targets, bf16, optimizer)
        calls[f"plain {precision}"] = plain_step(
            port, inputs, targets, bf16, optimizer_for(port, opt)
        )
    return calls, rows * block


def op_times(step, steps: int, warmup: int) -> tuple[dict[str, float], float]:
    """Self CPU microseconds per step for each op name, and the step's total."""
    for _ in range(warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    times = {e.key: e.self_cpu_time_total / steps for e in prof.key_averages()}
    return times, sum(times.values())


def top_table(name: str, times: dict[str, float], total: float, top: int) -> list[str]:
    lines = [
        f"{name}: {total / 1e3:,.0f} ms per step (profiled)",
        "| op | ms | share |",
        "|---|---:|---:|",
    ]
    for op, t in sorted(times.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"| {op} | {t / 1e3:,.1f} | {100 * t / total:.1f}% |")
    return lines


def diff_table(ours: dict, plain: dict, top: int) -> list[str]:
    ops = set(ours) | set(plain)
    rows = sorted(ops, key=lambda op: -abs(ours.get(op, 0.0) - plain.get(op, 0.0)))[:top]
    lines = ["| op | gcnn ms | plain ms | gcnn - plain |", "|---|---:|---:|---:|"]
    for op in rows:
        a, b = ours.get(op, 0.0) / 1e3, plain.get(op, 0.0) / 1e3
        lines.append(f"| {op} | {a:,.1f} | {b:,.1f} | {a - b:+,.1f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shape", choices=[s for s in SHAPES if s != "gcnn-14"], default="gcnn-small"
    )
    parser.add_argument("--vocab-size", type=int, default=33_278)
    parser.add_argument("--steps", type=int, default=3, help="profiled steps per variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: as is)")
    parser.add_argument("--json", type=Path, help="write the per-op tables here")
    add_malloc_option(parser)
    args = parser.parse_args(argv)
    if not 1 <= args.steps <= 100 or not 0 <= args.warmup <= 100:
        raise GcnnError("--steps must be in 1..100 and --warmup in 0..100")
    if not 2 <= args.vocab_size <= 300_000:
        raise GcnnError("--vocab-size must be in 2..300000")
    if args.threads:
        torch.set_num_threads(args.threads)
    malloc = set_malloc(args.malloc)
    calls, tokens = steps_for(args.shape, args.vocab_size)
    print(
        f"{args.shape}, vocab {args.vocab_size:,}, {tokens} scored tokens per step; "
        f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}; {malloc}"
    )
    result = {}
    for name, step in calls.items():
        times, total = op_times(step, args.steps, args.warmup)
        result[name] = {"total_us": total, "ops_us": times}
    for precision in available(torch.device("cpu")):
        for who in ("gcnn", "plain"):
            r = result[f"{who} {precision}"]
            print(
                "\n".join(
                    ["", *top_table(f"{who} {precision}", r["ops_us"], r["total_us"], args.top)]
                )
            )
        print(f"\nlargest differences, {precision}:")
        ours, plain = result[f"gcnn {precision}"], result[f"plain {precision}"]
        print("\n".join(diff_table(ours["ops_us"], plain["ops_us"], args.top)))
    if args.json:
        meta = {
            "shape": args.shape,
            "vocab_size": args.vocab_size,
            "cpu": cpu_name(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "malloc": malloc,
        }
        args.json.write_text(json.dumps({"meta": meta, "profiles": result}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_benchmark(main))
