"""How long planned runs will take: from records of the same machine, else built-in rates."""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import numpy as np
from measure import model_family, train_config

if TYPE_CHECKING:
    from runner import Run

# Before any record exists, estimates use these rates: seconds per training token of gcnn-small
# and lstm-small on WikiText-2 (bf16, one thread of the 2-core AMD EPYC: the gating and norm
# studies' records measure 9,000-10,500 tokens/s for gcnn-small; the LSTM's rate is a guess),
# and the seconds a run spends besides training (start-up, validations, the exact valid + test
# evaluation; an LSTM scores one stream at batch 1). Rough on purpose: the first records of a
# machine replace them.
FALLBACK_RATE = {"gcnn": 1 / 9500, "lstm": 1 / 20000}
FALLBACK_EVAL_S = {"gcnn": 30.0, "lstm": 90.0}
FALLBACK_COMMAND_S = 90.0


def estimate(runs: list[Run], known: list[dict], threads: int | None = None) -> tuple[float, str]:
    """Seconds for `runs`, from records of this machine where there are any (of runs with
    `threads` threads where there are such)."""
    total, sources = 0.0, set()
    for run in runs:
        seconds, source = estimate_run(run, known, threads)
        total += seconds
        sources.add(source)
    return total, ", ".join(sorted(sources))


def estimate_run(run: Run, known: list[dict], threads: int | None = None) -> tuple[float, str]:
    """Seconds for one run: the median of records of the same run where there are some; else
    its tokens at the rate of the family's records, scaled by the run's training FLOPs per token
    against theirs (a wider or deeper model takes longer per token), plus their median overhead
    (start-up, validations, evaluation)."""
    same = [
        r["wall_s"]
        for r in known
        if r.get("study") == run.study and r.get("variant") == run.variant and not r.get("resumed")
    ]
    if same:
        return float(np.median(same)), "records of the same variant"
    if not run.is_training:
        return FALLBACK_COMMAND_S, "a guess"
    config = train_config(run.args)
    family = model_family(config.model)
    tokens = None
    if config.max_updates is not None:
        tokens = config.max_updates * config.tokens_per_batch
    peers = [
        r
        for r in known
        if r.get("model", {}).get("family") == family and r.get("done", {}).get("train_s")
    ]
    peers = [r for r in peers if r["config"].get("data") == config.data] or peers
    peers = [r for r in peers if r.get("machine", {}).get("threads") == threads] or peers
    if peers:
        rate = float(np.median([r["done"]["train_s"] / max(1, r["done"]["tokens"]) for r in peers]))
        mine = planned_flops(tuple(run.args)) if all(r.get("flops_per_token") for r in peers) else 0
        if mine:  # per token: the peers' seconds per FLOP times this run's FLOPs
            per_flop = [
                r["done"]["train_s"] / max(1, r["done"]["tokens"]) / r["flops_per_token"]["train"]
                for r in peers
            ]
            rate = float(np.median(per_flop)) * mine
        # a resumed run's wall_s covers only its last process, so it says nothing of the overhead
        whole = [r for r in peers if not r.get("resumed")]
        overhead = (
            max(0.0, float(np.median([r["wall_s"] - r["done"]["train_s"] for r in whole])))
            if whole
            else FALLBACK_EVAL_S[family]
        )
        source = f"{family} records"
    else:
        rate, overhead, source = FALLBACK_RATE[family], FALLBACK_EVAL_S[family], "built-in rates"
    seconds = math.inf if tokens is None else tokens * rate
    if config.max_minutes is not None:
        seconds = min(seconds, 60 * config.max_minutes)
    if math.isinf(seconds):  # epochs only: assume WikiText-2's 2.09M training tokens per epoch
        seconds = (config.max_epochs or 1) * 2_088_628 * rate
    return seconds + overhead, source


@functools.cache
def planned_flops(args: tuple[str, ...]) -> float:
    """Training FLOPs per token of the model these flags build (0: not known yet, e.g. the
    corpus is not there or a size is still to be solved)."""
    from measure import flops_per_token, model_from_flags

    from gcnn.data import prepare_corpus
    from gcnn.errors import GcnnError

    try:
        model, config = model_from_flags(list(args), download=False)
        corpus = prepare_corpus(
            config["data"],
            tokenizer=config["tokenizer"],
            vocab_size=config["vocab_size"],
            splits=("train",),
            download=False,
        )
    except (GcnnError, ValueError):
        return 0.0
    return flops_per_token(model, config, corpus.splits["train"])["train"]
