"""docs/results.md from the records of experiments/run.py: tables, plots and computed verdicts.

    python experiments/report.py                 # docs/results.md + docs/img/*.png
    python experiments/report.py --no-plots      # tables only (no matplotlib needed)
    python experiments/report.py --records experiments/records/wt103 --out docs/results-wt103.md

Every number on the page comes from a record; every sentence saying whether one of the paper's
claims holds is computed from them (seeds paired: same seed, same initialisation and batches).
Plots need matplotlib (`pip install 'gcnn[plot]'`); without it the command stops with an error
unless --no-plots is given, which leaves the plots out of the page.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from runner import NAMES, ROOT, Parser, describe_machine, load_records  # noqa: E402

from gcnn.errors import GcnnError, run_cli  # noqa: E402

RUN = "python experiments/run.py"

# The paper's figures (PAPER.md; ≈: read off plots).
PAPER = {
    "gating": {
        "glu": "≈47 (WT103) / ≈41 (GBW)",
        "gtu": "≈51.3 (WT103)",
        "relu": "≈51 (WT103)",
        "tanh": "≈67 (WT103)",
        "bilinear": "≈61 (GBW)",
        "linear": "≈115 (GBW)",
    },
    "norm": {
        "both": "≈67 / 58 / 51",
        "clipping-only": "≈90 / 72 / 59.5 (without weight norm)",
        "weight-norm-only": "≈127 / 98 / 80 (without clipping)",
        "neither": "–",
    },
}


# --- numbers -------------------------------------------------------------------------------------


def test_ppl(record: dict) -> float | None:
    return (record.get("eval") or {}).get("test", {}).get("ppl")


def valid_ppl(record: dict) -> float | None:
    return (record.get("eval") or {}).get("valid", {}).get("ppl")


def spread(values: list[float]) -> str:
    """mean ± std (min–max) over seeds; a single value as it is."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    mean, std = statistics.mean(values), statistics.stdev(values)
    return f"{mean:.1f} ± {std:.1f} ({min(values):.1f}–{max(values):.1f})"


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


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


def group(records: list[dict], key="variant") -> dict:
    """{key: records}; `key` names a record field or is a function of the record."""
    out: dict = defaultdict(list)
    for r in records:
        out[key(r) if callable(key) else r[key]].append(r)
    return dict(out)


def params(records: list[dict]) -> str:
    counts = sorted({r["model"]["params"] for r in records if r.get("model")})
    return " / ".join(f"{c / 1e6:.2f}M" if c >= 1e5 else f"{c:,}" for c in counts) or "–"


# --- page pieces ---------------------------------------------------------------------------------


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    align = ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def machines(records: list[dict]) -> str:
    described = sorted({describe_machine(r["machine"]) for r in records if r.get("machine")})
    precisions = sorted({r["config"]["precision"] for r in records if r.get("config")})
    text = "; ".join(described) or "–"
    return text + (f"; training precision {', '.join(precisions)}" if precisions else "")


def budget(records: list[dict]) -> str:
    trained = [r for r in records if r.get("done")]
    if not trained:
        return "–"
    r0 = trained[0]
    c = r0["config"]
    limits = []
    if c.get("max_updates"):
        limits.append(f"{c['max_updates']} updates")
    if c.get("max_minutes"):
        limits.append(f"{c['max_minutes']:g} minutes")
    if c.get("max_epochs"):
        limits.append(f"{c['max_epochs']} epochs")
    tokens = statistics.median(r["done"]["tokens"] for r in trained)
    epochs = statistics.median((r["done"]["epochs"] or 0) for r in trained)
    minutes = statistics.median(r["wall_s"] for r in trained) / 60
    valid = c.get("valid_tokens")
    evals = r0.get("eval") or {}
    counts = ", ".join(f"{v['tokens']:,} {k}" for k, v in evals.items())
    return (
        f"{' or '.join(limits) or 'train.py defaults'} of {c['tokens_per_batch']:,} tokens per run "
        f"(median {tokens / 1e6:.2f}M tokens, {epochs:.2f} epochs; {minutes:.1f} min per run with "
        f"its evaluation), {plural(len(trained), 'run')}; curves on "
        f"{f'the first {valid:,}' if valid else 'all'} validation tokens, final figures exact on "
        f"every token ({counts or 'no evaluation'})"
    )


