"""Throughput and responsiveness of a GCNN against an LSTM (the paper's Table 4).

The paper measures two speeds when *scoring* text (the log-probability of every token):

- throughput: tokens/s when many sentences are scored at once (best batch size);
- responsiveness: tokens/s when one sentence is scored as it arrives (batch 1). A GCNN sees all
  tokens of the sentence in one forward pass; an LSTM must still walk them one by one, inside its
  recurrence. We let the LSTM do that inside a single ``nn.LSTM`` call (cuDNN / oneDNN), never in a
  Python loop, so both models are measured at their best.

To keep the comparison honest every model gets exactly the same treatment: inference weights are
prepared once (`gcnn.evaluation.inference`: weight norm folded into plain weights, ``eval()``,
cast to one dtype, convolutions as single matrix multiplies), the same thread count, the same
precision, the same sentences and the same work definition (`gcnn.evaluation.workload`:
``token_log_probs``, the adaptive-softmax head plus only the tail clusters the targets need), timed
in interleaved rounds (`gcnn.timing`). The table, JSON and plot: `gcnn.evaluation.latency_report`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from gcnn.devices import resolve_device
from gcnn.errors import GcnnError
from gcnn.evaluation.inference import (
    DTYPE_NAMES,
    PRECISIONS,
    inference_dtype,
    prepare_for_inference,
    strict_fp32,
)
from gcnn.evaluation.workload import (
    load_for_latency,
    network_fn,
    random_sentences,
    scoring_fn,
    vocab_size_of,
)
from gcnn.machine import load_average
from gcnn.memory import require_memory
from gcnn.models.bounds import batch_bytes
from gcnn.timing import Timing, interleaved_timings


@dataclass
class LatencyConfig:
    sentence_length: int = 30  # tokens per sentence, <eos> included
    batch_sizes: tuple[int, ...] = (4, 16, 64)  # throughput grid; the best one is reported
    repeats: int = 10  # timed runs per measurement, after warm-up
    warmup: int = 3
    device: str = "cpu"
    precision: str = "fp32"
    seed: int = 0


@dataclass
class LatencyResult:
    model: str
    family: str
    params: int
    throughput: float  # tokens/s at the best batch size
    throughput_batch_size: int
    throughput_iqr: tuple[float, float]  # tokens/s at the slower / faster quartile
    responsiveness: float  # tokens/s scoring one sentence at batch 1
    responsiveness_iqr: tuple[float, float]
    latency_ms: float  # median time to score one sentence at batch 1
    latency_iqr_ms: tuple[float, float]
    network_latency_ms: float  # median time of the network alone (no softmax), batch 1
    sentence_length: int
    precision: str
    threads: int
    device: str
    latency_by_length: dict[int, float] = field(default_factory=dict)  # for --plot
    load_average: float | None = None  # the machine's 1-minute load when measured (shared CPUs)

    def to_json(self) -> dict:
        return asdict(self)


def measure(
    models: Sequence[tuple[str, nn.Module]],
    config: LatencyConfig,
    plot_lengths: Sequence[int] = (),
    log: Callable[[str], None] = lambda s: None,
) -> list[LatencyResult]:
    """Throughput and responsiveness of (already prepared) models, timed in interleaved rounds.

    All models score the same sentences (for a shared vocabulary size), with realistic word
    frequencies, each conditioned on a leading <eos>; the repeats cycle through a pool of them.
    """
    length, dev = config.sentence_length, config.device

    def call(model, batch, n=length):
        # a pool of different sentences, the same for every model (same vocabulary and seed)
        pool = max(1, min(config.repeats, 64 // batch))
        sentences = random_sentences(vocab_size_of(model), pool * batch, n, config.seed)
        return scoring_fn(model, sentences.view(pool, batch, n), device=dev)

    # throughput: each model at its best batch size of the grid (bigger calls: fewer repeats)
    log(f"throughput at batch sizes {', '.join(map(str, config.batch_sizes))}")
    grid_repeats, grid_warmup = max(3, config.repeats // 3), max(1, config.warmup // 2)
    best: list[tuple[int, Timing]] = []
    for _, model in models:
        batch_timings = interleaved_timings(
            [call(model, b) for b in config.batch_sizes], grid_repeats, grid_warmup, dev
        )
        rates = [
            b * length / t.median for b, t in zip(config.batch_sizes, batch_timings, strict=True)
        ]
        i = max(range(len(rates)), key=rates.__getitem__)
        best.append((config.batch_sizes[i], batch_timings[i]))
    # responsiveness: one sentence, batch 1, all its tokens in one call; models interleaved
    log(f"responsiveness: {config.repeats} interleaved rounds")
    singles = interleaved_timings(
        [call(model, 1) for _, model in models], config.repeats, config.warmup, dev
    )
    # the same sentences through the network alone: how much of the latency is the softmax
    networks = [
        network_fn(model, random_sentences(vocab_size_of(model), 1, length, config.seed).to(dev))
        for _, model in models
    ]
    networks = interleaved_timings(networks, config.repeats, config.warmup, dev)
    by_length: list[dict[int, float]] = [{} for _ in models]
    for n in plot_lengths:
        log(f"latency at sentence length {n}")
        timings = interleaved_timings(
            [call(model, 1, n) for _, model in models], config.repeats, config.warmup, dev
        )
        for d, t in zip(by_length, timings, strict=True):
            d[n] = 1e3 * t.median
    load = load_average()
    results = []
    for (name, model), (batch, bt), single, network, lengths in zip(
        models, best, singles, networks, by_length, strict=True
    ):
        results.append(
            LatencyResult(
                model=name,
                family=getattr(model, "family", "?"),
                params=model.num_parameters(),
                throughput=batch * length / bt.median,
                throughput_batch_size=batch,
                throughput_iqr=(batch * length / bt.q3, batch * length / bt.q1),
                responsiveness=length / single.median,
                responsiveness_iqr=(length / single.q3, length / single.q1),
                latency_ms=1e3 * single.median,
                latency_iqr_ms=(1e3 * single.q1, 1e3 * single.q3),
                network_latency_ms=1e3 * network.median,
                sentence_length=length,
                precision=DTYPE_NAMES[next(model.parameters()).dtype],
                threads=torch.get_num_threads(),
                device=dev,
                latency_by_length=lengths,
                load_average=load,
            )
        )
    return results


def run_latency(
    specs: Sequence[str],
    config: LatencyConfig,
    vocab_size: int | None = None,
    plot_lengths: Sequence[int] = (),
    log: Callable[[str], None] = lambda s: None,
) -> list[LatencyResult]:
    """Load and prepare every model, then measure them side by side (see `measure`)."""
    if config.precision not in (*PRECISIONS, "auto"):
        raise GcnnError(f"--precision {config.precision!r}: choose auto, fp32 or bf16")
    resolve_device(config.device)
    if config.sentence_length < 1:
        raise GcnnError(f"--sentence-length {config.sentence_length}: must be at least 1")
    if any(b < 1 for b in config.batch_sizes):
        raise GcnnError(f"--batch-size {config.batch_sizes}: must be at least 1")
    if vocab_size is not None and vocab_size < 2:
        raise GcnnError(f"--vocab-size {vocab_size}: must be at least 2")
    # Resolve every name first, so a typo in the last one fails before minutes of loading.
    from gcnn.models import PRESETS

    for spec in specs:
        if spec not in PRESETS and not Path(spec).exists():
            raise GcnnError(
                f"'{spec}' is neither a preset nor a checkpoint file; "
                f"presets: {', '.join(sorted(PRESETS))}"
            )
    models = []
    with strict_fp32(config.device):
        for spec in specs:
            name, model = load_for_latency(spec, vocab_size)
            check_call_memory(name, model, config, plot_lengths)
            params, vocab = model.num_parameters(), vocab_size_of(model)
            size = f"{params / 1e6:.1f}M parameters, vocabulary {vocab:,}"
            if config.precision == "auto":
                model = fastest_precision(name, model, config, log)
            else:
                dtype = inference_dtype(model, config.precision, config.device)
                model = prepare_for_inference(model, dtype, config.device)
            log(f"{name}: {size}, {DTYPE_NAMES[next(model.parameters()).dtype]}")
            models.append((name, model))
        return measure(models, config, plot_lengths, log)


def check_call_memory(name: str, model: nn.Module, config: LatencyConfig, lengths) -> None:
    """Refuse sentence lengths and batch sizes whose calls cannot fit: the sentences of a pool
    (`measure`: up to max(64, batch) of them, ids and inputs) and one call's activations."""
    batch, length = max(config.batch_sizes), max(config.sentence_length, *lengths, 1)
    ids = 2 * 8 * max(64, batch) * length
    require_memory(
        ids + batch_bytes(model, batch * length, batch * length, training=False),
        f"timing {name} on {batch:,} sentences of {length:,} tokens",
        "lower --sentence-length or --batch-size",
        config.device,
    )


