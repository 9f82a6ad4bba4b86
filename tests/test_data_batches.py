"""Batchers: every target exactly once per epoch, aligned with exactly the right history."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from gcnn.data import IGNORE_INDEX, BlockBatcher, SentenceBatcher, StreamBatcher

EOS = 0


def stream(n: int) -> np.ndarray:
    """Token j has value j + 1, so a target's value tells its position (eos is 0)."""
    return np.arange(1, n + 1, dtype=np.int32)


def x_of(tokens: np.ndarray) -> np.ndarray:
    return np.concatenate([[EOS], tokens])


def check_rows(inputs: torch.Tensor, targets: torch.Tensor, tokens: np.ndarray, context: int):
    """Scored positions of a batch, after checking each row's inputs are the true history."""
    x = x_of(tokens)
    scored = []
    for inp, tgt in zip(inputs.numpy(), targets.numpy(), strict=True):
        cols = np.flatnonzero(tgt != IGNORE_INDEX)
        if len(cols) == 0:
            continue
        first = tgt[cols[0]] - 1  # position of the row's first scored target
        # Scored targets are one contiguous run, and the row starts at its window start.
        assert np.array_equal(tgt[cols], np.arange(first, first + len(cols)) + 1)
        assert cols[0] == min(context, first)
        window = first - cols[0]
        end = first + len(cols)
        assert np.array_equal(inp[: end - window], x[window:end])
        assert np.all(inp[end - window :] == EOS) and np.all(tgt[end - window :] == IGNORE_INDEX)
        scored.extend((tgt[cols] - 1).tolist())
    return scored


@pytest.mark.parametrize(
    "n, block, context, batch, world",
    [
        (1, 4, 0, 1, 1),
        (17, 4, 0, 2, 1),
        (17, 4, 3, 2, 2),
        (100, 7, 5, 3, 3),
        (100, 10, 30, 4, 2),
        (64, 8, 8, 2, 4),
        (5, 3, 2, 4, 3),  # more ranks than blocks: some ranks get only padding rows
        (250, 1, 6, 16, 2),
    ],
)
@pytest.mark.parametrize("shuffle", [False, True])
def test_block_batcher_scores_every_target_once(n, block, context, batch, world, shuffle):
    tokens = stream(n)
    for epoch in (0, 1):
        scored, lengths = [], set()
        for rank in range(world):
            b = BlockBatcher(tokens, EOS, block, batch, context, shuffle, 7, rank, world)
            assert b.num_targets == n
            lengths.add(len(b))
            for i, (inputs, targets) in enumerate(b.epoch(epoch)):
                assert inputs.dtype == targets.dtype == torch.int64
                assert inputs.shape == targets.shape and inputs.shape[1] == context + block
                assert b.num_batch_targets(epoch, i) == int((targets != IGNORE_INDEX).sum())
                scored += check_rows(inputs, targets, tokens, context)
        assert len(lengths) == 1, "ranks must run the same number of batches"
        assert sorted(scored) == list(range(n))


def test_block_batcher_shuffle_is_reproducible_and_resumable():
    tokens = stream(1000)
    make = lambda seed: BlockBatcher(tokens, EOS, 10, 4, context=5, shuffle=True, seed=seed)
    a, b, c = make(1), make(1), make(2)
    first = [t for _, t in a.epoch(3)]
    assert all(torch.equal(p, q) for p, q in zip(first, (t for _, t in b.epoch(3)), strict=True))
    assert not torch.equal(first[0], next(iter(c.epoch(3)))[1])  # another seed, another order
    assert not torch.equal(first[0], next(iter(a.epoch(4)))[1])  # another epoch, another order
    resumed = [t for _, t in a.epoch(3, start_batch=5)]
    assert len(resumed) == len(a) - 5
    assert all(torch.equal(p, q) for p, q in zip(first[5:], resumed, strict=True))
    unshuffled = BlockBatcher(tokens, EOS, 10, 4)
    assert next(iter(unshuffled.epoch(0)))[1][0, 0].item() == 1  # in order: block 0 first


