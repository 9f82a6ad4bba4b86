"""Plot helpers for the results page: mean curves with labelled bands, diverged runs, axes.

What a reader of every plot can rely on: the seeds are stated, the shading is labelled (min–max
over seeds), a diverged run is marked where it stopped, no curve is cut off by the axis limits
(the axes cover every point), and no axis uses offset notation.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from gcnn.plotting import pyplot


def seeds_text(records: list[dict]) -> str:
    seeds = sorted({r["seed"] for r in records if r.get("seed") is not None})
    return f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({', '.join(map(str, seeds))})"


def band(
    ax,
    records: list[dict],
    key: str,
    color: str,
    label: str,
    scale: float = 1.0,
    dashed: bool = False,
    since: float = 0.0,
    row: int = 0,
) -> None:
    """The mean validation curve over the runs that finished, shaded min–max over them (x: the
    mean of `key` / scale at each validation, from `since` on); each diverged run marked × where
    it stopped (without a validation: on the top edge, in its own `row` below it)."""
    finished = [r for r in records if r.get("status") == "ok" and r.get("curve")]
    curves = [r["curve"] for r in finished]
    if curves:
        n = min(len(c) for c in curves)
        xs = [statistics.mean(c[i][key] for c in curves) / scale for i in range(n)]
        keep = [i for i in range(n) if xs[i] >= since]
        xs = [xs[i] for i in keep]
        ys = [[c[i]["valid_ppl"] for c in curves] for i in keep]
        name = f"{label} ({len(curves)} seed{'s' if len(curves) != 1 else ''})"
        ax.plot(
            xs,
            [statistics.mean(y) for y in ys],
            color=color,
            label=name,
            ls="--" if dashed else "-",
        )
        if len(curves) > 1:
            ax.fill_between(xs, [min(y) for y in ys], [max(y) for y in ys], color=color, alpha=0.15)
    diverged = [r for r in records if r.get("status") != "ok"]
    for i, r in enumerate(diverged):
        points = [
            p for p in r.get("curve") or [] if p["valid_ppl"] and math.isfinite(p["valid_ppl"])
        ]
        x = points[-1][key] / scale if points else 0.0
        # at its last validation, or (none) on the top edge of the plot: a transform mixing
        # data x with axes y keeps the marker inside whatever the y range is
        kw = {"transform": ax.get_xaxis_transform()} if not points else {}
        y = points[-1]["valid_ppl"] if points else 0.96 - 0.06 * row
        text = f"{label}: diverged ({len(diverged)}/{len(records)} seeds)" if i == 0 else None
        ax.plot([x], [y], "x", color=color, ms=9, mew=2, label=text, **kw)


def valid_label(records: list[dict]) -> str:
    tokens = {(r.get("config") or {}).get("valid_tokens") for r in records if r.get("curve")}
    n = tokens.pop() if len(tokens) == 1 else None
    return f"validation perplexity (first {n:,} tokens)" if n else "validation perplexity"


def plain_ticks():
    """Tick labels as plain numbers (1, 2, 4, 8 rather than 2^0 ... on a log-2 axis)."""
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda x, _: f"{x:g}")


def errorbars(ax, xs, values, color, label=None) -> None:
    """Mean over seeds with min–max bars."""
    means = [statistics.mean(v) for v in values]
    lo = [m - min(v) for m, v in zip(means, values, strict=True)]
    hi = [max(v) - m for m, v in zip(means, values, strict=True)]
    ax.errorbar(xs, means, yerr=[lo, hi], color=color, marker="o", capsize=3, label=label)


def finish(
    ax, xlabel: str, ylabel: str, title: str, log: bool = False, legend: bool = True
) -> None:
    from matplotlib.ticker import LogFormatter, ScalarFormatter

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    if log:  # plain numbers (50, 60, 100), not 5×10^1
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    for axis in (ax.xaxis, ax.yaxis):  # no "+1e3" offsets or "×10^6" multipliers on any axis
        formatter = axis.get_major_formatter()
        if isinstance(formatter, ScalarFormatter):
            formatter.set_useOffset(False)
            formatter.set_scientific(False)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if legend and handles:
        from matplotlib.collections import PolyCollection
        from matplotlib.patches import Patch

        if any(isinstance(c, PolyCollection) for c in ax.collections):  # say what is shaded
            handles.append(Patch(color="grey", alpha=0.25))
            labels.append("shaded: min–max over seeds")
        ax.legend(handles, labels, fontsize=7)


def save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    pyplot().close(fig)
