"""Study 2, weight normalization and gradient clipping (paper Fig. 6): runs, section, plot."""

from __future__ import annotations

from pathlib import Path

from page import RUN, edge_warning, group, image, no_records, section_head, table
from plots import band, clip_top, finish, pyplot, save
from records import test_ppl, valid_ppl
from runner import Run, Runner
from stats import best_lr, by_seed, compare, spread
from study import StudyOptions, chosen_lr, lr_name, runs_for_seeds, selected, training_args

NAME = "norm"
UPDATES = 150
NORM_VARIANTS = {  # name -> flags; clipping at the optimizer's own default (NAG 0.1, AdamW 1.0)
    "both": [],
    "weight-norm-only": ["--clip-norm", "0"],
    "clipping-only": ["--no-weight-norm"],
    "neither": ["--no-weight-norm", "--clip-norm", "0"],
}
PAPER = {  # Google Billion Word, ppl at 40k / 80k / 160k updates (PAPER.md)
    "both": "≈67 / 58 / 51",
    "clipping-only": "≈90 / 72 / 59.5 (without weight norm)",
    "weight-norm-only": "≈127 / 98 / 80 (without clipping)",
    "neither": "–",
}


def runs(runner: Runner, o: StudyOptions) -> None:
    """Both / weight norm only / clipping only / neither, with the paper's NAG (momentum 0.99,
    clip 0.1, at the best lr of a short sweep) and with the small presets' AdamW recipe."""
    base = training_args(o, o.model, UPDATES)
    nag = [*base, "--optimizer", "nag"]
    sweep = [
        Run(
            "norm",
            f"nag-both-{lr_name(lr)}",
            1,
            [*nag, "--lr", f"{lr:g}"],
            label="NAG both",
            info={"optimizer": "nag", "variant": "both", "lr": lr, "sweep": True},
        )
        for lr in o.nag_lrs
    ]
    lr = chosen_lr(runner, o, sweep, o.nag_lrs)
    placeholder = lr is None
    lr = o.nag_lrs[0] if lr is None else lr
    runs = []
    for name, flags in NORM_VARIANTS.items():
        info = {"optimizer": "nag", "variant": name, "lr": lr, "placeholder": placeholder}
        runs += runs_for_seeds(
            o,
            "norm",
            f"nag-{name}-{lr_name(lr)}",
            [*nag, "--lr", f"{lr:g}", *flags],
            label=f"NAG {name}",
            info=info,
        )
    for name, flags in NORM_VARIANTS.items():
        info = {"optimizer": "adamw", "variant": name}
        runs += runs_for_seeds(
            o,
            "norm",
            f"adamw-{name}",
            [*base, "--optimizer", "adamw", *flags],
            label=f"AdamW {name}",
            info=info,
        )
    runner.run(selected(o, runs))


# --- the page ---------------------------------------------------------------------------------

NORM_ORDER = ["both", "weight-norm-only", "clipping-only", "neither"]


def norm_sweep(records: list[dict]) -> tuple[list[dict], float | None]:
    """The NAG sweep (seed 1, weight norm + clipping) by lr, and the lr it chose."""
    sweep = [
        r
        for r in records
        if r["info"].get("optimizer") == "nag" and r["info"]["variant"] == "both" and r["seed"] == 1
    ]
    sweep.sort(key=lambda r: r["info"]["lr"])
    return sweep, best_lr(sweep)


def norm_runs(records: list[dict], optimizer: str, lr: float | None) -> dict[str, list[dict]]:
    """{variant: records} of one optimizer (NAG: at the chosen lr), in NORM_ORDER."""
    runs = [r for r in records if r["info"].get("optimizer") == optimizer]
    if optimizer == "nag":
        runs = [r for r in runs if r["info"].get("lr") == lr]
    groups = group(runs, key=lambda r: r["info"]["variant"])
    return {v: groups[v] for v in NORM_ORDER if v in groups}


def section(records: list[dict], plots: dict) -> list[str]:
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
                    PAPER[v] if optimizer == "nag" else "",
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


def plot(records: list[dict], path: Path) -> None:
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
