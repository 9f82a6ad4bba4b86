"""`--precision auto`: the one chooser of fp32 or bf16 (the hardware's rule, else measured).

CPU flags do not say which is faster. AVX512-BF16 is present on CPUs where bf16 matrix products
run 8x faster than fp32 (AMX), 2-5x faster (AMD EPYC) and 0.6x as fast (some Xeons without AMX),
and a model's speed also depends on how its own shapes map to the kernels. So "auto" times the
work it is about to do, a few interleaved rounds in each precision, at the model's own shapes,
and picks the faster. The choice is cached per machine, torch version, thread count, device and
work, but a cache must not be poisoned by one bad measurement (a choice measured while another
process was busy once kept fp32 where bf16 was 1.6x faster, run after run):

- a measurement is trusted only if the machine was quiet (gcnn.machine: other processes kept at
  most half the cores busy, by the load average before and after) and each precision's rounds
  agree (MAX_SPREAD); an untrusted one decides this run but is not cached;
- a cached choice is re-checked at every start (RECHECK_ROUNDS interleaved rounds, a fraction of
  the full measurement) and measured again in full when its winner is now slower than the other
  precision by more than RECHECK_MARGIN.

What was chosen, from where, both timings and the load: `PrecisionChoice.record()`.

On CUDA bf16 is native from compute capability 8.0 (Ampere) and always at least as fast as fp32
there, so no measurement is needed: auto means bf16 on such GPUs, fp32 on older ones. A CPU
without any bf16 path gets fp32.

Every "auto" goes through `choose`: training (`choose_precision(..., "train")`, and
`gcnn.training.distributed.resolve_precision` for what the hardware alone decides), evaluation's
perplexity and score (`choose_precision(..., "score")`) and the latency table (its prepared
inference models, `gcnn.evaluation.latency`). bf16 stays numerically safe either way: under
autocast the adaptive softmax takes its log-softmax in fp32, and losses are summed in fp32/fp64.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from gcnn.machine import LoadMeter, LoadReading, cpu_name
from gcnn.timing import Timing, interleaved_timings

PRECISIONS = ("auto", "fp32", "bf16")
CHOICES = ("fp32", "bf16")
CACHE_VERSION = 2  # 2: entries record their load and spread (version 1's could be poisoned)
# A measurement is trusted (and cached) only if the machine was not busy (gcnn.machine) and each
# precision's rounds agree: (q3 − q1) / median, (max − min) / median under 4 rounds, at most this.
MAX_SPREAD = 0.25
# A cached choice is re-checked at every start with this many interleaved rounds, and measured
# again in full when its winner is now slower than the other precision by more than the margin.
RECHECK_ROUNDS = 2
RECHECK_MARGIN = 0.10

# each precision's work ("fp32", "bf16") timed in `rounds` interleaved rounds
Measure = Callable[[int], dict[str, Timing]]


@dataclass
class Measurement:
    """Both precisions timed in interleaved rounds, and the load they ran under."""

    seconds: dict[str, float]  # median per call
    spread: dict[str, float]  # how much each precision's rounds disagreed (see MAX_SPREAD)
    load: LoadReading

    @property
    def winner(self) -> str:
        return min(CHOICES, key=self.seconds.__getitem__)

    @property
    def untrusted_because(self) -> str | None:
        """Why this measurement must not be cached, or None if it may."""
        if self.load.busy:
            return f"the machine was busy ({self.load.describe()})"
        worst = max(self.spread.values())
        if worst > MAX_SPREAD:
            return f"its rounds disagreed by {100 * worst:.0f}%"
        return None

    @property
    def trusted(self) -> bool:
        return self.untrusted_because is None

    def holds(self, choice: str) -> bool:
        """`choice` is not slower here than the other precision by more than RECHECK_MARGIN."""
        other = CHOICES[1 - CHOICES.index(choice)]
        return self.seconds[choice] <= self.seconds[other] * (1 + RECHECK_MARGIN)

    def times(self) -> str:
        return ", ".join(f"{p} {1e3 * self.seconds[p]:.2f} ms" for p in CHOICES)

    def to_json(self) -> dict:
        return {"seconds": self.seconds, "spread": self.spread, "load": self.load.to_json()}

    @classmethod
    def from_json(cls, data) -> Measurement | None:
        """The measurement a cache entry holds; None for anything malformed."""
        try:
            seconds = {p: float(data["seconds"][p]) for p in CHOICES}
            spread = {p: float(data["spread"][p]) for p in CHOICES}
            return cls(seconds, spread, LoadReading.from_json(data["load"]))
        except (KeyError, TypeError, ValueError, AttributeError):
            return None


def take_measurement(measure: Measure, rounds: int) -> Measurement:
    """Run `measure` between two readings of the machine's load."""
    meter = LoadMeter().start()
    timings = measure(rounds)
    load = meter.stop()
    return Measurement(
        {p: timings[p].median for p in CHOICES}, {p: timings[p].spread for p in CHOICES}, load
    )


