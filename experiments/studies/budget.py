"""Study 9, GCNN against LSTM at equal budgets of wall time and of training FLOPs: runs, page.

Reading perplexity "at equal compute" off the curve of a longer run (as the lstm study's page
does) favours whichever run's schedule was further from its end. Here every run is its own: its
learning-rate schedule (warm-up, then cosine) ends at its budget, by the trainer's clock
(--max-minutes: the cosine follows the clock) or at the number of updates the budget's FLOPs buy
(--max-updates from the model's training FLOPs per update). Two budgets of each kind (a few
minutes, and about the default run's 9), three seeds, gcnn-small against the lstm study's
parameter-matched LSTM, each at the lr its sweep chose. Timed runs always run one at a time (the
runner sees their clock); the FLOP budgets may run side by side (--jobs 2).
"""

from __future__ import annotations

import math
from pathlib import Path

from page import RUN, image, no_records, section_head, table
from plots import band, finish, pyplot, save, seeds_text, valid_label
from records import load_records, test_ppl, valid_ppl
from runner import Runner
from stats import arm, cell, verdict
from study import StudyOptions, for_family, model_args, model_flags, runs_for_seeds, selected

from gcnn.errors import GcnnError
from studies import lstm as lstm_study

NAME = "budget"
VALID_EVERY = 25  # updates between validations at the smallest budgets (curves; see `every`)


def families(runner: Runner, o: StudyOptions) -> dict[str, tuple[list[str], float | None]]:
    """{family: (train.py flags without a budget, lr)}: the lstm study's pair and its choices
    (None until the lstm study has run; then train.py's default lr stands in)."""
    chosen = lstm_study.lstm_choice(load_records(runner.options.records, "lstm"))
    hidden, _, _ = lstm_study.matched_lstm_hidden(
        o, model_args(for_family(o.extra, "lstm")), runner.plan
    )
    return {
        "gcnn": ([*model_flags(o, o.model), *o.extra], chosen.get("gcnn")),
        "lstm": (
            [*model_flags(o, o.lstm_model), *for_family(o.extra, "lstm")]
            + ["--model-arg", f"hidden_size={hidden}"],
            chosen.get("lstm"),
        ),
    }


def updates_for(pflop: float, args: list[str], plan: bool) -> int | str:
    """Updates that spend `pflop` of training FLOPs (measure.flops_per_token x tokens/update)."""
    from measure import flops_per_token, model_from_flags, train_config

    from gcnn.data import prepare_corpus

    try:
        model, config = model_from_flags(args, download=not plan)
        corpus = prepare_corpus(
            config["data"],
            tokenizer=config["tokenizer"],
            vocab_size=config["vocab_size"],
            splits=("train",),
            download=not plan,
        )
    except GcnnError:
        if not plan:
            raise
        return "<from FLOPs>"
    per_update = flops_per_token(model, config, corpus.splits["train"])["train"]
    per_update *= train_config(args).tokens_per_batch
    return max(1, math.floor(pflop * 1e15 / per_update))


def every(amount: float, amounts: list[float]) -> list[str]:
    """Validate every VALID_EVERY updates at the smallest budget of a kind, 4x as seldom beyond
    it. The same count of updates for both families: a validation of --valid-tokens costs about
    the same share of an update's work in either, so it takes the same share of either's clock."""
    n = VALID_EVERY if amount <= min(amounts) else 4 * VALID_EVERY
    return ["--valid-every", str(n), "--log-every", str(n)]


