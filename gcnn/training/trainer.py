"""The training loop: the paper's recipe, resumable to the exact update, on 1..N processes.

One update = `grad_accum` micro-batches on each of `world_size` processes. The loss of an update
is the summed NLL of all its scored targets divided by their GLOBAL number (counted before the
forward passes), so gradient accumulation and data parallelism change nothing but speed: two
processes compute the same update as one process on the same global batch.

Everything the next update depends on (weights, optimizer and lr-schedule state, data position,
the LSTM's carried state, RNG states) goes into checkpoint_last.pt, so `--resume` after a crash
continues exactly where the checkpoint left off; on CPU in fp32 it reproduces an uninterrupted
run bit for bit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import gc
import io
import json
import math
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from gcnn.checkpoint import (
    load_checkpoint,
    model_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from gcnn.data import atomic_write
from gcnn.data.cache import is_writable_dir
from gcnn.errors import EXIT_DISK_FULL, GcnnError, WriteError, writing
from gcnn.models.adaptive_softmax import SoftmaxPlan
from gcnn.training.config import DATASETS, TrainConfig, to_toml
from gcnn.training.distributed import (
    env_dist,
    init_distributed,
    resolve_precision,
    run_device,
    state_from_plain,
    state_to_plain,
)
from gcnn.training.optim import LRSchedule, make_optimizer

# --- resolving the defaults that depend on the model ------------------------------------------


def is_small_preset(name: str) -> bool:
    """The CPU-scale presets ("gcnn-small", "lstm-small") get the modern recipe by default."""
    return name.endswith("-small")


# Default stopping for the small presets on WikiText-2: a fixed training time, so that the
# no-argument `time python train.py` (start-up and the last validation included) takes about 10
# minutes on whatever machine runs it; the cosine schedule follows the clock (see LRSchedule). A
# fast machine trains for more updates in it. For a run that is the same on every machine, give
# --max-updates instead.
SMALL_MAX_MINUTES = 9.0
PAPER_MAX_EPOCHS = 35  # fairseq's WikiText-103 recipe


def resolve(config: TrainConfig, model=None) -> TrainConfig:
    """Fill the fields left at None: the recipe follows the preset, the context the model."""
    c = dataclasses.replace(config)
    if c.optimizer is None:
        c.optimizer = "adamw" if is_small_preset(c.model) else "nag"
    nag = c.optimizer == "nag"
    if c.lr is None:
        c.lr = 1.0 if nag else 1e-2
    if c.weight_decay is None:
        c.weight_decay = 5e-6 if nag else 0.01
    if c.clip_norm is None:
        c.clip_norm = 0.1 if nag else 1.0
    if c.max_epochs is None and c.max_updates is None and c.max_minutes is None:
        if is_small_preset(c.model):
            c.max_minutes = SMALL_MAX_MINUTES
        else:
            c.max_epochs = PAPER_MAX_EPOCHS
    if c.out is None:
        name = c.data if c.data in DATASETS else Path(c.data).name
        c.out = str(Path("runs") / f"{c.model}-{name}")
    if model is not None:
        if model.is_recurrent:
            if c.context not in (None, 0):
                raise GcnnError(f"--context {c.context}: LSTMs carry their state; drop --context")
            c.context = 0
        elif c.context is None:
            c.context = max(0, (model.receptive_field or 1) - 1)
    return c


def model_overrides(config: TrainConfig) -> dict:
    overrides = dict(config.model_args)
    for name in ("dropout", "gating", "weight_norm"):
        if getattr(config, name) is not None:
            overrides[name] = getattr(config, name)
    return overrides


class LossModule(nn.Module):
    """model.loss as a forward(), so DistributedDataParallel sees (and syncs) the whole loss."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs, targets, state=None, plan=None):
        return self.model.loss(inputs, targets, state, plan)


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


@dataclasses.dataclass
class Progress:
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