@dataclass
class PrecisionChoice:
    """What "auto" chose, how, and the timings it rests on."""

    precision: str  # "fp32" or "bf16"
    # "hardware": no measurement needed; "fresh": measured, nothing cached before; "cache": the
    # cached choice, and this run's re-check agreed; "re-measured": the cached entry was
    # contradicted by the re-check or was not trusted, so it was measured again in full
    source: str
    measurement: Measurement | None = None  # the full measurement: this run's, or the cached one
    recheck: Measurement | None = None  # this run's quick re-check of a cached choice
    cached: bool = False  # this run's measurement was written to the cache

    def record(self) -> dict:
        """Flat plain values: the choice, both timings, the load, where it came from."""
        out: dict = {"precision": self.precision, "source": self.source}
        for name, m in (("", self.measurement), ("recheck_", self.recheck)):
            if m is None:
                continue
            out.update({f"{name}{p}_ms": round(1e3 * m.seconds[p], 4) for p in CHOICES})
            if m.load.others is not None:
                out[f"{name}load_before"] = round(m.load.before, 2)
                out[f"{name}load_after"] = round(m.load.after, 2)
            out[f"{name}trusted"] = m.trusted
        if self.measurement is not None:
            load = self.measurement.load
            out.update(cores=load.cores, threads=load.threads, cached=self.cached)
        return out

    def toml_comment(self) -> str:
        """One TOML comment line for config.toml: `# precision_auto = {...}` (an inline table
        once the "# " is dropped; a comment, so the file stays a valid --config file)."""
        fields = ", ".join(f"{k} = {json.dumps(v)}" for k, v in self.record().items())
        return f"# precision_auto = {{{fields}}}\n"


