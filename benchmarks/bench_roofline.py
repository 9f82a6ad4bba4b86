"""How large can the GCNN/LSTM responsiveness ratio get on this machine? A roofline bound.

    python benchmarks/bench_roofline.py [--models gcnn-8b lstm-2048] [--precision bf16|fp32]

Scoring one sentence exactly is a chain of matrix products, and each of them takes at least the
longer of two times: its multiply-adds at the machine's best matrix-product rate, and its weights
read from memory at the machine's best read bandwidth (at a sentence's few rows, reading the
weights is usually the longer: a softmax tail of 593,471 words is 38 MB in bf16, read for one
row). A GCNN's bound is that sum over its layers; an LSTM must in addition walk the tokens one by
one, each step a matrix-vector product with its recurrent weights. This script measures, in one
run:

1. the machine's peaks, at the chosen precision and threads: the best GFLOP/s of a few large
   GEMMs *and of every matrix-product shape the models themselves run* (their layers at the
   sentence's rows), and the best GB/s of reading a large tensor *and tensors the size of each
   part's weights* (small ones are read from cache, faster than from memory). A peak below what a
   layer really reaches would put the "bound" above the measured time: the best of all of them
   is what makes the bound one;
2. each model's work for a T-token sentence: FLOPs and weight bytes of the network, the softmax
   head, and each tail weighted by how often a sentence needs it (the same two-regime word
   frequencies the latency sentences are drawn from), and the bound that follows;
3. for an LSTM, the time of one recurrent step done as torch's matrix-vector products, times T;
4. each model's real latency (`evaluate.py latency`'s prepared model and scoring call, batch 1).

A measured time below its bound (an older record's peaks were a large GEMM's alone) means the
bound is not one: then no ceiling is printed, only the measured ratio and the contradiction.
"LSTM measured / GCNN bound" is the most any implementation of the GCNN could gain over the LSTM
as measured, without changing the work (exact scoring, same precision and threads); "GCNN
measured / GCNN bound" says how close the GCNN is to its own limit. Random weights, the presets'
own vocabularies (Table 4's GBW vocabulary for gcnn-8b / lstm-2048).
"""

from __future__ import annotations

import argparse
import re
import time
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gcnn.errors import GcnnError
from gcnn.evaluation.inference import (
    PRECISIONS,
    pack_weight,
    packed_linear,
    prepare_for_inference,
)
from gcnn.evaluation.workload import (
    load_for_latency,
    random_sentences,
    scoring_fn,
    word_rank_probs,
)
from gcnn.machine import run_benchmark
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


LARGE_GEMMS = [(512, 2048, 2048), (1024, 1024, 4096), (256, 4096, 4096)]


def peak_gflops(dtype: torch.dtype, shapes=()) -> tuple[float, str]:
    """The best rate of a few large GEMMs and of the given (m, k, n) shapes (the models' own),
    each plain and through a packed weight as the prepared models run it, and which shape gave
    it: a ceiling no dense layer of these models exceeds."""
    best, where = 0.0, ""
    for i, (m, k, n) in enumerate(dict.fromkeys([*LARGE_GEMMS, *shapes])):
        x, w = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
        packed = pack_weight(w)
        calls = [lambda: F.linear(x, w)]  # noqa: B023
        if packed is not None:
            calls.append(lambda: packed_linear(x, w, packed, None))  # noqa: B023
        seconds = min(best_seconds(call) for call in calls)
        if 2 * m * k * n / seconds / 1e9 > best:
            best = 2 * m * k * n / seconds / 1e9
            where = f"{'large GEMM' if i < len(LARGE_GEMMS) else 'model shape'} {m}x{k}x{n}"
    return best, where


