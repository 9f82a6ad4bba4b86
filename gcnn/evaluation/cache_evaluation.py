"""A text scored with the continuous cache: perplexity with and without it, and its tuning.

One exact model pass, then the perplexity with and without the cache, or the (size, θ, λ) that
give the best validation perplexity. Exact as the perplexity is: the hidden states and p_model
come from perplexity's own exact stream (`exact_stream`: GCNN blocks preceded by
receptive_field − 1 tokens of history, the LSTM one carried stream), so λ = 0 is today's
perplexity and no score depends on the block or batch size.
Tuning shares one model pass and the dot products across the whole (size, θ) grid; λ only mixes
two per-token vectors, so its grid costs nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from gcnn.errors import GcnnError
from gcnn.evaluation.continuous_cache import (
    DEFAULT_SIZE,
    CacheConfig,
    ContinuousCache,
    check_lambda,
    mix,
)
from gcnn.evaluation.perplexity import PerplexityResult, exact_stream

# θ multiplies raw dot products, so its useful range depends on the hidden states' norm: ‖h‖² is
# ≈37–70 for a trained gcnn-small, ≈8–23 for lstm-small (docs/evaluation.md), and the best θ was
# 0.15–0.3 and 0.5–1 respectively. Log-spaced over two and a half decades; λ up to 0.5.
DEFAULT_THETAS = (0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0)
DEFAULT_LAMBDAS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)
# Queries scored per matrix product. A piece of T queries is scored against size + T keys, of
# which each query sees `size`: small pieces waste less outside that band, and at 128 the
# product is still large enough to run at full GEMM speed. Results do not depend on it.
QUERY_BLOCK = 128


def _pieces(
    model, tokens, eos_id, *, block_size, batch_size, device
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(hidden (T, D), targets (T,), log p_model (T,)) of the exact stream's scored targets, in
    stream order, at most QUERY_BLOCK at a time."""
    options = dict(block_size=block_size, batch_size=batch_size, device=device)
    for batch in exact_stream(model, tokens, eos_id, **options):
        hidden, targets, log_probs = batch.scored()
        for lo in range(0, len(targets), QUERY_BLOCK):
            piece = slice(lo, lo + QUERY_BLOCK)
            yield hidden[piece], targets[piece], log_probs[piece]


@dataclass
class GridScores:
    """Per-token scores of one stream for a grid of cache sizes and θs (all on the host)."""

    model: torch.Tensor  # (N,) log p_model(target)
    cache: torch.Tensor  # (sizes, thetas, N) log p_cache(target), −inf where absent
    empty: torch.Tensor  # (sizes, N) the cache held nothing
    sizes: list[int]
    thetas: list[float]
    seconds: float
    mean_sq_norm: float  # mean ‖h‖² of the hidden states: the scale θ multiplies

    def log_probs(self, size_index: int, theta_index: int, lam: float) -> torch.Tensor:
        return mix(self.model, self.cache[size_index, theta_index], self.empty[size_index], lam)


