"""What a run measured: the config train.py resolves, FLOPs per token, curves, exact perplexity.

Every function here reads a finished (or planned) run; experiments/runner.py calls them to fill
a record, experiments/run.py to size and estimate the runs it plans.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from records import ROOT

from gcnn.errors import GcnnError


def train_config(args: list[str]):
    """The TrainConfig that train.py would run with these flags (defaults resolved)."""
    from gcnn.training.config import compose, parse_flags
    from gcnn.training.trainer import resolve

    config_file, flags = parse_flags(args)
    with contextlib.chdir(ROOT):  # where train.py runs: --config paths are relative to it
        return resolve(compose(flags, config_file))


def model_from_flags(argv: list[str], download: bool = True):
    """The model train.py builds from these flags (untrained), and its resolved config dict."""
    from gcnn.data import prepare_corpus
    from gcnn.models import build_model
    from gcnn.training.recipe import model_overrides, resolve

    config = train_config(argv)
    corpus = prepare_corpus(
        config.data,
        tokenizer=config.tokenizer,
        vocab_size=config.vocab_size,
        splits=("train",),
        download=download,
    )
    model = build_model(config.model, corpus.tokenizer.vocab_size, **model_overrides(config))
    return model, dataclasses.asdict(resolve(config, model))


def model_family(preset: str) -> str:
    from gcnn.models import PRESETS

    return PRESETS.get(preset, {}).get("family", "gcnn")


def flops_per_token(model, config: dict, train_tokens: np.ndarray) -> dict:
    """Forward and training FLOPs per scored training token (2 x multiply-adds).

    forward = network x (block + context) / block   (a GCNN also runs its unscored context)
            + adaptive-softmax head                  (runs on scored targets only)
            + expected tail: sum_i P(target in cluster i) x FLOPs of tail i, P from the train split
    training = 3 x forward (the backward pass costs about twice the forward: Kaplan et al. 2020).
    Ignored: embedding lookups, gates, residual sums, weight norm, dropout, the optimizer.
    """
    softmax = model.softmax
    head = softmax.flops_per_token(full=False)
    network = model.flops_per_token(full_softmax=False) - head
    if not model.is_recurrent:
        block, context = config["block_size"], config.get("context") or 0
        network = network * (block + context) / block
    counts = np.bincount(np.asarray(train_tokens), minlength=softmax.vocab_size)
    tail = 0.0
    for i, layers in enumerate(softmax.tails):
        share = counts[softmax.bounds[i] : softmax.bounds[i + 1]].sum() / max(1, counts.sum())
        linears = [m for m in layers if isinstance(m, torch.nn.Linear)]
        tail += share * 2 * sum(m.in_features * m.out_features for m in linears)
    forward = network + head + tail
    return {
        "network": network,
        "head": head,
        "tail": tail,
        "forward": forward,
        "train": 3 * forward,
    }


def read_metrics(path: Path) -> list[dict]:
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                rows.append(json.loads(line))
    return rows


def validation_curve(rows: list[dict], train_flops_per_token: float) -> list[dict]:
    """One point per validation. `train_s` is training time alone, summed from the logged rates
    (each metrics line's tokens/s covers the updates since the previous line, validations
    excluded); `wall_s` is the trainer's clock, validations included."""
    points, train_s, last_tokens, last_rate = [], 0.0, 0, None
    for row in rows:
        if row.get("train_loss") is not None and row.get("tokens_per_s"):
            train_s += (row["tokens"] - last_tokens) / row["tokens_per_s"]
            last_tokens, last_rate = row["tokens"], row["tokens_per_s"]
        if row.get("valid_ppl") is not None:
            since = row["tokens"] - last_tokens
            t = train_s + (since / last_rate if last_rate else 0.0)
            points.append(
                {
                    "update": row["step"],
                    "tokens": row["tokens"],
                    "epoch": row.get("epoch"),
                    "wall_s": row.get("wall_s"),
                    "train_s": round(t if last_rate else row.get("wall_s") or 0.0, 3),
                    "train_flops": row["tokens"] * train_flops_per_token,
                    "valid_ppl": row["valid_ppl"],
                }
            )
    return points


# --- exact evaluation --------------------------------------------------------------------------


def exact_perplexity(model, tokenizer, data: str, splits, contexts, context_tokens, options):
    """{split: result} over every token, and the test split with truncated histories."""
    from gcnn.data import find_split_files, resolve_corpus
    from gcnn.evaluation import evaluate_perplexity, tokenize_split
    from gcnn.evaluation.perplexity import check_vocabulary

    files = find_split_files(resolve_corpus(data))
    kwargs = {
        "block_size": options.eval_block_size,
        "batch_size": options.eval_batch_size,
        "device": next(model.parameters()).device,
    }
    results, curve = {}, []
    for split in dict.fromkeys([*splits, *(["test"] if contexts else [])]):
        if split not in files:
            raise GcnnError(f"corpus {data} has no {split} split to evaluate")
        tokens = tokenize_split(tokenizer, files[split])
        check_vocabulary(tokens, files[split], "of this run")
        if split in splits:
            r = evaluate_perplexity(model, tokenizer, tokens.tokens, **kwargs)
            results[split] = {
                "ppl": r.perplexity,
                "loss": r.loss,
                "tokens": r.tokens,
                "seconds": r.seconds,
            }
        if split == "test" and contexts:
            subset = tokens.tokens[:context_tokens] if context_tokens else tokens.tokens
            for context in contexts:
                r = evaluate_perplexity(model, tokenizer, subset, context=context, **kwargs)
                curve.append(
                    {
                        "context": context,
                        "history": context + 1,
                        "ppl": r.perplexity,
                        "seconds": r.seconds,
                    }
                )
    return results, curve
