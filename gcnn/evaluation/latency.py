"""Throughput and responsiveness of a GCNN against an LSTM (the paper's Table 4).

The paper measures two speeds when *scoring* text (the log-probability of every token):

- throughput: tokens/s when many sentences are scored at once (best batch size);
- responsiveness: tokens/s when one sentence is scored as it arrives (batch 1). A GCNN sees all
  tokens of the sentence in one forward pass; an LSTM must still walk them one by one, inside its
  recurrence. We let the LSTM do that inside a single ``nn.LSTM`` call (cuDNN / oneDNN), never in a
  Python loop, so both models are measured at their best.

To keep the comparison honest every model gets exactly the same treatment: inference weights are
prepared once (weight norm folded into plain weights, ``eval()``, cast to one dtype, convolutions
as single matrix multiplies), the same thread count, the same precision, the same sentences and
the same work definition (``token_log_probs``: the adaptive-softmax head plus only the tail
clusters the targets need).
"""

from __future__ import annotations

import contextlib
import copy
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gcnn.errors import GcnnError

# Vocabulary sizes used when a preset is benchmarked with random weights. Speed depends on the
# vocabulary only through the embedding lookup and the adaptive-softmax tails, but the paper's
# Table 4 is about Google Billion Word models, so GBW presets get GBW's vocabulary.
GBW_VOCAB = 793_471
WT103_VOCAB = 267_735
WT2_VOCAB = 33_278

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


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
class Timing:
    """Seconds per call: the median and the interquartile range over the timed repeats."""

    median: float
    q1: float
    q3: float
    samples: list[float] = field(repr=False, default_factory=list)

    @classmethod
    def of(cls, samples: Sequence[float]) -> Timing:
        s = sorted(samples)
        if len(s) >= 4:
            q1, _, q3 = statistics.quantiles(s, n=4)
        else:
            q1, q3 = s[0], s[-1]
        return cls(statistics.median(s), q1, q3, list(s))


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


# ----------------------------------------------------------------------------------------------
# Preparing a model for inference


def default_vocab_size(preset: str) -> int:
    """The vocabulary of the corpus a preset was designed for (see the module constants)."""
    from gcnn.models.presets import PRESET_NOTES

    corpus = PRESET_NOTES.get(preset, ("",))[0]
    if corpus.startswith("GBW"):
        return GBW_VOCAB
    if corpus.startswith("WikiText-103"):
        return WT103_VOCAB
    return WT2_VOCAB


def load_for_latency(spec: str, vocab_size: int | None, device: str) -> tuple[str, nn.Module]:
    """MODEL is a preset name (random weights) or a checkpoint path."""
    from gcnn.models import PRESETS, build_model

    if spec in PRESETS:
        vocab = vocab_size or default_vocab_size(spec)
        torch.manual_seed(0)
        return spec, build_model(spec, vocab)
    path = Path(spec)
    if path.exists():
        from gcnn.checkpoint import load_model

        model, _tokenizer, _ckpt = load_model(path, device="cpu")
        return path.name, model
    raise GcnnError(
        f"'{spec}' is neither a preset nor a checkpoint file; presets: {', '.join(sorted(PRESETS))}"
    )


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


# ----------------------------------------------------------------------------------------------
# Timing


def _synchronize(device: str) -> Callable[[], None]:
    """Wait for the device being measured (the bare torch.cuda.synchronize waits for the
    *current* device only, so timing cuda:1 would time kernel launches)."""
    if device.startswith("cuda"):
        index = torch.device(device)
        return lambda: torch.cuda.synchronize(index)
    return lambda: None