@torch.inference_mode()
def grid_scores(
    model: torch.nn.Module,
    tokens: np.ndarray,
    eos_id: int,
    sizes: Sequence[int] = (DEFAULT_SIZE,),
    thetas: Sequence[float] = DEFAULT_THETAS,
    *,
    block_size: int = 512,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> GridScores:
    """One model pass over the stream; the cache scored for every (size, θ)."""
    if len(tokens) == 0:
        raise GcnnError("nothing to evaluate: the split has no tokens")
    start = time.perf_counter()
    cache = ContinuousCache(sizes, thetas)
    parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    sq_norm = 0.0
    options = dict(block_size=block_size, batch_size=batch_size, device=device)
    for hidden, targets, log_probs in _pieces(model, tokens, eos_id, **options):
        sq_norm += float(hidden.float().pow(2).sum())
        scores, empty = cache.target_log_probs(hidden, targets)
        parts.append((log_probs.float().cpu(), scores.cpu(), empty.cpu()))
    model_lp = torch.cat([p[0] for p in parts])
    if len(model_lp) != len(tokens):  # a batcher that skips or repeats targets is a bug
        raise RuntimeError(f"scored {len(model_lp)} targets, expected {len(tokens)}")
    return GridScores(
        model=model_lp,
        cache=torch.cat([p[1] for p in parts], dim=2),
        empty=torch.cat([p[2] for p in parts], dim=1),
        sizes=cache.sizes,
        thetas=cache.thetas,
        seconds=time.perf_counter() - start,
        mean_sq_norm=sq_norm / len(tokens),
    )


@dataclass
class CacheResult:
    """Perplexity with the cache, and without it from the same pass (its time is the pass's)."""

    config: CacheConfig
    cache: PerplexityResult
    no_cache: PerplexityResult
    # (N,) float32 log p(tokens[t] | x[0..t]) with the cache mixed in
    log_probs: torch.Tensor = field(repr=False, default_factory=lambda: torch.empty(0))

    @classmethod
    def of(cls, scores: GridScores, s: int, k: int, config: CacheConfig, words: int | None):
        """The result of grid point (size s, θ k) at λ = config.lam."""
        log_probs = scores.log_probs(s, k, config.lam)
        return cls(
            config=config,
            cache=_result(log_probs, scores.seconds, words),
            no_cache=_result(scores.model, scores.seconds, words),
            log_probs=log_probs,
        )

    def to_json(self) -> dict:
        """Today's keys (with the cache) + "cache" (the settings) + "no_cache" (the baseline)."""
        no_cache = {k: v for k, v in self.no_cache.to_json().items() if k != "tokens_per_s"}
        return {**self.cache.to_json(), "cache": self.config.to_json(), "no_cache": no_cache}


def _result(log_probs: torch.Tensor, seconds: float, words: int | None) -> PerplexityResult:
    return PerplexityResult(
        nll=-float(log_probs.double().sum()), tokens=len(log_probs), seconds=seconds, words=words
    )


def evaluate_with_cache(
    model: torch.nn.Module,
    tokenizer,
    tokens: np.ndarray,
    config: CacheConfig,
    *,
    words: int | None = None,
    block_size: int = 512,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> CacheResult:
    """`model` on the token stream with the cache `config`: the per-token log-probabilities
    (`.log_probs`) and the perplexity with the cache and without it."""
    config.validate()
    scores = grid_scores(
        model,
        tokens,
        tokenizer.eos_id,
        [config.size],
        [config.theta],
        block_size=block_size,
        batch_size=batch_size,
        device=device,
    )
    per_word = words if tokenizer.kind != "word" else None
    return CacheResult.of(scores, 0, 0, config, per_word)


@torch.inference_mode()
def cache_next_word_log_probs(
    model: torch.nn.Module,
    tokens: np.ndarray,
    eos_id: int,
    config: CacheConfig = CacheConfig(),
    *,
    block_size: int = 512,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """(N, V) the full mixed next-word log-distribution before each token of the stream.

    Row t is p(· | x[0..t]), the distribution tokens[t] is drawn from. Dense: for small
    vocabularies or short streams (checking that the mixture is a distribution); perplexity
    needs only the targets' entries (`evaluate_with_cache`).
    """
    config.validate()
    cache = ContinuousCache([config.size], [config.theta])
    vocab = model.softmax.vocab_size
    rows = []
    options = dict(block_size=block_size, batch_size=batch_size, device=device)
    for hidden, targets, _ in _pieces(model, tokens, eos_id, **options):
        p_cache, empty = cache.next_word_probs(hidden, targets, vocab)
        log_model = model.softmax.log_prob(hidden).float()
        mixed = mix(log_model, p_cache.log(), empty.unsqueeze(1), config.lam)
        rows.append(mixed.cpu())
    return torch.cat(rows)


@dataclass
class TuneResult:
    config: CacheConfig  # the grid point with the lowest validation NLL
    sizes: list[int]
    thetas: list[float]
    lambdas: list[float]
    valid_nll: np.ndarray  # (sizes, thetas, lambdas) total validation NLL, nats
    valid: CacheResult
    mean_sq_norm: float  # mean ‖h‖² over the validation split

    def grid_json(self) -> dict:
        return {"sizes": self.sizes, "thetas": self.thetas, "lambdas": self.lambdas}

    def best_by_size(self) -> list[dict]:
        """For each cache size: its best θ and λ and the validation perplexity they give."""
        tokens = self.valid.cache.tokens
        rows = []
        for s, size in enumerate(self.sizes):
            k, j = np.unravel_index(int(np.argmin(self.valid_nll[s])), self.valid_nll[s].shape)
            ppl = math.exp(self.valid_nll[s, k, j] / tokens)
            rows.append(
                {
                    "size": size,
                    "theta": self.thetas[k],
                    "lambda": self.lambdas[j],
                    "perplexity": ppl,
                }
            )
        return rows


def tune_cache(
    model: torch.nn.Module,
    tokenizer,
    valid_tokens: np.ndarray,
    *,
    sizes: Sequence[int] = (DEFAULT_SIZE,),
    thetas: Sequence[float] = DEFAULT_THETAS,
    lambdas: Sequence[float] = DEFAULT_LAMBDAS,
    words: int | None = None,
    block_size: int = 512,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> TuneResult:
    """Choose (size, θ, λ) by the lowest validation perplexity over the grid (as the paper)."""
    lambdas = [check_lambda(float(x)) for x in lambdas]
    if not lambdas:
        raise ValueError("need at least one lambda")
    scores = grid_scores(
        model,
        valid_tokens,
        tokenizer.eos_id,
        sizes,
        thetas,
        block_size=block_size,
        batch_size=batch_size,
        device=device,
    )
    nll = np.empty((len(scores.sizes), len(scores.thetas), len(lambdas)))
    for s in range(len(scores.sizes)):
        for k in range(len(scores.thetas)):
            for j, lam in enumerate(lambdas):
                nll[s, k, j] = -float(scores.log_probs(s, k, lam).double().sum())
    s, k, j = np.unravel_index(int(np.argmin(nll)), nll.shape)
    config = CacheConfig(scores.sizes[s], scores.thetas[k], lambdas[j])
    per_word = words if tokenizer.kind != "word" else None
    return TuneResult(
        config=config,
        sizes=scores.sizes,
        thetas=scores.thetas,
        lambdas=lambdas,
        valid_nll=nll,
        valid=CacheResult.of(scores, int(s), int(k), config, per_word),
        mean_sq_norm=scores.mean_sq_norm,
    )
