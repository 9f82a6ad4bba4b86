"""What a study is made of: its options (every default stated here once) and its runs' flags.

Each study module (experiments/studies/) builds its runs from these pieces; run.py's flags are
these options, with these defaults.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field

from measure import train_config
from runner import Run, Runner
from stats import best_lr


@dataclass
class StudyOptions:
    seeds: int | None = None  # None: 3 (1 for default and long)
    max_updates: int | None = None
    max_minutes: float | None = None
    max_epochs: int | None = None
    data: str = "wikitext-2"
    model: str = "gcnn-small"
    lstm_model: str = "lstm-small"
    valid_tokens: int = 32768  # validations during training (the curves); 0: the whole split
    valid_points: int = 8  # validations per run
    lrs: list[float] = field(default_factory=lambda: [5e-3, 1e-2, 2e-2, 4e-2])  # lstm study sweep
    nag_lrs: list[float] = field(default_factory=lambda: [0.1, 0.3, 1.0, 2.0])  # norm sweep
    # NAG without clipping at its own best lr: smaller lrs than the clipped sweep's
    unclipped_lrs: list[float] = field(default_factory=lambda: [0.01, 0.03, 0.1, 0.3])
    kernels: list[int] = field(default_factory=lambda: [1, 2, 4, 8])  # context study
    # budget study: wall-time budgets (minutes, the trainer's clock) and training-FLOP budgets,
    # each a few minutes' worth and about the default run's 9 minutes (gcnn-small on 2 cores
    # spends 0.1 PFLOP in about 8 minutes)
    budget_minutes: list[float] = field(default_factory=lambda: [2.0, 9.0])
    budget_pflops: list[float] = field(default_factory=lambda: [0.02, 0.1])
    context_tokens: int = 20000  # truncated-history evaluation: first N test tokens
    latency_models: list[str] = field(
        default_factory=lambda: ["gcnn-8b,lstm-2048", "gcnn-small,lstm-small"]
    )
    precisions: list[str] = field(default_factory=lambda: ["bf16", "fp32"])
    repeats: int = 20
    latency_args: list[str] = field(default_factory=list)  # more flags for both latency commands
    tools: list[str] = field(default_factory=lambda: ["evaluate", "roofline"])  # latency
    only: list[str] = field(default_factory=list)  # variant patterns (fnmatch)
    extra: list[str] = field(default_factory=list)  # flags after `--`


def seeds(o: StudyOptions, default: int = 3) -> range:
    return range(1, (o.seeds or default) + 1)


def budget_args(o: StudyOptions, default_updates: int | None) -> list[str]:
    """Stopping and validation flags: the study's update budget unless one is given."""
    updates = o.max_updates
    if updates is None and o.max_minutes is None and o.max_epochs is None:
        updates = default_updates
    args = []
    if updates is not None:
        args += ["--max-updates", str(updates)]
    if o.max_minutes is not None:
        args += ["--max-minutes", f"{o.max_minutes:g}"]
    if o.max_epochs is not None:
        args += ["--max-epochs", str(o.max_epochs)]
    every = 50
    if updates:  # the first divisor of the budget that gives at most valid_points validations
        every = next(
            d for d in range(math.ceil(updates / o.valid_points), updates + 1) if updates % d == 0
        )
    # log at every validation, so that training time is known at each point of the curve
    args += ["--valid-every", str(every), "--log-every", str(every)]
    if o.valid_tokens:
        args += ["--valid-tokens", str(o.valid_tokens)]
    return args


def study_recipe(model: str, optimizer: str = "adamw") -> list[str]:
    """Flags that keep a study on the recipe its records were made with (4,096 tokens per update,
    AdamW's lr 1e-2 and weight decay 0.01, the preset's dropout) where the default run's recipe
    has moved on (gcnn.training.recipe.SMALL_RECIPES): a study compares variants under one fixed
    recipe, and a new default must neither change its runs nor orphan its records. A NAG run
    gets --optimizer nag and none of AdamW's values (recipe.ADAMW_ONLY): it keeps NAG's own."""
    from gcnn.models import PRESETS
    from gcnn.training.recipe import ADAMW_ONLY, TOKENS_PER_BATCH, small_recipe

    before = {"tokens_per_batch": TOKENS_PER_BATCH, "lr": 1e-2, "weight_decay": 0.01}
    before["dropout"] = PRESETS[model].get("dropout") if model in PRESETS else None
    flags = [] if optimizer == "adamw" else ["--optimizer", optimizer]
    for name in small_recipe(model):
        if before.get(name) is not None and not (name in ADAMW_ONLY and optimizer != "adamw"):
            flags += ["--" + name.replace("_", "-"), f"{before[name]:g}"]
    return flags


def model_flags(o: StudyOptions, model: str, optimizer: str = "adamw") -> list[str]:
    """--data, --model and the study's recipe for it: what every study run starts with."""
    return ["--data", o.data, "--model", model, *study_recipe(model, optimizer)]


