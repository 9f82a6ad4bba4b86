"""glibc's malloc, told to keep a training step's large blocks instead of returning them.

glibc serves a block above its mmap threshold (128 KB at first, rising with what is freed, to at
most 32 MB) with fresh pages from the kernel and unmaps them on free, and trims the heap's top
when it frees enough. A training step allocates and frees the same large activations every
update (the adaptive softmax's (rows, classes) logits alone are 16-33 MB at the CPU presets), so
each update faults their pages in anew. `benchmarks/malloc_check.sh` times the step both ways.
"""

from __future__ import annotations

import ctypes
import os
import platform

# mallopt's parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest on 64-bit: blocks up to it come from the heap
TOP_PAD = 512 * 2**20  # grow the heap in large steps
TRIM_THRESHOLD = 2**31 - 1  # never give the heap's top back while the run lasts
ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def keep_large_blocks() -> str:
    """Set glibc's thresholds (once per process; later calls change nothing). Returns what was
    done, for the run's log: glibc elsewhere, or a user's own MALLOC_* settings, are left alone."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "malloc: left as is (not glibc)"
    if any(name in os.environ for name in ENV):
        return "malloc: left as is (MALLOC_* set in the environment)"
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return "malloc: left as is (no mallopt)"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (M_TOP_PAD, TOP_PAD),
        (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
    )
    if not all(mallopt(param, value) == 1 for param, value in settings):
        return "malloc: mallopt refused a setting"
    return f"malloc: blocks up to {MMAP_THRESHOLD >> 20} MB kept in the heap, not trimmed"
