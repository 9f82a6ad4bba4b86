"""Sentence scoring: the log-probability of each line of a text, each line on its own.

Every line is an independent sentence: its words and a closing <eos> are the targets, conditioned
on a leading <eos> and nothing else (no history from the previous line, a fresh LSTM state).
Lines are batched (right-padded; padding is never scored) so that scoring a file is fast, and the
result of a line does not depend on which other lines share its batch.

A line of more than LONG_LINE tokens is scored on its own, exactly, in chunks: it is the token
stream of gcnn.evaluation.perplexity (each chunk of a GCNN preceded by receptive_field - 1 tokens
of context, an LSTM's state carried from chunk to chunk), so memory does not grow with the
length of a line, and the score is the one a single pass would give (up to float rounding).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from gcnn.data import IGNORE_INDEX, SentenceBatcher
from gcnn.memory import require_memory
from gcnn.models.bounds import batch_bytes

# Tokens (words + <eos>) beyond which a line is scored in chunks of this many.
LONG_LINE = 512


@dataclass
class SentenceScore:
    index: int  # line number in the input, from 0
    text: str
    logprob: float  # natural log-probability of the line's tokens (words + <eos>)
    tokens: int

    @property
    def perplexity(self) -> float:
        return math.exp(-self.logprob / self.tokens)

    def to_json(self) -> dict:
        return {
            "index": self.index,
            "text": self.text,
            "logprob": self.logprob,
            "tokens": self.tokens,
            "perplexity": self.perplexity,
        }


@torch.inference_mode()
def score_token_ids(
    model: torch.nn.Module,
    sentences: Sequence[Sequence[int]],
    eos_id: int,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> list[tuple[float, int]]:
    """(log-probability, token count) of each id sequence (which already ends with <eos>)."""
    from gcnn.evaluation.perplexity import corpus_nll

    model.eval()
    results: list[tuple[float, int] | None] = [None] * len(sentences)
    short = []
    for i, ids in enumerate(sentences):
        if len(ids) > LONG_LINE:  # in chunks, exactly (see the module docstring)
            nll, count = corpus_nll(
                model, np.asarray(ids, dtype=np.int64), eos_id,
                block_size=LONG_LINE, batch_size=batch_size, device=device,
            )  # fmt: skip
            results[i] = (-nll, count)
        else:
            short.append(i)
    if short:
        rows = min(batch_size, len(short))
        width = max(len(sentences[i]) for i in short)
        require_memory(
            batch_bytes(model, rows * width, rows * width, training=False),
            f"scoring batches of {rows:,} lines of up to {width:,} tokens",
            "lower --batch-size",
            device,
        )
    batcher = SentenceBatcher([list(sentences[i]) for i in short], eos_id, batch_size)
    for inputs, targets, index in batcher:
        inputs, targets = inputs.to(device), targets.to(device)
        # state=None inside token_log_probs: every batch (so every line) starts fresh
        log_probs = model.token_log_probs(inputs, targets).double()
        mask = targets != IGNORE_INDEX
        sums = (log_probs * mask).sum(dim=1).cpu().tolist()
        counts = mask.sum(dim=1).cpu().tolist()
        for row, i in enumerate(index.tolist() if torch.is_tensor(index) else index):
            results[short[i]] = (sums[row], int(counts[row]))
    missing = [i for i, r in enumerate(results) if r is None]
    if missing:  # a batcher that dropped lines is a bug, not a user error
        raise RuntimeError(f"SentenceBatcher did not yield sentences {missing[:5]}")
    return results  # type: ignore[return-value]


def score_lines(
    model: torch.nn.Module,
    tokenizer,
    lines: Iterable[str],
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> list[SentenceScore]:
    """Score every line of a text with the checkpoint's tokenizer (unknown words → <unk>)."""
    texts = [line.rstrip("\n") for line in lines]
    ids = [tokenizer.encode(text) for text in texts]
    scored = score_token_ids(model, ids, tokenizer.eos_id, batch_size, device)
    return [
        SentenceScore(i, text, logprob, n)
        for i, (text, (logprob, n)) in enumerate(zip(texts, scored, strict=True))
    ]