def runs(runner: Runner, o: StudyOptions) -> None:
    """Timed budgets first (one at a time), then the FLOP budgets."""
    tokens = ["--valid-tokens", str(o.valid_tokens)] if o.valid_tokens else []
    timed, counted = [], []
    for family, (args, lr) in families(runner, o).items():
        flags = [*args, *(["--lr", f"{lr:g}"] if lr else []), *tokens]
        info = {"family": family, "lr": lr, **({} if lr else {"placeholder": True})}
        for minutes in o.budget_minutes:
            budget = {**info, "budget": "time", "minutes": minutes, "timed": True}
            timed += runs_for_seeds(
                o,
                NAME,
                f"{family}-{minutes:g}min",
                [*flags, *every(minutes, o.budget_minutes), "--max-minutes", f"{minutes:g}"],
                label=family,
                info=budget,
            )
        for pflop in o.budget_pflops:
            flags_here = [*flags, *every(pflop, o.budget_pflops)]
            updates = updates_for(pflop, flags_here, runner.plan)
            budget = {**info, "budget": "flops", "pflop": pflop, "updates": updates}
            counted += runs_for_seeds(
                o,
                NAME,
                f"{family}-{pflop:g}pflop",
                [*flags_here, "--max-updates", str(updates)],
                label=family,
                info=budget,
            )
    runner.run(selected(o, timed), jobs=1)  # a clock shared with another run is not a budget
    runner.run(selected(o, counted))


# --- the page ---------------------------------------------------------------------------------


def budgets(records: list[dict]) -> dict[tuple[str, float], dict[str, list[dict]]]:
    """{(kind, amount): {family: records}}, in order."""
    out: dict = {}
    for r in records:
        kind = r["info"]["budget"]
        amount = r["info"]["minutes" if kind == "time" else "pflop"]
        out.setdefault((kind, amount), {}).setdefault(r["info"]["family"], []).append(r)
    return dict(sorted(out.items()))


def section(records: list[dict], plots: dict) -> list[str]:
    title = "9. GCNN against LSTM at equal budgets of time and of FLOPs"
    if not records:
        return no_records(title, f"{RUN} {NAME}")
    lines = section_head(
        title,
        "the GCNN gets to a given perplexity with less computation (Fig. 2). Each run here ends "
        "its own schedule at its budget; no figure is read off a longer run.",
        records,
        f"{RUN} {NAME} --jobs 2",
        f"{RUN} {NAME} --data wikitext-103 --model gcnn-8 --lstm-model lstm-1024 "
        "--records experiments/records/wt103",
    )
    rows, verdicts = [], []
    for (kind, amount), by_family in budgets(records).items():
        what = f"{amount:g} min" if kind == "time" else f"{amount:g} PFLOP"
        for family, rs in sorted(by_family.items()):
            d = rs[0]["done"]
            rows.append(
                [what, family, f"{d['updates']:,}", cell(rs, valid_ppl), cell(rs, test_ppl)]
            )
        if {"gcnn", "lstm"} <= set(by_family):
            a, b = arm("GCNN", by_family["gcnn"]), arm("LSTM", by_family["lstm"])
            verdicts.append(f"- {what}: {verdict(a, b)}")
    lines += table(["budget", "family", "updates (seed 1)", "valid ppl", "test ppl"], rows)
    lines += ["", "Mean [95% interval of the mean] over seeds.", "", *verdicts, ""]
    return lines + image(NAME, plots)


def plot(records: list[dict], path: Path) -> None:
    """Valid ppl against the trainer's clock and against training FLOPs, budgets marked."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for ax, kind, key, scale, xlabel in (
        (axes[0], "time", "wall_s", 60, "the trainer's clock (minutes, validations included)"),
        (axes[1], "flops", "train_flops", 1e15, "training PFLOP"),
    ):
        shown = [r for r in records if r["info"]["budget"] == kind]
        amounts = sorted({a for k, a in budgets(records) if k == kind})
        for (k, amount), by_family in budgets(records).items():
            if k != kind:
                continue
            ax.axvline(amount, color="grey", ls=":", lw=1)
            for family, rs in sorted(by_family.items()):
                color = "C0" if family == "gcnn" else "C1"
                label = f"{family}, budget {amount:g}"
                band(ax, rs, key, color, label, scale=scale, dashed=amount != amounts[-1])
        name = "wall-time" if kind == "time" else "FLOP"
        title = f"{name} budgets (dotted lines): mean of {seeds_text(shown)}"
        finish(ax, xlabel, valid_label(shown), title, log=True)
    save(fig, path)