def section_head(title: str, claim: str, records: list[dict], here: str, full: str) -> list[str]:
    return [
        f"## {title}",
        "",
        f"**Paper:** {claim}",
        "",
        f"- Command (as run here): `{here}`",
        f"- Full scale (WikiText-103, the paper's preset, GPUs): `{full}`",
        f"- Budget: {budget(records)}.",
        f"- Machine: {machines(records)}.",
        "",
    ]


def no_records(title: str, command: str) -> list[str]:
    return [f"## {title}", "", f"No records yet: run `{command}`.", ""]


def image(name: str, paths: dict) -> list[str]:
    if name not in paths:
        return []
    return [f"![{name}]({paths[name]})", ""]


# --- 1. gating -----------------------------------------------------------------------------------

GATING_ORDER = ["glu", "gtu", "bilinear", "relu", "tanh", "linear"]
GATING_CLAIMS = [  # (better, worse, figure)
    ("glu", "gtu", "Fig. 3"),
    ("glu", "relu", "Fig. 3"),
    ("glu", "tanh", "Fig. 3"),
    ("relu", "tanh", "Fig. 3"),
    ("gtu", "tanh", "Fig. 3"),
    ("glu", "bilinear", "Fig. 5"),
    ("bilinear", "linear", "Fig. 5"),
]


def section_gating(records: list[dict], plots: dict) -> list[str]:
    title = "1. Gating (paper Fig. 3, Fig. 5)"
    if not records:
        return no_records(title, f"{RUN} gating")
    lines = section_head(
        title,
        "gating matters: on WikiText-103 after 35 epochs GLU ≈47 < ReLU ≈51 ≈ GTU ≈51.3 < Tanh "
        "≈67 test perplexity (Fig. 3); on Google Billion Word GLU ≈41 < bilinear ≈61 < linear ≈115 "
        "(Fig. 5).",
        records,
        f"{RUN} gating",
        f"{RUN} gating --data wikitext-103 --model gcnn-8 --max-epochs 35 "
        "--records experiments/records/wt103",
    )
    groups = group(records)
    order = [v for g in GATING_ORDER for v in (g, f"{g}-unmatched") if v in groups]
    rows = []
    for v in order:
        rs = groups[v]
        gating = rs[0]["info"].get("gating", v)
        rows.append(
            [
                rs[0]["label"],
                params(rs),
                spread([valid_ppl(r) for r in rs]),
                spread([test_ppl(r) for r in rs]),
                PAPER["gating"].get(gating, "–") if not v.endswith("-unmatched") else "",
            ]
        )
    lines += table(["variant", "params", "valid ppl", "test ppl", "paper (test)"], rows)
    lines += [
        "",
        "Test perplexity, exact; mean ± std (min–max) over seeds. Ungated convolutions have c "
        "outputs where gated ones have 2c: the matched rows widen every layer by √2 (the "
        "`match_params` model option, on by default), the *preset width* rows do not.",
        "",
    ]
    seeds = {v: by_seed(rs) for v, rs in groups.items()}
    for a, b, fig in GATING_CLAIMS:
        if a in seeds and b in seeds:
            lines.append(f"- {fig}: {compare(NAMES[a], seeds[a], NAMES[b], seeds[b])}")
    for g in ("relu", "tanh", "linear"):
        if g in seeds and f"{g}-unmatched" in seeds:
            matched, unmatched = f"{NAMES[g]} (matched)", f"{NAMES[g]} (preset width)"
            verdict = compare(matched, seeds[g], unmatched, seeds[f"{g}-unmatched"])
            lines.append(f"- Parameters: {verdict}")
    lines.append("")
    return lines + image("gating", plots)


