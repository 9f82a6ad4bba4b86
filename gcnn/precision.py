"""`--precision auto`: fp32 or bf16, whichever is faster on the machine at hand, by measurement.

CPU flags do not say which is faster. AVX512-BF16 is present on CPUs where bf16 matrix products
run 8x faster than fp32 (AMX), 2-5x faster (AMD EPYC) and 0.6x as fast (some Xeons without AMX),
and a model's speed also depends on how its own shapes map to the kernels. So "auto" times the
work it is about to do, a few times in each precision, at the model's own shapes, and picks the
faster; the result is cached per machine, torch version, thread count, model and shape, so the
measurement (seconds) is paid once.

On CUDA bf16 is native from compute capability 8.0 (Ampere) and always at least as fast as fp32
there, so no measurement is needed: auto means bf16 on such GPUs, fp32 on older ones.

bf16 stays numerically safe either way: under autocast the adaptive softmax takes its log-softmax
in fp32, and losses are summed in fp32/fp64.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")
CACHE_VERSION = 1


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


def cpu_name() -> str:
    """The CPU model and its bf16-related flags: the key of what was measured where."""
    name, flags = platform.processor() or "unknown", ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    flags = " ".join(sorted(f for f in have if "bf16" in f or f.startswith("amx")))
                    break
    except OSError:
        pass
    return f"{name} [{flags}]" if flags else name


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


def time_interleaved(calls: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds per call, in alternating rounds (drifting load hits each alike)."""
    for fn in calls.values():
        fn()  # warm-up: kernel selection, oneDNN's JIT, allocator
    times: dict[str, list[float]] = {name: [] for name in calls}
    for r in range(rounds):
        names = list(calls) if r % 2 == 0 else list(reversed(calls))
        for name in names:
            start = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


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
) -> dict[str, float]:
    """Seconds per training step ("train") or scoring call ("score") in fp32 and in bf16.

    The model is left as it was: gradients are cleared, and random generators (dropout) are
    restored, so measuring does not change what a seeded run computes.
    """
    make = training_step_fn if mode == "train" else scoring_fn
    was_training = model.training
    model.train(mode == "train")
    devices = [inputs.device] if inputs.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        calls = {p: make(model, inputs, targets, p == "bf16") for p in ("fp32", "bf16")}
        seconds = time_interleaved(calls, rounds)
    model.train(was_training)
    return seconds


def choose_precision(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    mode: str = "train",
    log: Callable[[str], None] | None = None,
) -> str:
    """ "fp32" or "bf16" for running `model` on batches shaped like (inputs, targets).

    CUDA: bf16 where it is native. CPU without a bf16 path: fp32. Otherwise measured (and
    cached; see the module docstring). `inputs`/`targets` are a sample batch on the run's
    device; they are only read.
    """
    device = inputs.device
    if device.type == "cuda":
        return "bf16" if cuda_native_bf16(device) else "fp32"
    if device.type != "cpu" or not cpu_has_bf16():
        return "fp32"
    config = model.config_dict() if hasattr(model, "config_dict") else repr(model)
    what = json.dumps([mode, config, list(inputs.shape)], sort_keys=True, default=str)
    key = machine_key(device, what)
    cache = _load_cache()
    entry = cache.get(key)
    if not (isinstance(entry, dict) and entry.get("choice") in ("fp32", "bf16")):
        seconds = measure_precisions(model, inputs, targets, mode)
        entry = {"choice": min(seconds, key=seconds.get), "seconds": seconds, "cpu": cpu_name()}
        cache[key] = entry
        _save_cache(cache)
        if log is not None:
            f32, b16 = seconds["fp32"], seconds["bf16"]
            log(
                f"--precision auto: {entry['choice']} ({mode} at {tuple(inputs.shape)}: fp32 "
                f"{1e3 * f32:.0f} ms, bf16 {1e3 * b16:.0f} ms on {cpu_name()})"
            )
    return entry["choice"]
