"""How large can the GCNN/LSTM responsiveness ratio get on this machine? A roofline bound.

    python benchmarks/bench_roofline.py [--models gcnn-8b lstm-2048] [--precision bf16|fp32]

Scoring one sentence exactly costs a GCNN at least its multiply-adds (network + adaptive-softmax
head, over all tokens at once) divided by the fastest matrix-multiply rate this machine reaches.
An LSTM must in addition walk the tokens one by one: each step is a matrix-vector product with its
recurrent weights, so T steps cost at least T of them. This script measures, in one run:

1. the machine's peak: the best GFLOP/s of a large GEMM at the chosen precision;
2. each model's work for a T-token sentence (`flops_per_token` with only the softmax head) and the
   resulting lower bound on its latency: FLOPs / peak;
3. for an LSTM, the time of one recurrent step done as torch's matrix-vector products, times T;
4. each model's real latency (`evaluate.py latency`'s prepared model and scoring call, batch 1).

The ratio "LSTM measured / GCNN bound" is the most any implementation of the GCNN could gain over
the LSTM as measured, without changing the work (exact scoring, same precision and threads).
Random weights, the presets' own vocabularies (Table 4's GBW vocabulary for gcnn-8b / lstm-2048).
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
import torch.nn.functional as F

from gcnn.errors import GcnnError, run_cli
from gcnn.evaluation.latency import (
    PRECISIONS,
    interleaved_timings,
    load_for_latency,
    prepare_for_inference,
    random_sentences,
    scoring_fn,
)


def best_seconds(fn, repeats: int = 10) -> float:
    fn()
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def peak_gflops(dtype: torch.dtype) -> float:
    """The best rate of a few large GEMMs: an optimistic ceiling for any dense layer."""
    best = 0.0
    for m, k, n in [(512, 2048, 2048), (1024, 1024, 4096), (256, 4096, 4096)]:
        x, w = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
        best = max(best, 2 * m * k * n / best_seconds(lambda: F.linear(x, w)) / 1e9)  # noqa: B023
    return best


def recurrent_step_seconds(model, dtype: torch.dtype) -> float | None:
    """One LSTM time step's sequential part, batch 1: h @ W_hh^T (+ projection) per layer."""
    lstm = getattr(model, "lstm", None)
    if lstm is None:
        return None
    mats = [p for name, p in lstm.named_parameters() if name.startswith(("weight_hh", "weight_hr"))]
    vecs = [torch.randn(1, w.shape[1], dtype=dtype) for w in mats]
    return best_seconds(lambda: [F.linear(v, w) for v, w in zip(vecs, mats, strict=True)])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["gcnn-8b", "lstm-2048"])
    p.add_argument("--precision", choices=sorted(PRECISIONS), default="bf16")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sentence-length", type=int, default=30)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--vocab-size", type=int, default=None, help="default: each preset's own")
    args = p.parse_args(argv)
    if min(args.threads, args.sentence_length, args.repeats) < 1:
        raise GcnnError("--threads, --sentence-length and --repeats must be at least 1")
    if args.vocab_size is not None and args.vocab_size < 2:
        raise GcnnError(f"--vocab-size {args.vocab_size}: must be at least 2")
    torch.set_num_threads(args.threads)
    # torch runs LSTMP (lstm-2048) with its own kernel and says so once; evaluate.py is silent too
    warnings.filterwarnings("ignore", message="LSTM with projections is not supported")
    dtype, length = PRECISIONS[args.precision], args.sentence_length

    peak = peak_gflops(dtype)
    print(
        f"{args.precision}, {args.threads} thread(s), {length}-token sentences; "
        f"peak GEMM rate measured: {peak:.0f} GFLOP/s\n"
    )
    models = []
    for spec in args.models:
        name, model = load_for_latency(spec, args.vocab_size, "cpu")
        # the head-only count: a lower bound (tails add work for the rows that need them)
        flops = length * model.flops_per_token(full_softmax=False)
        network = flops - length * model.softmax.flops_per_token(full=False)
        model = prepare_for_inference(model, dtype, "cpu")
        models.append((name, model, flops, network))

    calls = []
    for _, model, _, _ in models:
        vocab = model.softmax.vocab_size
        sentences = random_sentences(vocab, args.repeats, length, seed=0)
        calls.append(scoring_fn(model, sentences.view(args.repeats, 1, length)))
    timings = interleaved_timings(calls, args.repeats, warmup=3, device="cpu")

    print(
        "| model | GFLOP / sentence | of which network | bound: FLOPs at peak (ms) "
        "| recurrence alone (ms) | measured (ms) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    rows = []
    for (name, model, flops, network), timing in zip(models, timings, strict=True):
        bound = flops / (peak * 1e9)
        step = recurrent_step_seconds(model, dtype)
        recurrence = None if step is None else length * step
        rows.append((name, model.family, bound, recurrence, timing.median))
        rec = "–" if recurrence is None else f"{1e3 * recurrence:.2f}"
        print(
            f"| {name} | {flops / 1e9:.2f} | {network / 1e9:.2f} | {1e3 * bound:.2f} | {rec} | "
            f"{1e3 * timing.median:.2f} |"
        )
    print()
    for g in (r for r in rows if r[1] == "gcnn"):
        for lstm in (r for r in rows if r[1] == "lstm"):
            floor = max(lstm[2], lstm[3] or 0.0)
            print(
                f"{g[0]} vs {lstm[0]}: measured ratio {lstm[4] / g[4]:.1f}x; at most "
                f"{lstm[4] / g[2]:.1f}x against the LSTM as measured, and "
                f"{floor / g[2]:.1f}x against an LSTM at its own floor"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