def test_block_batcher_accepts_tensors_and_memmaps(tmp_path):
    path = tmp_path / "ids.npy"
    np.save(path, stream(50))
    mm = np.load(path, mmap_mode="r")
    from_mm = list(BlockBatcher(mm, EOS, 8, 3, context=4).epoch(0))
    from_tensor = list(BlockBatcher(torch.from_numpy(stream(50)), EOS, 8, 3, context=4).epoch(0))
    for (i1, t1), (i2, t2) in zip(from_mm, from_tensor, strict=True):
        assert torch.equal(i1, i2) and torch.equal(t1, t2)


@pytest.mark.parametrize(
    "n, block, batch, world",
    [(1, 3, 1, 1), (50, 7, 3, 1), (50, 7, 3, 2), (101, 5, 4, 3), (10, 4, 4, 3), (64, 8, 2, 4)],
)
def test_stream_batcher_rows_are_contiguous_and_complete(n, block, batch, world):
    tokens = stream(n)
    x = x_of(tokens)
    scored, lengths = [], set()
    for rank in range(world):
        b = StreamBatcher(tokens, EOS, block, batch, rank=rank, world_size=world)
        lengths.add(len(b))
        rows = [[] for _ in range(batch)]
        for i, (inputs, targets) in enumerate(b.epoch(0)):
            assert inputs.shape == targets.shape == (batch, block)
            assert b.num_batch_targets(0, i) == int((targets != IGNORE_INDEX).sum())
            for r in range(batch):
                keep = targets[r] != IGNORE_INDEX
                pos = (targets[r][keep] - 1).tolist()
                assert np.array_equal(inputs[r][keep].numpy(), x[pos])  # input j is x[j]
                if pos:  # scored positions come first; the rest of the row is padding
                    assert keep[: len(pos)].all()
                rows[r] += pos
        for row in rows:  # batch i+1 continues batch i: one contiguous run per row
            if row:
                assert row == list(range(row[0], row[0] + len(row)))
            scored += row
    assert len(lengths) == 1
    assert sorted(scored) == list(range(n))


def test_sentence_batcher_scores_each_sentence_alone():
    sentences = [[5, 6, EOS], [EOS], [7, 8, 9, 10, EOS], [3, EOS], [4, 4, EOS]]
    batcher = SentenceBatcher(sentences, EOS, batch_size=2)
    assert len(batcher) == 3 and batcher.num_targets == 14
    seen, widths = [], []
    for inputs, targets, index in batcher:
        widths.append(inputs.shape[1])
        for row, i in enumerate(index.tolist()):
            ids = sentences[i]
            assert inputs[row, : len(ids)].tolist() == [EOS] + ids[:-1]
            assert targets[row, : len(ids)].tolist() == ids
            assert (targets[row, len(ids) :] == IGNORE_INDEX).all()
            seen.append(i)
    assert sorted(seen) == list(range(len(sentences)))
    assert widths == sorted(widths, reverse=True)  # longest first: little padding


def test_bad_batcher_arguments_are_rejected():
    for kwargs in ({"block_size": 0}, {"batch_size": 0}, {"context": -1}, {"rank": 2}):
        args = {"block_size": 4, "batch_size": 2, "world_size": 2} | kwargs
        with pytest.raises(ValueError):
            BlockBatcher(stream(10), EOS, **args)
    with pytest.raises(ValueError):
        StreamBatcher(stream(10), EOS, 4, 2, rank=1, world_size=1)


def test_every_combination_small_exhaustive():
    """A sweep over small sizes (cheap): exactness must not depend on divisibility."""
    for n, block, context, world in itertools.product((1, 2, 9, 16), (1, 2, 5), (0, 1, 4), (1, 3)):
        tokens = stream(n)
        scored = []
        for rank in range(world):
            b = BlockBatcher(tokens, EOS, block, 2, context, True, 0, rank, world)
            for inputs, targets in b.epoch(0):
                scored += check_rows(inputs, targets, tokens, context)
        assert sorted(scored) == list(range(n)), (n, block, context, world)
