"""Adaptive softmax (Grave et al. 2017), the output layer of every model in gcnn.

Word ids are sorted by frequency, so the vocabulary splits at the cutoffs into a frequent head
[0, cutoffs[0]) and tail clusters [cutoffs[i], cutoffs[i+1]). The head classifier scores the head
words plus one logit per cluster; cluster i has its own small classifier whose input is first
projected from d to d / tail_factor**(i+1) dimensions (rare words need less capacity), so

    log p(w) = log p_head(w)                                   for a head word
    log p(w) = log p_head(cluster i) + log p_tail_i(w)         for a word of cluster i.

Training only needs each target's own cluster: `target_log_prob` runs a tail only on the rows whose
targets fall in it. Log-softmaxes are taken in fp32 even under bf16 autocast: a bf16 log-sum-exp
over tens of thousands of logits loses most of its precision.

Structure and initialisation follow fairseq (no biases, Xavier-uniform weights, no weight
normalisation); with no cutoffs this is a plain full softmax.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from gcnn.data import IGNORE_INDEX
from gcnn.errors import GcnnError
from gcnn.models.dropout import Dropout


class _TargetLogSoftmax(torch.autograd.Function):
    """log_softmax(logits)[row, target[row]] for every row, at least in fp32.

    Training needs one log-probability per row, not the whole log-softmax: backward is then one
    pass, grad · (onehot(target) − softmax), instead of autograd's route through a zero-filled
    gradient of the full (rows, classes) output (gather's backward) and log_softmax's backward
    reading it back: on a 2,000-word head or a 23,000-word tail that is most of the softmax's
    time.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # at least fp32 (bf16/fp16 logits are upcast; a float64 model stays float64): a bf16
        # log-sum-exp over thousands of logits would lose most of its precision
        dtype = torch.promote_types(logits.dtype, torch.float32)
        # dtype= saves a separate .float(); torch still writes an fp32 copy of bf16 logits first
        # on a CPU (its kernel has no upcasting path there: `aten::copy_` in the profiles)
        log_probs = F.log_softmax(logits, dim=-1, dtype=dtype)
        ctx.save_for_backward(log_probs, target)
        ctx.logits_dtype = logits.dtype
        return log_probs.gather(1, target.unsqueeze(1)).squeeze(1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        log_probs, target = ctx.saved_tensors
        grad = grad.to(log_probs.dtype).unsqueeze(1)
        grad_logits = torch.exp(log_probs).mul_(-grad)
        grad_logits.scatter_add_(1, target.unsqueeze(1), grad)
        return grad_logits.to(ctx.logits_dtype), None


def target_log_softmax(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(rows,) log-softmax of (rows, classes) `logits` at each row's `target` class."""
    return _TargetLogSoftmax.apply(logits, target)


def padded_length(n: int) -> int:
    """`n` rounded up to a multiple of 8, and above 64 to one of 8 lengths per octave (at
    most 1/8 more rows).

    A tail's rows are the batch's targets that fall in its cluster, a count that changes with
    every batch. oneDNN (torch's bf16 matrix products on a CPU) compiles a kernel for each
    matrix shape it meets and keeps it, so hundreds of row counts per tail filled memory and,
    once its cache was full, re-compiled (docs/performance.md, "Training step"). Padding the
    rows to a few lengths keeps the shapes, and the compiled kernels, few."""
    if n <= 8:
        return n and 8
    step = max(8, 1 << (n.bit_length() - 4))
    return -(-n // step) * step


@dataclass
class SoftmaxPlan:
    """The data-dependent part of scoring targets, decided on the host before the forward pass.

    Which targets are scored and which tail cluster each one needs are known as soon as the batch
    is built, on the CPU. Working them out there means the forward pass needs no `nonzero()` or
    range check on the device, each of which would stall a GPU until everything before it has
    finished. `rows[i]` indexes the scored targets of cluster i, `words[i]` their ids within it;
    both are padded (repeating their last entry) to `padded_length(counts[i])`, of which the
    first `counts[i]` are real.
    """

    shape: tuple[int, ...]  # the targets' shape
    keep: torch.Tensor  # flat indices of the scored targets (!= IGNORE_INDEX)
    head_target: torch.Tensor  # per scored target: its head class (word or cluster logit)
    rows: list[torch.Tensor]
    words: list[torch.Tensor]
    counts: list[int]  # the real rows of each cluster, before padding

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def count(self) -> int:
        return int(self.keep.numel())

    def _map(self, fn) -> SoftmaxPlan:
        return SoftmaxPlan(
            self.shape,
            fn(self.keep),
            fn(self.head_target),
            [fn(r) for r in self.rows],
            [fn(w) for w in self.words],
            self.counts,
        )

    def to(self, device, non_blocking: bool = False) -> SoftmaxPlan:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> SoftmaxPlan:
        return self._map(lambda t: t.pin_memory())


class AdaptiveSoftmax(nn.Module):
    def __init__(
        self,
        in_features: int,
        vocab_size: int,
        cutoffs: list[int] | tuple[int, ...] = (),
        dropout: float = 0.0,
        tail_factor: int = 4,
    ):
        super().__init__()
        cutoffs = [int(c) for c in cutoffs if c < vocab_size]
        if any(c <= 0 for c in cutoffs) or any(
            b <= a for a, b in zip(cutoffs, cutoffs[1:], strict=False)
        ):
            raise GcnnError(f"adaptive softmax cutoffs {cutoffs} must be positive and increasing")
        self.in_features = in_features
        self.vocab_size = vocab_size
        self.cutoffs = cutoffs
        # Cluster i covers ids [bounds[i], bounds[i+1]).
        self.bounds = cutoffs + [vocab_size]
        self.shortlist = cutoffs[0] if cutoffs else vocab_size
        self.n_clusters = len(cutoffs)
        self.head = nn.Linear(in_features, self.shortlist + self.n_clusters, bias=False)
        self.tails = nn.ModuleList()
        for i in range(self.n_clusters):
            dim = max(1, in_features // tail_factor ** (i + 1))
            size = self.bounds[i + 1] - self.bounds[i]
            self.tails.append(
                nn.Sequential(
                    nn.Linear(in_features, dim, bias=False),
                    Dropout(dropout),
                    nn.Linear(dim, size, bias=False),
                )
            )
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, vocab_size={self.vocab_size}, cutoffs={self.cutoffs}"
        )

    def _log_softmax(self, logits: torch.Tensor) -> torch.Tensor:
        # At least fp32 (bf16/fp16 logits are upcast; a float64 model stays float64).
        return F.log_softmax(logits, dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))

    def log_prob(self, hidden: torch.Tensor) -> torch.Tensor:
        """Full log-distribution (..., vocab_size) in fp32, for sampling and evaluation."""
        head = self._log_softmax(self.head(hidden))
        parts = [head[..., : self.shortlist]]
        for i, tail in enumerate(self.tails):
            cluster = head[..., self.shortlist + i].unsqueeze(-1)
            parts.append(cluster + self._log_softmax(tail(hidden)))
        return torch.cat(parts, dim=-1)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Input word vectors (..., in_features) read from this layer's own weights (tied).

        A head word's vector is its row of the head classifier (Press & Wolf 2017). A word of tail
        i uses its row of the tail's output matrix, d / tail_factor**(i+1) wide, mapped back to d
        by the tail's projection transposed: adaptive input representations tied to the adaptive
        softmax (Baevski & Auli 2019), so rare words get narrow vectors shared with the output.
        Every tail is computed for every token and each token's own cluster selected, so nothing
        depends on how many tokens fall in a cluster (no device synchronisation); the tails are
        narrow, so the waste is small.
        """
        x = F.embedding(ids.clamp(max=self.shortlist - 1), self.head.weight)
        for i, tail in enumerate(self.tails):
            lo, hi = self.bounds[i], self.bounds[i + 1]
            words = F.embedding((ids - lo).clamp(0, hi - lo - 1), tail[2].weight)
            vectors = words @ tail[0].weight.to(words.dtype)
            inside = ((ids >= lo) & (ids < hi)).unsqueeze(-1)
            x = torch.where(inside, vectors.to(x.dtype), x)
        return x

    def plan(self, targets) -> SoftmaxPlan:
        """Which rows each cluster needs for `targets`, worked out on the host (see SoftmaxPlan).

        `targets` may be a tensor or a numpy array; a device tensor is copied to the host first
        (one synchronisation), so callers that build batches on the host should plan there.
        """
        if isinstance(targets, torch.Tensor):
            targets = targets.detach().cpu().numpy()
        shape = tuple(targets.shape)
        t_all = np.asarray(targets, dtype=np.int64).reshape(-1)
        keep = np.flatnonzero(t_all != IGNORE_INDEX)
        t = t_all[keep]
        bad = (t < 0) | (t >= self.vocab_size)
        if bad.any():
            raise ValueError(
                f"target id {int(t[bad][0])} is outside the vocabulary [0, {self.vocab_size})"
            )
        # cluster 0 is the head, cluster i + 1 tail i (vectorised: this runs once per batch)
        cluster = np.searchsorted(np.asarray(self.cutoffs, dtype=np.int64), t, side="right")
        # a head word scores itself, a tail word its cluster's logit
        head_target = np.where(cluster == 0, t, self.shortlist + cluster - 1)
        rows, words, counts = [], [], []
        for i in range(self.n_clusters):
            members = np.flatnonzero(cluster == i + 1)
            counts.append(len(members))
            if len(members):  # padded with copies of the last member (see padded_length)
                members = np.pad(members, (0, padded_length(len(members)) - len(members)), "edge")
            rows.append(torch.from_numpy(members))
            words.append(torch.from_numpy(t[members] - self.bounds[i]))
        return SoftmaxPlan(
            shape, torch.from_numpy(keep), torch.from_numpy(head_target), rows, words, counts
        )

    def target_log_prob(
        self, hidden: torch.Tensor, targets=None, plan: SoftmaxPlan | None = None
    ) -> torch.Tensor:
        """log p(targets) in fp32, shaped like targets; 0 where targets == IGNORE_INDEX.

        hidden (..., d), targets (...), or instead of targets their `plan` (already on hidden's
        device: then nothing here waits for the device). Each tail runs only on the rows whose
        targets it holds, so a batch may leave a tail unused (data-parallel training must allow
        unused parameters).
        """
        if plan is None:
            plan = self.plan(targets).to(hidden.device)
        hidden = hidden.reshape(-1, hidden.size(-1))
        if hidden.size(0) != plan.numel:
            raise ValueError(f"hidden has {hidden.size(0)} rows but targets {plan.numel}")
        h = hidden.index_select(0, plan.keep)
        out = target_log_softmax(self.head(h), plan.head_target)
        for i, (rows, words, n) in enumerate(zip(plan.rows, plan.words, plan.counts, strict=True)):
            if n == 0:  # known on the host: no device sync
                continue
            tail = target_log_softmax(self.tails[i](h.index_select(0, rows)), words)
            out = out.index_add(0, rows[:n], tail[:n])  # the padding's rows are dropped
        result = torch.zeros(plan.numel, dtype=out.dtype, device=out.device)
        result = result.index_copy(0, plan.keep, out)
        return result.view(plan.shape)

    def flops_per_token(self, full: bool = True) -> int:
        """Multiply-adds x 2 for one token: the head, plus every tail when `full` (log_prob)."""
        flops = 2 * self.in_features * self.head.out_features
        if full:
            for tail in self.tails:
                flops += 2 * sum(
                    m.in_features * m.out_features for m in tail if hasattr(m, "in_features")
                )
        return flops


class TiedEmbedding(nn.Module):
    """A model's input embedding that is its adaptive softmax's weights (`AdaptiveSoftmax.embed`).

    It owns no parameters: the softmax is held outside the module tree (in a tuple), so the
    shared weights are counted, saved and optimised once, as the softmax's.
    """

    def __init__(self, softmax: AdaptiveSoftmax):
        super().__init__()
        self._softmax = (softmax,)
        self.embedding_dim = softmax.in_features

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self._softmax[0].embed(ids)

    def extra_repr(self) -> str:
        return f"tied to the adaptive softmax, embedding_dim={self.embedding_dim}"
