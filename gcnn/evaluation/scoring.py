"""Sentence scoring: the log-probability of each line of a text, each line on its own.

Every line is an independent sentence: its words and a closing <eos> are the targets, conditioned
on a leading <eos> and nothing else (no history from the previous line, a fresh LSTM state).
Lines are batched (right-padded; padding is never scored) so that scoring a file is fast, and the
result of a line does not depend on which other lines share its batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from gcnn.data import IGNORE_INDEX, SentenceBatcher


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
    model.eval()
    results: list[tuple[float, int] | None] = [None] * len(sentences)
    batcher = SentenceBatcher([list(s) for s in sentences], eos_id, batch_size)
    for inputs, targets, index in batcher:
        inputs, targets = inputs.to(device), targets.to(device)
        # state=None inside token_log_probs: every batch (so every line) starts fresh
        log_probs = model.token_log_probs(inputs, targets).double()
        mask = targets != IGNORE_INDEX
        sums = (log_probs * mask).sum(dim=1).cpu().tolist()
        counts = mask.sum(dim=1).cpu().tolist()
        for row, i in enumerate(index.tolist() if torch.is_tensor(index) else index):
            results[i] = (sums[row], int(counts[row]))
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
