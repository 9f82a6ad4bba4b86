"""Study 1, gating (paper Fig. 3, Fig. 5): its runs, its section of the page, its plot."""

from __future__ import annotations

import math
from pathlib import Path

from measure import train_config
from page import RUN, edge_warning, group, image, no_records, params, section_head, table
from plots import band, finish, pyplot, save, seeds_text, valid_label
from records import test_ppl, valid_ppl
from runner import Run, Runner
from stats import arm, best_lr, cell, lr_of, mean, verdict
from study import (
    StudyOptions,
    lr_name,
    model_flags,
    runs_for_seeds,
    seeds,
    selected,
    training_args,
    tuned_lr,
)

NAME = "gating"
UPDATES = 200  # per run, in updates of 4,096 tokens (--max-updates and others replace it)
# the gating variants as the paper names them (run labels, page tables)
NAMES = {
    "glu": "GLU",
    "gtu": "GTU",
    "bilinear": "bilinear",
    "relu": "ReLU",
    "tanh": "Tanh",
    "linear": "linear",
}
GATED, UNGATED = ("glu", "gtu", "bilinear"), ("relu", "tanh", "linear")
GLU = "glu"
# each variant's own lr: this besides train.py's 1e-2 (the study's runs), then one step of x2 or
# /2 past whichever edge wins (the lstm study found 2e-2 best for gcnn-small)
SWEEP = [2e-2]
EPOCHS = 2  # GLU and the runner-up, trained this long as well
LONG_VALID_EVERY = 128  # updates (an epoch of WikiText-2 is ~510 of 4,096 tokens)
PAPER = {  # test perplexity (PAPER.md; ≈: read off plots)
    "glu": "≈47 (WT103) / ≈41 (GBW)",
    "gtu": "≈51.3 (WT103)",
    "relu": "≈51 (WT103)",
    "tanh": "≈67 (WT103)",
    "bilinear": "≈61 (GBW)",
    "linear": "≈115 (GBW)",
}


def runs(runner: Runner, o: StudyOptions) -> None:
    """Each gating at the same budget, seeds and batches. Ungated convolutions emit c instead of
    2c channels; by default (match_params) their widths grow by sqrt(2) to keep the parameter
    count, and a control at the preset's width (match_params=false) shows the unmatched count."""
    args = training_args(o, o.model, UPDATES)
    runs = []
    for g in GATED + UNGATED:
        label = NAMES[g] if g in GATED else f"{NAMES[g]} (width ×√2: matched parameters)"
        runs += runs_for_seeds(
            o, "gating", g, [*args, "--gating", g], label=label, info={"gating": g, "matched": True}
        )
    for g in UNGATED:
        flags = [*args, "--gating", g, "--model-arg", "match_params=false"]
        runs += runs_for_seeds(
            o,
            "gating",
            f"{g}-unmatched",
            flags,
            label=f"{NAMES[g]} (preset width)",
            info={"gating": g, "matched": False},
        )
    records = runner.run(selected(o, runs))
    default = train_config(args).lr  # the runs above: train.py's lr for the preset
    own = {g: own_lr(runner, o, args, g, default) for g in GATED + UNGATED}
    pair = [GLU, runner_up(records)]
    for g in pair:
        lr = own[g] or default
        flags = [*long_args(o), "--gating", g, *(["--lr", f"{lr:g}"] if lr != default else [])]
        info = {"gating": g, "matched": True, "lr": lr, "long": True}
        if own[g] is None:
            info["placeholder"] = True
        name = f"{g}-{EPOCHS}ep" + (f"-{lr_name(lr)}" if lr != default else "")
        label = f"{NAMES[g]}, {EPOCHS} epochs"
        runner.run(selected(o, runs_for_seeds(o, NAME, name, flags, label=label, info=info)))


