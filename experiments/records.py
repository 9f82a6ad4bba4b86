"""What a record is: one JSON file per finished run, read, written, and the machine it names.

A record (experiments/records/<study>/<run-id>.json) holds a run's settings, seed, budget,
machine, curves and exact perplexities; experiments/runner.py writes it, the report reads it.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import subprocess
import threading
from pathlib import Path

from gcnn.machine import cpu_family_model, cpu_flags, cpu_model

ROOT = Path(__file__).resolve().parent.parent
RECORDS = ROOT / "experiments" / "records"
RUNS = ROOT / "runs" / "experiments"
FORMAT = "gcnn-experiment"


# --- reading ----------------------------------------------------------------------------------


def load_records(root: Path, study: str | None = None) -> list[dict]:
    """Every record under root (or root/study), sorted by path: each one in root/<its study>/.
    A record kept elsewhere for reference (records/recipe/ holds default runs made by another
    recipe or with another thread count) is not one of its study's runs."""
    base = root / study if study else root
    records = []
    for path in sorted(base.rglob("*.json")) if base.is_dir() else []:
        with contextlib.suppress(ValueError, OSError):
            record = json.loads(path.read_text(encoding="utf-8"))
            if (
                isinstance(record, dict)
                and record.get("format") == FORMAT
                and isinstance(record.get("study"), str)
                and path.parent == root / record["study"]
            ):
                records.append(record)
    return records


def test_ppl(record: dict) -> float | None:
    return (record.get("eval") or {}).get("test", {}).get("ppl")


def valid_ppl(record: dict) -> float | None:
    return (record.get("eval") or {}).get("valid", {}).get("ppl")


# --- writing ----------------------------------------------------------------------------------


def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def to_json(data: dict) -> str:
    """One line per key, and per item of a list of points: small diffs, readable in review."""

    def value(v) -> str:
        if isinstance(v, list) and v and isinstance(v[0], dict | list):
            return "[\n  " + ",\n  ".join(json.dumps(item) for item in v) + "\n ]"
        return json.dumps(v)

    return "{\n" + ",\n".join(f" {json.dumps(k)}: {value(v)}" for k, v in data.items()) + "\n}\n"


def relative_paths(value):
    """`value` with every path inside the repository written relative to it: a record names no
    directory of the machine it was made on (train.py runs in the repository, so they resolve)."""
    if isinstance(value, str):
        return value.replace(f"{ROOT}{os.sep}", "").replace(str(ROOT), ".")
    if isinstance(value, list):
        return [relative_paths(v) for v in value]
    if isinstance(value, dict):
        return {k: relative_paths(v) for k, v in value.items()}
    return value


def write_json(path: Path, data: dict) -> None:
    from gcnn.data import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as f:
        f.write(to_json(data))


# --- the machine ------------------------------------------------------------------------------


def machine() -> dict:
    """Where a figure was measured: CPU model and features, cores, torch, threads, GPU."""
    import torch

    info = {
        "cpu": cpu_model(),
        "cpu_kind": cpu_family_model(),  # "family 25 model 17": the model name may not tell
        "cores": os.cpu_count(),
        "cpu_bf16": bool({"avx512_bf16", "amx_bf16"} & set(cpu_flags())),
        "torch": torch.__version__,
        "threads": int(os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads()),
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if commit.returncode == 0:
            info["commit"] = commit.stdout.strip()
    return info


def git_state() -> dict:
    """The commit a run was made from, and whether tracked or new files differed from it (the
    records directory aside: a study writes its records as it goes)."""

    def git(*args: str) -> str | None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(
                ["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10
            )
            if done.returncode == 0:
                return done.stdout.strip()
        return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--", ".", ":(exclude)experiments/records")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


class LoadSampler:
    """The load average through a run: sampled at its start, every `every` seconds on a
    background thread, and at its end. A figure may be called quiet only if the highest sample
    stayed low (experiments/page.py: QUIET)."""

    def __init__(self, every: float = 5.0):
        self.every = every
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def now() -> float | None:
        try:
            return round(os.getloadavg()[0], 2)
        except (AttributeError, OSError):
            return None

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self._add()

    def _add(self) -> None:
        value = self.now()
        if value is not None:
            self.samples.append(value)

    def __enter__(self) -> LoadSampler:
        self._add()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._add()

    def summary(self) -> dict:
        s = self.samples
        if not s:
            return {"start": None, "end": None, "max": None, "samples": 0, "every_s": self.every}
        return {
            "start": s[0],
            "end": s[-1],
            "max": max(s),
            "samples": len(s),
            "every_s": self.every,
        }


def describe_machine(m: dict) -> str:
    threads = m.get("threads")
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    return (
        f"{m.get('cpu', '?')}{', ' + m['cpu_kind'] if m.get('cpu_kind') else ''} "
        f"({m.get('cores', '?')} cores{', bf16' if m.get('cpu_bf16') else ''}),"
        f" torch {m.get('torch', '?')}, {threads} thread{'s' if threads != 1 else ''}{gpu}"
    )