def plot_gating(records: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups = group(records)
    finals = []
    for i, v in enumerate(g for g in GATING_ORDER if g in groups):
        color = f"C{i}"
        finals.append(band(ax, groups[v], "update", color, NAMES[v]))
        if f"{v}-unmatched" in groups:
            band(
                ax,
                groups[f"{v}-unmatched"],
                "update",
                color,
                f"{NAMES[v]} (preset width)",
                dashed=True,
            )
    finish(ax, "update", "validation perplexity (subset)", "Gating: mean and min–max over seeds")
    clip_top(ax, finals)
    save(fig, path)


# --- 2. weight normalisation and clipping --------------------------------------------------------

NORM_ORDER = ["both", "weight-norm-only", "clipping-only", "neither"]


def norm_sweep(records: list[dict]) -> tuple[list[dict], float | None]:
    """The NAG sweep (seed 1, weight norm + clipping) by lr, and the lr it chose."""
    sweep = [
        r
        for r in records
        if r["info"].get("optimizer") == "nag" and r["info"]["variant"] == "both" and r["seed"] == 1
    ]
    sweep.sort(key=lambda r: r["info"]["lr"])
    scored = [(by_seed([r], valid_ppl)[1], r["info"]["lr"]) for r in sweep]
    return sweep, min(scored)[1] if scored else None


def norm_runs(records: list[dict], optimizer: str, lr: float | None) -> dict[str, list[dict]]:
    """{variant: records} of one optimizer (NAG: at the chosen lr), in NORM_ORDER."""
    runs = [r for r in records if r["info"].get("optimizer") == optimizer]
    if optimizer == "nag":
        runs = [r for r in runs if r["info"].get("lr") == lr]
    groups = group(runs, key=lambda r: r["info"]["variant"])
    return {v: groups[v] for v in NORM_ORDER if v in groups}


def section_norm(records: list[dict], plots: dict) -> list[str]:
    title = "2. Weight normalization and gradient clipping (paper Fig. 6)"
    if not records:
        return no_records(title, f"{RUN} norm")
    lines = section_head(
        title,
        "with Nesterov momentum 0.99 and clipping at 0.1, both help: on Google Billion Word, "
        "perplexity at 40k / 80k / 160k updates is ≈67 / 58 / 51 with both, ≈90 / 72 / 59.5 "
        "without weight normalization and ≈127 / 98 / 80 without clipping (Fig. 6).",
        records,
        f"{RUN} norm",
        f"{RUN} norm --data wikitext-103 --model gcnn-8 --max-updates 160000 --nag-lrs 1,2 "
        "--records experiments/records/wt103",
    )
    sweep, best = norm_sweep(records)
    if sweep:
        rows = [
            [
                f"{r['info']['lr']:g}",
                r["status"],
                spread([valid_ppl(r)]),
                "chosen" if r["info"]["lr"] == best else "",
            ]
            for r in sweep
        ]
        lines += [
            "NAG learning-rate sweep (weight norm + clipping, seed 1, the same budget; chosen by "
            "exact validation perplexity):",
            "",
        ]
        lines += table(["lr", "status", "valid ppl", ""], rows) + [""]
        warning = edge_warning("NAG", best, [r["info"]["lr"] for r in sweep])
        lines += warning + ([""] if warning else [])
    for optimizer, name in (
        ("nag", "NAG (momentum 0.99, clip 0.1)"),
        ("adamw", "AdamW (the small presets' recipe, clip 1.0)"),
    ):
        by_variant = norm_runs(records, optimizer, best)
        if not by_variant:
            continue
        rows = []
        for v, g in by_variant.items():
            diverged = sum(r.get("status") != "ok" for r in g)
            rows.append(
                [
                    v.replace("-", " "),
                    spread([valid_ppl(r) for r in g]),
                    spread([test_ppl(r) for r in g]),
                    f"{diverged}/{len(g)}",
                    PAPER["norm"][v] if optimizer == "nag" else "",
                ]
            )
        lr = f", lr {best:g}" if optimizer == "nag" and best is not None else ""
        lines += [f"**{name}{lr}**", ""]
        lines += table(
            ["variant", "valid ppl", "test ppl", "diverged", "paper (GBW, 40k/80k/160k)"], rows
        )
        lines.append("")
        seeds = {v: by_seed(g) for v, g in by_variant.items()}
        for better, worse, what in (
            ("both", "clipping-only", "weight normalization helps"),
            ("both", "weight-norm-only", "clipping helps"),
            ("both", "neither", "the two together help"),
        ):
            if better in seeds and worse in seeds:
                lines.append(
                    f"- {name.split(' ')[0]}, {what}: "
                    + compare(better, seeds[better], worse, seeds[worse])
                )
        lines.append("")
    return lines + image("norm", plots)


def plot_norm(records: list[dict], path: Path) -> None:
    plt = pyplot()
    _, best = norm_sweep(records)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, optimizer in zip(axes, ("nag", "adamw"), strict=True):
        finals = []
        for v, runs in norm_runs(records, optimizer, best).items():
            color = f"C{NORM_ORDER.index(v)}"
            finals.append(band(ax, runs, "update", color, v.replace("-", " ")))
        name = f"NAG, lr {best:g}" if optimizer == "nag" and best is not None else "AdamW"
        finish(ax, "update", "validation perplexity (subset)", name, log=True)
        clip_top(ax, finals)
    save(fig, path)


# --- 3. context ----------------------------------------------------------------------------------


def section_context(records: list[dict], plots: dict) -> list[str]:
    title = "3. Context size (paper Fig. 4)"
    if not records:
        return no_records(title, f"{RUN} context")
    lines = section_head(
        title,
        "perplexity falls as the context grows, with quickly diminishing returns beyond ≈20 "
        "tokens; short contexts hurt WikiText-103 much more than Google Billion Word (Fig. 4).",
        records,
        f"{RUN} context",
        f"{RUN} context --data wikitext-103 --model gcnn-8 --max-epochs 35 "
        "--records experiments/records/wt103",
    )
    groups = sorted(group(records).values(), key=lambda g: g[0]["info"]["receptive_field"])
    rows = [
        [
            f"{g[0]['info']['kernel']}",
            f"{g[0]['info']['receptive_field']}",
            params(g),
            spread([valid_ppl(r) for r in g]),
            spread([test_ppl(r) for r in g]),
        ]
        for g in groups
    ]
    lines += [
        "**(a) Models trained with different receptive fields** (same depth, widths scaled to "
        "keep the convolutions' parameters):",
        "",
    ]
    lines += table(["kernel", "receptive field", "params", "valid ppl", "test ppl"], rows) + [""]
    for small, large in zip(groups, groups[1:], strict=False):
        fs, fl = small[0]["info"]["receptive_field"], large[0]["info"]["receptive_field"]
        lines.append(
            f"- Receptive field {fl} vs {fs}: "
            + compare(f"field {fl}", by_seed(large), f"field {fs}", by_seed(small))
        )
    lines.append("")
    base = [r for r in records if r.get("context_curve")]
    if base:
        tokens = base[0].get("context_tokens") or 0
        histories = sorted({p["history"] for r in base for p in r["context_curve"]})
        per = {
            h: [next(p["ppl"] for p in r["context_curve"] if p["history"] == h) for r in base]
            for h in histories
        }
        where = f"the first {tokens:,} test tokens" if tokens else "every test token"
        lines += [
            f"**(b) One model (the preset, {plural(len(base), 'seed')}) scored with its history "
            f"cut to k tokens** (exact: every token sees exactly k previous tokens; {where}):",
            "",
        ]
        lines += table(["history k", "test ppl"], [[str(h), spread(per[h])] for h in histories]) + [
            ""
        ]
        steps = []
        for h0, h1 in zip(histories, histories[1:], strict=False):
            gain = mean(per[h0]) - mean(per[h1])
            steps.append(f"{h0}→{h1}: −{gain:.1f}" if gain >= 0 else f"{h0}→{h1}: +{-gain:.1f}")
        if steps:
            first = mean(per[histories[0]]) - mean(per[histories[1]]) if len(histories) > 1 else 0
            last = mean(per[histories[-2]]) - mean(per[histories[-1]]) if len(histories) > 1 else 0
            verdict = (
                "returns fall off with context, as in the paper"
                if first > last
                else "returns do not fall off here"
            )
            monotone = all(
                mean(per[a]) > mean(per[b]) for a, b in zip(histories, histories[1:], strict=False)
            )
            helps = "every extra token of history helps" if monotone else "not every step helps"
            lines.append(
                f"- Perplexity change per step of history (mean over seeds): {', '.join(steps)} "
                f"ppl; {helps}, and {verdict}."
            )
            lines.append("")
    return lines + image("context", plots)


def plot_context(records: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    groups = sorted(group(records).values(), key=lambda g: g[0]["info"]["receptive_field"])
    xs = [g[0]["info"]["receptive_field"] for g in groups]
    errorbars(axes[0], xs, [[test_ppl(r) for r in g] for g in groups], "C0")
    finish(
        axes[0],
        "receptive field (tokens)",
        "test perplexity",
        "(a) trained with this receptive field",
        legend=False,
    )
    base = [r for r in records if r.get("context_curve")]
    if base:
        histories = sorted({p["history"] for r in base for p in r["context_curve"]})
        values = [
            [next(p["ppl"] for p in r["context_curve"] if p["history"] == h) for r in base]
            for h in histories
        ]
        errorbars(axes[1], histories, values, "C1")
        axes[1].set_xscale("log", base=2)
    finish(
        axes[1],
        "history k (tokens)",
        "test perplexity (subset)",
        "(b) one model, history cut to k",
        legend=False,
    )
    save(fig, path)


# --- 4. GCNN against LSTM ------------------------------------------------------------------------


def lstm_choice(records: list[dict]) -> dict[str, float]:
    """{family: lr} with the best exact validation perplexity among the seed-1 sweep runs."""
    best = {}
    for family in ("gcnn", "lstm"):
        sweep = [r for r in records if r["info"]["family"] == family and r["seed"] == 1]
        scored = [
            (
                valid_ppl(r) if r.get("status") == "ok" and valid_ppl(r) else math.inf,
                r["info"]["lr"],
            )
            for r in sweep
        ]
        if scored:
            best[family] = min(scored)[1]
    return best


def edge_warning(name: str, chosen: float | None, swept: list[float]) -> list[str]:
    """A sweep whose best value is its largest or smallest has not found the optimum."""
    if chosen is None or len(set(swept)) < 2 or min(swept) < chosen < max(swept):
        return []
    side = "largest" if chosen == max(swept) else "smallest"
    return [
        f"- {name}: the chosen lr {chosen:g} is the {side} swept; a wider sweep could change "
        "the comparison.",
    ]


def lstm_main(records: list[dict]) -> dict[str, list[dict]]:
    best = lstm_choice(records)
    return {
        f: [r for r in records if r["info"]["family"] == f and r["info"]["lr"] == lr]
        for f, lr in best.items()
    }


def at_common(main: dict[str, list[dict]], key: str) -> tuple[float, dict[str, dict[int, float]]]:
    """The largest x every run reached, and each run's (interpolated) valid ppl there."""
    ends = [r["curve"][-1][key] for rs in main.values() for r in rs if r.get("curve")]
    if not ends:
        return math.nan, {}
    x = min(ends)
    return x, {
        f: {
            r["seed"]: interp_log(
                x, [p[key] for p in r["curve"]], [p["valid_ppl"] for p in r["curve"]]
            )
            for r in rs
            if r.get("curve")
        }
        for f, rs in main.items()
    }


def section_lstm(records: list[dict], plots: dict) -> list[str]:
    title = "4. GCNN against LSTM (paper Tables 2–3, Fig. 2)"
    if not records:
        return no_records(title, f"{RUN} lstm")
    lines = section_head(
        title,
        "GCNNs beat LSTMs of comparable size: WikiText-103 test perplexity LSTM-1024 48.7, "
        "GCNN-8 44.9, GCNN-14 37.2 (Table 2); Google Billion Word LSTM-2048 43.9 vs GCNN-13 38.1 "
        "(Table 3); and they get there with less computation.",
        records,
        f"{RUN} lstm",
        f"{RUN} lstm --data wikitext-103 --model gcnn-8 --lstm-model lstm-1024 --max-epochs 35 "
        "--lrs 0.5,1,2 --records experiments/records/wt103",
    )
    best = lstm_choice(records)
    sweep = sorted(
        (r for r in records if r["seed"] == 1), key=lambda r: (r["info"]["family"], r["info"]["lr"])
    )
    rows = [
        [
            r["info"]["family"],
            f"{r['info']['lr']:g}",
            r["status"],
            spread([valid_ppl(r)]),
            "chosen" if best.get(r["info"]["family"]) == r["info"]["lr"] else "",
        ]
        for r in sweep
    ]
    lines += [
        "Learning-rate sweep (seed 1, the same budget; chosen by exact validation perplexity):",
        "",
    ]
    lines += table(["family", "lr", "status", "valid ppl", ""], rows) + [""]
    for family, lr in best.items():
        swept = [r["info"]["lr"] for r in sweep if r["info"]["family"] == family]
        lines += edge_warning(family.upper(), lr, swept)
    lines += [""] if lines[-1] else []
    main = lstm_main(records)
    rows = []
    for family, rs in main.items():
        ok = [r for r in rs if r.get("done")]
        if not ok:
            continue
        flops = ok[0]["flops_per_token"]
        rows.append(
            [
                f"{ok[0]['model']['name']} ({family}, lr {best[family]:g})",
                params(ok),
                f"{flops['train'] / 1e6:.1f}",
                f"{mean([r['done']['train_s'] for r in ok]) / 60:.1f}",
                f"{mean([r['curve'][-1]['train_flops'] for r in ok if r.get('curve')]) / 1e15:.3f}",
                spread([valid_ppl(r) for r in ok]),
                spread([test_ppl(r) for r in ok]),
            ]
        )
    lines += table(
        [
            "model",
            "params",
            "train MFLOP / token",
            "train time (min)",
            "train PFLOP",
            "valid ppl",
            "test ppl",
        ],
        rows,
    )
    lines += [
        "",
        "Training FLOPs = 3 × forward FLOPs per scored token × tokens; forward = the network "
        "(a GCNN's over its block plus the unscored context) + the adaptive-softmax head + each "
        "tail weighted by how often training targets fall in it (2 × multiply-adds; "
        "`experiments/runner.py: flops_per_token`). Training time excludes validations.",
        "",
    ]
    if "gcnn" in main and "lstm" in main:
        g, lstm = by_seed(main["gcnn"]), by_seed(main["lstm"])
        lines.append(f"- Equal updates and tokens: {compare('GCNN', g, 'LSTM', lstm)}")
        for key, unit, scale in (
            ("train_s", "min of training", 60),
            ("train_flops", "PFLOP", 1e15),
        ):
            x, ppl = at_common(main, key)
            if ppl.get("gcnn") and ppl.get("lstm"):
                lines.append(
                    f"- At equal compute ({x / scale:.3g} {unit}, validation subset): "
                    + compare("GCNN", ppl["gcnn"], "LSTM", ppl["lstm"])
                )
        lines.append("")
    return lines + image("lstm", plots)


def plot_lstm(records: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    main = lstm_main(records)
    finals = []
    for i, (_, rs) in enumerate(sorted(main.items())):
        label = f"{rs[0]['model']['name']} (lr {rs[0]['info']['lr']:g})"
        for ax, key in zip(axes, ("tokens", "train_s", "train_flops"), strict=True):
            finals.append(band(ax, rs, key, f"C{i}", label))
    for ax, xlabel in zip(
        axes, ("training tokens", "training time (s)", "training FLOPs"), strict=True
    ):
        finish(ax, xlabel, "validation perplexity (subset)", "", log=True)
        clip_top(ax, finals)
    save(fig, path)


# --- 5. latency ----------------------------------------------------------------------------------


def section_latency(records: list[dict], plots: dict) -> list[str]:
    title = "5. Latency (paper Table 4)"
    if not records:
        return no_records(title, f"{RUN} latency")
    lines = [
        f"## {title}",
        "",
        "**Paper** (Google Billion Word models at ≈43.9 ppl; tokens/s): LSTM-2048 CPU 169, GPU "
        "throughput 45,622, GPU responsiveness 2,282; GCNN-9 121 / 29,116 / 29,116; GCNN-8B "
        "179 / 45,878 / 45,878. On a CPU the paper has the two at parity; the 20× responsiveness "
        "is a GPU figure.",
        "",
        f"- Command (as run here): `{RUN} latency`",
        f'- On a GPU: `{RUN} latency --tools evaluate --latency-args "--device cuda" '
        "--records experiments/records/gpu`",
        f"- Machine: {machines(records)}.",
        "",
    ]
    rows, claims, lengths = [], [], set()
    for r in sorted(
        (r for r in records if r["info"].get("tool") == "evaluate" and r.get("json")),
        key=lambda r: r["run_id"],
    ):
        results = r["json"]
        for x in results:
            lengths.add(x.get("sentence_length"))
            rows.append(
                [
                    x["model"],
                    x.get("precision", r["info"]["precision"]),
                    f"{x['params'] / 1e6:.1f}M",
                    f"{x['throughput']:,.0f}",
                    f"{x['responsiveness']:,.0f}",
                    f"{x['latency_ms']:.2f}",
                    f"{x['network_latency_ms']:.2f}" if "network_latency_ms" in x else "–",
                ]
            )
        gcnns = [x for x in results if x.get("family") == "gcnn"]
        lstms = [x for x in results if x.get("family") == "lstm"]
        for g in gcnns:
            for lstm in lstms:
                ratio = g["responsiveness"] / lstm["responsiveness"]
                claims.append(
                    f"- {g['model']} vs {lstm['model']} ({r['info']['precision']}, one thread, "
                    "load average "
                    f"{g.get('load_average') or 0:.1f}): responsiveness {ratio:.1f}×, throughput "
                    f"{g['throughput'] / lstm['throughput']:.1f}×: the GCNN is "
                    f"{'more' if ratio > 1 else 'less'} responsive on this CPU."
                )
    if rows:
        length = "/".join(str(n) for n in sorted(lengths, key=str))
        lines += [
            f"`evaluate.py latency` (tokens/s; latency of one {length}-token sentence, batch 1):",
            "",
        ]
        lines += table(
            [
                "model",
                "precision",
                "params",
                "throughput",
                "responsiveness",
                "latency (ms)",
                "network alone (ms)",
            ],
            rows,
        )
        lines += [""] + claims + [""]
    for r in sorted(
        (r for r in records if r["info"].get("tool") == "roofline"), key=lambda r: r["run_id"]
    ):
        lines += [
            f"`{r['command']}`:",
            "",
            *[line for line in r["stdout"].strip().splitlines()],
            "",
        ]
    return lines + image("latency", plots)


def plot_latency(records: list[dict], path: Path) -> None:
    plt = pyplot()
    entries = []
    for r in sorted(
        (r for r in records if r["info"].get("tool") == "evaluate" and r.get("json")),
        key=lambda r: r["run_id"],
    ):
        for x in r["json"]:
            entries.append(
                (f"{x['model']}\n{r['info']['precision']}", x["throughput"], x["responsiveness"])
            )
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(entries)), 4.2))
    positions = range(len(entries))
    ax.bar(
        [p - 0.2 for p in positions],
        [e[1] for e in entries],
        width=0.4,
        label="throughput (best batch)",
    )
    ax.bar(
        [p + 0.2 for p in positions],
        [e[2] for e in entries],
        width=0.4,
        label="responsiveness (batch 1)",
    )
    ax.set_xticks(list(positions), [e[0] for e in entries], fontsize=8)
    ax.set_yscale("log")
    finish(ax, "", "tokens / s", "Scoring speed on this CPU (one thread)")
    save(fig, path)