def own_lr(runner: Runner, o: StudyOptions, args: list[str], g: str, default: float):
    """One gating's own lr: a small sweep around train.py's (whose run is the study's own),
    extended once past an edge, then three seeds at the lr it chose."""

    def run(lr: float, seed: int = 1) -> Run:
        if lr == default:  # the study's run at train.py's lr: not run twice
            return Run(NAME, g, seed, [*args, "--gating", g], NAMES[g], {"gating": g})
        info = {"gating": g, "matched": True, "lr": lr, "sweep": True}
        flags = [*args, "--gating", g, "--lr", f"{lr:g}"]
        return Run(NAME, f"{g}-{lr_name(lr)}", seed, flags, f"{NAMES[g]}, lr {lr:g}", info)

    lr = tuned_lr(runner, o, run, [default, *SWEEP], extend=1)
    seeds_at = [run(lr or SWEEP[-1], s) for s in seeds(o)]  # planning: listed at a stand-in lr
    for r in seeds_at if lr is None else []:
        r.info["placeholder"] = True
    runner.run(selected(o, seeds_at))
    return lr


def runner_up(records: list[dict]) -> str:
    """The gating after GLU with the lowest mean test perplexity at train.py's lr (matched
    parameters); ReLU, the paper's runner-up, until there are records."""
    means = {
        g: mean([test_ppl(r) for r in rs])
        for g, rs in group(records).items()
        if g in NAMES and g != GLU and rs[0]["info"].get("matched", True)
    }
    means = {g: m for g, m in means.items() if math.isfinite(m)}
    return min(means, key=means.get) if means else "relu"


def long_args(o: StudyOptions) -> list[str]:
    """The pair's budget: EPOCHS epochs, unless a budget is given (then that one)."""
    if o.max_updates or o.max_minutes or o.max_epochs:
        return training_args(o, o.model, None)
    every = ["--valid-every", str(LONG_VALID_EVERY), "--log-every", str(LONG_VALID_EVERY)]
    every += ["--valid-tokens", str(o.valid_tokens)] if o.valid_tokens else []
    return [*model_flags(o, o.model), "--max-epochs", str(EPOCHS), *every, *o.extra]


# --- the page ---------------------------------------------------------------------------------

GATING_ORDER = ["glu", "gtu", "bilinear", "relu", "tanh", "linear"]
# Every pair the paper ranks: (better, worse, figure, parity). Fig. 3 has GLU ≈47 < ReLU ≈51 ≈
# GTU ≈51.3 < Tanh ≈67 (ReLU and GTU at parity); Fig. 5 GLU ≈41 < bilinear ≈61 < linear ≈115.
GATING_CLAIMS = [
    ("glu", "relu", "Fig. 3", False),
    ("glu", "gtu", "Fig. 3", False),
    ("glu", "tanh", "Fig. 3", False),
    ("relu", "gtu", "Fig. 3", True),
    ("relu", "tanh", "Fig. 3", False),
    ("gtu", "tanh", "Fig. 3", False),
    ("glu", "bilinear", "Fig. 5", False),
    ("glu", "linear", "Fig. 5", False),
    ("bilinear", "linear", "Fig. 5", False),
]
CAPTION = (
    "Exact perplexity; mean [95% interval of the mean, Student t] over seeds. Ungated "
    "convolutions have c outputs where gated ones have 2c: the matched rows widen every layer by "
    "√2 (the `match_params` model option, on by default), the *preset width* rows do not. "
    "Verdicts: test perplexity, differences paired by seed, 95% interval (experiments/stats.py)."
)


def section(records: list[dict], plots: dict) -> list[str]:
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
    lines += ["**(a) Every variant at train.py's lr** (the preset's recipe):", ""]
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
                cell(rs, valid_ppl),
                cell(rs, test_ppl),
                PAPER.get(gating, "–") if not v.endswith("-unmatched") else "",
            ]
        )
    lines += table(["variant", "params", "valid ppl", "test ppl", "paper (test)"], rows)
    lines += ["", CAPTION, ""]
    arms = {v: arm(NAMES.get(v, v), rs) for v, rs in groups.items()}
    for a, b, fig, parity in GATING_CLAIMS:
        if a in arms and b in arms:
            lines.append(f"- {fig}: {verdict(arms[a], arms[b], parity=parity)}")
    for g in ("relu", "tanh", "linear"):
        if g in groups and f"{g}-unmatched" in groups:
            matched = arm(f"{NAMES[g]} (matched)", groups[g])
            unmatched = arm(f"{NAMES[g]} (preset width)", groups[f"{g}-unmatched"])
            lines.append(f"- Parameters: {verdict(matched, unmatched)}")
    lines.append("")
    lines += section_own_lr(records) + section_long(records)
    return lines + image("gating", plots)


