"""Can `--precision auto` be poisoned here? python benchmarks/precision_check.py [--json FILE]

Three measurements of gcnn-small's training step at the default batch (16 x (18 + 256)), each
with its own empty cache directory, so nothing from earlier runs takes part:

1. quiet: what auto picks, and whether it caches it;
2. busy: the same while COMPETITORS processes spin on the cores (as when another job runs
   beside a training run): the choice must decide that run only and not be cached;
3. poisoned: a cache entry claiming the other precision (what a busy moment used to leave
   behind), written as if trusted; auto's re-check at start must notice it no longer holds,
   measure again, and replace the entry with the quiet winner.

Run it on a quiet machine: case 1 and 3 are about what a quiet machine concludes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
from pathlib import Path

import torch

from gcnn import precision
from gcnn.errors import GcnnError
from gcnn.machine import cpu_name, run_benchmark
from gcnn.models import build_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import zipf_tokens  # noqa: E402


def spin(seconds: float) -> None:
    import signal
    import time

    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's handler is inherited by fork
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def batch(vocab_size: int):
    torch.manual_seed(0)
    model = build_model("gcnn-small", vocab_size)
    context = model.receptive_field - 1
    inputs = zipf_tokens(vocab_size, (16, context + 256), seed=0)
    targets = zipf_tokens(vocab_size, (16, context + 256), seed=1)
    targets[:, :context] = -100
    return model, inputs, targets


def choose_in(cache_dir: str, model, inputs, targets) -> dict:
    os.environ["GCNN_CACHE"] = cache_dir
    lines: list[str] = []
    choice = precision.choose_for_model(model, inputs, targets, "train", lines.append)
    for line in lines:
        print("  " + line, flush=True)
    return {**choice.record(), "log": lines}


def poison(cache_dir: str, quiet: dict) -> str:
    """Rewrite the quiet measurement's entry with the two precisions' timings swapped, as a
    trusted entry for the slower precision."""
    path = Path(cache_dir) / "precision.json"
    if not path.exists():
        raise GcnnError(
            "the quiet measurement was not cached (was the machine busy?): rerun quietly"
        )
    data = json.loads(path.read_text())
    (key, entry), *_ = [(k, v) for k, v in data.items() if k != "version"]
    fp32, bf16 = entry["seconds"]["fp32"], entry["seconds"]["bf16"]
    entry["seconds"] = {"fp32": bf16, "bf16": fp32}
    entry["choice"] = "fp32" if quiet["precision"] == "bf16" else "bf16"
    path.write_text(json.dumps(data))
    return entry["choice"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--competitors", type=int, default=2, help="spinning processes in case 2")
    parser.add_argument("--json", type=Path, help="write the three cases here")
    args = parser.parse_args(argv)
    if not 1 <= args.competitors <= 64:
        raise GcnnError("--competitors must be in 1..64")
    print(f"{cpu_name()}; torch {torch.__version__}; {torch.get_num_threads()} threads")
    result = {"cpu": cpu_name(), "threads": torch.get_num_threads()}
    if not precision.cpu_has_bf16():
        # nothing is measured, so nothing can be poisoned: the hardware's rule decides
        print("this CPU has no bf16 path: auto picks fp32 without measuring or caching")
        write_json(args.json, result | {"hardware": precision.hardware_choice(torch.device("cpu"))})
        return 0
    model, inputs, targets = batch(33_278)
    with tempfile.TemporaryDirectory() as quiet_dir, tempfile.TemporaryDirectory() as busy_dir:
        print("1. quiet:", flush=True)
        result["quiet"] = choose_in(quiet_dir, model, inputs, targets)
        print(f"2. busy ({args.competitors} spinning processes):", flush=True)
        procs = [
            multiprocessing.Process(target=spin, args=(600.0,)) for _ in range(args.competitors)
        ]
        for p in procs:
            p.start()
        try:
            spin(20.0)  # let the 1-minute load average see them
            result["busy"] = choose_in(busy_dir, model, inputs, targets)
        finally:
            for p in procs:
                p.terminate()
                p.join()
        result["busy"]["cache_written"] = (Path(busy_dir) / "precision.json").exists()
        print("3. poisoned cache entry:", flush=True)
        result["poisoned_with"] = poison(quiet_dir, result["quiet"])
        result["poisoned"] = choose_in(quiet_dir, model, inputs, targets)
        entry = json.loads((Path(quiet_dir) / "precision.json").read_text())
        result["cache_after"] = [v["choice"] for k, v in entry.items() if k != "version"]
    ok = (
        not result["busy"]["cached"]
        and not result["busy"]["cache_written"]
        and result["poisoned"]["precision"] == result["quiet"]["precision"]
        and result["cache_after"] == [result["quiet"]["precision"]]
    )
    print(
        f"quiet: {result['quiet']['precision']} (cached {result['quiet']['cached']}); busy: "
        f"{result['busy']['precision']} (cached {result['busy']['cached']}); poisoned with "
        f"{result['poisoned_with']}: {result['poisoned']['precision']} "
        f"({result['poisoned']['source']}), cache now {result['cache_after']}: "
        + ("the cache was not poisoned" if ok else "NOT AS EXPECTED")
    )
    write_json(args.json, result)
    return 0 if ok else 1


def write_json(path: Path | None, result: dict) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    raise SystemExit(run_benchmark(main))
