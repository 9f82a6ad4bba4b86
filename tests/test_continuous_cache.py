"""The continuous cache (Grave et al. 2017) at evaluation time: exact, causal, normalised.

Every score is checked against the formula computed naively (a Python loop over positions, in
float64, on the hidden states of ONE pass over the whole stream), so the vectorised block code,
its rolling buffer and its masks are tested for any block and batch size at once.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import write_synthetic_corpus
from test_eval import run_main, tiny_model, write_checkpoint

from gcnn.data import IGNORE_INDEX, BlockBatcher, prepare_corpus
from gcnn.evaluation import (
    CacheConfig,
    ContinuousCache,
    cache_next_word_log_probs,
    corpus_nll,
    evaluate_with_cache,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    directory = write_synthetic_corpus(tmp_path_factory.mktemp("cache") / "tiny", lines=300)
    return prepare_corpus(directory, cache_dir=directory / "cache")


@pytest.fixture(scope="module", params=["gcnn", "lstm"])
def family(request):
    return request.param


def one_pass(model, tokens: np.ndarray, eos_id: int):
    """Hidden states and log p_model of the targets from one pass over the whole stream."""
    t = torch.from_numpy(np.asarray(tokens, dtype=np.int64))[None]
    x = torch.cat([torch.tensor([[eos_id]]), t[:, :-1]], dim=1)
    with torch.inference_mode():
        hidden, _ = model(x)
        return hidden[0].double(), model.softmax.target_log_prob(hidden, t)[0].double()


def naive_cache_log_probs(hidden, model_lp, tokens, config: CacheConfig) -> torch.Tensor:
    """The formula, one position at a time: the cache of t is [t − size, t − 1]."""
    out = torch.empty(len(tokens), dtype=torch.float64)
    for t in range(len(tokens)):
        cached = range(max(0, t - config.size), t)
        if not cached:
            out[t] = model_lp[t]
            continue
        scores = torch.stack([config.theta * hidden[t] @ hidden[i] for i in cached])
        weights = torch.softmax(scores, dim=0)
        p_cache = sum(w for w, i in zip(weights, cached, strict=True) if tokens[i] == tokens[t])
        p = (1 - config.lam) * model_lp[t].exp() + config.lam * p_cache
        out[t] = torch.log(p)
    return out


# --- exactness --------------------------------------------------------------------------------


def test_lambda_zero_is_todays_perplexity(corpus, family):
    model = tiny_model(family, corpus.tokenizer.vocab_size)
    tokens, eos = corpus.splits["valid"], corpus.tokenizer.eos_id
    options = dict(block_size=16, batch_size=3)
    nll, count = corpus_nll(model, tokens, eos, **options)
    config = CacheConfig(50, 0.5, 0.0)
    scores = evaluate_with_cache(model, corpus.tokenizer, tokens, config, **options).log_probs
    assert len(scores) == count == len(tokens)
    # one exact stream (perplexity.exact_stream) under both: the same numbers, summed in float64
    assert -float(scores.double().sum()) == pytest.approx(nll, rel=1e-12)
    if family == "gcnn":  # token for token, the very same numbers as today's batches give
        today = []
        for inputs, targets in BlockBatcher(tokens, eos, 16, 3, context=model.receptive_field - 1):
            today.append(model.token_log_probs(inputs, targets)[targets != IGNORE_INDEX])
        assert torch.equal(scores, torch.cat(today))


@pytest.mark.parametrize("size", [1, 7, 40])
def test_scores_are_the_formula_for_any_block_and_batch_size(corpus, family, size):
    model = tiny_model(family, corpus.tokenizer.vocab_size)
    tokens, eos = corpus.splits["valid"][:300], corpus.tokenizer.eos_id
    config = CacheConfig(size=size, theta=0.7, lam=0.3)
    hidden, model_lp = one_pass(model, tokens, eos)
    reference = naive_cache_log_probs(hidden, model_lp, tokens, config)
    # the cache changes the scores (the comparison has teeth), mostly upwards on repeated words
    assert (reference - model_lp).abs().max() > 0.1
    for block_size, batch_size in [(5, 1), (16, 3), (1000, 2)]:
        options = dict(block_size=block_size, batch_size=batch_size)
        scores = evaluate_with_cache(model, corpus.tokenizer, tokens, config, **options).log_probs
        assert scores.dtype == torch.float32 and len(scores) == len(tokens)
        torch.testing.assert_close(scores.double(), reference, rtol=0, atol=2e-5)


def test_hand_computed_example():
    """Three positions, known 2-d hidden states, words 5, 7, 5."""
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    words = torch.tensor([5, 7, 5])
    cache = ContinuousCache(sizes=[2, 1], thetas=[1.0, 0.5, 0.0])
    log_p, empty = cache.target_log_probs(h, words)
    assert empty.tolist() == [[True, False, False], [True, False, False]]
    # position 1 caches only (h0, 5): its target 7 is not there
    assert log_p[:, :, :2].isneginf().all()
    # position 2, size 2: keys h0 (word 5, h2·h0 = 2) and h1 (word 7, h2·h1 = 1)
    for k, theta in enumerate([1.0, 0.5, 0.0]):
        expected = math.exp(2 * theta) / (math.exp(2 * theta) + math.exp(theta))
        assert log_p[0, k, 2].item() == pytest.approx(math.log(expected), rel=1e-6)
    # size 1: only h1 (word 7)
    assert log_p[1, :, 2].isneginf().all()
    # the same stream fed in two blocks: the buffer carries the pairs over
    split = ContinuousCache(sizes=[2, 1], thetas=[1.0, 0.5, 0.0])
    first, _ = split.target_log_probs(h[:2], words[:2])
    second, _ = split.target_log_probs(h[2:], words[2:])
    assert torch.equal(torch.cat([first, second], dim=2), log_p)
    # the full distribution: position 2, θ = 1, size 2
    dense, empty = ContinuousCache([2], [1.0]).next_word_probs(h, words, vocab_size=9)
    assert empty.tolist() == [True, False, False]
    assert dense[0].sum() == 0 and dense[1, 5] == 1.0 and dense[1].sum() == 1.0
    e2, e1 = math.exp(2), math.exp(1)
    assert dense[2, 5].item() == pytest.approx(e2 / (e2 + e1))
    assert dense[2, 7].item() == pytest.approx(e1 / (e2 + e1))


# --- causality --------------------------------------------------------------------------------


def test_no_score_depends_on_its_own_or_later_tokens(corpus, family):
    model = tiny_model(family, corpus.tokenizer.vocab_size)
    tokens, eos = corpus.splits["valid"][:200].copy(), corpus.tokenizer.eos_id
    config = CacheConfig(size=6, theta=1.0, lam=0.4)
    options = dict(block_size=8, batch_size=2)
    before = evaluate_with_cache(model, corpus.tokenizer, tokens, config, **options).log_probs
    k = 100
    window = set(tokens[k - config.size : k].tolist())
    absent = next(w for w in range(corpus.tokenizer.vocab_size) if w not in window)
    present = tokens[k - 1]  # the word at k − 1 is in the cache of k
    changed = tokens.copy()
    changed[k:] = np.random.default_rng(0).permutation(tokens[k:])
    for word in (absent, present):
        changed[k] = word
        after = evaluate_with_cache(model, corpus.tokenizer, changed, config, **options).log_probs
        assert torch.equal(after[:k], before[:k])  # earlier scores untouched
        assert not torch.allclose(after[k + 1 :], before[k + 1 :])  # later ones do change
        # the target's own score: the model's, plus the cache only through earlier positions
        _, model_lp = one_pass(model, changed[: k + 1], eos)
        without_cache = math.log(1 - config.lam) + model_lp[k].item()
        if word == absent:  # the target is not in its own cache, even though it is at t = k
            assert after[k].item() == pytest.approx(without_cache, abs=1e-5)
        else:
            assert after[k].item() > without_cache + 0.01


# --- a distribution ---------------------------------------------------------------------------


def test_mixed_distribution_sums_to_one(corpus, family):
    model = tiny_model(family, corpus.tokenizer.vocab_size)
    tokens, eos = corpus.splits["valid"][:120], corpus.tokenizer.eos_id
    config = CacheConfig(size=30, theta=0.5, lam=0.35)
    dense = cache_next_word_log_probs(model, tokens, eos, config, block_size=16, batch_size=2)
    assert dense.shape == (len(tokens), corpus.tokenizer.vocab_size)
    torch.testing.assert_close(dense.exp().sum(dim=1), torch.ones(len(tokens)), rtol=0, atol=1e-5)
    # the target path picks the same numbers out of it
    targets = torch.from_numpy(tokens.astype(np.int64))
    picked = dense.gather(1, targets.unsqueeze(1)).squeeze(1)
    options = dict(block_size=16, batch_size=2)
    scores = evaluate_with_cache(model, corpus.tokenizer, tokens, config, **options).log_probs
    torch.testing.assert_close(picked, scores, rtol=0, atol=1e-5)
    # the first token has an empty cache: exactly the model's distribution
    with torch.inference_mode():
        first = model.next_token_log_probs(torch.tensor([[eos]]))[0, 0]
    torch.testing.assert_close(dense[0], first, rtol=0, atol=1e-6)


# --- command line -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(corpus, tmp_path_factory):
    model = tiny_model("gcnn", corpus.tokenizer.vocab_size)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    return write_checkpoint(path, model, corpus.tokenizer, corpus.directory)


def test_cli_cache_perplexity(checkpoint, corpus, capsys):
    base = ["perplexity", checkpoint, "--split", "valid", "--json"]
    _, out, _ = run_main(base, capsys)
    plain = json.loads(out)
    code, out, _ = run_main(base + ["--cache-theta", "0.5", "--cache-lambda", "0"], capsys)
    off = json.loads(out)
    assert code == 0 and off["cache"] == {"size": 2000, "theta": 0.5, "lambda": 0.0}
    assert off["loss"] == pytest.approx(plain["loss"], rel=1e-12)  # λ = 0: today's number
    argv = base + ["--cache-size", "40", "--cache-theta", "0.5", "--cache-lambda", "0.2"]
    code, out, _ = run_main(argv, capsys)
    on = json.loads(out)
    assert code == 0 and on["tokens"] == plain["tokens"] and on["loss"] != plain["loss"]
    assert on["no_cache"]["loss"] == pytest.approx(plain["loss"], rel=1e-12)
    model = tiny_model("gcnn", corpus.tokenizer.vocab_size)
    config = CacheConfig(40, 0.5, 0.2)
    scores = evaluate_with_cache(model, corpus.tokenizer, corpus.splits["valid"], config).log_probs
    expected = -scores.double().mean()
    assert on["loss"] == pytest.approx(float(expected), rel=1e-9)


def test_cli_tune_cache(checkpoint, corpus, capsys):
    argv = ["perplexity", checkpoint, "--tune-cache", "--cache-size", "10", "50"]
    argv += ["--cache-theta", "0.1", "1", "--cache-lambda", "0.1", "0.3"]
    code, out, _ = run_main(argv, capsys)
    assert code == 0
    assert "continuous cache tuned on tiny valid (2 sizes x 2 thetas x 2 lambdas): size " in out
    assert out.count("without the cache") == 2  # valid and test
    assert "valid: size 10: perplexity " in out and "valid: size 50: perplexity " in out
    code, out, _ = run_main(argv + ["--json"], capsys)
    result = json.loads(out)
    assert result["grid"] == {"sizes": [10, 50], "thetas": [0.1, 1.0], "lambdas": [0.1, 0.3]}
    model = tiny_model("gcnn", corpus.tokenizer.vocab_size)
    valid, eos = corpus.splits["valid"], corpus.tokenizer.eos_id
    hidden, _ = one_pass(model, valid, eos)
    assert result["valid_mean_sq_norm"] == pytest.approx(
        hidden.pow(2).sum(1).mean().item(), rel=1e-5
    )
    chosen = result["cache"]
    assert (
        chosen["size"] in (10, 50)
        and chosen["theta"] in (0.1, 1)
        and chosen["lambda"] in (0.1, 0.3)
    )
    assert result["valid"]["tokens"] == len(corpus.splits["valid"])
    assert result["test"]["tokens"] == len(corpus.splits["test"])
    assert set(result["test"]) == {"loss", "perplexity", "tokens", "tokens_per_s", "no_cache"}
    by_size = result["valid_best_by_size"]
    assert [row["size"] for row in by_size] == [10, 50]
    best = min(by_size, key=lambda row: row["perplexity"])
    assert best["perplexity"] == pytest.approx(result["valid"]["perplexity"], rel=1e-9)
    assert (best["theta"], best["lambda"]) == (chosen["theta"], chosen["lambda"])
    # the chosen point is the best of the grid on valid
    for size in (10, 50):
        for theta in (0.1, 1.0):
            for lam in (0.1, 0.3):
                config = CacheConfig(size, theta, lam)
                lp = evaluate_with_cache(model, corpus.tokenizer, valid, config).log_probs
                assert -float(lp.double().mean()) >= result["valid"]["loss"] - 1e-9


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--cache-size", "-1", "--cache-theta", "1", "--cache-lambda", ".1"], "--cache-size -1"),
        (["--cache-theta", "-0.5", "--cache-lambda", ".1"], "--cache-theta -0.5"),
        (["--cache-theta", "nan", "--cache-lambda", ".1"], "--cache-theta nan"),
        (["--cache-theta", "1", "--cache-lambda", "1.5"], "--cache-lambda 1.5"),
        (["--cache-theta", "1", "--cache-lambda", "1"], "--cache-lambda 1.0"),
        (["--cache-theta", "1", "--cache-lambda", "-0.1"], "--cache-lambda -0.1"),
        (["--cache-size", "100"], "the cache needs --cache-theta and --cache-lambda"),
        (["--cache-theta", "1", "2", "--cache-lambda", ".1"], "--cache-theta: one value"),
        (["--tune-cache", "--cache-lambda", "0.1", "2"], "--cache-lambda 2.0"),
    ],
)
def test_cli_bad_cache_flags_are_one_line_errors(checkpoint, capsys, flags, message):
    code, out, err = run_main(["perplexity", checkpoint, *flags], capsys)
    assert code == 2 and out == ""
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
