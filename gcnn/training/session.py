"""One training run in this process: `train(config)` runs a Trainer from set-up to its last
checkpoint, and leaves the process as it found it (the run directory released, a process group
it started destroyed) however the run ends."""

from __future__ import annotations

import gc
from pathlib import Path

import torch.distributed as dist

from gcnn.signals import Stopped
from gcnn.training.config import TrainConfig
from gcnn.training.recipe import resolve
from gcnn.training.run_dir import RunDir
from gcnn.training.trainer import Trainer


def train(config: TrainConfig, resume_ckpt: dict | None = None) -> dict:
    """Train with `config` (resuming from `resume_ckpt` if given); returns a summary dict."""
    started_here = not dist.is_initialized()
    run = RunDir(Path(resolve(config).out))
    try:
        return Trainer(config, resume_ckpt, run).fit()
    except Stopped as stop:  # before the training loop (data, model, precision): nothing saved
        step = resume_ckpt["step"] if resume_ckpt is not None else None
        stop.kept = stop.kept or (
            "before the first update; nothing was saved" if step is None
            else f"before training went on; {run.last_path} (update {step}) is as it was"
        )  # fmt: skip
        raise
    finally:
        run.release()  # the kernel would too, at exit; an in-process caller may go on
        if started_here and dist.is_initialized():
            # The trainer holds the process group (through DDP); if anything keeps it in a
            # reference cycle (an exception's traceback, say), only the garbage collector frees
            # it, and a group that outlives destroy_process_group() keeps gloo's threads alive
            # into interpreter shutdown, where they abort the process (see init_distributed).
            gc.collect()
            dist.destroy_process_group()
