"""How much memory this process may use, and the one-line refusal of a size that needs more.

Sizes that come from a flag, a config file or a checkpoint are checked here before anything is
allocated: a `--block-size 1000000000` must end in one line naming the limit, not in the kernel's
OOM killer after minutes of swapping. The limit is the smallest of the machine's physical memory,
the control group's memory limit (a container, a batch scheduler) and the address-space limit
(`ulimit -v`, less what the process already maps). Estimates of what a size needs are lower
bounds, so a refusal means "cannot fit", never "might not fit".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gcnn.errors import GcnnError

GB = 1e9


@dataclass(frozen=True)
class MemoryLimit:
    bytes: int
    phrase: str  # the limit in words, "{}" for the amount: "the {} of physical memory here"

    def describe(self) -> str:
        return self.phrase.format(gb(self.bytes))


def gb(n: float) -> str:
    return f"{n / GB:,.1f} GB" if n >= 0.1 * GB else f"{n / 1e6:.1f} MB"


def _physical() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # v1 says "no limit" with a huge number
            return int(text)
    return None


def _address_space() -> int | None:
    """What RLIMIT_AS leaves: the limit less the address space already mapped."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError):
        return None
    if soft == resource.RLIM_INFINITY:
        return None
    mapped = 0
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    mapped = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return max(0, soft - mapped)


def memory_limit() -> MemoryLimit:
    """The most memory this process can hope to allocate (see the module docstring)."""
    found = [
        (value, source)
        for value, source in (
            (_physical(), "the {} of physical memory here"),
            (_cgroup(), "the {} its control group allows"),
            (_address_space(), "the {} the address-space limit (ulimit -v) leaves"),
        )
        if value is not None
    ]
    if not found:
        return MemoryLimit(1 << 62, "any known limit ({})")
    value, source = min(found)
    return MemoryLimit(int(value), source)


def device_memory(device) -> MemoryLimit:
    """The memory of a CUDA device, or `memory_limit()` for the CPU (and anything else)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        total = torch.cuda.get_device_properties(index).total_memory
        return MemoryLimit(int(total), f"the {{}} of {device}")
    return memory_limit()


def require_memory(needed: float, what: str, hint: str, device="cpu") -> None:
    """GcnnError when `what` needs more than the device can hold: `needed` bytes, a lower bound.

    The message: "<what> needs at least N GB, more than the M GB of physical memory here;
    <hint>"."""
    limit = device_memory(device)
    if needed > limit.bytes:
        raise GcnnError(f"{what} needs at least {gb(needed)}, more than {limit.describe()}; {hint}")
