"""A resume is the same run or it is refused: what must match, and what may change.

`--resume` takes the checkpoint's saved config as its base, and flags or a TOML file may still
override it. Some overrides are what resuming is for (a longer budget, a lower learning rate after
a divergence, another device); others would silently make it another run: the saved data
position (epoch, next micro-batch) indexes a block order that only the same corpus, block size,
batch shape, context and seed reproduce. Every field of TrainConfig is in exactly one of the
lists below (tests/test_hostile.py checks it), so a new setting must be classified.
"""

from __future__ import annotations

import hashlib

import numpy as np

from gcnn.errors import GcnnError
from gcnn.training.config import TrainConfig

# Decide which tokens are seen in which order (and how the update is formed): must match.
SAME_DATA_ORDER = (
    "tokenizer",
    "vocab_size",
    "block_size",
    "context",
    "tokens_per_batch",
    "grad_accum",
    "seed",
)
# The optimizer's state only fits its own kind.
SAME_OPTIMIZER = ("optimizer",)
# The model: compared as the built model's config (RunDir.check_owner: "another model").
SAME_MODEL = ("model", "dropout", "gating", "weight_norm", "model_args")
# The corpus is compared by content (the training split's tokens), not by how it is named, so a
# corpus moved to another directory still resumes: see `corpus_identity`.
SAME_CORPUS = ("data",)
# May change on resume (docs/training.md lists them): the budget and the schedule's end, the
# optimisation's numbers, the device and numerics, validation, logging and bookkeeping.
MAY_CHANGE = (
    "max_epochs",
    "max_updates",
    "max_minutes",
    "lr",
    "min_lr",
    "warmup_updates",
    "lr_shrink",
    "momentum",
    "weight_decay",
    "clip_norm",
    "dropout_from_epoch",
    "precision",
    "compile",
    "device",
    "valid_every",
    "valid_tokens",
    "log_every",
    "save_every",
    "max_bad_updates",
    "progress",
    "tensorboard",
    "out",
    "resume",
)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def corpus_identity(tokens: np.ndarray) -> dict:
    """The training split as a resumed run must find it again: its length and a checksum of
    its token ids (about a second for WikiText-103's 100M tokens)."""
    data = np.ascontiguousarray(tokens)
    return {"tokens": int(len(data)), "sha256": hashlib.sha256(memoryview(data)).hexdigest()[:16]}


def check_same_run(
    ckpt: dict, config: TrainConfig, world_size: int, corpus: dict, where: str
) -> None:
    """GcnnError naming every setting of `config` that makes it another run than the one
    `ckpt` (read from `where`) saved, with the run's own value."""
    saved = ckpt.get("train_config") or {}
    diffs = [
        f"{flag(name)} {saved[name]!r} (not {getattr(config, name)!r})"
        for name in (*SAME_DATA_ORDER, *SAME_OPTIMIZER)
        if name in saved and saved[name] != getattr(config, name)
    ]
    saved_world = (ckpt.get("metrics") or {}).get("world_size")
    if saved_world is not None and saved_world != world_size:
        diffs.append(f"{saved_world} process(es) (not {world_size})")
    if diffs:
        raise GcnnError(
            f"--resume: the run in {where} was trained with {', '.join(diffs)}; a resumed run "
            "must see the same tokens in the same order: drop those settings (the run's own are "
            "used) or start a new run with another --out"
        )
    saved_corpus = (ckpt.get("data_position") or {}).get("corpus")
    if saved_corpus is not None and saved_corpus != corpus:
        raise GcnnError(
            f"--resume: the training split of {config.data} ({corpus['tokens']:,} tokens, "
            f"checksum {corpus['sha256']}) is not the one the run in {where} trained on "
            f"({saved_corpus.get('tokens', 0):,} tokens, checksum {saved_corpus.get('sha256')}); "
            f"resume with the run's own corpus (it was --data {saved.get('data')})"
        )
