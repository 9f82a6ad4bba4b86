"""experiments/: every study end to end at toy scale, resuming, and the results page built from
its records; plus the truncated-history evaluation (`context=`) the context study relies on."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gcnn.evaluation.perplexity import corpus_nll
from gcnn.models import build_model

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "experiments"))


# --- perplexity with a truncated history ------------------------------------------------------


def phrase_stream(n: int, seed: int = 0) -> np.ndarray:
    """Ids 1..8 in phrases whose next word depends on the last 3: history pays off."""
    phrases = [[1, 2, 3, 4, 5], [1, 2, 6, 4, 7], [8, 2, 3, 4, 6], [8, 2, 6, 4, 3]]
    rng = random.Random(seed)
    out: list[int] = []
    while len(out) < n:
        out += rng.choice(phrases) + [0]
    return np.asarray(out[:n], dtype=np.int32)


@pytest.fixture(scope="module")
def trained_tiny_gcnn():
    torch.manual_seed(0)
    tiny = {"embed_dim": 16, "blocks": [{"layers": [[3, 16]], "repeat": 3}], "cutoffs": []}
    model = build_model("gcnn-small", 9, dropout=0.0, **tiny)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    train = torch.from_numpy(phrase_stream(4000, seed=1).astype(np.int64))
    for step in range(60):
        starts = [(step * 37 + 500 * row) % (len(train) - 65) for row in range(4)]
        chunk = torch.stack([train[s : s + 65] for s in starts])
        loss, count, _ = model.loss(chunk[:, :-1], chunk[:, 1:])
        optimizer.zero_grad()
        (loss / count).backward()
        optimizer.step()
    return model.eval()


def test_context_full_equals_default_and_shorter_histories_score_worse(trained_tiny_gcnn):
    model = trained_tiny_gcnn
    tokens = phrase_stream(600, seed=2)
    full = model.receptive_field - 1
    assert full == 6
    default, count = corpus_nll(model, tokens, 0, block_size=50, batch_size=3)
    assert count == len(tokens)
    same, _ = corpus_nll(model, tokens, 0, block_size=50, batch_size=3, context=full)
    more, _ = corpus_nll(model, tokens, 0, block_size=7, batch_size=2, context=full + 10)
    assert same == default and more == pytest.approx(default, rel=1e-6)
    losses = []
    for context in (0, 1, 3):
        nll, n = corpus_nll(model, tokens, 0, block_size=50, batch_size=3, context=context)
        assert n == len(tokens)
        losses.append(nll)
    assert losses[0] > losses[1] > losses[2] > default  # each word of history helps here


def test_context_cuts_history_exactly(trained_tiny_gcnn):
    """A token scored with context c sees exactly the previous c + 1 inputs, nothing more."""
    model = trained_tiny_gcnn
    tokens = phrase_stream(40, seed=3)
    nll, _ = corpus_nll(model, tokens, 0, context=2, block_size=4, batch_size=2)
    x = np.concatenate([[0], tokens[:-1]])  # the input aligned with each target
    expected = 0.0
    with torch.inference_mode():
        for j in range(len(tokens)):
            window = torch.from_numpy(x[max(0, j - 2) : j + 1].astype(np.int64))[None]
            target = torch.full_like(window, -100)
            target[0, -1] = int(tokens[j])
            expected -= float(model.token_log_probs(window, target).sum())
    assert nll == pytest.approx(expected, rel=1e-5)