def peak_read_gbs(dtype: torch.dtype, sizes=()) -> tuple[float, str]:
    """The best rate of reading once (a sum) a 256 MB tensor and tensors of the given numbers of
    elements (each part's weights: read from cache when they fit, faster than from memory)."""
    best, where = 0.0, ""
    for n in dict.fromkeys([(256 << 20) // torch.finfo(dtype).bits * 8, *sizes]):
        x = torch.ones(max(1, int(n)), dtype=dtype)
        rate = x.numel() * x.element_size() / best_seconds(lambda: x.sum(), repeats=5) / 1e9  # noqa: B023
        if rate > best:
            best, where = rate, f"reading {x.numel() * x.element_size() / 1e6:,.1f} MB"
    return best, where


def gemm_shapes(model, length: int) -> list[tuple[int, int, int]]:
    """(rows, inputs, outputs) of every matrix product scoring one sentence runs: linear layers
    and convolutions (as products over their unfolded windows) at the sentence's rows, an
    LSTM's recurrent products at one row, each softmax tail at one row and at the sentence's."""
    import torch.nn as nn

    shapes = []
    for m in model.modules():
        if isinstance(m, nn.Linear):
            shapes += [(length, m.in_features, m.out_features), (1, m.in_features, m.out_features)]
        elif isinstance(m, nn.Conv1d):
            shapes.append((length, m.in_channels * m.kernel_size[0] // m.groups, m.out_channels))
        elif isinstance(m, nn.LSTM):
            for name, w in m.named_parameters():
                if name.startswith("weight"):
                    shapes += [(length, w.shape[1], w.shape[0]), (1, w.shape[1], w.shape[0])]
    return sorted(set(shapes))


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
    # a lookup reads `length` rows, not the table (a tied table is the softmax's, counted there)
    embed = model.embed.weight.numel() if isinstance(model.embed, torch.nn.Embedding) else 0
    body_weights = sum(p.numel() for p in model.parameters() if id(p) not in softmax_ids) - embed
    parts = [("network", body_flops, body_weights), ("head", 2.0 * length * head, head)]
    probs = word_rank_probs(softmax.vocab_size)
    for i, tail in enumerate(softmax.tails):
        share = float(probs[softmax.bounds[i] : softmax.bounds[i + 1]].sum())
        used = 1 - (1 - share) ** length  # how often a sentence has a word in this cluster
        size = sum(m.in_features * m.out_features for m in tail if hasattr(m, "in_features"))
        parts.append((f"tail {i}", 2.0 * length * share * size, used * size))
    return parts


# --- the table, read back, and what may be concluded from it ------------------------------------

HEADER = (
    "| model | GFLOP / sentence | MB of weights read | bound: FLOPs (ms) | bound: bytes (ms) "
    "| bound: roofline (ms) | recurrence alone (ms) | measured (ms) | of its bound |"
)


@dataclass
class Row:
    """One model's line of the table: seconds."""

    name: str
    family: str  # "gcnn" or "lstm"
    bound: float  # the roofline bound
    recurrence: float | None  # an LSTM's sequential steps alone
    measured: float  # median latency

    @property
    def valid(self) -> bool:
        """A bound is one only if the measured time is not below it."""
        return self.measured >= self.bound


def of_bound(row: Row) -> str:
    ratio = f"{row.measured / row.bound:.1f}x"
    return ratio if row.valid else f"{ratio}: below its bound, not a bound"


def pair_lines(rows: list[Row]) -> list[str]:
    """For each GCNN and LSTM: the measured ratio, and the most a GCNN could gain (its bound
    against the LSTM) - stated only where both bounds are bounds, so the measured ratio can
    never exceed the stated ceiling."""
    lines = []
    for g in (r for r in rows if r.family == "gcnn"):
        for lstm in (r for r in rows if r.family == "lstm"):
            measured = f"{g.name} vs {lstm.name}: measured ratio {lstm.measured / g.measured:.1f}x"
            broken = [r for r in (g, lstm) if not r.valid]
            if broken:
                why = "; ".join(
                    f"{r.name}'s measured {1e3 * r.measured:.2f} ms is below its bound "
                    f"{1e3 * r.bound:.2f} ms"
                    for r in broken
                )
                lines.append(
                    f"{measured}; no ceiling: {why}, so the peaks were underestimated and the "
                    "bound is not one (re-measure)"
                )
                continue
            floor = max(lstm.bound, lstm.recurrence or 0.0)
            lines.append(
                f"{measured}; at most {lstm.measured / g.bound:.1f}x against the LSTM as "
                f"measured, and {floor / g.bound:.1f}x against an LSTM at its own floor"
            )
    return lines


def parse_rows(text: str) -> list[Row]:
    """The rows of a printed table (this script's output, old or new), in seconds."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("| ") or len(cells) != 9 or not re.match(r"^[\d.]+$", cells[5]):
            continue
        recurrence = None if cells[6] in ("–", "-") else float(cells[6]) / 1e3
        family = "gcnn" if recurrence is None else "lstm"
        rows.append(Row(cells[0], family, float(cells[5]) / 1e3, recurrence, float(cells[7]) / 1e3))
    return rows


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

    models, shapes, sizes = [], [], []
    for spec in args.models:
        name, model = load_for_latency(spec, args.vocab_size)
        work = sentence_work(model, length)
        shapes += gemm_shapes(model, length)
        sizes += [w for _, _, w in work]
        model = prepare_for_inference(model, dtype, "cpu")
        models.append((name, model, work))
    (peak, peak_at), (bandwidth, read_at) = peak_gflops(dtype, shapes), peak_read_gbs(dtype, sizes)
    size = torch.finfo(dtype).bits // 8
    print(
        f"{args.precision}, {args.threads} thread(s), {length}-token sentences; measured peaks "
        f"(best of large GEMMs and the models' own shapes; of large and weight-sized reads): "
        f"{peak:.0f} GFLOP/s ({peak_at}), {bandwidth:.1f} GB/s ({read_at})\n"
    )

    calls = []
    for _, model, _ in models:
        vocab = model.softmax.vocab_size
        sentences = random_sentences(vocab, args.repeats, length, seed=0)
        calls.append(scoring_fn(model, sentences.view(args.repeats, 1, length)))
    timings = interleaved_timings(calls, args.repeats, warmup=3, device="cpu")

    print(HEADER)
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
        row = Row(name, model.family, bound, recurrence, timing.median)
        rows.append(row)
        rec = "–" if recurrence is None else f"{1e3 * recurrence:.2f}"
        print(
            f"| {name} | {flops / 1e9:.2f} | {mbytes:,.0f} | {1e3 * by_flops:.2f} | "
            f"{1e3 * by_bytes:.2f} | {1e3 * bound:.2f} | {rec} | {1e3 * timing.median:.2f} | "
            f"{of_bound(row)} |"
        )
    print()
    for line in pair_lines(rows):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_benchmark(main))
