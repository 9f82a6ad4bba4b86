"""The machine a measurement ran on: its CPU's name, its cores, and how busy others kept it.

Timings taken while other processes compete for the cores are slower, and not by the same factor
for every variant being compared, so a measurement records the load it ran under. The rule, used
by `--precision auto` (gcnn.precision) and by every benchmark (`reported_load`):

    others = max(load before, load after − our threads)      (1-minute load averages, ≥ 0)
    busy   = others > BUSY_FRACTION × cores                   (cores this process may run on)

"others" is the load that our own measuring threads do not explain: before we start it is all
someone else's; afterwards our threads (torch.get_num_threads()) account for up to that much of
it. Busy means other processes kept more than half the cores occupied.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from dataclasses import dataclass

BUSY_FRACTION = 0.5


def _cpuinfo() -> tuple[str, set[str]]:
    name, flags = platform.processor() or platform.machine() or "unknown CPU", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return name, flags


def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it, e.g. "AMD EPYC 9B45"."""
    return _cpuinfo()[0]


def cpu_flags() -> list[str]:
    """The CPU's bf16 and AMX flags: what decides which fast paths torch can take here."""
    return sorted(f for f in _cpuinfo()[1] if "bf16" in f or f.startswith("amx"))


def cpu_name() -> str:
    """The CPU model and its bf16-related flags, e.g. "AMD EPYC 9B45 [avx512_bf16]": what a
    timing depends on, and the key of what was measured where."""
    flags = " ".join(cpu_flags())
    return f"{cpu_model()} [{flags}]" if flags else cpu_model()


def cores() -> int:
    """The cores this process may run on (its affinity mask, else all of them)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load_average() -> float | None:
    """The 1-minute load average (runnable threads, machine-wide); None where there is none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def own_threads() -> int:
    """The threads our measured work runs on (torch's intra-op pool), at most the cores."""
    import torch

    return min(torch.get_num_threads(), cores())


@dataclass
class LoadReading:
    """The load a measurement ran under (see the module docstring for `others` and `busy`)."""

    before: float | None  # 1-minute load average before the measurement
    after: float | None  # and after it
    cores: int
    threads: int  # our own threads while measuring

    @property
    def others(self) -> float | None:
        """The load our own threads do not explain (None where the OS gives no load)."""
        if self.before is None or self.after is None:
            return None
        return max(0.0, self.before, self.after - self.threads)

    @property
    def busy(self) -> bool:
        return self.others is not None and self.others > BUSY_FRACTION * self.cores

    def describe(self) -> str:
        if self.others is None:
            return f"load unknown, {self.cores} cores"
        return f"load {self.before:.2f} before, {self.after:.2f} after on {self.cores} cores"

    def to_json(self) -> dict:
        return {"before": self.before, "after": self.after, "cores": self.cores,
                "threads": self.threads}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict) -> LoadReading:
        return cls(data.get("before"), data.get("after"), int(data["cores"]), int(data["threads"]))


class LoadMeter:
    """Reads the load before and after a measurement: `start()`, measure, `stop()`."""

    def start(self) -> LoadMeter:
        self.before = load_average()
        return self

    def stop(self) -> LoadReading:
        return LoadReading(self.before, load_average(), cores(), own_threads())


@contextlib.contextmanager
def reported_load(out=None):
    """Print the load average before and after the block, and warn if others kept the machine
    busy meanwhile (every benchmark runs inside this)."""
    out = out or sys.stdout
    meter = LoadMeter().start()
    print(f"load average before: {_text(meter.before)} ({cores()} cores)", file=out, flush=True)
    try:
        yield
    finally:
        reading = meter.stop()
        print(f"load average after: {_text(reading.after)}", file=out, flush=True)
        if reading.busy:
            print(
                f"warning: other processes kept this machine busy (load {reading.others:.2f} "
                f"beyond our {reading.threads} thread(s), above half of {reading.cores} cores): "
                "these timings are not reliable; rerun on a quiet machine",
                file=out,
                flush=True,
            )


def _text(load: float | None) -> str:
    return "unknown" if load is None else f"{load:.2f}"