def own_lr_runs(records: list[dict]) -> dict[str, tuple[list[dict], float | None, list[dict]]]:
    """{gating: (its seed-1 sweep, the lr chosen, the runs at that lr)} (matched widths)."""
    out = {}
    for g in GATING_ORDER:
        mine = [
            r
            for r in records
            if r["info"].get("gating") == g
            and r["info"].get("matched", True)
            and not r["info"].get("long")
        ]
        sweep = sorted((r for r in mine if r["seed"] == 1), key=lr_of)
        if len({lr_of(r) for r in sweep}) > 1:
            lr = best_lr(sweep)
            out[g] = (sweep, lr, [r for r in mine if lr_of(r) == lr])
    return out


def section_own_lr(records: list[dict]) -> list[str]:
    runs = own_lr_runs(records)
    if not runs:
        return []
    lrs = sorted({lr_of(r) for sweep, _, _ in runs.values() for r in sweep})
    rows = []
    for g, (sweep, lr, at) in runs.items():
        by_lr = {lr_of(r): r for r in sweep}
        cells = [
            (cell([by_lr[x]], valid_ppl) + (" ←" if x == lr else "")) if x in by_lr else ""
            for x in lrs
        ]
        warning = edge_warning("", lr, list(by_lr))
        rows.append([NAMES[g], *cells, cell(at, test_ppl) + (" (edge)" if warning else "")])
    lines = [
        "**(b) Each variant at its own lr**: a small sweep (seed 1, valid ppl; ← chosen, "
        "extended once past an edge), then the seeds at the chosen lr (test ppl, mean [95% "
        'interval]); "(edge)": still the largest or smallest lr swept.',
        "",
        *table(["variant", *(f"lr {x:g}" for x in lrs), "test ppl at its lr"], rows),
        "",
    ]
    arms = {g: arm(f"{NAMES[g]} (lr {lr:g})", at) for g, (_, lr, at) in runs.items()}
    for a, b, fig, parity in GATING_CLAIMS:
        if a in arms and b in arms:
            lines.append(f"- {fig}, each at its own lr: {verdict(arms[a], arms[b], parity=parity)}")
    return lines + [""]


def section_long(records: list[dict]) -> list[str]:
    long = group([r for r in records if r["info"].get("long")])
    if not long:
        return []
    rows = [
        [
            rs[0]["label"],
            f"{lr_of(rs[0]):g}",
            f"{rs[0]['done']['epochs'] or 0:.2f}",
            cell(rs, valid_ppl),
            cell(rs, test_ppl),
        ]
        for rs in long.values()
    ]
    lines = [
        f"**(c) GLU and the runner-up, {EPOCHS} epochs** (each at its own lr):",
        "",
        *table(["variant", "lr", "epochs", "valid ppl", "test ppl"], rows),
        "",
    ]
    glu = [rs for rs in long.values() if rs[0]["info"]["gating"] == GLU]
    other = [rs for rs in long.values() if rs[0]["info"]["gating"] != GLU]
    if glu and other:
        a, b = arm("GLU", glu[0]), arm(NAMES[other[0][0]["info"]["gating"]], other[0])
        lines.append(f"- After {EPOCHS} epochs: {verdict(a, b)}")
    return lines + [""]


def plot(records: list[dict], path: Path) -> None:
    """Every curve in full (left, log scale), and the second half of the budget (right), where
    the curves sit close together: a window on the same curves, nothing cut off."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    groups = group(records)  # the runs at train.py's lr
    main = [r for v, rs in groups.items() if v in NAMES or v.endswith("-unmatched") for r in rs]
    half = max((p["update"] for r in main for p in r.get("curve") or []), default=0) / 2
    for ax, since in zip(axes, (0.0, half), strict=True):
        for i, v in enumerate(g for g in GATING_ORDER if g in groups):
            band(ax, groups[v], "update", f"C{i}", NAMES[v], since=since)
            if f"{v}-unmatched" in groups:
                name = f"{NAMES[v]} (preset width)"
                band(
                    ax, groups[f"{v}-unmatched"], "update", f"C{i}", name, dashed=True, since=since
                )
        part = "every update" if not since else f"from update {since:g}"
        title = f"Gating at train.py's lr, {part}: mean of {seeds_text(main)}"
        finish(ax, "update", valid_label(main), title, log=True, legend=not since)
    save(fig, path)
