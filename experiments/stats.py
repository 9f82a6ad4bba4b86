"""Statistics over seeds: spreads, paired comparisons, interpolation, and the sweep's choice."""

from __future__ import annotations

import math
import statistics

from records import test_ppl, valid_ppl


def spread(values: list[float]) -> str:
    """mean ± std (min–max) over seeds; a single value as it is."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    mean, std = statistics.mean(values), statistics.stdev(values)
    return f"{mean:.1f} ± {std:.1f} ({min(values):.1f}–{max(values):.1f})"


def mean(values: list[float]) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.mean(values) if values else math.nan


def by_seed(records: list[dict], metric=test_ppl) -> dict[int, float]:
    """{seed: metric}; a diverged run counts as infinitely bad."""
    out = {}
    for r in records:
        value = metric(r) if r.get("status") == "ok" else math.inf
        out[r["seed"]] = math.inf if value is None else value
    return out


def compare(name_a: str, a: dict[int, float], name_b: str, b: dict[int, float]) -> str:
    """Does a < b hold? Paired by seed (same initialisation seed and batch order)."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return f"{name_a} vs {name_b}: no common seeds yet."
    gaps = [b[s] - a[s] for s in seeds]
    wins, n = sum(g > 0 for g in gaps), len(seeds)
    finite = [g for g in gaps if math.isfinite(g)]
    gap = ""
    if finite:
        std = f" ± {statistics.stdev(finite):.1f}" if len(finite) > 1 else ""
        gap = f", gap {statistics.mean(finite):+.1f}{std} ppl"
    diverged = n - len(finite)
    if diverged:
        gap += f" ({diverged} seed(s) diverged)"
    separated = max(a[s] for s in seeds) < min(b[s] for s in seeds)
    if wins == n and separated and n > 1:
        verdict = "holds: every seed, and the seed ranges do not overlap"
    elif wins == n and n > 1:
        verdict = "holds in every seed, but the seed ranges overlap"
    elif wins == n:
        verdict = "holds in the one seed run (no spread to judge by)"
    elif wins == 0:
        verdict = "does not hold: the opposite in every seed"
    else:
        verdict = "not separated at this scale"
    return f"{name_a} < {name_b} in {wins}/{n} seeds{gap}: {verdict}."


def interp_log(x: float, xs: list[float], ys: list[float]) -> float:
    """Perplexity at x by linear interpolation of log-perplexity (clamped at the ends)."""
    if x <= xs[0]:
        return ys[0]
    for i in range(1, len(xs)):
        if x <= xs[i]:
            t = (x - xs[i - 1]) / max(xs[i] - xs[i - 1], 1e-12)
            return math.exp((1 - t) * math.log(ys[i - 1]) + t * math.log(ys[i]))
    return ys[-1]


def best_lr(sweep: list[dict]) -> float | None:
    """The learning rate a sweep chose: the lowest exact validation perplexity among its records
    (a diverged or unevaluated run counts as worst; a tie goes to the smaller lr). The one rule
    for every sweep, used when planning the runs and when reporting them. None: no records."""
    scored = [(by_seed([r], valid_ppl)[r["seed"]], r["info"]["lr"]) for r in sweep]
    return min(scored)[1] if scored else None
