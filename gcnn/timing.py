"""Timing calls side by side: interleaved rounds, medians and quartiles, device-synchronised."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch


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

    @property
    def spread(self) -> float:
        """(q3 − q1) / median: how much the rounds disagree (0: not at all)."""
        return (self.q3 - self.q1) / self.median if self.median > 0 else 0.0


def synchronizer(device: str | torch.device) -> Callable[[], None]:
    """Wait for the device being measured (the bare torch.cuda.synchronize waits for the
    *current* device only, so timing cuda:1 would time kernel launches)."""
    if torch.device(device).type == "cuda":
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
    calls: Sequence[Callable[[], object]], repeats: int, warmup: int, device: str | torch.device
) -> list[Timing]:
    """Time several calls in rounds (call 0, 1, 2, ..., then again), not one after the other.

    On a shared machine the background load drifts; interleaving spreads it evenly over the
    calls being compared, so their ratio stays meaningful even when absolute times wobble.
    Warm-up calls (kernel selection, oneDNN's JIT, the allocator) are not timed.
    """
    sync = synchronizer(device)
    for fn in calls:
        for _ in range(warmup):
            fn()
    samples: list[list[float]] = [[] for _ in calls]
    for r in range(repeats):
        # rotate who goes first, so no call always runs right after the same neighbour
        for j in range(len(calls)):
            i = (j + r) % len(calls)
            samples[i].append(_timed(calls[i], sync))
    return [Timing.of(s) for s in samples]
