"""Study 2, weight normalization and gradient clipping (paper Fig. 6): runs, section, plot."""

from __future__ import annotations

from pathlib import Path

from page import RUN, edge_warning, group, image, no_records, section_head, table
from plots import band, finish, pyplot, save, seeds_text, valid_label
from records import test_ppl, valid_ppl
from runner import Run, Runner
from stats import arm, best_lr, cell, diverged_note, verdict
from study import (
    StudyOptions,
    chosen_lr,
    lr_name,
    runs_for_seeds,
    seeds,
    selected,
    training_args,
    tuned_lr,
)

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
    nag = training_args(o, o.model, UPDATES, optimizer="nag")
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
    unclipped(runner, o, nag, lr, placeholder)


def unclipped(runner: Runner, o: StudyOptions, nag: list[str], lr: float, placeholder: bool):
    """NAG without clipping (weight norm on) at its own best lr: its sweep goes below the clipped
    one's (an unclipped run diverges at the clipped run's lr), then the seeds at that lr."""
    flags = NORM_VARIANTS["weight-norm-only"]

    def run(x: float, seed: int = 1, **info) -> Run:
        info = {"optimizer": "nag", "variant": "weight-norm-only", "lr": x, **info}
        args = [*nag, "--lr", f"{x:g}", *flags]
        return Run(NAME, f"nag-weight-norm-only-{lr_name(x)}", seed, args, "NAG unclipped", info)

    own = tuned_lr(runner, o, lambda x: run(x, sweep="unclipped"), [*o.unclipped_lrs, lr])
    mark = {"placeholder": True} if own is None or placeholder else {}
    own = min(o.unclipped_lrs) if own is None else own
    runner.run(selected(o, [run(own, s, own_lr=True, **mark) for s in seeds(o)]))


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


def unclipped_sweep(records: list[dict]) -> tuple[list[dict], float | None]:
    """Unclipped NAG (weight norm only) by lr, seed 1, and the lr it chose."""
    sweep = [
        r
        for r in records
        if r["info"].get("optimizer") == "nag"
        and r["info"]["variant"] == "weight-norm-only"
        and r["seed"] == 1
    ]
    sweep.sort(key=lambda r: r["info"]["lr"])
    return sweep, best_lr(sweep)


def sweep_table(title: str, name: str, sweep: list[dict], best: float | None) -> list[str]:
    rows = [
        [
            f"{r['info']['lr']:g}",
            diverged_note(r) if r["status"] != "ok" else "ok",
            cell([r], valid_ppl),
            "chosen" if r["info"]["lr"] == best else "",
        ]
        for r in sweep
    ]
    lines = [title, "", *table(["lr", "status", "valid ppl", ""], rows), ""]
    warning = edge_warning(name, best, [r["info"]["lr"] for r in sweep])
    return lines + warning + ([""] if warning else [])


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
        lines += sweep_table(
            "NAG learning-rate sweep (weight norm + clipping, seed 1, the same budget; chosen by "
            "exact validation perplexity):",
            "NAG",
            sweep,
            best,
        )
    for optimizer, name in (
        ("nag", "NAG (momentum 0.99, clip 0.1)"),
        ("adamw", "AdamW (the small presets' recipe, clip 1.0)"),
    ):
        by_variant = norm_runs(records, optimizer, best)
        if not by_variant:
            continue
        rows = [
            [
                v.replace("-", " "),
                cell(g, valid_ppl),
                cell(g, test_ppl),
                "; ".join(sorted({diverged_note(r) for r in g if r.get("status") != "ok"})) or "–",
                PAPER[v] if optimizer == "nag" else "",
            ]
            for v, g in by_variant.items()
        ]
        lr = f", lr {best:g}" if optimizer == "nag" and best is not None else ""
        lines += [f"**{name}{lr}**", ""]
        lines += table(
            ["variant", "valid ppl", "test ppl", "diverged", "paper (GBW, 40k/80k/160k)"], rows
        )
        lines += ["", "Mean [95% interval of the mean] over the seeds that finished.", ""]
        arms = {v: arm(v, g) for v, g in by_variant.items()}
        for better, worse, what in CLAIMS:
            if better in arms and worse in arms:
                lines.append(
                    f"- {name.split(' ')[0]}, {what}: {verdict(arms[better], arms[worse])}"
                )
        lines.append("")
    lines += section_unclipped(records, best)
    return lines + image("norm", plots)


CLAIMS = (  # (better, worse, what the paper says), judged on test perplexity
    ("both", "clipping-only", "weight normalization helps"),
    ("both", "weight-norm-only", "clipping helps"),
    ("both", "neither", "the two together help"),
)


def section_unclipped(records: list[dict], best: float | None) -> list[str]:
    """Clipping at each side's own best lr: an unclipped NAG that diverges at the clipped
    run's lr says nothing about clipping until it runs at an lr where it does not."""
    sweep, own = unclipped_sweep(records)
    if len(sweep) < 2:
        return []
    lines = sweep_table(
        "Unclipped NAG (weight norm only) at its own lr: sweep (seed 1, the same budget):",
        "Unclipped NAG",
        sweep,
        own,
    )
    runs = [r for r in records if r["info"].get("optimizer") == "nag" and r["info"]["lr"] == own]
    runs = [r for r in runs if r["info"]["variant"] == "weight-norm-only"]
    clipped = norm_runs(records, "nag", best).get("both", [])
    if runs and clipped:
        a = arm(f"both (lr {best:g})", clipped)
        b = arm(f"weight-norm-only (lr {own:g})", runs)
        lines += [f"- NAG, clipping helps, each at its own best lr: {verdict(a, b)}", ""]
    return lines


def plot(records: list[dict], path: Path) -> None:
    plt = pyplot()
    _, best = norm_sweep(records)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for ax, optimizer in zip(axes, ("nag", "adamw"), strict=True):
        by_variant = norm_runs(records, optimizer, best)
        for v, runs in by_variant.items():
            i = NORM_ORDER.index(v)
            band(ax, runs, "update", f"C{i}", v.replace("-", " "), row=i)
        name = f"NAG, lr {best:g}" if optimizer == "nag" and best is not None else "AdamW"
        shown = [r for g in by_variant.values() for r in g]
        finish(ax, "update", valid_label(shown), f"{name}: mean of {seeds_text(shown)}", log=True)
    save(fig, path)