# --- the default run and the longer recipe -------------------------------------------------------


def section_runs(title: str, study: str, records: list[dict], target: str) -> list[str]:
    if not records:
        return no_records(title, f"{RUN} {study}")
    rows, resumed = [], False
    for r in sorted(records, key=lambda r: (r["variant"], r["seed"])):
        d = r["done"]
        # A resumed run's process time covers only its last process; the trainer's clock runs on
        # across the resume, so it stands in (training and validation, without start-up).
        wall = f"{d['process_s'] / 60:.1f}"
        if r.get("resumed"):
            wall, resumed = f"{d['trainer_wall_s'] / 60:.1f}†", True
        rows.append(
            [
                f"`{r['label']}`",
                str(r["seed"]),
                wall,
                f"{d['updates']:,}",
                f"{d['tokens'] / 1e6:.2f}M ({d['epochs'] or 0:.2f} ep.)",
                spread([valid_ppl(r)]),
                spread([test_ppl(r)]),
            ]
        )
    lines = [
        f"## {title}",
        "",
        f"- Command: `{RUN} {study}` (each run: `python train.py` as listed, timed as `time` "
        "would, then exact evaluation)",
        f"- Machine: {machines(records)}.",
        "",
    ]
    lines += table(
        ["command", "seed", "wall (min)", "updates", "tokens", "valid ppl", "test ppl"], rows
    )
    if resumed:
        lines += ["", "† resumed after an interruption: the trainer's clock over both processes."]
    return lines + ["", target, ""]


