"""The continuous cache (Grave, Joulin & Usunier 2017): p_model mixed with a cache of recent states.

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

Vectorised: a block of T queries is scored against [the last `size` keys; the block's own earlier
positions] with one matrix product and a banded causal mask; the cache probability of each target
is the sum of the exp scores of the keys whose word is the target. No per-token Python loop.
Several sizes and θs are scored from the same dot products. Feeding it a text (one exact pass of
the model, perplexity with and without the cache, tuning): `gcnn.evaluation.cache_evaluation`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gcnn.errors import GcnnError

# Grave et al.'s cache size for WikiText-2 (they report 100, 500 and 2,000).
DEFAULT_SIZE = 2000


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
        cache is empty, flagged by the second output), then push: for the full mixed
        distribution (`cache_next_word_log_probs`)."""
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
