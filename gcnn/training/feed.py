"""The feed of batches: a split's micro-batches built on the host, `grad_accum` per update.

An update takes `grad_accum` consecutive micro-batches of one epoch; an epoch's ragged tail (fewer
than `grad_accum` left) is dropped and the next update starts the next epoch. Training stands at
(epoch, next micro-batch), saved in checkpoints; `next_position` turns that into the `Position`
the next update starts at, so a resumed run takes exactly the batches the interrupted one would.
"""

from __future__ import annotations

import dataclasses

import torch

from gcnn.data import BlockBatcher, StreamBatcher
from gcnn.errors import GcnnError
from gcnn.models.adaptive_softmax import SoftmaxPlan
from gcnn.training.config import TrainConfig
from gcnn.training.distributed import Dist


@dataclasses.dataclass
class MicroBatch:
    """One micro-batch as built on the host: ids, targets and their adaptive-softmax plan."""

    inputs: torch.Tensor
    targets: torch.Tensor
    plan: SoftmaxPlan

    def pin_memory(self) -> MicroBatch:
        return MicroBatch(
            self.inputs.pin_memory(), self.targets.pin_memory(), self.plan.pin_memory()
        )

    def to(self, device) -> MicroBatch:
        """Asynchronous from pinned memory: the host goes on while the copy runs."""
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return MicroBatch(move(self.inputs), move(self.targets), self.plan.to(device, True))


@dataclasses.dataclass(frozen=True)
class Position:
    """Where an update starts: an epoch (0-based) and its first micro-batch."""

    epoch: int
    batch: int


def rows_per_micro_batch(config: TrainConfig, world_size: int) -> int:
    """Rows of `block_size` targets in one micro-batch of one rank, so that an update scores
    `tokens_per_batch` targets over all ranks and accumulation steps."""
    c = config
    rows = c.tokens_per_batch // (c.block_size * world_size * c.grad_accum)
    if rows < 1:
        raise GcnnError(
            f"--tokens-per-batch {c.tokens_per_batch} is smaller than one block per "
            f"micro-batch (block size {c.block_size} x {world_size} process(es)"
            f" x grad-accum {c.grad_accum}); raise it or lower --block-size"
        )
    return rows


def split_feed(
    tokens, eos_id: int, model, rows: int, config: TrainConfig, dist: Dist, device, training: bool
) -> Feed:
    """This rank's feed of one split: for a GCNN blocks with `context` tokens of unscored
    history, shuffled per epoch when training; for an LSTM carried streams. Training takes
    `grad_accum` micro-batches per update, validation one at a time."""
    c, d = config, dist
    if model.is_recurrent:
        batcher = StreamBatcher(tokens, eos_id, c.block_size, rows, c.seed, d.rank, d.world_size)
    else:
        batcher = BlockBatcher(
            tokens, eos_id, c.block_size, rows, c.context, training, c.seed, d.rank, d.world_size
        )
    feed = Feed(batcher, model.plan, device, c.grad_accum if training else 1)
    if training and feed.updates_per_epoch < 1:
        raise GcnnError(
            f"the training split of {c.data} is smaller than one update "
            f"({c.tokens_per_batch} tokens); lower --tokens-per-batch"
        )
    return feed


class Feed:
    """A batcher's micro-batches with their softmax plans, pinned for a CUDA device; for training,
    grouped into updates of `grad_accum`, the next update's built ahead on request (`prefetch`)."""

    def __init__(self, batcher, plan, device: torch.device, grad_accum: int = 1):
        self.batcher = batcher
        self.plan = plan  # targets -> SoftmaxPlan (the model's)
        self.device = device
        self.grad_accum = grad_accum
        self.prefetched_at: Position | None = None  # the update `prefetched` holds
        self.prefetched: list[MicroBatch] = []

    def __len__(self) -> int:
        """Micro-batches per epoch (on each rank)."""
        return len(self.batcher)

    @property
    def rows(self) -> int:
        """Rows per micro-batch on each rank."""
        return self.batcher.batch_size

    @property
    def updates_per_epoch(self) -> int:
        return len(self.batcher) // self.grad_accum

    def batch(self, epoch: int, index: int) -> MicroBatch:
        """Micro-batch `index` of `epoch`, built on the host with its softmax plan."""
        inputs, targets = self.batcher.batch(epoch, index)
        batch = MicroBatch(inputs, targets, self.plan(targets))
        return batch.pin_memory() if self.device.type == "cuda" else batch

    def end_of_epoch(self, batch: int) -> bool:
        """Whether no whole update is left in the epoch from micro-batch `batch` on."""
        return batch + self.grad_accum > len(self.batcher)

    def next_position(self, epoch: int, batch: int) -> Position:
        """Where the update after micro-batch `batch` of `epoch` starts."""
        if self.end_of_epoch(batch):
            return Position(epoch + 1, 0)
        return Position(epoch, batch)

    def global_count(self, at: Position) -> int:
        """The scored targets of the update at `at` over all ranks: every rank can count every
        rank's targets from the deal, so no collective is needed."""
        return sum(
            self.batcher.global_batch_targets(at.epoch, at.batch + i)
            for i in range(self.grad_accum)
        )

    def update_batches(self, at: Position) -> list[MicroBatch]:
        """The micro-batches of the update at `at` (prefetched ones if they are those)."""
        batches = self.prefetched if self.prefetched_at == at else self.build(at)
        self.prefetched_at, self.prefetched = None, []
        return batches

    def prefetch(self, at: Position) -> None:
        """Build the update at `at` on the host now, while the device is still busy with the
        previous one (CUDA runs asynchronously until the update's single sync)."""
        self.prefetched_at, self.prefetched = at, self.build(at)

    def build(self, at: Position) -> list[MicroBatch]:
        return [self.batch(at.epoch, at.batch + i) for i in range(self.grad_accum)]
