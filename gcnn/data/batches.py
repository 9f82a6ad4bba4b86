"""Turning a token stream into (inputs, targets) batches, exactly.

The stream convention (docs/design.md): a split is `tokens[0..N)`, and target `tokens[j]` is
predicted from `x[0..j]` where `x = [eos] + tokens`. So the input aligned with target j is x[j],
which is `eos` for j = 0 and `tokens[j - 1]` otherwise. Every batcher here scores each of the N
targets exactly once per epoch (across all ranks); everything else is IGNORE_INDEX.

- BlockBatcher: GCNN training and exact evaluation. Blocks of `block_size` targets, each preceded
  by up to `context` tokens that are fed but not scored, so convolutions see history across block
  edges. Shuffled by (seed, epoch), dealt round-robin to data-parallel ranks.
- StreamBatcher: LSTM training (truncated BPTT). B contiguous rows per rank; row r of batch i+1
  continues row r of batch i, so the recurrent state can be carried.
- SentenceBatcher: scoring. One line per sequence, conditioned on a leading eos, sorted by length.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

IGNORE_INDEX = -100


def _as_numpy(tokens) -> np.ndarray:
    """Accept a numpy array/memmap, a torch tensor or a list; never copy a memmap."""
    if isinstance(tokens, torch.Tensor):
        tokens = tokens.detach().cpu().numpy()
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tokens.shape}")
    return tokens


def _check_sizes(block_size: int, batch_size: int, rank: int, world_size: int) -> None:
    if block_size < 1 or batch_size < 1:
        raise ValueError(f"block_size and batch_size must be >= 1 (got {block_size}, {batch_size})")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size (got rank={rank}, world_size={world_size})")


def _stream_inputs(tokens: np.ndarray, eos_id: int, start: int, end: int) -> np.ndarray:
    """x[start:end] for x = [eos] + tokens, without materialising x."""
    if start >= end:
        return tokens[:0]
    if start == 0:
        return np.concatenate(([eos_id], tokens[: end - 1])).astype(tokens.dtype, copy=False)
    return tokens[start - 1 : end - 1]


class BlockBatcher:
    """Blocks of `block_size` targets with `context` unscored tokens of history in front.

    Block b scores targets [b*T, min((b+1)*T, N)). Its window starts at w = max(0, b*T - context);
    the row holds inputs x[w:end] and targets tokens[w:end] with the first b*T - w set to
    IGNORE_INDEX, right-padded to context + T (inputs eos, targets IGNORE_INDEX). One block per
    row. With shuffle=True the block order is a permutation drawn from (seed, epoch) only, so a
    resumed run sees the same order. Blocks are dealt round-robin to ranks, and every rank is
    padded with all-IGNORE rows to the same number of rows, so every rank runs the same number of
    batches (DistributedDataParallel hangs otherwise).
    """

    def __init__(
        self,
        tokens,
        eos_id: int,
        block_size: int,
        batch_size: int,
        context: int = 0,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        _check_sizes(block_size, batch_size, rank, world_size)
        if context < 0:
            raise ValueError(f"context must be >= 0 (got {context})")
        self.tokens = _as_numpy(tokens)
        self.eos_id = int(eos_id)
        self.block_size = block_size
        self.batch_size = batch_size
        self.context = context
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.num_targets = len(self.tokens)  # N: every one is scored once per epoch
        self.num_blocks = math.ceil(self.num_targets / block_size)
        self.rows_per_rank = math.ceil(self.num_blocks / world_size)
        self.width = context + block_size
        self._deal_epoch: int | None = None
        self._deal = np.empty((0, 0), dtype=np.int64)

    def __len__(self) -> int:
        return math.ceil(self.rows_per_rank / self.batch_size)

    def block_order(self, epoch: int) -> np.ndarray:
        """All blocks in the order this epoch visits them (before dealing to ranks)."""
        if not self.shuffle:
            return np.arange(self.num_blocks)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_blocks)

    def deal(self, epoch: int) -> np.ndarray:
        """(world_size, rows_per_rank): every rank's blocks for the epoch, -1 = an all-IGNORE row.

        Drawn once per epoch and kept: a permutation of WikiText-103's 400k blocks costs ~10 ms,
        far too much to redo for every batch of a fast GPU step.
        """
        if self._deal_epoch != epoch:
            order = self.block_order(epoch)
            dealt = np.full(self.world_size * self.rows_per_rank, -1, dtype=np.int64)
            dealt[: len(order)] = order
            # round-robin: block j of the order goes to rank j % world_size
            self._deal = dealt.reshape(self.rows_per_rank, self.world_size).T.copy()
            self._deal_epoch = epoch
        return self._deal

    def rank_blocks(self, epoch: int, rank: int | None = None) -> np.ndarray:
        """A rank's blocks for the epoch (default: this one), padded with -1 to rows_per_rank."""
        return self.deal(epoch)[self.rank if rank is None else rank]

    def batch_blocks(self, epoch: int, index: int, rank: int | None = None) -> np.ndarray:
        """Block ids of batch `index` (rows; -1 is padding)."""
        rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return self.rank_blocks(epoch, rank)[rows]

    def num_batch_targets(self, epoch: int, index: int, rank: int | None = None) -> int:
        """Scored targets in a rank's batch `index`: known without building it."""
        blocks = self.batch_blocks(epoch, index, rank)
        blocks = blocks[blocks >= 0]
        ends = np.minimum((blocks + 1) * self.block_size, self.num_targets)
        return int((ends - blocks * self.block_size).sum())

    def global_batch_targets(self, epoch: int, index: int) -> int:
        """Scored targets in batch `index` summed over ALL ranks: every rank can work it out
        alone (the deal is a function of the seed and epoch), so no collective is needed."""
        return sum(self.num_batch_targets(epoch, index, r) for r in range(self.world_size))

    def batch(self, epoch: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each (rows, context + block_size) int64; see the class docstring.

        One gather from the stream for the whole batch (no per-row Python work): row r covers
        stream positions window_r .. window_r + width; a position is fed if it is before the
        block's end, and scored if it is also at or after the block's start.
        """
        blocks = self.batch_blocks(epoch, index)
        starts = blocks * self.block_size
        ends = np.where(blocks >= 0, np.minimum(starts + self.block_size, self.num_targets), 0)
        windows = np.maximum(0, starts - self.context)
        pos = windows[:, None] + np.arange(self.width)[None, :]
        fed = pos < ends[:, None]
        scored = fed & (pos >= starts[:, None])
        last = self.num_targets - 1
        # input aligned with target j is x[j] = tokens[j - 1] (eos for j = 0)
        inputs = np.where(fed & (pos > 0), self.tokens[np.clip(pos - 1, 0, last)], self.eos_id)
        targets = np.where(scored, self.tokens[np.clip(pos, 0, last)], IGNORE_INDEX)
        return torch.from_numpy(inputs.astype(np.int64)), torch.from_numpy(targets.astype(np.int64))

    def epoch(
        self, epoch: int, start_batch: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield this rank's batches of `epoch`, starting at batch `start_batch` (resume)."""
        for index in range(start_batch, len(self)):
            yield self.batch(epoch, index)

    def __iter__(self):
        return self.epoch(0)


class StreamBatcher:
    """B contiguous rows per rank, cut into (B, block_size) chunks for truncated BPTT.

    The N targets are split into batch_size * world_size rows of L = ceil(N / rows) targets
    (the last rows may be shorter or empty); this rank owns rows [rank*B, (rank+1)*B). Batch i
    holds positions [i*T, (i+1)*T) of every row, so row r of batch i+1 continues row r of
    batch i. The tail is padded with IGNORE_INDEX targets (and eos inputs). The order is fixed:
    a stream is not shuffled, which is what makes carrying the state meaningful.
    """

    def __init__(
        self,
        tokens,
        eos_id: int,
        block_size: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        _check_sizes(block_size, batch_size, rank, world_size)
        self.tokens = _as_numpy(tokens)
        self.eos_id = int(eos_id)
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed  # kept for signature parity with BlockBatcher; the stream is not shuffled
        self.rank = rank
        self.world_size = world_size
        self.num_targets = len(self.tokens)
        self.row_length = math.ceil(self.num_targets / (batch_size * world_size))

    def __len__(self) -> int:
        return math.ceil(self.row_length / self.block_size)

    def _row_span(self, row: int) -> tuple[int, int]:
        """Targets [start, end) of global row `row`."""
        start = min(row * self.row_length, self.num_targets)
        return start, min(start + self.row_length, self.num_targets)

    def num_batch_targets(self, epoch: int, index: int, rank: int | None = None) -> int:
        """Scored targets in a rank's batch `index` (default: this rank's)."""
        rank = self.rank if rank is None else rank
        total = 0
        for r in range(self.batch_size):
            start, end = self._row_span(rank * self.batch_size + r)
            lo = start + index * self.block_size
            total += max(0, min(lo + self.block_size, end) - lo)
        return total

    def global_batch_targets(self, epoch: int, index: int) -> int:
        """Scored targets in batch `index` over all ranks, without any communication."""
        return sum(self.num_batch_targets(epoch, index, r) for r in range(self.world_size))

    def batch(self, epoch: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        T = self.block_size
        inputs = np.full((self.batch_size, T), self.eos_id, dtype=np.int64)
        targets = np.full((self.batch_size, T), IGNORE_INDEX, dtype=np.int64)
        for r in range(self.batch_size):
            start, end = self._row_span(self.rank * self.batch_size + r)
            lo = start + index * T
            hi = min(lo + T, end)
            if hi > lo:
                inputs[r, : hi - lo] = _stream_inputs(self.tokens, self.eos_id, lo, hi)
                targets[r, : hi - lo] = self.tokens[lo:hi]
        return torch.from_numpy(inputs), torch.from_numpy(targets)

    def epoch(self, epoch: int = 0, start_batch: int = 0):
        """Yield the batches in stream order, from `start_batch` (resume; the state restarts)."""
        for index in range(start_batch, len(self)):
            yield self.batch(epoch, index)

    def __iter__(self):
        return self.epoch(0)


class SentenceBatcher:
    """One sentence per row: inputs = [eos] + ids[:-1], targets = ids, right-padded.

    `sentences` are id lists as `Tokenizer.encode` returns them (ending in eos). Each is scored
    independently of the others. Rows are grouped by length (longest first) so little compute
    goes to padding; every batch also yields the sentences' original indices so callers can put
    the scores back in input order.
    """

    def __init__(self, sentences: Sequence[Sequence[int]], eos_id: int, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        self.sentences = [list(map(int, s)) for s in sentences]
        self.eos_id = int(eos_id)
        self.batch_size = batch_size
        # Stable sort: equal lengths keep their input order, so batches are deterministic.
        self.order = sorted(range(len(self.sentences)), key=lambda i: -len(self.sentences[i]))

    def __len__(self) -> int:
        return math.ceil(len(self.sentences) / self.batch_size)

    @property
    def num_targets(self) -> int:
        return sum(len(s) for s in self.sentences)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for b in range(len(self)):
            index = self.order[b * self.batch_size : (b + 1) * self.batch_size]
            width = max(1, max(len(self.sentences[i]) for i in index))
            inputs = torch.full((len(index), width), self.eos_id, dtype=torch.long)
            targets = torch.full((len(index), width), IGNORE_INDEX, dtype=torch.long)
            for row, i in enumerate(index):
                ids = self.sentences[i]
                if ids:
                    inputs[row, : len(ids)] = torch.tensor([self.eos_id] + ids[:-1])
                    targets[row, : len(ids)] = torch.tensor(ids)
            yield inputs, targets, torch.tensor(index, dtype=torch.long)
