"""Continuous cache (Grave, Joulin & Usunier 2017) at evaluation time, for both model families.

No retraining. The hidden states that entered the softmax are kept, each with the word that
followed it, and the last `size` of them reshape the next-word distribution:

    p(w) = (1 − λ) p_model(w | h_t) + λ p_cache(w)
    p_cache(w) = Σ_{i ∈ C_t, tokens[i] = w} exp(θ h_t·h_i) / Σ_{i ∈ C_t} exp(θ h_t·h_i)
    C_t = [t − size, t − 1] ∩ [0, N)

Indices follow the stream convention of docs/design.md: h_i is the hidden state that predicts
tokens[i] (it has seen x[0..i] = [eos] + tokens[..i−1]), so the pair (h_i, tokens[i]) is known
once target i has been scored. Position t's cache never holds t itself (its word is the target).
The split is ONE stream: the cache crosses line boundaries as the model's history does. With an
empty cache (the first token, or size 0) p = p_model exactly: there is nothing to mix.

Exactness as in perplexity.py: the hidden states come from the same exact passes (GCNN blocks
preceded by receptive_field − 1 tokens of history, the LSTM one carried stream), and the model's
own log-probability of every target is computed exactly as corpus_nll computes it, so λ = 0 is
today's perplexity and no score depends on the block or batch size.

Vectorised: a block of T queries is scored against [the last `size` keys; the block's own earlier
positions] with one matrix product and a banded causal mask; the cache probability of each target
is the sum of the exp scores of the keys whose word is the target. No per-token Python loop.
Tuning shares one model pass and the dot products across the whole (size, θ) grid; λ only mixes
two per-token vectors, so its grid costs nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from gcnn.data import IGNORE_INDEX, BlockBatcher, StreamBatcher
from gcnn.errors import GcnnError
from gcnn.evaluation.perplexity import PerplexityResult

# Grave et al.'s cache size for WikiText-2 (they report 100, 500 and 2,000).
DEFAULT_SIZE = 2000
# θ multiplies raw dot products, so its useful range depends on the hidden states' norm: ‖h‖² is
# ≈37–70 for a trained gcnn-small, ≈8–23 for lstm-small (docs/evaluation.md), and the best θ was
# 0.15–0.3 and 0.5–1 respectively. Log-spaced over two and a half decades; λ up to 0.5.
DEFAULT_THETAS = (0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0)
DEFAULT_LAMBDAS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)
# Queries scored per matrix product. A piece of T queries is scored against size + T keys, of
# which each query sees `size`: small pieces waste less outside that band, and at 128 the
# product is still large enough to run at full GEMM speed. Results do not depend on it.
QUERY_BLOCK = 128


@dataclass(frozen=True)
class CacheConfig:
    size: int = DEFAULT_SIZE  # cached (hidden, next word) pairs
    theta: float = 0.3  # flatness of the cache distribution (0 = count the words)
    lam: float = 0.1  # weight of the cache in the mixture (λ; `lambda` is a keyword)

    def validate(self) -> CacheConfig:
        check_size(self.size)
        check_theta(self.theta)
        check_lambda(self.lam)
        return self

    def to_json(self) -> dict:
        return {"size": self.size, "theta": self.theta, "lambda": self.lam}


def check_size(size: int) -> int:
    if size < 0:
        raise GcnnError(f"--cache-size {size}: must be at least 0 (0 turns the cache off)")
    return size


def check_theta(theta: float) -> float:
    if not (theta >= 0 and math.isfinite(theta)):
        raise GcnnError(f"--cache-theta {theta}: must be a finite number at least 0")
    return theta


def check_lambda(lam: float) -> float:
    # λ = 1 would give every word outside the cache probability 0: infinite perplexity
    if not 0 <= lam < 1:
        raise GcnnError(f"--cache-lambda {lam}: must be in [0, 1) (0 turns the cache off)")
    return lam


class ContinuousCache:
    """Rolling buffer of the last max(sizes) (hidden state, next word) pairs of one stream.

    Feed the stream's blocks in order; each call scores a block's queries against the cache as
    it stood before each of them, then appends the block's own pairs. Several sizes and θs are
    scored from the same dot products (tuning).
    """

    def __init__(self, sizes: Sequence[int] = (DEFAULT_SIZE,), thetas: Sequence[float] = (0.3,)):
        self.sizes = [check_size(int(s)) for s in sizes]
        self.thetas = [check_theta(float(t)) for t in thetas]
        if not self.sizes or not self.thetas:
            raise ValueError("need at least one cache size and one theta")
        self.capacity = max(self.sizes)
        self.keys: torch.Tensor | None = None  # (M, D) hidden states, M <= capacity
        self.words: torch.Tensor | None = None  # (M,) the word that followed each
        self._bands: dict = {}

    def _attend(self, hidden: torch.Tensor, targets: torch.Tensor):
        """Dot products of the block's queries with every key any of them may see, then push.

        Returns dots (T, M + T) against [the M cached keys; the block itself], those keys'
        words (M + T,) and M.
        """
        hidden = hidden.float()
        if self.keys is None:
            self.keys, self.words = hidden[:0], targets[:0]
        past = self.keys.size(0)
        keys = torch.cat([self.keys, hidden])
        words = torch.cat([self.words, targets])
        dots = hidden @ keys.T
        keep = keys.size(0) - min(self.capacity, keys.size(0))
        self.keys, self.words = keys[keep:], words[keep:]
        return dots, words, past

    def _band(self, queries: int, past: int, size: int, device) -> tuple[torch.Tensor, ...]:
        """(visible, invisible, empty) for T queries after M cached keys: query t (stream
        position M + t in key coordinates) sees key j iff M + t − size <= j < M + t.

        Every full block after the first ones has the same (T, M), so the masks are memoised.
        """
        index = (queries, past, size, str(device))
        if index not in self._bands:
            if len(self._bands) > 16:
                self._bands.clear()
            query = torch.arange(past, past + queries, device=device).unsqueeze(1)
            key = torch.arange(past + queries, device=device).unsqueeze(0)
            visible = (key >= query - size) & (key < query)
            self._bands[index] = (visible, ~visible, ~visible.any(dim=1))
        return self._bands[index]

    @staticmethod
    def _centred(dots: torch.Tensor, invisible: torch.Tensor) -> torch.Tensor:
        """h_t·h_i − max over the visible keys of row t, −inf on the invisible keys.

        exp(θ × this) keeps exp in range (θ h·h reaches hundreds). A term more than ~87 nats
        below the row's largest underflows to 0; that changes a mixed probability only where
        p_model itself is below 1e-38.
        """
        masked = dots.masked_fill(invisible, -math.inf)
        top = masked.amax(dim=1, keepdim=True).clamp_min(torch.finfo(dots.dtype).min)
        return masked - top

    @staticmethod
    def _weights(centred: torch.Tensor, visible: torch.Tensor, theta: float) -> torch.Tensor:
        """Unnormalised p_cache terms exp(θ (h_t·h_i − max)), 0 on invisible keys."""
        if theta == 0:  # 0 × −inf is nan: θ = 0 weighs every visible key the same
            return visible.float()
        return torch.exp(centred * theta)

    def target_log_probs(
        self, hidden: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """log p_cache(targets) (sizes, thetas, T) (−inf: target not in the cache), and empty
        (sizes, T): True where the cache held nothing (p = p_model there)."""
        dots, words, past = self._attend(hidden, targets)
        T = len(targets)
        # the few (query, key) pairs whose key's word is the query's target: summed sparsely
        hit_rows, hit_cols = (words.unsqueeze(0) == targets.unsqueeze(1)).nonzero(as_tuple=True)
        out = torch.empty(len(self.sizes), len(self.thetas), T, device=dots.device)
        empty = torch.empty(len(self.sizes), T, dtype=torch.bool, device=dots.device)
        for s, size in enumerate(self.sizes):
            visible, invisible, empty[s] = self._band(T, past, size, dots.device)
            seen = visible[hit_rows, hit_cols]
            rows, cols = hit_rows[seen], hit_cols[seen]
            centred = self._centred(dots, invisible)
            for k, theta in enumerate(self.thetas):
                weights = self._weights(centred, visible, theta)
                total = weights.sum(dim=1)
                found = torch.zeros_like(total).index_add_(0, rows, weights[rows, cols])
                log_p = found.log() - total.log()
                out[s, k] = log_p.masked_fill(empty[s], -math.inf)
        return out, empty

    def next_word_probs(
        self, hidden: torch.Tensor, targets: torch.Tensor, vocab_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The full p_cache (T, vocab_size) for the first size and θ (rows of zeros where the
        cache is empty, flagged by the second output), then push; for sampling and tests."""
        dots, words, past = self._attend(hidden, targets)
        visible, invisible, _ = self._band(len(targets), past, self.sizes[0], dots.device)
        weights = self._weights(self._centred(dots, invisible), visible, self.thetas[0])
        total = weights.sum(dim=1, keepdim=True)
        empty = total.squeeze(1) == 0
        probs = weights / total.clamp_min(torch.finfo(weights.dtype).tiny)
        dense = torch.zeros(len(targets), vocab_size, device=dots.device)
        dense.scatter_add_(1, words.unsqueeze(0).expand_as(probs), probs)
        return dense, empty