class Trainer:
    def __init__(self, config: TrainConfig, resume_ckpt: dict | None = None):
        run_device(config, env_dist())  # a bad --device fails now, not after the data
        main = env_dist().is_main
        if config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: F401
            except ImportError:
                raise GcnnError(
                    "--tensorboard needs the tensorboard package: pip install 'gcnn[tensorboard]'"
                ) from None
        if config.compile and not hasattr(torch, "compile"):
            raise GcnnError("--compile needs torch >= 2.0")

        # Data first, on every rank, before any process group exists: downloading or tokenizing
        # can take longer than a collective's timeout, so no rank may wait in a barrier
        # meanwhile. File locks make the first rank on a machine do the work and the others
        # wait for it, then read its cache (and a node without a shared cache builds its own).
        from gcnn.data import prepare_corpus

        self.corpus = prepare_corpus(
            config.data,
            tokenizer=config.tokenizer,
            vocab_size=config.vocab_size,
            splits=("train", "valid"),
            progress=main and config.progress,
            download=True,  # a named corpus (wikitext-2/103) missing locally is fetched once
        )
        self.dist, self.device = init_distributed(config)
        config = dataclasses.replace(config, precision=resolve_precision(config, self.device))
        self.out = Path(resolve(config).out)
        self.last_path = self.out / "checkpoint_last.pt"
        self.best_path = self.out / "checkpoint_best.pt"
        if "train" not in self.corpus.splits or "valid" not in self.corpus.splits:
            raise GcnnError(f"corpus {self.corpus.directory} needs a train and a valid split")
        self.tokenizer = self.corpus.tokenizer
        self.fingerprint = self.tokenizer.fingerprint()

        # Model: every rank builds the same initial weights from the seed.
        from gcnn.models import build_model

        torch.manual_seed(config.seed)
        self.model = build_model(config.model, self.tokenizer.vocab_size, **model_overrides(config))
        self.config = config = resolve(config, self.model)
        self.check_run_dir(resume_ckpt)
        self.model.to(self.device)

        # Batches: `tokens_per_batch` scored tokens per update over all ranks and accum steps.
        self.rows = config.tokens_per_batch // (
            config.block_size * self.dist.world_size * config.grad_accum
        )
        if self.rows < 1:
            raise GcnnError(
                f"--tokens-per-batch {config.tokens_per_batch} is smaller than one block per "
                f"micro-batch (block size {config.block_size} x {self.dist.world_size} process(es)"
                f" x grad-accum {config.grad_accum}); raise it or lower --block-size"
            )
        self.train_batches = self.make_batcher(self.corpus.splits["train"], shuffle=True)
        valid = self.corpus.splits["valid"]
        if config.valid_tokens is not None:
            valid = valid[: config.valid_tokens]
        self.valid_batches = self.make_batcher(valid, shuffle=False)
        if config.precision == "auto":  # a CPU with bf16 instructions: time both on this model
            self.config = config = dataclasses.replace(config, precision=self.measure_precision())
        self.updates_per_epoch = len(self.train_batches) // config.grad_accum
        if self.updates_per_epoch < 1:
            raise GcnnError(
                f"the training split of {config.data} is smaller than one update "
                f"({config.tokens_per_batch} tokens); lower --tokens-per-batch"
            )

        # Optimisation.
        self.optimizer = make_optimizer(self.model, config, self.device)
        horizon = None
        if config.max_updates is not None:
            horizon = config.max_updates
        if config.max_epochs is not None:
            by_epochs = config.max_epochs * self.updates_per_epoch
            horizon = by_epochs if horizon is None else min(horizon, by_epochs)
        self.horizon = horizon
        max_seconds = None if config.max_minutes is None else 60 * config.max_minutes
        self.max_seconds = max_seconds
        self.schedule = LRSchedule(config, horizon, max_seconds)
        self.progress = Progress()
        self.train_state = None  # the LSTM's carried state
        self.saved_step = -1
        self.prefetched = None  # ((epoch, first batch), batches) of the next update
        self.over_time = False
        self.session_t0 = time.perf_counter()

        # The step the loss is taken through: DDP (unused adaptive-softmax tails allowed), compile.
        if config.compile:
            self.model.compile()  # in place: state_dict keys stay the same
        self.loss_module = LossModule(self.model)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.loss_module = DistributedDataParallel(
                self.loss_module, device_ids=ids, find_unused_parameters=True
            )

        if resume_ckpt is not None:
            self.restore(resume_ckpt)
        elif self.dist.rank > 0:
            torch.manual_seed(config.seed + self.dist.rank)  # distinct dropout masks per rank

    # -- setup helpers ---------------------------------------------------------------------------

    def make_batcher(self, tokens, shuffle: bool):
        from gcnn.data import BlockBatcher, StreamBatcher

        c, d = self.config, self.dist
        eos = self.tokenizer.eos_id
        if self.model.is_recurrent:
            return StreamBatcher(tokens, eos, c.block_size, self.rows, c.seed, d.rank, d.world_size)
        return BlockBatcher(
            tokens, eos, c.block_size, self.rows, c.context, shuffle, c.seed, d.rank, d.world_size
        )

    def measure_precision(self) -> str:
        """fp32 or bf16, whichever runs this model's training step faster here (rank 0 times
        it, every rank follows: ranks must agree on the numerics)."""
        from gcnn.precision import choose_precision

        choice = ["fp32"]
        if self.dist.is_main:
            batch = self.host_batch(self.train_batches, 0, 0)
            inputs, targets = batch.inputs.to(self.device), batch.targets.to(self.device)
            choice = [choose_precision(self.model, inputs, targets, "train", self.log_line)]
        if self.dist.enabled:
            dist.broadcast_object_list(choice, src=0)
        return choice[0]

    def check_run_dir(self, resume_ckpt: dict | None) -> None:
        """Refuse to overwrite another run; refuse to resume a checkpoint of another model."""
        model_config = self.model.config_dict()

        def mismatch(ckpt: dict) -> str:
            if ckpt["vocab_fingerprint"] != self.fingerprint:
                return f"was trained on another vocabulary than {self.config.data}"
            theirs = ckpt["model_config"]
            if theirs != model_config:
                keys = sorted(k for k in set(theirs) | set(model_config)
                              if theirs.get(k) != model_config.get(k))  # fmt: skip
                diff = ", ".join(f"{k} {theirs.get(k)!r} vs {model_config.get(k)!r}" for k in keys)
                return f"is a checkpoint of another model ({theirs.get('name')}: {diff})"
            return ""

        if resume_ckpt is not None:
            why = mismatch(resume_ckpt)
            if why:
                raise GcnnError(
                    f"{self.last_path} {why}; resume with the run's own settings or choose "
                    "another --out"
                )
            return
        for path in (self.last_path, self.best_path):
            if not path.exists():
                continue
            try:
                why = mismatch(load_checkpoint(path)) or "already holds a checkpoint"
            except GcnnError:
                why = "holds an unreadable checkpoint"
            raise GcnnError(
                f"run directory {self.out}: {path.name} {why}; pass --resume to continue that "
                "run or choose another --out (nothing was overwritten)"
            )

    def restore(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as err:
            raise GcnnError(
                f"{self.last_path}: its optimizer state does not fit this run's optimizer "
                f"({err}); resume with the same --optimizer and gcnn version, or start a new --out"
            ) from None
        self.schedule.load_state_dict(ckpt["scheduler"])
        known = {f.name for f in dataclasses.fields(Progress)}
        self.progress = Progress(**{k: v for k, v in ckpt["metrics"].items() if k in known})
        position = ckpt["data_position"]
        rows = self.rows * self.dist.world_size
        if position.get("rows", rows) != rows:
            raise GcnnError(
                f"{self.last_path} was saved with {position['rows']} rows per micro-batch over "
                f"all processes, this run has {rows}; resume with the same --tokens-per-batch, "
                "--grad-accum and --block-size"
            )
        self.progress.epoch, self.progress.batch = int(position["epoch"]), int(position["batch"])
        self.progress.step = int(ckpt["step"])
        self.train_state = state_from_plain(
            position.get("state"), self.dist, self.rows, self.device
        )
        if self.dist.is_main:
            set_rng_state(ckpt["rng"])
        else:  # other ranks' generators were not saved: reseed them from (seed, rank, step)
            torch.manual_seed(self.config.seed + 1000003 * self.dist.rank + self.progress.step)

    # -- checkpoints -----------------------------------------------------------------------------

    kept_step: int | None = None  # the update checkpoint_last.pt holds (None: no file yet)
    ckpt_bytes: int | None = None  # estimated size of one checkpoint (set by preflight)

    def checkpoint(self, state=None) -> dict:
        p = self.progress
        return model_checkpoint(
            self.model,
            self.tokenizer,
            train_config=self.config.to_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.schedule.state_dict(),
            step=p.step,
            epoch=p.epoch,
            data_position={
                "epoch": p.epoch,
                "batch": p.batch,
                "rows": self.rows * self.dist.world_size,  # global rows per micro-batch
                "state": state,
            },
            rng=rng_state(),
            metrics={
                **dataclasses.asdict(p),
                "best_valid_ppl": _ppl(p.best_valid_loss),
                "world_size": self.dist.world_size,
            },
        )

    def save(self, best: bool = False) -> None:
        state = state_to_plain(self.train_state, self.dist)  # collective: before rank checks
        self.saved_step = self.step  # on every rank, so that all make the same save() calls
        if not self.dist.is_main:
            return
        # Never write NaN weights: a skipped update keeps them finite, so this is a bug guard.
        for name, param in self.model.state_dict().items():
            if param.is_floating_point() and not torch.isfinite(param).all():
                raise GcnnError(f"refusing to save non-finite weights ({name}) at step {self.step}")
        ckpt = self.checkpoint(state)
        try:
            save_checkpoint(self.last_path, ckpt)
            self.kept_step = self.step
            if best:
                save_checkpoint(self.best_path, ckpt)
        except WriteError as err:
            raise self.write_fault(err) from None

    def write_fault(self, err: WriteError) -> GcnnError:
        """A write failed mid-run: one line saying why, what is kept and how to go on. A full
        disk exits with its own status (75) so that a job script can retry after freeing space.
        """
        if self.kept_step is None:
            kept = "no checkpoint was saved yet"
        else:
            kept = f"{self.last_path} (update {self.kept_step}) is intact"
        where = f"training stopped after update {self.step}; {kept}"
        resume = f"continue with --resume --out {self.out}"
        if err.disk_full:
            free = _free_bytes(self.out)
            figures = f" ({_mb(free)} free, a checkpoint takes about {_mb(self.ckpt_bytes)})"
            return GcnnError(
                f"cannot write {err.what} {err.path}: {err.cause}{'' if free is None else figures}"
                f"; {where}; free some space, then {resume}",
                EXIT_DISK_FULL,
            )
        return GcnnError(
            f"cannot write {err.what} {err.path}: {err.cause}; {where}; make {self.out} writable "
            f"again and {resume} (a copy of it on another disk resumes too)"
        )

    # -- before the first update: can the run directory take this run? --------------------------

    def preflight(self) -> None:
        """Refuse a run directory that cannot take this run's checkpoints now, not after hours
        of training: one that cannot be created or written, or whose file system lacks room for
        checkpoint_last.pt, checkpoint_best.pt and the temporary copy a save writes first."""
        problem = None
        self.ckpt_bytes = self.checkpoint_bytes()
        self.kept_step = self.step if self.last_path.exists() else None
        if self.dist.is_main:
            try:
                self.check_run_dir_room()
            except GcnnError as err:
                problem = err
        # only rank 0 writes; the others must stop with it rather than wait in a collective
        (refused,) = self.dist.all_sum([float(problem is not None)], self.device)
        if problem is not None:
            raise problem
        if refused:
            raise GcnnError(f"rank 0 cannot use the run directory {self.out} (see its error)")

    def check_run_dir_room(self) -> None:
        out, hint = self.out, "choose another --out or make it writable"
        created = not out.exists()
        try:
            # By mode bits too, on the directory or the one it will be created in: root passes
            # every access check, yet a directory made read-only must not be written into.
            existing = next(d for d in (out, *out.parents) if d.exists())
            if not is_writable_dir(existing):
                read_only = hasattr(os, "statvfs") and os.statvfs(existing).f_flag & os.ST_RDONLY
                fault = OSError(errno.EROFS if read_only else errno.EACCES, "not writable")
                raise WriteError(out, fault, "run directory", hint)
            with writing(out, "run directory", hint):
                out.mkdir(parents=True, exist_ok=True)
            probe = out / f".write-test-{os.getpid()}"
            with writing(out, "run directory", hint):  # a read-only mount shows here, even to root
                probe.write_bytes(b"")
                probe.unlink()
            # Peak use while saving checkpoint_best.pt: last + best + the temporary copy; files
            # of a resumed run already count in the used space.
            have = sum(p.stat().st_size for p in (self.last_path, self.best_path) if p.exists())
            need = max(0, 3 * self.ckpt_bytes - have)
            free = _free_bytes(out)
            if free is not None and free < need:
                raise GcnnError(
                    f"run directory {out}: {_mb(free)} free on its file system, this run needs "
                    f"about {_mb(need)} (checkpoint_last.pt and checkpoint_best.pt of about "
                    f"{_mb(self.ckpt_bytes)} each, plus a temporary copy while saving); free "
                    "some space or choose another --out"
                )
        except GcnnError:
            if created:  # leave nothing behind
                with contextlib.suppress(OSError):
                    out.rmdir()
            raise

    def checkpoint_bytes(self) -> int:
        """About the size of one checkpoint, known before the first update fills the optimizer
        state: the model's tensors, one copy of the parameters per optimizer slot (AdamW: 2,
        NAG: 1), the serialized tokenizer, and a few hundred bytes of zip record per tensor.
        Measured on WikiText-2 after one update: gcnn-small 107.04 MB estimated, 106.96 MB
        written with AdamW (71.57 vs 71.50 MB with NAG); lstm-small 103.16 vs 103.11 MB."""
        tensors = list(self.model.state_dict().values())
        params = [p for p in self.model.parameters() if p.requires_grad]
        defaults = self.optimizer.defaults
        slots = 2 if "betas" in defaults else int(bool(defaults.get("momentum")))
        buffer = io.BytesIO()
        torch.save(self.tokenizer.state_dict(), buffer)
        data = sum(t.numel() * t.element_size() for t in tensors)
        data += slots * sum(p.numel() * p.element_size() for p in params)
        records = len(tensors) + (slots + 1) * len(params)  # + AdamW's step counters
        return data + buffer.tell() + 512 * records + (64 << 10)  # + RNG states, metadata

    @property
    def step(self) -> int:
        return self.progress.step

    # -- evaluation ------------------------------------------------------------------------------

    def autocast(self):
        return torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.config.precision == "bf16"
        )

    @torch.no_grad()
    def validate(self) -> float:
        """Mean NLL per target over the whole validation split (all ranks together)."""
        self.model.eval()
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # NLL, targets
        state = None
        if self.model.is_recurrent:
            state = self.model.init_state(self.rows, self.device)
        for index in range(len(self.valid_batches)):
            batch = self.host_batch(self.valid_batches, 0, index).to(self.device)
            with self.autocast():
                loss_sum, n, state = self.model.loss(batch.inputs, batch.targets, state, batch.plan)
            sums += torch.stack([loss_sum.double(), n.double()])  # no host sync per batch
        self.model.train()
        total, count = self.dist.all_sum(sums, self.device)  # the one host sync
        return total / max(count, 1.0)

    # -- one update ------------------------------------------------------------------------------

    def host_batch(self, batcher, epoch: int, index: int) -> MicroBatch:
        """Batch `index` of `epoch`, built on the host with its softmax plan (pinned for CUDA)."""
        inputs, targets = batcher.batch(epoch, index)
        batch = MicroBatch(inputs, targets, self.model.plan(targets))
        return batch.pin_memory() if self.device.type == "cuda" else batch

    def next_position(self) -> tuple[int, int]:
        """(epoch, first micro-batch) of the next update; an epoch's ragged tail is dropped."""
        c, p = self.config, self.progress
        if p.batch + c.grad_accum > len(self.train_batches):
            return p.epoch + 1, 0
        return p.epoch, p.batch

    def prefetch(self) -> None:
        """Build the next update's batches on the host while the device is still busy with this
        one (CUDA runs asynchronously until the update's single sync)."""
        epoch, first = self.next_position()
        batches = [
            self.host_batch(self.train_batches, epoch, first + i)
            for i in range(self.config.grad_accum)
        ]
        self.prefetched = ((epoch, first), batches)

    def next_micro_batches(self) -> list[MicroBatch]:
        """The grad_accum micro-batches of the next update, moving to a new epoch when needed."""
        c, p = self.config, self.progress
        epoch, first = self.next_position()
        if epoch != p.epoch:
            p.epoch, p.batch = epoch, 0
            self.train_state = None  # the LSTM's streams restart with the epoch
        if self.prefetched is not None and self.prefetched[0] == (epoch, first):
            batches = self.prefetched[1]
        else:
            batches = [
                self.host_batch(self.train_batches, epoch, first + i) for i in range(c.grad_accum)
            ]
        self.prefetched = None
        p.batch += c.grad_accum
        return batches

    def update(self, stopper: SignalStopper) -> tuple[float, float, bool, bool]:
        """One optimizer update; returns (global loss sum, global count, skipped, stop).

        Everything the host must decide (which rows each softmax cluster needs, the global
        number of targets) is known from the batches before they reach the device, so the only
        device-to-host synchronisation of an update is the final `all_sum`: the loss, whether it
        was finite, and whether to stop, on all ranks at once.
        """
        c, p = self.config, self.progress
        epoch, first = self.next_position()
        # Every rank can count every rank's targets from the deal: no collective needed.
        global_count = sum(
            self.train_batches.global_batch_targets(epoch, first + i) for i in range(c.grad_accum)
        )
        micro = self.next_micro_batches()
        # DDP averages gradients over ranks; scale so the result is sum / GLOBAL count.
        scale = self.dist.world_size / max(global_count, 1)
        # Accumulated on the device: one host-device sync per update (below), not one per batch.
        loss_total = torch.zeros((), dtype=torch.float64, device=self.device)
        lr = self.schedule.lr(self.step, p.wall_s)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        for i, host in enumerate(micro):
            batch = host.to(self.device)
            last = i == len(micro) - 1
            sync = contextlib.nullcontext()
            if self.dist.enabled and not last:
                sync = self.loss_module.no_sync()
            with sync:
                with self.autocast():
                    loss_sum, _, state = self.loss_module(
                        batch.inputs, batch.targets, self.train_state, batch.plan
                    )
                (loss_sum * scale).backward()
            if self.model.is_recurrent:
                self.train_state = self.model.detach_state(state)
            loss_total += loss_sum.detach().double()
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = c.clip_norm if c.clip_norm > 0 else math.inf
        grad_norm = torch.zeros((), device=self.device)
        if params:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if self.device.type != "cpu":
            self.prefetch()  # host work that overlaps the device's
        local_bad = ~(torch.isfinite(loss_total) & torch.isfinite(grad_norm))
        # a signal that arrived during this update, or the clock, stops the run right after it
        requested = float(stopper.requested)
        elapsed = time.perf_counter() - self.session_t0
        over_time = float(self.max_seconds is not None and elapsed >= self.max_seconds)
        # torch.full launches a fill on the device; torch.tensor(...).to(device) would be a
        # blocking host-to-device copy
        flag = lambda v: torch.full((), v, dtype=torch.float64, device=self.device)  # noqa: E731
        values = [loss_total.where(~local_bad, 0.0), local_bad.double(), flag(requested)]
        loss_sum_g, bad, stop, over = self.dist.all_sum(  # the one host sync of the update
            torch.stack([*values, flag(over_time)]), self.device
        )
        self.over_time = over > 0  # any rank's clock decides, all ranks stop after this update
        skipped = bad > 0
        if skipped:  # a NaN/inf anywhere: no rank steps, the weights stay as they were
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            p.step += 1
        return loss_sum_g, global_count, skipped, stop > 0

    # -- the loop --------------------------------------------------------------------------------

    def fit(self) -> dict:
        c, p, main = self.config, self.progress, self.dist.is_main
        self.preflight()
        if main:
            config_text = to_toml(c)
            write_text_atomic(self.out / "config.toml", config_text, "run config")
            self.metrics = MetricsLog(self.out / "metrics.jsonl", p.step, self.write_fault)
            self.tb = None
            if c.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                with writing(self.out / "tensorboard", "TensorBoard log"):
                    self.tb = SummaryWriter(str(self.out / "tensorboard"))
            self.describe()
        bar = self.progress_bar()
        stopper = SignalStopper()
        exit_code, reason = 0, "done"
        interval = {"loss": 0.0, "count": 0.0, "t0": time.perf_counter(), "updates": 0}
        session_t0 = self.session_t0 = time.perf_counter() - p.wall_s
        self.session_start = (p.step, p.wall_s)
        self.model.train()
        with stopper:
            while True:
                reason = self.stop_reason()
                if reason:
                    break
                loss_sum, count, skipped, stop = self.update(stopper)
                p.wall_s = time.perf_counter() - session_t0
                if skipped:
                    p.bad_updates += 1
                    p.bad_in_row += 1
                    self.log_line(f"step {self.step}: non-finite loss, update skipped")
                    if p.bad_in_row >= c.max_bad_updates:
                        raise GcnnError(
                            f"training diverged: {p.bad_in_row} updates in a row had a NaN/inf "
                            f"loss (after update {self.step}); {self.last_path} holds the last "
                            "good state; lower --lr or --clip-norm, or use --precision fp32"
                        )
                else:
                    p.bad_in_row = 0
                    p.tokens += int(count)
                    interval["loss"] += loss_sum
                    interval["count"] += count
                    interval["updates"] += 1
                if bar is not None:
                    self.show_progress(interval, bar)
                if interval["updates"] and self.step % c.log_every == 0 and not skipped:
                    self.log_train(interval, bar)
                end_of_epoch = p.batch + c.grad_accum > len(self.train_batches)
                due = (c.valid_every and self.step % c.valid_every == 0) or (
                    not c.valid_every and end_of_epoch
                )
                if due and not skipped:
                    self.run_validation(bar)
                    interval["t0"] = time.perf_counter()
                elif c.save_every and self.step % c.save_every == 0 and not skipped:
                    self.save()
                if stop:
                    signum = stopper.signum or signal.SIGTERM  # another rank got the signal
                    exit_code = 128 + int(signum)
                    reason = f"stopped by {signal.Signals(signum).name}"
                    break
            if exit_code == 0 and p.last_valid_step != self.step:
                self.run_validation(bar)  # saves
            elif self.saved_step != self.step:
                self.save()
        if bar is not None:
            bar.close()
        summary = {
            "exit_code": exit_code,
            "reason": reason,
            "step": self.step,
            "best_valid_loss": p.best_valid_loss,
            "best_valid_ppl": _ppl(p.best_valid_loss),
            "best_checkpoint": str(self.best_path),
            "last_checkpoint": str(self.last_path),
            "wall_s": p.wall_s,
        }
        if main:
            self.metrics.close()
            if self.tb is not None:
                self.tb.close()
            if exit_code:
                print(
                    f"{reason} after update {self.step}: saved {self.last_path}; "
                    f"continue with --resume --out {self.out}",
                    flush=True,
                )
            else:
                print(
                    f"{reason}: best valid ppl {_ppl(p.best_valid_loss):.2f} (update "
                    f"{p.best_step}), checkpoint {self.best_path}",
                    flush=True,
                )
        if self.dist.enabled:
            dist.barrier()
        return summary

    def stop_reason(self) -> str:
        c, p = self.config, self.progress
        if c.max_updates is not None and p.step >= c.max_updates:
            return f"reached --max-updates {c.max_updates}"
        epoch_done = p.batch + c.grad_accum > len(self.train_batches)
        if c.max_epochs is not None and (p.epoch + epoch_done) >= c.max_epochs:
            return f"reached --max-epochs {c.max_epochs}"
        if self.over_time:  # agreed by all ranks in the last update's all_sum
            return f"reached --max-minutes {c.max_minutes:g}"
        if self.schedule.exhausted():
            return f"learning rate fell below --min-lr {c.min_lr:g}"
        return ""

    def run_validation(self, bar) -> None:
        p = self.progress
        loss = self.validate()
        p.last_valid_loss, p.last_valid_step = loss, self.step
        improved = loss < p.best_valid_loss
        if improved:
            p.best_valid_loss, p.best_step = loss, self.step
        self.schedule.on_validation(loss)
        lr = self.schedule.lr(self.step, p.wall_s)
        if self.dist.is_main:
            self.metrics.write(self.record(valid_loss=loss, valid_ppl=_ppl(loss), lr=lr))
            if self.tb is not None:
                self.tb.add_scalar("valid/ppl", _ppl(loss), self.step)
            mark = " (best)" if improved else ""
            self.log_line(
                f"update {self.step} epoch {self.epoch_float():.2f}: valid loss {loss:.4f} "
                f"ppl {_ppl(loss):.2f}{mark} lr {lr:.3g}",
                bar,
            )
        self.save(best=improved)

    def log_train(self, interval: dict, bar) -> None:
        seconds = max(time.perf_counter() - interval["t0"], 1e-9)
        loss = interval["loss"] / max(interval["count"], 1.0)
        rate = interval["count"] / seconds
        lr = self.optimizer.param_groups[0]["lr"]
        if self.dist.is_main:
            self.metrics.write(self.record(train_loss=loss, lr=lr, tokens_per_s=rate))
            if self.tb is not None:
                self.tb.add_scalar("train/loss", loss, self.step)
                self.tb.add_scalar("train/lr", lr, self.step)
        interval.update(loss=0.0, count=0.0, t0=time.perf_counter(), updates=0)

    def show_progress(self, interval: dict, bar) -> None:
        """Advance the bar; its numbers cover the updates since the last metrics line."""
        if interval["count"]:
            loss = interval["loss"] / interval["count"]
            rate = interval["count"] / max(time.perf_counter() - interval["t0"], 1e-9)
            lr = self.optimizer.param_groups[0]["lr"]
            bar.set_postfix(
                loss=f"{loss:.3f}",
                ppl=f"{_ppl(loss):.1f}",
                lr=f"{lr:.2g}",
                tok_s=f"{rate:.0f}",
                refresh=False,
            )
        if self.max_seconds is not None:
            # With a time limit the bar's end is where the clock will stop the run, if sooner.
            p = self.progress
            done, spent = p.step - self.session_start[0], p.wall_s - self.session_start[1]
            if done > 0 and spent > 0:
                at_limit = p.step + done / spent * max(0.0, self.max_seconds - p.wall_s)
                total = min(self.horizon or math.inf, math.ceil(at_limit))
                bar.total = max(int(total), p.step + 1)
        bar.update(1)

    def record(self, **values) -> dict:
        p = self.progress
        row = {
            "step": p.step,
            "epoch": round(self.epoch_float(), 4),
            "tokens": p.tokens,
            "train_loss": None,
            "valid_loss": None,
            "valid_ppl": None,
            "lr": None,
            "tokens_per_s": None,
            "wall_s": round(p.wall_s, 3),
        }
        row.update(values)
        return row

    def epoch_float(self) -> float:
        return self.progress.epoch + self.progress.batch / max(len(self.train_batches), 1)

    def progress_bar(self):
        if not (self.config.progress and self.dist.is_main):
            return None
        from tqdm import tqdm

        total = self.horizon
        return tqdm(total=total, initial=self.step, unit="upd", dynamic_ncols=True, smoothing=0.1)

    def log_line(self, text: str, bar=None) -> None:
        if not self.dist.is_main:
            return
        if bar is not None:
            bar.write(text)
        else:
            print(text, flush=True)

    def describe(self) -> None:
        c = self.config
        n = sum(p.numel() for p in self.model.parameters())
        horizon = f"{self.horizon} updates" if self.horizon else f"{c.max_minutes:g} minutes"
        resumed = f", resuming at update {self.step}" if self.step else ""
        self.log_line(
            f"{c.model}: {n / 1e6:.2f}M parameters, vocabulary {self.tokenizer.vocab_size}, "
            f"context {c.context}; {c.optimizer} lr {c.lr:g}; {self.rows} x {c.block_size} "
            f"tokens x {c.grad_accum} accum x {self.dist.world_size} proc per update; "
            f"{self.updates_per_epoch} updates/epoch; {horizon} on {self.device} "
            f"({c.precision}){resumed}; run dir {self.out}"
        )


