"""Study 6, the default run: `python train.py` as a user runs it (+ lstm-small); its section.

Also the table and the goal sentence that the longer recipe's study (studies/long.py) shares.
"""

from __future__ import annotations

import shlex

from measure import model_family
from page import RUN, load_brief, load_text, machines, no_records, plural, table
from records import test_ppl, valid_ppl
from runner import Run, Runner
from stats import mean
from study import StudyOptions, for_family, seeds, selected, user_budget

from gcnn.training.config import TrainConfig

NAME = "default"
DEFAULT_MODEL = TrainConfig().model  # what `python train.py` trains
TITLE = "6. The default run: `python train.py`"
GOAL = (140, 10)  # test perplexity within minutes (the results issue's goal)
REFERENCE = (
    "For comparison, pytorch/examples' word-level LSTM (2×200) reaches 142.1 after 6 "
    "epochs (its users' report) and 234.5 after its first epoch (14.6 min on this 2-core "
    "machine)."
)


def runs(runner: Runner, o: StudyOptions) -> None:
    """`python train.py` exactly as a user types it (only --seed and --out added), timed, then the
    exact valid and test perplexity; `python train.py --model lstm-small` beside it."""
    data = [] if o.data == "wikitext-2" else ["--data", o.data]
    commands = {
        DEFAULT_MODEL: [*data, *user_budget(o), *o.extra],
        "lstm-small": [
            "--model",
            "lstm-small",
            *data,
            *user_budget(o),
            *for_family(o.extra, "lstm"),
        ],
    }
    runs = []
    for s in seeds(o, default=1):
        for variant, args in commands.items():
            label = shlex.join(["python", "train.py", *args])
            info = {"family": model_family(variant)}
            runs.append(Run("default", variant, s, args, label=label, info=info))
    runner.run(selected(o, runs))


# --- the page ---------------------------------------------------------------------------------


def section(records: list[dict], plots: dict) -> list[str]:
    return section_runs(TITLE, NAME, records, default_target(records, *GOAL, REFERENCE))


def section_runs(title: str, study: str, records: list[dict], target: str) -> list[str]:
    if not records:
        return no_records(title, f"{RUN} {study}")
    rows, resumed = [], False
    for r in sorted(records, key=lambda r: (r["variant"], r["seed"])):
        d = r["done"]
        wall = f"{wall_minutes(r):.1f}" + ("†" if r.get("resumed") else "")
        resumed = resumed or bool(r.get("resumed"))
        rows.append(
            [
                f"`{r['label']}`",
                str(r["seed"]),
                wall,
                f"{d['updates']:,}",
                f"{d['tokens']:,} ({d['epochs'] or 0:.2f} ep.)",  # exactly as recorded
                f"{valid_ppl(r):.2f}" if valid_ppl(r) else "–",
                f"{test_ppl(r):.2f}" if test_ppl(r) else "–",
                load_brief(r),
            ]
        )
    lines = [
        f"## {title}",
        "",
        f"- Command: `{RUN} {study}` (each run: `python train.py` as listed, timed as `time` "
        "would, then exact evaluation)",
        f"- Machine: {machines(records)}; {load_text(records)}.",
        "",
    ]
    lines += table(
        ["command", "seed", "wall (min)", "updates", "tokens", "valid ppl", "test ppl", "load"],
        rows,
    )
    if resumed:
        lines += ["", "† resumed after an interruption: the trainer's clock over both processes."]
    return lines + ["", target, ""]


def wall_minutes(record: dict) -> float:
    """`time python train.py`, in minutes. A resumed run's process time covers only its last
    process; the trainer's clock runs on across the resume, so it stands in (training and
    validation, without start-up)."""
    done = record["done"]
    return done["trainer_wall_s" if record.get("resumed") else "process_s"] / 60


def default_target(
    records: list[dict], goal: float, minutes: float, reference: str, families=("gcnn",)
) -> str:
    """Each recipe's test perplexity and wall time (mean over its seeds) against the issue's goal.

    One sentence per recipe (its command) of the named families, so a study with several recipes
    (the long one: the GCNN's, the LSTM's and a tuned one) says which met the goal."""
    recipes: dict[str, list[dict]] = {}
    for r in records:
        if r["info"].get("family") in families and test_ppl(r):
            recipes.setdefault(r["label"], []).append(r)
    sentences = []
    for label, runs in recipes.items():
        ppl = mean([test_ppl(r) for r in runs])
        wall = mean([wall_minutes(r) for r in runs])
        met = "met" if ppl <= goal and wall <= minutes else "not met"
        seeds = "mean of " + plural(len(runs), "seed") if len(runs) > 1 else "one seed"
        sentences.append(
            f"`{label}`: test perplexity {ppl:.1f} in {wall:.1f} min ({seeds}), against "
            f"the goal of ≤ {goal:g} within {minutes:g} minutes: {met}."
        )
    if not sentences:
        return ""
    return " ".join(sentences) + f" {reference}"