def training_args(
    o: StudyOptions, model: str, default_updates: int | None, optimizer: str = "adamw"
) -> list[str]:
    return [*model_flags(o, model, optimizer), *budget_args(o, default_updates), *o.extra]


def runs_for_seeds(o: StudyOptions, study: str, variant: str, args: list[str], **kw) -> list[Run]:
    return [Run(study, variant, s, list(args), **kw) for s in seeds(o)]


def selected(o: StudyOptions, runs: list[Run]) -> list[Run]:
    if not o.only:
        return runs
    return [r for r in runs if any(fnmatch.fnmatch(r.variant, p) for p in o.only)]


def lr_name(lr: float) -> str:
    return f"lr{lr:g}"


def chosen_lr(runner: Runner, o: StudyOptions, sweep: list[Run], lrs: list[float]) -> float | None:
    """Run a learning-rate sweep (what is not recorded yet) and return the lr it chose
    (stats.best_lr); None while any of its runs is missing (planning, or --only)."""
    records = runner.run(selected(o, sweep))
    return best_lr(records) if len(records) >= len(lrs) else None


def tuned_lr(
    runner: Runner, o: StudyOptions, sweep_run, lrs: list[float], extend: int = 2
) -> float | None:
    """Sweep `lrs` (sweep_run(lr) -> Run, one seed) and return the lr it chose; while the choice
    is the largest or the smallest lr swept, the sweep is extended by a factor of 2 beyond it
    (at most `extend` times; the page flags a choice still at the edge). None while a run of
    the sweep is missing (planning, or --only)."""
    lrs = sorted(lrs)
    for attempt in range(extend + 1):
        chosen = chosen_lr(runner, o, [sweep_run(lr) for lr in lrs], lrs)
        at_edge = chosen is not None and len(lrs) > 1 and chosen in (lrs[0], lrs[-1])
        if not at_edge or attempt == extend:
            return chosen
        lrs = sorted({*lrs, chosen * 2 if chosen == lrs[-1] else chosen / 2})
    return None


def model_args(args: list[str]) -> dict:
    """The model options these train.py flags set (--model-arg KEY=VALUE, --dropout, ...)."""
    from gcnn.training.recipe import model_overrides

    return model_overrides(train_config(args))


def for_family(args: list[str], family: str) -> list[str]:
    """Drop the flags and --model-arg options that the family's models do not have."""
    import dataclasses

    from gcnn.models.config import CONFIGS

    known = {f.name for f in dataclasses.fields(CONFIGS[family])}
    gcnn_only = ("--gating", "--weight-norm", "--no-weight-norm")
    out, i = [], 0
    while i < len(args):
        flag, value = args[i].partition("=")[::2]
        takes_value = flag in ("--model-arg", "--gating") and not value
        if takes_value and i + 1 < len(args):
            value = args[i + 1]
        n = 2 if takes_value else 1
        keep = not (family == "lstm" and flag in gcnn_only)
        if flag == "--model-arg":
            keep = value.partition("=")[0].strip() in known
        if keep:
            out += args[i : i + n]
        i += n
    return out


def vocab_size(o: StudyOptions, download: bool = True) -> int:
    from gcnn.data import prepare_corpus

    c = train_config(["--data", o.data, *o.extra])  # the tokenizer the runs will use
    corpus = prepare_corpus(
        c.data, tokenizer=c.tokenizer, vocab_size=c.vocab_size, splits=("train",), download=download
    )
    return corpus.tokenizer.vocab_size


def count_params(preset: str, vocab: int, **overrides) -> int:
    import torch

    from gcnn.models import build_model

    with torch.device("meta"):  # shapes only: no memory, no initialisation
        return build_model(preset, vocab, **overrides).num_parameters()


def network_flops(preset: str, vocab: int, block_size: int, **overrides) -> float:
    """FLOPs per scored token of the network alone (no embedding lookup, no softmax), as
    measure.flops_per_token counts them: a GCNN also runs its unscored context per block."""
    import torch

    from gcnn.models import build_model

    with torch.device("meta"):
        model = build_model(preset, vocab, **overrides)
    network = model.flops_per_token(full_softmax=False) - model.softmax.flops_per_token(False)
    if not model.is_recurrent:
        network *= (block_size + (model.receptive_field or 1) - 1) / block_size
    return network


def solve_increasing(f, target: float) -> int:
    """The integer h >= 1 whose f(h) is nearest `target`, for f increasing in h (bisection)."""
    lo, hi = 1, 2
    while f(hi) < target:
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # the last h below the target and the first above
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if f(mid) < target else (lo, mid)
    return min((lo, hi), key=lambda h: abs(f(h) - target))


def user_budget(o: StudyOptions) -> list[str]:
    args = []
    if o.max_updates is not None:
        args += ["--max-updates", str(o.max_updates)]
    if o.max_minutes is not None:
        args += ["--max-minutes", f"{o.max_minutes:g}"]
    if o.max_epochs is not None:
        args += ["--max-epochs", str(o.max_epochs)]
    return args
