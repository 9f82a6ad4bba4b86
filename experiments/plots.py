"""Plot helpers for the results page: mean curves with bands, error bars, axes, saving."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from stats import mean


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def band(ax, records: list[dict], key: str, color: str, label: str, dashed: bool = False):
    """Mean curve over seeds with a min–max band (x: the mean of `key` at each validation);
    stops where a run diverged. Returns (first mean, last mean, lowest value) for `clip_top`."""
    curves = [r["curve"] for r in records if r.get("curve")]
    if not curves:
        return None
    n = min(len(c) for c in curves)
    xs, ys = [], []
    for i in range(n):
        values = [c[i]["valid_ppl"] for c in curves]
        if not all(v is not None and math.isfinite(v) for v in values):
            break
        xs.append(statistics.mean(c[i][key] for c in curves))
        ys.append(values)
    if not xs:
        return None
    means = [statistics.mean(y) for y in ys]
    ax.plot(xs, means, color=color, label=label, ls="--" if dashed else "-")
    ax.fill_between(xs, [min(y) for y in ys], [max(y) for y in ys], color=color, alpha=0.15)
    return means[0], means[-1], min(min(y) for y in ys)


def clip_top(ax, ends: list) -> None:
    """y limits that show the curves after their first points: the top at the highest first
    point or 3x the median final perplexity, whichever is lower (a diverging run leaves the plot
    at the top). `ends`: what `band` returned."""
    ends = [e for e in ends if e is not None]
    if ends:
        top = min(max(e[0] for e in ends), 3 * statistics.median(e[1] for e in ends))
        ax.set_ylim(0.95 * min(e[2] for e in ends), max(top, 1.05 * min(e[1] for e in ends)))


def errorbars(ax, xs, values, color) -> None:
    means = [mean(v) for v in values]
    lo = [m - min(v) for m, v in zip(means, values, strict=True)]
    hi = [max(v) - m for m, v in zip(means, values, strict=True)]
    ax.errorbar(xs, means, yerr=[lo, hi], color=color, marker="o", capsize=3)


def finish(
    ax, xlabel: str, ylabel: str, title: str, log: bool = False, legend: bool = True
) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    if log:  # plain numbers (50, 60, 100), not 5×10^1
        from matplotlib.ticker import LogFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    ax.grid(alpha=0.3)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
