"""Resumable training state: `Progress`, and the checkpoint dict that holds all an update needs.

Everything the next update depends on (weights, optimizer and lr-schedule state, data position,
the LSTM's carried state, RNG states) goes into the checkpoint, so `--resume` continues exactly
where it left off; on CPU in fp32 it reproduces an uninterrupted run bit for bit. The layout is
gcnn.checkpoint's, with the training keys: train_config, optimizer, scheduler, step, epoch,
data_position {epoch, batch, rows, state, corpus}, rng, metrics (Progress + best_valid_ppl,
world_size).
"""

from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path

import torch

from gcnn.checkpoint import model_checkpoint, rng_state, set_rng_state
from gcnn.errors import GcnnError
from gcnn.training.config import TrainConfig
from gcnn.training.distributed import Dist, state_from_plain
from gcnn.training.optim import LRSchedule


def ppl(loss: float) -> float:
    """Perplexity of a mean NLL (inf rather than an overflow)."""
    return math.exp(loss) if loss < 700 else math.inf


@dataclasses.dataclass
class Progress:
    """How far the run is, over all its sessions; saved as the checkpoint's `metrics`."""

    step: int = 0  # optimizer updates done
    epoch: int = 0  # current epoch (0-based)
    batch: int = 0  # next micro-batch of the epoch
    tokens: int = 0  # scored targets trained on (global)
    wall_s: float = 0.0  # training time over all sessions of this run
    best_valid_loss: float = math.inf
    best_step: int = -1
    last_valid_loss: float = math.nan
    last_valid_step: int = -1
    bad_updates: int = 0  # non-finite losses skipped, in total
    bad_in_row: int = 0
    valid_pending: bool = False  # a signal cut the validation of `step` short: redo it first


@dataclasses.dataclass
class Resumed:
    """What a checkpoint gives back besides the weights and optimizer state it loads."""

    progress: Progress
    carried: tuple[torch.Tensor, ...] | None  # this rank's LSTM state, on the device (GCNN: None)


def training_checkpoint(
    *,
    model,
    tokenizer,
    config: TrainConfig,
    optimizer,
    schedule: LRSchedule,
    progress: Progress,
    rows: int,
    dist: Dist,
    carried,
    corpus: dict | None = None,
) -> dict:
    """The checkpoint of a run after `progress.step` updates. `rows` is one rank's rows per
    micro-batch; `carried` the LSTM state of all ranks as `state_to_plain` gives it; `corpus`
    the training split's identity (gcnn.training.resume.corpus_identity)."""
    p = progress
    # Never write NaN weights: a skipped update keeps them finite, so this is a bug guard.
    for name, param in model.state_dict().items():
        if param.is_floating_point() and not torch.isfinite(param).all():
            raise GcnnError(f"refusing to save non-finite weights ({name}) at step {p.step}")
    return model_checkpoint(
        model,
        tokenizer,
        train_config=config.to_dict(),
        optimizer=optimizer.state_dict(),
        scheduler=schedule.state_dict(),
        step=p.step,
        epoch=p.epoch,
        data_position={
            "epoch": p.epoch,
            "batch": p.batch,
            "rows": rows * dist.world_size,  # global rows per micro-batch
            "state": carried,
            "corpus": corpus,
        },
        rng=rng_state(),
        metrics={
            **dataclasses.asdict(p),
            "best_valid_ppl": ppl(p.best_valid_loss),
            "world_size": dist.world_size,
        },
    )


def restore(
    ckpt: dict,
    *,
    model,
    optimizer,
    schedule: LRSchedule,
    rows: int,
    dist: Dist,
    device: torch.device,
    seed: int,
    path: Path,
) -> Resumed:
    """Load `ckpt` (read from `path`) into the model, optimizer and schedule and set the RNGs;
    GcnnError if it was saved by a run with another optimizer or batch shape."""
    model.load_state_dict(ckpt["model"])
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError) as err:
        raise GcnnError(
            f"{path}: its optimizer state does not fit this run's optimizer "
            f"({err}); resume with the same --optimizer and gcnn version, or start a new --out"
        ) from None
    schedule.load_state_dict(ckpt["scheduler"])
    known = {f.name for f in dataclasses.fields(Progress)}
    progress = Progress(**{k: v for k, v in ckpt["metrics"].items() if k in known})
    position = ckpt["data_position"]
    global_rows = rows * dist.world_size
    if position.get("rows", global_rows) != global_rows:
        raise GcnnError(
            f"{path} was saved with {position['rows']} rows per micro-batch over "
            f"all processes, this run has {global_rows}; resume with the same --tokens-per-batch, "
            "--grad-accum and --block-size"
        )
    progress.epoch, progress.batch = int(position["epoch"]), int(position["batch"])
    progress.step = int(ckpt["step"])
    carried = state_from_plain(position.get("state"), dist, rows, device)
    if dist.is_main:
        set_rng_state(ckpt["rng"])
    else:  # other ranks' generators were not saved: reseed them from (seed, rank, step)
        torch.manual_seed(seed + 1000003 * dist.rank + progress.step)
    return Resumed(progress, carried)


def checkpoint_bytes(model, optimizer, tokenizer) -> int:
    """About the size of one checkpoint, known before the first update fills the optimizer
    state: the model's tensors, one copy of the parameters per optimizer slot (AdamW: 2,
    NAG: 1), the serialized tokenizer, and a few hundred bytes of zip record per tensor.
    Measured on WikiText-2 after one update: gcnn-small 107.04 MB estimated, 106.96 MB
    written with AdamW (71.57 vs 71.50 MB with NAG); lstm-small 103.16 vs 103.11 MB."""
    tensors = list(model.state_dict().values())
    params = [p for p in model.parameters() if p.requires_grad]
    defaults = optimizer.defaults
    slots = 2 if "betas" in defaults else int(bool(defaults.get("momentum")))
    buffer = io.BytesIO()
    torch.save(tokenizer.state_dict(), buffer)
    data = sum(t.numel() * t.element_size() for t in tensors)
    data += slots * sum(p.numel() * p.element_size() for p in params)
    records = len(tensors) + (slots + 1) * len(params)  # + AdamW's step counters
    return data + buffer.tell() + 512 * records + (64 << 10)  # + RNG states, metadata
