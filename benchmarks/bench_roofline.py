"""How large can the GCNN/LSTM responsiveness ratio get on this machine? A roofline bound.

    python benchmarks/bench_roofline.py [--models gcnn-8b lstm-2048] [--precision bf16|fp32]

Scoring one sentence exactly is a chain of matrix products, and each of them takes at least the
longer of two times: its multiply-adds at the machine's best matrix-product rate, and its weights
read from memory at the machine's best read bandwidth (at a sentence's few rows, reading the
weights is usually the longer: a softmax tail of 593,471 words is 38 MB in bf16, read for one
row). A GCNN's bound is that sum over its layers; an LSTM must in addition walk the tokens one by
one, each step a matrix-vector product with its recurrent weights. This script measures, in one
run:

1. the machine's peaks: the best GFLOP/s of a large GEMM and the best GB/s of reading a large
   tensor, at the chosen precision and threads;
2. each model's work for a T-token sentence: FLOPs and weight bytes of the network, the softmax
   head, and each tail weighted by how often a sentence needs it (the same two-regime word
   frequencies the latency sentences are drawn from), and the bound that follows;
3. for an LSTM, the time of one recurrent step done as torch's matrix-vector products, times T;
4. each model's real latency (`evaluate.py latency`'s prepared model and scoring call, batch 1).

"LSTM measured / GCNN bound" is the most any implementation of the GCNN could gain over the LSTM
as measured, without changing the work (exact scoring, same precision and threads); "GCNN
measured / GCNN bound" says how close the GCNN is to its own limit. Random weights, the presets'
own vocabularies (Table 4's GBW vocabulary for gcnn-8b / lstm-2048).
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
import torch.nn.functional as F

from gcnn.errors import GcnnError, run_cli
from gcnn.evaluation.inference import PRECISIONS, prepare_for_inference
from gcnn.evaluation.workload import (
    load_for_latency,
    random_sentences,
    scoring_fn,
    word_rank_probs,
)
from gcnn.machine import reported_load
from gcnn.timing import interleaved_timings


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


def peak_read_gbs(dtype: torch.dtype) -> float:
    """The best rate of reading a 256 MB tensor once (a sum): how fast weights stream in."""
    x = torch.ones((256 << 20) // torch.finfo(dtype).bits * 8, dtype=dtype)
    return x.numel() * x.element_size() / best_seconds(lambda: x.sum(), repeats=5) / 1e9


def recurrent_step_seconds(model, dtype: torch.dtype) -> float | None:
    """One LSTM time step's sequential part, batch 1: h @ W_hh^T (+ projection) per layer."""
    lstm = getattr(model, "lstm", None)
    if lstm is None:
        return None
    mats = [p for name, p in lstm.named_parameters() if name.startswith(("weight_hh", "weight_hr"))]
    vecs = [torch.randn(1, w.shape[1], dtype=dtype) for w in mats]
    return best_seconds(lambda: [F.linear(v, w) for v, w in zip(vecs, mats, strict=True)])


def sentence_work(model, length: int) -> list[tuple[str, float, float]]:
    """(part, FLOPs, weight elements read) of scoring one `length`-token sentence, expected over
    sentences: the network and the head always, each tail as often as a sentence needs it."""
    softmax = model.softmax
    d = softmax.in_features
    head = d * softmax.head.out_features
    body_flops = length * (model.flops_per_token(full_softmax=False) - 2 * head)
    softmax_ids = {id(p) for p in softmax.parameters()}
    embed = model.embed.weight.numel()  # a lookup reads `length` rows, not the table
    body_weights = sum(p.numel() for p in model.parameters() if id(p) not in softmax_ids) - embed
    parts = [("network", body_flops, body_weights), ("head", 2.0 * length * head, head)]
    probs = word_rank_probs(softmax.vocab_size)
    for i, tail in enumerate(softmax.tails):
        share = float(probs[softmax.bounds[i] : softmax.bounds[i + 1]].sum())
        used = 1 - (1 - share) ** length  # how often a sentence has a word in this cluster
        size = sum(m.in_features * m.out_features for m in tail if hasattr(m, "in_features"))
        parts.append((f"tail {i}", 2.0 * length * share * size, used * size))
    return parts


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

    peak, bandwidth = peak_gflops(dtype), peak_read_gbs(dtype)
    size = torch.finfo(dtype).bits // 8
    print(
        f"{args.precision}, {args.threads} thread(s), {length}-token sentences; measured peaks: "
        f"{peak:.0f} GFLOP/s (large GEMM), {bandwidth:.1f} GB/s (reading a 256 MB tensor)\n"
    )
    models = []
    for spec in args.models:
        name, model = load_for_latency(spec, args.vocab_size)
        work = sentence_work(model, length)
        model = prepare_for_inference(model, dtype, "cpu")
        models.append((name, model, work))

    calls = []
    for _, model, _ in models:
        vocab = model.softmax.vocab_size
        sentences = random_sentences(vocab, args.repeats, length, seed=0)
        calls.append(scoring_fn(model, sentences.view(args.repeats, 1, length)))
    timings = interleaved_timings(calls, args.repeats, warmup=3, device="cpu")

    print(
        "| model | GFLOP / sentence | MB of weights read | bound: FLOPs (ms) | bound: bytes (ms) "
        "| bound: roofline (ms) | recurrence alone (ms) | measured (ms) | of its bound |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for (name, model, work), timing in zip(models, timings, strict=True):
        flops = sum(f for _, f, _ in work)
        mbytes = sum(w for _, _, w in work) * size / 1e6
        by_flops, by_bytes = flops / (peak * 1e9), mbytes / (bandwidth * 1e3)
        # each part is bound by whichever is slower for it, its FLOPs or its weights
        bound = sum(max(f / (peak * 1e9), w * size / (bandwidth * 1e9)) for _, f, w in work)
        step = recurrent_step_seconds(model, dtype)
        recurrence = None if step is None else length * step
        rows.append((name, model.family, bound, recurrence, timing.median))
        rec = "–" if recurrence is None else f"{1e3 * recurrence:.2f}"
        print(
            f"| {name} | {flops / 1e9:.2f} | {mbytes:,.0f} | {1e3 * by_flops:.2f} | "
            f"{1e3 * by_bytes:.2f} | {1e3 * bound:.2f} | {rec} | {1e3 * timing.median:.2f} | "
            f"{timing.median / bound:.1f}x |"
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
    with reported_load():  # timings mean little if other processes were busy meanwhile
        code = run_cli(main)
    raise SystemExit(code)
