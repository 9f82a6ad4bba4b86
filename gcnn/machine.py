"""The machine a measurement ran on: its CPU's name."""

from __future__ import annotations

import platform


def cpu_name() -> str:
    """The CPU model and its bf16-related flags, e.g. "AMD EPYC 9B45 [avx512_bf16]": what a
    timing depends on, and the key of what was measured where."""
    name, flags = platform.processor() or platform.machine() or "unknown CPU", ""
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