def fastest_precision(name: str, model: nn.Module, config: LatencyConfig, log) -> nn.Module:
    """`model` prepared in the precision "auto" gives it here: each model at its best.

    The one chooser decides (`gcnn.precision.choose`): the hardware where it can (native bf16 on
    a GPU; no bf16 path on a CPU), else a short interleaved measurement of the real call, one
    sentence at batch 1, on both prepared copies.
    """
    from gcnn.precision import choose, timed_calls

    model = model.remove_weight_norm()  # (a parametrized module does not survive deepcopy)
    prepared: dict[str, nn.Module] = {}

    def candidate(precision: str) -> nn.Module:
        if precision not in prepared:
            dtype = inference_dtype(model, precision, config.device)
            prepared[precision] = prepare_for_inference(copy.deepcopy(model), dtype, config.device)
        return prepared[precision]

    sentences = random_sentences(vocab_size_of(model), 4, config.sentence_length, config.seed + 1)

    def measure(rounds: int) -> dict[str, Timing]:
        calls = {
            p: scoring_fn(candidate(p), sentences.view(4, 1, -1), device=config.device)
            for p in PRECISIONS
        }
        return timed_calls(calls, config.device, config.warmup)(rounds)

    work = json.dumps(["latency", model.config_dict(), config.sentence_length], default=str)
    rounds = max(5, config.repeats // 2)
    # measured afresh every run, like everything else the table reports
    device = torch.device(config.device)
    choice = choose(device, work, measure, log, rounds, label=name, cache=False)
    return candidate(choice.precision)