def default_target(records: list[dict], goal: float, minutes: float, reference: str) -> str:
    """The GCNN runs' test perplexity and wall time against the issue's goal."""
    gcnn = [r for r in records if r["info"].get("family") == "gcnn" and test_ppl(r)]
    if not gcnn:
        return ""
    ppl = mean([test_ppl(r) for r in gcnn])
    key = {True: "trainer_wall_s", False: "process_s"}  # see section_runs
    wall = mean([r["done"][key[bool(r.get("resumed"))]] for r in gcnn]) / 60
    met = "met" if ppl <= goal and wall <= minutes else "not met"
    return (
        f"`{gcnn[0]['label']}`: test perplexity {ppl:.1f} in {wall:.1f} min "
        f"({'mean of ' + plural(len(gcnn), 'seed') if len(gcnn) > 1 else 'one seed'}), against "
        f"the goal of ≤ {goal:g} within {minutes:g} minutes: {met}. {reference}"
    )


# --- plotting helpers ----------------------------------------------------------------------------


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


# --- the page ------------------------------------------------------------------------------------

PLOTS = {
    "gating": plot_gating,
    "norm": plot_norm,
    "context": plot_context,
    "lstm": plot_lstm,
    "latency": plot_latency,
}


def build_page(records_dir: Path, out: Path, img_dir: Path | None) -> tuple[str, list[Path]]:
    """(markdown, PNG files written); img_dir None: no plots."""
    by_study = group(load_records(records_dir), key="study")
    written, links = [], {}
    if img_dir is not None:
        for study, plot in PLOTS.items():
            if by_study.get(study):
                path = img_dir / f"{study}.png"
                plot(by_study[study], path)
                written.append(path)
                links[study] = Path(os.path.relpath(path, out.parent)).as_posix()
    n = sum(len(v) for v in by_study.values())
    try:
        shown = records_dir.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        shown = str(records_dir)
    lines = [
        "# Results: the paper's claims, re-run at CPU scale",
        "",
        f"Generated by `python experiments/report.py` from {n} records in `{shown}/` (one JSON "
        "file per finished run: settings, seed, budget, machine, curves, exact perplexities). "
        "Do not edit by hand: re-run the studies (`python experiments/run.py STUDY`, see "
        "experiments/README.md) and regenerate. Paper figures: Dauphin et al. 2017, "
        "arXiv:1612.08083v3 (≈: read off its plots). "
        "Claims are judged on exact test perplexity, seeds paired (the same seed gives the same "
        "initialisation and batches to every variant).",
        "",
    ]
    for section in (section_gating, section_norm, section_context, section_lstm, section_latency):
        study = section.__name__.removeprefix("section_")
        lines += section(by_study.get(study, []), {study: links[study]} if study in links else {})
    default = by_study.get("default", [])
    lines += section_runs(
        "6. The default run: `python train.py`",
        "default",
        default,
        default_target(
            default,
            140,
            10,
            "For comparison, pytorch/examples' word-level LSTM (2×200) reaches 142.1 after 6 "
            "epochs (its users' report) and 234.5 after its first epoch (14.6 min on this 2-core "
            "machine).",
        ),
    )
    long = by_study.get("long", [])
    lines += section_runs(
        "7. The longer CPU recipe (at most 60 minutes)",
        "long",
        long,
        default_target(
            long, 100, 60, "Grave et al. 2017 report 99.3 for their LSTM on WikiText-2."
        ),
    )
    return "\n".join(lines).rstrip() + "\n", written


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python experiments/report.py", description=__doc__.splitlines()[0])
    p.add_argument("--records", default=str(ROOT / "experiments" / "records"))
    p.add_argument("--out", default=str(ROOT / "docs" / "results.md"))
    p.add_argument("--img", default=None, help="plot directory (default: img/ next to --out)")
    p.add_argument("--no-plots", action="store_true", help="tables only (no matplotlib needed)")
    args = p.parse_args(argv)
    out = Path(args.out)
    img = None if args.no_plots else Path(args.img) if args.img else out.parent / "img"
    if img is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise GcnnError(
                "the plots need matplotlib: pip install 'gcnn[plot]' (or pass --no-plots for the "
                "tables alone)"
            ) from None
    records = Path(args.records)
    if not records.is_dir():
        raise GcnnError(f"--records {records}: no such directory; run experiments/run.py first")
    page, written = build_page(records, out, img)
    from gcnn.data import atomic_write

    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out, "w") as f:
        f.write(page)
    print(f"wrote {out}" + (f" and {len(written)} plot(s) in {img}" if written else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
