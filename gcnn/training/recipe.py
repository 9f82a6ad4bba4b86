"""Recipe defaults: what the fields of a TrainConfig left at None mean for this model; and the
bounds of its sizes.

The paper's presets get fairseq's WikiText-103 recipe (NAG, lr 1, clip 0.1, 35 epochs); the
CPU-scale presets ("-small") a modern one (AdamW, cosine schedule, a fixed training time).
`check_sizes` refuses, before the model is built, sizes the corpus, the model or the memory
cannot take (`--block-size 1000000000` is one line, not the kernel's OOM killer).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from gcnn.errors import GcnnError
from gcnn.memory import require_memory
from gcnn.models.bounds import batch_bytes, check_fits, parameter_bytes
from gcnn.training.config import DATASETS, TrainConfig
from gcnn.training.feed import rows_per_micro_batch

# Default stopping for the small presets on WikiText-2: a fixed training time, so that the
# no-argument `time python train.py` (start-up and the last validation included) takes about 10
# minutes on whatever machine runs it; the cosine schedule follows the clock (see LRSchedule). A
# fast machine trains for more updates in it. For a run that is the same on every machine, give
# --max-updates instead.
SMALL_MAX_MINUTES = 9.0
PAPER_MAX_EPOCHS = 35  # fairseq's WikiText-103 recipe
TOKENS_PER_BATCH = 4096  # scored tokens per update, unless the recipe below says otherwise

# What the small presets use where a field is left at None (data, not code), each tuned for its
# own preset. gcnn-8-small's, the no-argument default, is tuned for 9 minutes on the slowest CPU
# met so far (docs/training.md, "The default recipe"): about 3.3 epochs of WikiText-2 there.
# 2,048-token batches learn more per token than 4,096 (twice the updates for the same tokens, at
# the same tokens/s on 2 cores) and dropout 0.1 more than 0.2; weight decay 0.1, not AdamW's usual
# 0.01, keeps it from overfitting in its fourth epoch (better there and at 7.7 epochs); lr 3e-2
# with the preset's wider softmax tails beats lr 2e-2 with narrow ones over three seeds there
# (neither change was separated on its own). Late dropout (none in the first epochs, then 0.1)
# beats dropout from the start over five seeds where a CPU gets under 3 epochs, partly because
# the step runs faster without it (each at its own budget); starting it after 4 epochs rather
# than 3 is better by about one perplexity point at the 2-core Zen 4's budget (three seeds) and
# no worse at the Xeon's (one seed) or the Zen 5's (three). gcnn-small keeps the GCNNs' recipe from
# before (the first round of probes chose its batch, lr and dropout at under 2 epochs; the
# weight decay was measured on gcnn-8-small only). The LSTM keeps the recipe its default run was
# measured with: late dropout made it worse at its own budget (docs/training.md, seventh round).
_GCNN_SMALL = {"tokens_per_batch": 2048, "lr": 2e-2, "dropout": 0.1, "weight_decay": 0.1}
SMALL_RECIPES = {
    "gcnn-small": _GCNN_SMALL,
    "gcnn-8-small": {**_GCNN_SMALL, "lr": 3e-2, "dropout_from_epoch": 4},
    "lstm-small": {},
}
ADAMW_ONLY = ("lr", "weight_decay")  # a recipe's values for these are AdamW's, not NAG's


def is_small_preset(name: str) -> bool:
    """The CPU-scale presets ("gcnn-small", "gcnn-8-small", "lstm-small") get the modern recipe
    by default."""
    return name.endswith("-small")


def small_recipe(model: str) -> dict:
    """The small preset's own settings (SMALL_RECIPES; empty for any other model)."""
    return SMALL_RECIPES.get(model, {})


def resolve(config: TrainConfig, model=None) -> TrainConfig:
    """Fill the fields left at None: the recipe follows the preset, the context the model."""
    c = dataclasses.replace(config)
    if c.optimizer is None:
        c.optimizer = "adamw" if is_small_preset(c.model) else "nag"
    nag = c.optimizer == "nag"
    for name, value in small_recipe(c.model).items():
        if getattr(c, name) is None and not (name in ADAMW_ONLY and nag):
            setattr(c, name, value)
    if c.tokens_per_batch is None:
        c.tokens_per_batch = TOKENS_PER_BATCH
    if c.lr is None:
        c.lr = 1.0 if nag else 1e-2
    if c.weight_decay is None:
        c.weight_decay = 5e-6 if nag else 0.01
    if c.dropout_from_epoch is None:
        c.dropout_from_epoch = 0
    if c.clip_norm is None:
        c.clip_norm = 0.1 if nag else 1.0
    if c.max_epochs is None and c.max_updates is None and c.max_minutes is None:
        if is_small_preset(c.model):
            c.max_minutes = SMALL_MAX_MINUTES
        else:
            c.max_epochs = PAPER_MAX_EPOCHS
    if c.out is None:
        name = c.data if c.data in DATASETS else Path(c.data).name
        c.out = str(Path("runs") / f"{c.model}-{name}")
    if model is not None:
        if model.is_recurrent:
            if c.context not in (None, 0):
                raise GcnnError(f"--context {c.context}: LSTMs carry their state; drop --context")
            c.context = 0
        elif c.context is None:
            c.context = max(0, (model.receptive_field or 1) - 1)
    return c


