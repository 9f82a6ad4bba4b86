"""Study 1, gating (paper Fig. 3, Fig. 5): its runs, its section of the page, its plot."""

from __future__ import annotations

from pathlib import Path

from page import RUN, group, image, no_records, params, section_head, table
from plots import band, clip_top, finish, pyplot, save
from records import test_ppl, valid_ppl
from runner import Runner
from stats import by_seed, compare, spread
from study import StudyOptions, runs_for_seeds, selected, training_args

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
    runner.run(selected(o, runs))


# --- the page ---------------------------------------------------------------------------------

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
                PAPER.get(gating, "–") if not v.endswith("-unmatched") else "",
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


def plot(records: list[dict], path: Path) -> None:
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