def _ppl(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.1f} MB"


def _free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


# --- files and signals -------------------------------------------------------------------------


def write_text_atomic(path: Path, text: str, what: str = "file") -> None:
    with writing(path, what), atomic_write(path, "w") as f:
        f.write(text)


class MetricsLog:
    """metrics.jsonl, one JSON object per line; on resume, lines past the checkpoint are dropped
    (the killed session logged updates that the resumed one is about to redo, or a line a full
    disk cut short). `fault` turns a failed write into the run's error."""

    def __init__(self, path: Path, resume_step: int, fault=None):
        self.path = path
        self.fault = fault
        if path.exists():
            kept = []
            if resume_step > 0:
                for line in path.read_text(encoding="utf-8").splitlines():
                    try:
                        if json.loads(line)["step"] <= resume_step:
                            kept.append(line)
                    except (ValueError, KeyError, TypeError):
                        continue  # a line cut short by the kill
            write_text_atomic(path, "".join(line + "\n" for line in kept), "metrics log")
        with writing(path, "metrics log"):
            self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def write(self, row: dict) -> None:
        try:
            with writing(self.path, "metrics log"):
                self.file.write(json.dumps(row) + "\n")
                self.file.flush()
        except WriteError as err:
            with contextlib.suppress(OSError):
                self.file.close()  # the unwritten rest of the line is dropped with it
            raise (self.fault(err) if self.fault else err) from None

    def close(self) -> None:
        self.fault = None  # the trainer's bound method: drop the reference cycle with it
        with writing(self.path, "metrics log"):
            self.file.close()


class SignalStopper:
    """SIGINT/SIGTERM ask the loop to stop after the current update (and save); a second
    Ctrl-C interrupts at once. Only installed in the main thread of the main interpreter."""

    def __init__(self):
        self.signum: int | None = None
        self.previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False


def train(config: TrainConfig, resume_ckpt: dict | None = None) -> dict:
    """Train with `config` (resuming from `resume_ckpt` if given); returns a summary dict."""
    started_here = not dist.is_initialized()
    try:
        return Trainer(config, resume_ckpt).fit()
    finally:
        if started_here and dist.is_initialized():
            # The trainer holds the process group (through DDP); if anything keeps it in a
            # reference cycle (an exception's traceback, say), only the garbage collector frees
            # it, and a group that outlives destroy_process_group() keeps gloo's threads alive
            # into interpreter shutdown, where they abort the process (see init_distributed).
            gc.collect()
            dist.destroy_process_group()
