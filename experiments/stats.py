"""Statistics over seeds: Student t intervals, paired verdicts, interpolation, the sweep's choice.

A claim "A < B" (A reaches lower perplexity) is judged on the differences B − A paired by seed
(the same seed gives both the same initialisation and batches) with a 95% Student t interval:
it *holds* only where the interval excludes zero on the claimed side, is *the opposite* only
where it excludes zero on the other side, and is otherwise *not separated* - the same rule in
both directions. A diverged run never enters a comparison as a number: a pair with a diverged
side is *not comparable*.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from records import test_ppl, valid_ppl

LEVEL = 0.95  # every interval on the page


# --- Student's t, without scipy ---------------------------------------------------------------


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), by its continued fraction (Lentz)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast only below this point
        return 1.0 - _incomplete_beta(b, a, 1.0 - x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    front = math.exp(log_front + a * math.log(x) + b * math.log1p(-x)) / a
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return front * result


def t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with df degrees of freedom."""
    tail = 0.5 * _incomplete_beta(df / 2, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: int) -> float:
    """The t with P(T <= t) = p (bisection on t_cdf: monotone, 200 halvings are exact enough)."""
    if not 0.0 < p < 1.0 or df < 1:
        raise ValueError(f"t_quantile({p}, {df}): p must be in (0, 1) and df >= 1")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


@dataclass
class Interval:
    """The mean of n values and its two-sided interval (Student t; n = 1: unbounded)."""

    mean: float
    low: float
    high: float
    n: int


def interval(values: list[float], level: float = LEVEL) -> Interval:
    if not values:
        return Interval(math.nan, math.nan, math.nan, 0)
    m = statistics.mean(values)
    if len(values) < 2:
        return Interval(m, -math.inf, math.inf, len(values))
    half = t_quantile(0.5 + level / 2, len(values) - 1) * statistics.stdev(values)
    half /= math.sqrt(len(values))
    return Interval(m, m - half, m + half, len(values))


# --- one side of a comparison: its values by seed, and its diverged seeds ----------------------


@dataclass
class Arm:
    name: str
    values: dict[int, float]  # seed -> metric, runs that finished
    diverged: dict[int, str] = field(default_factory=dict)  # seed -> where and why


def diverged_note(record: dict) -> str:
    """Where and why a run diverged, from its record (older records lack the cause)."""
    info = record.get("diverged") or {}
    update = info.get("update", (record.get("done") or {}).get("updates"))
    cause = info.get("cause") or "cause not recorded"
    where = f"after update {update}" if update else "before its first logged update"
    return f"diverged {where} ({cause})"


def arm(name: str, records: list[dict], metric=test_ppl) -> Arm:
    values, diverged = {}, {}
    for r in records:
        value = metric(r) if r.get("status") == "ok" else None
        if value is None or not math.isfinite(value):
            diverged[r["seed"]] = diverged_note(r)
        else:
            values[r["seed"]] = value
    return Arm(name, values, diverged)


def cell(records: list[dict], metric=test_ppl) -> str:
    """A table cell: mean [95% interval] over the finished seeds, and how many diverged."""
    a = arm("", records, metric)
    n = len(a.values) + len(a.diverged)
    if not a.values:
        return f"diverged ({len(a.diverged)}/{n})" if a.diverged else "–"
    i = interval(list(a.values.values()))
    text = f"{i.mean:.1f}" if i.n == 1 else f"{i.mean:.1f} [{i.low:.1f}, {i.high:.1f}]"
    return text + (f"; diverged {len(a.diverged)}/{n}" if a.diverged else "")


# --- verdicts --------------------------------------------------------------------------------


def verdict(a: Arm, b: Arm, parity: bool = False, unit: str = "ppl") -> str:
    """Is "a < b" (parity: "a ≈ b") what the seeds say? One sentence, ending in the verdict."""
    claim = f"{a.name} {'≈' if parity else '<'} {b.name}"
    seeds = sorted((set(a.values) | set(a.diverged)) & (set(b.values) | set(b.diverged)))
    if not seeds:
        return f"{claim}: no common seeds yet."
    broken = [
        f"{x.name} diverged in {sum(s in x.diverged for s in seeds)}/{len(seeds)} seeds "
        f"({x.diverged[next(s for s in seeds if s in x.diverged)]})"
        for x in (a, b)
        if any(s in x.diverged for s in seeds)
    ]
    if broken:
        return f"{claim}: not comparable: {'; '.join(broken)}."
    i = interval([b.values[s] - a.values[s] for s in seeds])
    digits = decimals(i)
    gap = f"{b.name} − {a.name} = {i.mean:+.{digits}f} {unit}"
    if i.n < 2:
        return f"{claim}: {gap} (one seed: no interval): not separated."
    gap += f", 95% interval [{i.low:+.{digits}f}, {i.high:+.{digits}f}] over {i.n} paired seeds"
    if i.low > 0:
        outcome = f"{a.name} < {b.name}" if parity else "holds"
    elif i.high < 0:
        outcome = f"{b.name} < {a.name}" if parity else f"the opposite ({b.name} < {a.name})"
    else:
        outcome = "not separated"
    if parity:
        outcome = "consistent (not separated)" if outcome == "not separated" else f"no: {outcome}"
    return f"{claim}: {gap}: {outcome}."


def decimals(i: Interval) -> int:
    """Enough decimals that a small gap and its interval do not all print as 0.0."""
    half = (i.high - i.low) / 2 if math.isfinite(i.high - i.low) else abs(i.mean)
    if not half or not math.isfinite(half):
        return 1
    return min(4, max(1, 1 - math.floor(math.log10(half))))


def interp_log(x: float, xs: list[float], ys: list[float]) -> float:
    """Perplexity at x by linear interpolation of log-perplexity (clamped at the ends)."""
    if x <= xs[0]:
        return ys[0]
    for i in range(1, len(xs)):
        if x <= xs[i]:
            t = (x - xs[i - 1]) / max(xs[i] - xs[i - 1], 1e-12)
            return math.exp((1 - t) * math.log(ys[i - 1]) + t * math.log(ys[i]))
    return ys[-1]


def mean(values: list[float]) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.mean(values) if values else math.nan


def best_lr(sweep: list[dict]) -> float | None:
    """The learning rate a sweep chose: the lowest exact validation perplexity among its records
    (a diverged or unevaluated run counts as worst; a tie goes to the smaller lr). The one rule
    for every sweep, used when planning the runs and when reporting them. None: no records."""
    scored = [(_score(r), lr_of(r)) for r in sweep]
    return min(scored)[1] if scored else None


def lr_of(record: dict) -> float:
    """The run's learning rate: as its study named it, else as train.py resolved it."""
    return record["info"].get("lr") or record["config"]["lr"]


def _score(record: dict) -> float:
    value = valid_ppl(record) if record.get("status") == "ok" else None
    return math.inf if value is None else value
