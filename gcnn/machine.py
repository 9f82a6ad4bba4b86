"""The machine a measurement ran on: its CPU's name, its cores, and how busy others kept it.

Timings taken while other processes compete for the cores are slower, and not by the same factor
for every variant being compared, so a measurement records the load it ran under. The rule, used
by `--precision auto` (gcnn.precision) and by every benchmark (`reported_load`):

    others = (CPU time all processes used − CPU time this process used) / wall time
    busy   = others > BUSY_FRACTION × cores                   (cores this process may run on)

both CPU times taken over the measurement itself (/proc/stat and getrusage), so "others" is the
number of cores other processes kept busy meanwhile. The 1-minute load average is recorded too,
but it cannot decide: it lags by a minute, so right after our own earlier work (a previous
benchmark, the data preparation) it still counts that work as someone else's. Where /proc/stat
is missing the rule falls back to it: others = max(load before, load after − our threads).
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
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


def cpu_family_model() -> str | None:
    """ "family F model M" from /proc/cpuinfo: a VM may name its CPU only "AMD EPYC", which
    covers Zen 4 (family 25 model 17) and Zen 5 (family 26), as different as two machines get."""
    fields = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("cpu family", "model") and key.strip() not in fields:
                    fields[key.strip()] = value.strip()
                if not line.strip():  # the first processor's block is enough
                    break
    except OSError:
        return None
    if "cpu family" not in fields or "model" not in fields:
        return None
    return f"family {fields['cpu family']} model {fields['model']}"


def cpu_flags() -> list[str]:
    """The CPU's bf16 and AMX flags: what decides which fast paths torch can take here."""
    return sorted(f for f in _cpuinfo()[1] if "bf16" in f or f.startswith("amx"))


# Environment variables that cap the instruction sets the kernels may use. With them one CPU
# runs the code paths of an older one (ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI: oneDNN's bf16
# without avx512_bf16, as on a Xeon without it), so they are part of what a timing depends on.
ISA_CAPS = (
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "ATEN_CPU_CAPABILITY",
    "MKL_ENABLE_INSTRUCTIONS",
)


def isa_caps() -> dict[str, str]:
    """The ISA_CAPS set in this process's environment."""
    return {k: os.environ[k] for k in ISA_CAPS if os.environ.get(k)}


def cpu_name() -> str:
    """The CPU model and its bf16-related flags, e.g. "AMD EPYC 9B45 [avx512_bf16]", and any
    instruction-set cap in force ("... {ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI}"): what a timing
    depends on, and the key of what was measured where."""
    flags = " ".join(cpu_flags())
    name = f"{cpu_model()} [{flags}]" if flags else cpu_model()
    caps = ", ".join(f"{k}={v}" for k, v in isa_caps().items())
    return f"{name} {{{caps}}}" if caps else name


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
    others_cpu: float | None = None  # cores' worth of CPU other processes used meanwhile

    @property
    def others(self) -> float | None:
        """How many cores other processes kept busy (None where the OS tells neither)."""
        if self.others_cpu is not None:
            return self.others_cpu
        if self.before is None or self.after is None:
            return None
        return max(0.0, self.before, self.after - self.threads)

    @property
    def busy(self) -> bool:
        return self.others is not None and self.others > BUSY_FRACTION * self.cores

    def describe(self) -> str:
        if self.others is None:
            return f"load unknown, {self.cores} cores"
        others = "" if self.others_cpu is None else f"others used {self.others_cpu:.2f} cores; "
        return (
            f"{others}load average {self.before:.2f} before, {self.after:.2f} after "
            f"on {self.cores} cores"
        )

    def to_json(self) -> dict:
        return {"before": self.before, "after": self.after, "cores": self.cores,
                "threads": self.threads, "others_cpu": self.others_cpu}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict) -> LoadReading:
        others = data.get("others_cpu")
        return cls(
            data.get("before"),
            data.get("after"),
            int(data["cores"]),
            int(data["threads"]),
            None if others is None else float(others),
        )


def busy_cpu_seconds() -> float | None:
    """CPU seconds all processes have used since boot, summed over the cores (/proc/stat: user,
    nice, system, irq, softirq and steal, which a hypervisor's other guests take); None where
    there is no /proc/stat."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """This process's CPU seconds and its finished children's (a benchmark that runs train.py)."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


class LoadMeter:
    """Reads the load around a measurement: `start()`, measure, `stop()`."""

    def start(self) -> LoadMeter:
        self.before = load_average()
        self.busy0, self.own0, self.t0 = busy_cpu_seconds(), own_cpu_seconds(), time.monotonic()
        return self

    def stop(self) -> LoadReading:
        others = None
        wall = time.monotonic() - self.t0
        busy = busy_cpu_seconds()
        if busy is not None and self.busy0 is not None and wall > 0:
            others = max(0.0, (busy - self.busy0) - (own_cpu_seconds() - self.own0)) / wall
        return LoadReading(self.before, load_average(), cores(), own_threads(), others)


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
        others = (
            ""
            if reading.others_cpu is None
            else f"; other processes used {reading.others_cpu:.2f} cores meanwhile"
        )
        print(f"load average after: {_text(reading.after)}{others}", file=out, flush=True)
        if reading.busy:
            print(
                f"warning: other processes kept this machine busy ({reading.others:.2f} cores "
                f"beyond our {reading.threads} thread(s), above half of {reading.cores} cores): "
                "these timings are not reliable; rerun on a quiet machine",
                file=out,
                flush=True,
            )


def run_benchmark(main: Callable[[], int | None]) -> int:
    """Every benchmark's `__main__`: `main` between the two load readings, all inside run_cli,
    so that a closed pipe (`--help | head`) or a bad flag ends in one line at most, the
    readings' own lines included."""
    from gcnn.errors import run_cli

    def measured() -> int | None:
        with reported_load():  # timings mean little if other processes were busy meanwhile
            return main()

    return run_cli(measured)


def _text(load: float | None) -> str:
    return "unknown" if load is None else f"{load:.2f}"