def _timed(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def interleaved_timings(
    calls: Sequence[Callable[[], object]], repeats: int, warmup: int, device: str
) -> list[Timing]:
    """Time several calls in rounds (call 0, 1, 2, ..., then again), not one after the other.

    On a shared machine the background load drifts; interleaving spreads it evenly over the
    models being compared, so their ratio stays meaningful even when absolute times wobble.
    """
    sync = _synchronize(device)
    for fn in calls:
        for _ in range(warmup):
            fn()
    samples: list[list[float]] = [[] for _ in calls]
    for r in range(repeats):
        # rotate who goes first, so no model always runs right after the same neighbour
        for j in range(len(calls)):
            i = (j + r) % len(calls)
            samples[i].append(_timed(calls[i], sync))
    return [Timing.of(s) for s in samples]


# Word frequencies have two regimes (Ferrer i Cancho & Solé 2001): Zipf's law p(r) ∝ 1/r over a
# kernel lexicon of the ~5,000 most frequent words, then a steeper p(r) ∝ 1/r² beyond it. A plain
# 1/r law over 793k words would send one token in ten to the rarest 600k words; real text sends
# well under one in a hundred there.
KERNEL_LEXICON = 5000


def word_rank_probs(vocab_size: int) -> torch.Tensor:
    """p(id) for frequency-sorted ids under the two-regime law above (continuous at the knee)."""
    rank = torch.arange(1, vocab_size + 1, dtype=torch.float64)
    p = torch.where(rank <= KERNEL_LEXICON, 1.0 / rank, KERNEL_LEXICON / rank**2)
    return p / p.sum()


def random_sentences(vocab_size: int, batch: int, length: int, seed: int) -> torch.Tensor:
    """(batch, length) token ids with realistic word frequencies (see `word_rank_probs`), so
    the adaptive softmax needs its tail clusters about as often as on real sentences."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.multinomial(word_rank_probs(vocab_size), batch * length, True, generator=g)
    return ids.view(batch, length)


def scoring_fn(
    model: nn.Module, sentences: torch.Tensor, eos_id: int = 0, device: str | None = None
) -> Callable[[], object]:
    """Scoring calls: log-prob of every token of every sentence given a leading <eos>.

    `sentences` is (calls, batch, length) on the host: each call scores the next batch in turn
    (cycling), so repeats see different sentences (and different adaptive-softmax tails), like
    real traffic. A call does what serving a sentence that arrives as ids takes: plan the softmax
    on the host, copy ids and plan to `device` (default: the model's), score.
    """
    if sentences.dim() == 2:
        sentences = sentences[None]
    sentences = sentences.cpu()
    device = device or str(next(model.parameters()).device)
    inputs = torch.cat([torch.full_like(sentences[..., :1], eos_id), sentences[..., :-1]], dim=-1)
    turn = [0]

    def score():
        i = turn[0] % len(sentences)
        turn[0] += 1
        with torch.inference_mode():
            plan = model.plan(sentences[i]).to(device)
            x, y = inputs[i].to(device), sentences[i].to(device)
            return model.token_log_probs(x, y, plan)

    return score


def network_fn(model: nn.Module, sentences: torch.Tensor, eos_id: int = 0) -> Callable[[], object]:
    """Like `scoring_fn`, but stops before the softmax: only the network's hidden states.

    Not a way to score anything; it tells how a sentence's time splits between the network
    (convolutions or recurrence) and the adaptive softmax.
    """
    inputs = torch.cat([torch.full_like(sentences[:, :1], eos_id), sentences[:, :-1]], dim=-1)

    def forward():
        with torch.inference_mode():
            return model(inputs)[0]

    return forward


def _vocab_size(model: nn.Module) -> int:
    config = model.config_dict() if hasattr(model, "config_dict") else {}
    if "vocab_size" in config:
        return int(config["vocab_size"])
    return int(model.vocab_size)


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
        sentences = random_sentences(_vocab_size(model), pool * batch, n, config.seed)
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
    networks = interleaved_timings(
        [
            network_fn(model, random_sentences(_vocab_size(model), 1, length, config.seed).to(dev))
            for _, model in models
        ],
        config.repeats,
        config.warmup,
        dev,
    )
    by_length: list[dict[int, float]] = [{} for _ in models]
    for n in plot_lengths:
        log(f"latency at sentence length {n}")
        timings = interleaved_timings(
            [call(model, 1, n) for _, model in models], config.repeats, config.warmup, dev
        )
        for d, t in zip(by_length, timings, strict=True):
            d[n] = 1e3 * t.median
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
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
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise GcnnError("--device cuda: no CUDA device is available; use --device cpu")
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
            name, model = load_for_latency(spec, vocab_size, config.device)
            size = (
                f"{model.num_parameters() / 1e6:.1f}M parameters, vocabulary {_vocab_size(model):,}"
            )
            if config.precision == "auto":
                model = fastest_precision(name, model, config, log)
            else:
                dtype = inference_dtype(model, config.precision, config.device)
                model = prepare_for_inference(model, dtype, config.device)
            log(f"{name}: {size}, {DTYPE_NAMES[next(model.parameters()).dtype]}")
            models.append((name, model))
        return measure(models, config, plot_lengths, log)


def fastest_precision(name: str, model: nn.Module, config: LatencyConfig, log) -> nn.Module:
    """`model` prepared in whichever of fp32 and bf16 scores one sentence faster here: each
    model at its best, decided by a short interleaved measurement of the real call."""
    model = model.remove_weight_norm()  # (a parametrized module does not survive deepcopy)
    candidates = {}
    for precision in PRECISIONS:
        dtype = inference_dtype(model, precision, config.device)
        candidates[precision] = prepare_for_inference(copy.deepcopy(model), dtype, config.device)
    sentences = random_sentences(_vocab_size(model), 4, config.sentence_length, config.seed + 1)
    calls = [
        scoring_fn(m, sentences.view(4, 1, -1), device=config.device) for m in candidates.values()
    ]
    timings = interleaved_timings(calls, max(5, config.repeats // 2), config.warmup, config.device)
    seconds = {p: t.median for p, t in zip(candidates, timings, strict=True)}
    best = min(seconds, key=seconds.get)
    log(
        f"{name}: --precision auto picks {best} "
        + ", ".join(f"{p} {1e3 * t:.2f} ms" for p, t in seconds.items())
    )
    return candidates[best]


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


# ----------------------------------------------------------------------------------------------
# Reporting


def markdown_table(results: Sequence[LatencyResult]) -> str:
    """A table in the spirit of the paper's Table 4, then the GCNN/LSTM responsiveness ratios."""
    if not results:
        return ""
    r0 = results[0]
    precisions = ", ".join(dict.fromkeys(f"{r.model} {r.precision}" for r in results))
    tf32 = " (TF32 off for every model)" if r0.device.startswith("cuda") else ""
    lines = [
        f"Scoring {r0.sentence_length}-token sentences on {r0.device}, {precisions}{tf32}, "
        f"{r0.threads} thread(s); median (interquartile range) over repeats after warm-up"
        + (f"; load average {r0.load_average:.1f}." if r0.load_average is not None else "."),
        "",
        "| Model | Params | Throughput (tok/s) | Responsiveness (tok/s) | Latency (ms) "
        "| of which network (ms) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.model} | {r.params / 1e6:.1f}M "
            f"| {r.throughput:,.0f} (B={r.throughput_batch_size}; "
            f"{r.throughput_iqr[0]:,.0f}–{r.throughput_iqr[1]:,.0f}) "
            f"| {r.responsiveness:,.0f} ({r.responsiveness_iqr[0]:,.0f}–"
            f"{r.responsiveness_iqr[1]:,.0f}) "
            f"| {r.latency_ms:.2f} ({r.latency_iqr_ms[0]:.2f}–{r.latency_iqr_ms[1]:.2f}) "
            f"| {r.network_latency_ms:.2f} |"
        )
    gcnns = [r for r in results if r.family == "gcnn"]
    lstms = [r for r in results if r.family == "lstm"]
    if gcnns and lstms:
        lines.append("")
        for g in gcnns:
            for lstm in lstms:
                lines.append(
                    f"GCNN/LSTM: {g.model} vs {lstm.model}: responsiveness "
                    f"{g.responsiveness / lstm.responsiveness:.1f}x, throughput "
                    f"{g.throughput / lstm.throughput:.1f}x, network alone (no softmax) "
                    f"{lstm.network_latency_ms / g.network_latency_ms:.1f}x"
                )
    return "\n".join(lines)


def json_records(results: Sequence[LatencyResult]) -> list[dict]:
    """The --json output: the documented keys first, then details."""
    records = []
    for r in results:
        rec = {
            "model": r.model,
            "params": r.params,
            "throughput": r.throughput,
            "responsiveness": r.responsiveness,
            "latency_ms": r.latency_ms,
        }
        rec.update({k: v for k, v in r.to_json().items() if k not in rec})
        records.append(rec)
    return records


def plot_latency(results: Sequence[LatencyResult], path: str | Path) -> None:
    """Latency against sentence length, one line per model (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise GcnnError(
            f"--plot {path}: matplotlib is not installed; pip install 'gcnn[plot]' or drop --plot"
        ) from err
    path = Path(path)
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        lengths = sorted(r.latency_by_length)
        ax.plot(lengths, [r.latency_by_length[n] for n in lengths], marker="o", label=r.model)
    ax.set_xlabel("sentence length (tokens)")
    ax.set_ylabel("latency to score one sentence (ms)")
    ax.set_title(f"batch 1, {results[0].device}, {results[0].precision}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    from gcnn.data import atomic_write
    from gcnn.errors import writing

    with writing(path, "plot"), atomic_write(path, mode="wb") as f:
        fig.savefig(f, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