def cuda_native_bf16(device: torch.device) -> bool:
    """bf16 in hardware on *this* device. torch.cuda.is_bf16_supported() also says yes for
    emulated bf16 (pre-Ampere GPUs, much slower than fp32) and looks at the current device,
    which need not be the run's."""
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def cpu_has_bf16() -> bool:
    """Whether oneDNN has a bf16 path on this CPU at all (AVX512-BF16, AMX, ...)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def hardware_choice(device: torch.device) -> str | None:
    """The precision the hardware alone decides, or None where only a measurement can tell
    (a CPU with bf16 instructions)."""
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if cuda_native_bf16(device) else "fp32"
    if device.type != "cpu" or not cpu_has_bf16():
        return "fp32"
    return None


def available(device: torch.device) -> tuple[str, ...]:
    """The precisions worth timing on `device`: fp32, and bf16 where the hardware has a path
    for it (a CPU without one runs bf16 in reference kernels, far slower than fp32; so does
    a pre-Ampere GPU). What benchmarks compare; auto never picks a precision left out."""
    return ("fp32",) if hardware_choice(device) == "fp32" else CHOICES


# --- the cache -----------------------------------------------------------------------------------


def cache_path() -> Path:
    root = os.environ.get("GCNN_CACHE") or Path.home() / ".cache" / "gcnn"
    return Path(root) / "precision.json"


def machine_key(device: torch.device, what: str) -> str:
    """Everything a measurement depends on: machine, torch, threads, device and the work."""
    parts = [cpu_name(), torch.__version__, str(torch.get_num_threads()), str(device), what]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def _load_cache() -> dict:
    try:
        data = json.loads(cache_path().read_text(encoding="utf-8"))
        return data if data.get("version") == CACHE_VERSION else {"version": CACHE_VERSION}
    except (OSError, ValueError, AttributeError):
        return {"version": CACHE_VERSION}


def _save_cache(data: dict) -> None:
    """Best effort: an unwritable cache only means measuring again next time."""
    from gcnn.data import atomic_write

    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
    except OSError as err:
        warnings.warn(f"could not cache the precision measurement in {path}: {err}", stacklevel=2)


# --- the chooser ---------------------------------------------------------------------------------


def timed_calls(
    calls: dict[str, Callable[[], object]], device: torch.device, warmup: int = 1
) -> Measure:
    """A Measure that times `calls` (one per precision) in interleaved rounds."""

    def measure(rounds: int) -> dict[str, Timing]:
        timings = interleaved_timings(list(calls.values()), rounds, warmup, device)
        return dict(zip(calls, timings, strict=True))

    return measure


def choose(
    device: torch.device,
    work: str,
    measure: Measure,
    log: Callable[[str], None] | None = None,
    rounds: int = 3,
    label: str = "",
    cache: bool = True,
) -> PrecisionChoice:
    """fp32 or bf16 for `work` (a description of what is timed: its kind, model and shapes) on
    `device`: by the hardware where it decides, else by measuring with `measure`.

    A trusted cached choice is re-checked with RECHECK_ROUNDS rounds and kept if it holds;
    otherwise (no entry, an untrusted one, or one the re-check contradicts) both precisions are
    measured in full, and the result is cached only if trusted (a quiet machine, rounds that
    agree). An untrusted measurement still decides this run. `label` names the work in what is
    logged; `cache=False` measures afresh and keeps nothing (a benchmark, whose choice is part
    of what it reports).
    """
    fixed = hardware_choice(device)
    if fixed is not None:
        return PrecisionChoice(fixed, "hardware")
    say = (lambda text: None) if log is None else log
    prefix = f"--precision auto{f' ({label})' if label else ''}"
    key = machine_key(device, work)
    saved = _load_cache() if cache else {}
    entry = saved.get(key)
    held = Measurement.from_json(entry) if isinstance(entry, dict) else None
    source, recheck = ("fresh" if entry is None else "re-measured"), None
    if held is not None and held.trusted and entry.get("choice") == held.winner:
        recheck = take_measurement(measure, RECHECK_ROUNDS)
        if recheck.holds(held.winner):
            say(f"{prefix}: {held.winner} (cached, re-checked: {recheck.times()})")
            return PrecisionChoice(held.winner, "cache", held, recheck)
        say(
            f"{prefix}: the cached {held.winner} no longer holds ({recheck.times()}); "
            "measuring again"
        )
    fresh = take_measurement(measure, rounds)
    stored = cache and fresh.trusted
    if stored:
        saved[key] = {"choice": fresh.winner, "cpu": cpu_name(), **fresh.to_json()}
        _save_cache(saved)
    why = fresh.untrusted_because
    kept = "cached" if stored else f"used for this run only: {why}" if why else "not cached"
    say(
        f"{prefix}: {fresh.winner} ({source}: {fresh.times()} per call on {cpu_name()}; "
        f"{fresh.load.describe()}; {kept})"
    )
    return PrecisionChoice(fresh.winner, source, fresh, recheck, cached=stored)


# --- the model's own work: a training step or a scoring call, under autocast -------------------


def training_step_fn(model, inputs, targets, bf16: bool) -> Callable[[], None]:
    """Forward + backward of the loss, as the trainer runs it (gradients are discarded)."""
    device_type = inputs.device.type
    plan = model.plan(targets)

    def step():
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            nll, count, _ = model.loss(inputs, targets, None, plan)
        (nll / count.clamp(min=1)).backward()
        model.zero_grad(set_to_none=True)

    return step


def scoring_fn(model, inputs, targets, bf16: bool) -> Callable[[], None]:
    """Inference as evaluation runs it: token log-probabilities under autocast."""
    device_type = inputs.device.type
    plan = model.plan(targets)

    def score():
        with torch.inference_mode(), torch.autocast(device_type, torch.bfloat16, enabled=bf16):
            model.token_log_probs(inputs, targets, plan)

    return score


def measure_precisions(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    mode: str = "train",
    rounds: int = 3,
) -> dict[str, Timing]:
    """Time per training step ("train") or scoring call ("score") in fp32 and in bf16.

    The model is left as it was: gradients are cleared, and random generators (dropout) are
    restored, so measuring does not change what a seeded run computes.
    """
    make = training_step_fn if mode == "train" else scoring_fn
    was_training = model.training
    model.train(mode == "train")
    devices = [inputs.device] if inputs.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            calls = {p: make(model, inputs, targets, p == "bf16") for p in CHOICES}
            return timed_calls(calls, inputs.device)(rounds)
    finally:
        model.train(was_training)


def choose_for_model(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    mode: str = "train",
    log: Callable[[str], None] | None = None,
) -> PrecisionChoice:
    """The choice for running `model` on batches shaped like (inputs, targets) under autocast:
    training steps ("train") or scoring ("score"). `inputs`/`targets` are a sample batch on the
    run's device; they are only read."""
    config = model.config_dict() if hasattr(model, "config_dict") else repr(model)
    work = json.dumps([mode, config, list(inputs.shape)], sort_keys=True, default=str)

    def measure(rounds: int) -> dict[str, Timing]:
        return measure_precisions(model, inputs, targets, mode, rounds)

    return choose(inputs.device, work, measure, log, label=f"{mode} at {tuple(inputs.shape)}")


def choose_precision(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    mode: str = "train",
    log: Callable[[str], None] | None = None,
) -> str:
    """ "fp32" or "bf16": `choose_for_model(...).precision` (the trainer's entry point)."""
    return choose_for_model(model, inputs, targets, mode, log).precision
