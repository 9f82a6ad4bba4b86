"""The validation pass: mean NLL per target over the validation split, all ranks together; a
signal cuts it short within seconds instead of after the pass (a WikiText-103 validation can
outlast a scheduler's grace period)."""

from __future__ import annotations

import torch

from gcnn.training.distributed import Dist

# Validation batches between two checks, agreed by all ranks, for a signal (several processes).
VALID_STOP_EVERY = 8


def stop_agreed(requested: bool, dist: Dist, device, index: int) -> bool:
    """Whether a signal asks every rank to stop before validation batch `index`. One process
    reads its own flag; several agree every VALID_STOP_EVERY batches (a collective, so not at
    every batch: that would be a host sync per batch on a GPU)."""
    if not dist.enabled:
        return requested
    if index % VALID_STOP_EVERY or index == 0:
        return False
    (votes,) = dist.all_sum([float(requested)], device)
    return votes > 0


@torch.no_grad()
def validation_loss(model, feed, rows: int, dist: Dist, device, autocast, stop) -> float | None:
    """Mean NLL per target over `feed` (one host sync, at the end); None when `stop(index)`
    says so before a batch. `autocast()` gives the run's autocast context."""
    model.eval()
    try:
        sums = torch.zeros(2, dtype=torch.float64, device=device)  # NLL, targets
        state = model.init_state(rows, device) if model.is_recurrent else None
        for index in range(len(feed)):
            if stop(index):
                return None
            batch = feed.batch(0, index).to(device)
            with autocast():
                loss_sum, n, state = model.loss(batch.inputs, batch.targets, state, batch.plan)
            sums += torch.stack([loss_sum.double(), n.double()])  # no host sync per batch
    finally:
        model.train()
    total, count = dist.all_sum(sums, device)  # the one host sync
    return total / max(count, 1.0)