def mix(model_log_probs: torch.Tensor, cache_log_probs: torch.Tensor, empty, lam: float):
    """log((1 − λ) p_model + λ p_cache), elementwise; p_model where the cache is empty."""
    check_lambda(lam)
    if lam == 0:
        return model_log_probs.clone()  # exactly today's scores, not a rounded round trip
    mixed = torch.logaddexp(model_log_probs + math.log1p(-lam), cache_log_probs + math.log(lam))
    return torch.where(empty, model_log_probs, mixed)


@torch.inference_mode()
def model_stream(
    model: torch.nn.Module,
    tokens: np.ndarray,
    eos_id: int,
    *,
    block_size: int = 512,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(hidden (T, D), targets (T,), log p_model(targets) (T,)) for consecutive pieces of the
    stream, in order, each target exactly once, computed as corpus_nll computes them."""
    model.eval()
    if model.is_recurrent:
        state = None
        for inputs, targets in StreamBatcher(tokens, eos_id, block_size, 1).epoch(0):
            inputs, targets = inputs.to(device), targets.to(device)
            hidden, state = model(inputs, state)
            log_probs = model.softmax.target_log_prob(hidden, targets)
            keep = targets[0] != IGNORE_INDEX
            yield hidden[0][keep], targets[0][keep], log_probs[0][keep]
    else:
        # unshuffled blocks, one per row: the rows of a batch are consecutive pieces of the stream
        context = max(0, int(model.receptive_field) - 1)
        batcher = BlockBatcher(tokens, eos_id, block_size, batch_size, context=context)
        for inputs, targets in batcher.epoch(0):
            inputs, targets = inputs.to(device), targets.to(device)
            hidden, _ = model(inputs)
            log_probs = model.softmax.target_log_prob(hidden, targets)
            keep = targets != IGNORE_INDEX
            yield hidden[keep], targets[keep], log_probs[keep]


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
    stream = model_stream(
        model, tokens, eos_id, block_size=block_size, batch_size=batch_size, device=device
    )
    for hidden, targets, log_probs in stream:
        sq_norm += float(hidden.float().pow(2).sum())
        for lo in range(0, len(targets), QUERY_BLOCK):
            piece = slice(lo, lo + QUERY_BLOCK)
            scores, empty = cache.target_log_probs(hidden[piece], targets[piece])
            parts.append((log_probs[piece].float().cpu(), scores.cpu(), empty.cpu()))
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


def cache_log_probs(
    model: torch.nn.Module,
    tokens: np.ndarray,
    eos_id: int,
    config: CacheConfig = CacheConfig(),
    *,
    block_size: int = 512,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """(N,) float32 log p(tokens[t] | x[0..t]) with the cache mixed in, for a token stream."""
    config.validate()
    scores = grid_scores(
        model,
        tokens,
        eos_id,
        [config.size],
        [config.theta],
        block_size=block_size,
        batch_size=batch_size,
        device=device,
    )
    return scores.log_probs(0, 0, config.lam)


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

    Row t is p(· | x[0..t]), the distribution tokens[t] is drawn from. Dense: for small vocabularies
    or short streams (sampling with a cache, tests); perplexity needs only cache_log_probs.
    """
    config.validate()
    cache = ContinuousCache([config.size], [config.theta])
    vocab = model.softmax.vocab_size
    rows = []
    stream = model_stream(
        model, tokens, eos_id, block_size=block_size, batch_size=batch_size, device=device
    )
    for hidden, targets, _ in stream:
        for lo in range(0, len(targets), QUERY_BLOCK):
            h, y = hidden[lo : lo + QUERY_BLOCK], targets[lo : lo + QUERY_BLOCK]
            p_cache, empty = cache.next_word_probs(h, y, vocab)
            log_model = model.softmax.log_prob(h).float()
            mixed = mix(log_model, p_cache.log(), empty.unsqueeze(1), config.lam)
            rows.append(mixed.cpu())
    return torch.cat(rows)


# --- perplexity with the cache -------------------------------------------------------------------


def _result(log_probs: torch.Tensor, seconds: float, words: int | None) -> PerplexityResult:
    return PerplexityResult(
        nll=-float(log_probs.double().sum()), tokens=len(log_probs), seconds=seconds, words=words
    )


@dataclass
class CacheResult:
    """Perplexity with the cache, and without it from the same pass (its time is the pass's)."""

    config: CacheConfig
    cache: PerplexityResult
    no_cache: PerplexityResult

    def to_json(self) -> dict:
        """Today's keys (with the cache) + "cache" (the settings) + "no_cache" (the baseline)."""
        no_cache = {k: v for k, v in self.no_cache.to_json().items() if k != "tokens_per_s"}
        return {**self.cache.to_json(), "cache": self.config.to_json(), "no_cache": no_cache}


def _split_results(
    scores: GridScores, s: int, k: int, lam: float, config: CacheConfig, words: int | None
) -> CacheResult:
    return CacheResult(
        config=config,
        cache=_result(scores.log_probs(s, k, lam), scores.seconds, words),
        no_cache=_result(scores.model, scores.seconds, words),
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
    """Perplexity of `model` on `tokens` with the cache `config` (and without it)."""
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
    return _split_results(scores, 0, 0, config.lam, config, per_word)


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
        valid=_split_results(scores, s, k, config.lam, config, per_word),
        mean_sq_norm=scores.mean_sq_norm,
    )
