"""Study 7, the longer CPU recipes (experiments/wt2_*_long.toml): their runs and section."""

from __future__ import annotations

import shlex

from runner import Run, Runner
from study import StudyOptions, for_family, seeds, selected, user_budget

from studies.default import default_target, section_runs

NAME = "long"
TITLE = "7. The longer CPU recipe (at most 60 minutes)"
GOAL = (100, 60)
REFERENCE = "Grave et al. 2017 report 99.3 for their LSTM on WikiText-2."
# variant -> (family, recipe): each family's recipe, and the tunings tried from it beside it
CONFIGS = {
    "gcnn": ("gcnn", "experiments/wt2_gcnn_long.toml"),
    "lstm": ("lstm", "experiments/wt2_lstm_long.toml"),
    "lstm-dropout0.3": ("lstm", "experiments/wt2_lstm_long_dropout03.toml"),
}


def runs(runner: Runner, o: StudyOptions) -> None:
    """The longer CPU recipes (at most 60 minutes each), GCNN and LSTM at the same budget."""
    data = [] if o.data == "wikitext-2" else ["--data", o.data]
    runs = []
    for s in seeds(o, default=1):
        for variant, (family, config) in CONFIGS.items():
            args = ["--config", config, *data, *user_budget(o), *for_family(o.extra, family)]
            label = shlex.join(["python", "train.py", *args])
            info = {"family": family, "config": config}
            runs.append(Run("long", variant, s, args, label=label, info=info))
    runner.run(selected(o, runs))


def section(records: list[dict], plots: dict) -> list[str]:
    target = default_target(records, *GOAL, REFERENCE, families=("gcnn", "lstm"))
    return section_runs(TITLE, NAME, records, target)