def model_overrides(config: TrainConfig) -> dict:
    """The keyword arguments for `build_model`: `model_args` plus the model flags that were set."""
    overrides = dict(config.model_args)
    for name in ("dropout", "gating", "weight_norm"):
        if getattr(config, name) is not None:
            overrides[name] = getattr(config, name)
    return overrides


def update_horizon(config: TrainConfig, updates_per_epoch: int) -> int | None:
    """The update at which --max-updates or --max-epochs ends the run, whichever is first (None:
    only the clock ends it)."""
    horizon = config.max_updates
    if config.max_epochs is not None:
        by_epochs = config.max_epochs * updates_per_epoch
        horizon = by_epochs if horizon is None else min(horizon, by_epochs)
    return horizon


def check_sizes(config: TrainConfig, model, train_tokens: int, world_size: int, device) -> None:
    """Refuse sizes that cannot make sense or fit, before anything is built: a context longer
    than the model can see, a block or an update larger than the training split, and a run
    whose parameters, gradients, optimizer state and one micro-batch's activations (lower
    bounds; `model` may be on the meta device) exceed the device's memory."""
    c = config
    if not model.is_recurrent and c.context > model.receptive_field - 1:
        raise GcnnError(
            f"--context {c.context}: this model sees at most {model.receptive_field - 1} tokens "
            f"of history (receptive field {model.receptive_field}), more context is never used; "
            f"choose 0 to {model.receptive_field - 1} (the default)"
        )
    for name in ("block_size", "tokens_per_batch"):
        if getattr(c, name) > train_tokens:
            raise GcnnError(
                f"--{name.replace('_', '-')} {getattr(c, name)}: more than the {train_tokens:,} "
                f"tokens of the training split of {c.data}; choose at most {train_tokens:,}"
            )
    rows = rows_per_micro_batch(c, world_size)
    slots = 2 if c.optimizer == "adamw" else 1  # AdamW's two moments, NAG's momentum
    # weights, gradients and optimizer state; then the activations of one micro-batch too
    state = (2 + slots) * parameter_bytes(model)
    check_fits(model, device, 2 + slots, f"training {c.model} with {c.optimizer}")
    fed, scored = rows * (c.context + c.block_size), rows * c.block_size
    require_memory(
        state + batch_bytes(model, fed, scored, training=True),
        f"training {c.model} on micro-batches of {rows:,} x {c.context + c.block_size:,} tokens "
        f"({c.context:,} of context)",
        "lower --block-size or --tokens-per-batch, or raise --grad-accum",
        device,
    )


def build_checked_model(config: TrainConfig, vocab_size: int, train_tokens: int, world_size: int,
                        device):  # fmt: skip
    """(model, config resolved for it): built on the meta device first (shapes, no storage) for
    `check_sizes`, then for real from the seed."""
    import torch

    from gcnn.models import build_model

    config = resolve(config)  # the recipe's model settings (dropout) before the model is built
    overrides = model_overrides(config)
    with torch.device("meta"):
        meta = build_model(config.model, vocab_size, **overrides)
    config = resolve(config, meta)
    check_sizes(config, meta, train_tokens, world_size, device)
    torch.manual_seed(config.seed)
    return build_model(config.model, vocab_size, **overrides), config


def stop_reason(config: TrainConfig, p, epoch_done: bool, over_time: bool, schedule) -> str:
    """Which limit of the recipe ends the run now ("": none does): `p` is the run's Progress,
    `epoch_done` whether the next update would start a new epoch, `over_time` whether the
    clock ran out (agreed by all ranks in the last update)."""
    if config.max_updates is not None and p.step >= config.max_updates:
        return f"reached --max-updates {config.max_updates}"
    if config.max_epochs is not None and (p.epoch + epoch_done) >= config.max_epochs:
        return f"reached --max-epochs {config.max_epochs}"
    if over_time:
        return f"reached --max-minutes {config.max_minutes:g}"
    if schedule.exhausted():
        return f"learning rate fell below --min-lr {config.min_lr:g}"
    return ""
