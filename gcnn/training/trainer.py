"""The training loop: the paper's recipe, resumable to the exact update, on 1..N processes.

One update = `grad_accum` micro-batches on each of `world_size` processes. The loss of an update
is the summed NLL of all its scored targets divided by their GLOBAL number (counted before the
forward passes), so gradient accumulation and data parallelism change nothing but speed: two
processes compute the same update as one process on the same global batch.

Each checkpoint holds all the next update depends on (gcnn.training.state), so `--resume` after
a crash continues exactly where the checkpoint left off; on CPU in fp32 it reproduces an
uninterrupted run bit for bit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path

import torch
import torch.distributed as dist

from gcnn.allocator import keep_large_blocks
from gcnn.errors import GcnnError
from gcnn.signals import SignalStopper
from gcnn.training.config import TrainConfig, to_toml
from gcnn.training.distributed import (
    LossModule,
    data_parallel,
    env_dist,
    init_distributed,
    measure_precision,
    resolve_precision,
    run_device,
    state_to_plain,
)
from gcnn.training.feed import rows_per_micro_batch, split_feed
from gcnn.training.optim import LRSchedule, make_optimizer
from gcnn.training.recipe import build_checked_model, resolve, stop_reason, update_horizon
from gcnn.training.reporting import Interval, Reporter, describe, require_tensorboard, summary
from gcnn.training.resume import check_same_run, corpus_identity
from gcnn.training.run_dir import RunDir
from gcnn.training.state import Progress, checkpoint_bytes, restore, training_checkpoint
from gcnn.training.validation import stop_agreed, validation_loss


@dataclasses.dataclass
class UpdateResult:
    """One update as all ranks agree on it."""

    loss_sum: float  # summed NLL of its targets over all ranks (0 when skipped)
    count: int  # its scored targets over all ranks
    skipped: bool  # a NaN/inf on some rank: no rank stepped, the weights are unchanged
    stop: bool  # a signal reached some rank during the update


class Trainer:
    """One run: everything is set up in __init__ (data, model, feeds, optimizer, a resumed
    state), then `fit` trains until a limit, a signal or an error."""

    def __init__(
        self, config: TrainConfig, resume_ckpt: dict | None = None, run: RunDir | None = None
    ):
        self.run = run if run is not None else RunDir(Path(resolve(config).out))
        try:
            self.setup(config, resume_ckpt)
        except BaseException:
            self.run.release()  # a refused run leaves the directory as it found it
            raise

    def setup(self, config: TrainConfig, resume_ckpt: dict | None) -> None:
        run_device(config, env_dist())  # a bad --device fails now, not after the data
        if config.tensorboard:
            require_tensorboard()
        if config.compile and not hasattr(torch, "compile"):
            raise GcnnError("--compile needs torch >= 2.0")

        # The run directory's one writer is rank 0, from now until the run ends (a second
        # train.py on it is refused here); other ranks hear of a refusal once the group exists.
        claim_error = self.run.claim_on_rank(env_dist())

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
            progress=env_dist().is_main and config.progress,
            download=True,  # a named corpus (wikitext-2/103) missing locally is fetched once
        )
        self.dist, self.device = init_distributed(config)
        self.run.agree(claim_error, self.dist, self.device)
        self.report = Reporter(self.dist.is_main)
        if self.device.type == "cpu":  # before precision's timing, so that it times the same steps
            self.report.line(keep_large_blocks())
        config = dataclasses.replace(config, precision=resolve_precision(config, self.device))
        if "train" not in self.corpus.splits or "valid" not in self.corpus.splits:
            raise GcnnError(f"corpus {self.corpus.directory} needs a train and a valid split")
        self.tokenizer = self.corpus.tokenizer
        train_tokens = self.corpus.splits["train"]
        self.corpus_id = corpus_identity(train_tokens)

        # Model: its sizes checked on the meta device first; every rank builds the same weights.
        self.model, config = build_checked_model(
            config, self.tokenizer.vocab_size, len(train_tokens), self.dist.world_size, self.device
        )
        self.config = config
        self.run.check_owner(
            resume_ckpt, self.model.config_dict(), self.tokenizer.fingerprint(), config.data
        )
        if resume_ckpt is not None:
            where = str(self.run.out)
            check_same_run(resume_ckpt, config, self.dist.world_size, self.corpus_id, where)
        self.model.to(self.device)

        # Batches: `tokens_per_batch` scored tokens per update over all ranks and accum steps.
        self.rows = rows_per_micro_batch(config, self.dist.world_size)
        on_rank = (self.tokenizer.eos_id, self.model, self.rows, config, self.dist, self.device)
        self.feed = split_feed(self.corpus.splits["train"], *on_rank, training=True)
        valid = self.corpus.splits["valid"]
        if config.valid_tokens is not None:
            valid = valid[: config.valid_tokens]
        self.valid_feed = split_feed(valid, *on_rank, training=False)
        self.precision_choice = None  # what --precision auto measured (rank 0), for config.toml
        if config.precision == "auto":  # a CPU with bf16 instructions: time both on this model
            precision, self.precision_choice = measure_precision(
                self.model, self.feed.batch(0, 0), self.dist, self.device, self.report.line
            )
            self.config = config = dataclasses.replace(config, precision=precision)

        # Optimisation.
        self.optimizer = make_optimizer(self.model, config, self.device)
        self.horizon = update_horizon(config, self.feed.updates_per_epoch)
        self.max_seconds = None if config.max_minutes is None else 60 * config.max_minutes
        self.schedule = LRSchedule(config, self.horizon, self.max_seconds)
        self.progress = Progress()
        self.train_state = None  # the LSTM's carried state
        self.saved_step = -1
        self.over_time = False
        self.dropout_on = True  # the model as built: the first update switches it as it must
        self.stopper: SignalStopper | None = None  # set while `fit` runs
        self.session_t0 = time.perf_counter()

        # The step the loss is taken through: compiled, under DDP with several processes.
        if config.compile:
            self.model.compile()  # in place: state_dict keys stay the same
        self.loss_module = data_parallel(LossModule(self.model), self.dist, self.device)

        if resume_ckpt is not None:
            resumed = restore(
                resume_ckpt,
                model=self.model,
                optimizer=self.optimizer,
                schedule=self.schedule,
                rows=self.rows,
                dist=self.dist,
                device=self.device,
                seed=config.seed,
                path=self.run.last_path,
            )
            self.progress, self.train_state = resumed.progress, resumed.carried
        elif self.dist.rank > 0:
            torch.manual_seed(config.seed + self.dist.rank)  # distinct dropout masks per rank

    # -- the loop --------------------------------------------------------------------------------

    def fit(self) -> dict:
        """Train until a limit, a signal or an error; returns the run's summary."""
        c, p = self.config, self.progress
        self.start()
        interval = Interval()  # the updates since the last metrics line
        self.session_t0 = time.perf_counter() - p.wall_s
        exit_code = 0
        self.model.train()
        with SignalStopper() as stopper:
            self.stopper = stopper
            stopped = p.valid_pending and not self.run_validation()  # cut short last session
            while not stopped and not (reason := self.stop_reason()):
                result = self.update(stopper)
                p.wall_s = time.perf_counter() - self.session_t0
                self.tally(result, interval)
                self.report.advance(p, interval, self.lr)
                stopped = result.stop
                if not result.skipped:  # nothing new to log, validate or save otherwise
                    if self.step % c.log_every == 0:
                        self.report.train(p, self.epochs_done, interval, self.lr)
                        interval = Interval()
                    if self.validation_due() and stopped:
                        p.valid_pending = True  # not now: the resumed run validates first
                    elif self.validation_due():
                        stopped = not self.run_validation()
                        interval.t0 = time.perf_counter()  # tokens/s leaves validation out
                    elif c.save_every and self.step % c.save_every == 0:
                        self.save()
            if not stopped and p.last_valid_step != self.step:
                stopped = not self.run_validation()  # saves
            elif self.saved_step != self.step:
                self.save()
            if stopped:
                sig = stopper.stopped_by()
                exit_code, reason = 128 + sig, f"stopped by {sig.name}"
        summary = self.finish(exit_code, reason)
        if self.dist.enabled:
            dist.barrier()
        self.run.release()
        return summary

    def start(self) -> None:
        """Check the run directory, write its config.toml, open the logs, say what will run."""
        c, p = self.config, self.progress
        ckpt_bytes = checkpoint_bytes(self.model, self.optimizer, self.tokenizer)
        self.run.preflight(self.step, ckpt_bytes, self.dist, self.device)
        if self.dist.is_main:
            comment = self.precision_choice.toml_comment() if self.precision_choice else ""
            self.run.write_config(to_toml(c) + comment)
        fault = lambda err: self.run.fault(err, self.step)  # noqa: E731 (a failed metrics write)
        self.report.open(self.run, p, c.tensorboard, fault)
        self.report.line(describe(c, self.model, self.feed, self.horizon, self.device, p, self.run))
        if c.progress:
            self.report.show_bar(p, self.horizon, self.max_seconds)

    def update(self, stopper: SignalStopper) -> UpdateResult:
        """One optimizer update.

        Everything the host must decide (which rows each softmax cluster needs, the global
        number of targets) is known from the batches before they reach the device, so the only
        device-to-host synchronisation of an update is the final `all_sum`: the loss, whether it
        was finite, and whether to stop, on all ranks at once.
        """
        c, p = self.config, self.progress
        at = self.feed.next_position(p.epoch, p.batch)
        global_count = self.feed.global_count(at)
        micro = self.feed.update_batches(at)
        if at.epoch != p.epoch:
            self.train_state = None  # the LSTM's streams restart with the epoch
        if (on := at.epoch >= c.dropout_from_epoch) != self.dropout_on:  # late dropout
            self.model.set_dropout(on)
            self.dropout_on = on
        p.epoch, p.batch = at.epoch, at.batch + c.grad_accum
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
        if self.device.type != "cpu":  # host work that overlaps the device's
            self.feed.prefetch(self.feed.next_position(p.epoch, p.batch))
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
        return UpdateResult(loss_sum_g, global_count, skipped, stop > 0)

    def tally(self, result: UpdateResult, interval: Interval) -> None:
        """Count an update in the progress and the interval; stop a run that keeps diverging."""
        p = self.progress
        if not result.skipped:
            p.bad_in_row = 0
            p.tokens += int(result.count)
            interval.add(result.loss_sum, result.count)
            return
        p.bad_updates += 1
        p.bad_in_row += 1
        self.report.line(f"step {self.step}: non-finite loss, update skipped")
        if p.bad_in_row >= self.config.max_bad_updates:
            raise GcnnError(
                f"training diverged: {p.bad_in_row} updates in a row had a NaN/inf "
                f"loss (after update {self.step}); {self.run.last_path} holds the last "
                "good state; lower --lr or --clip-norm, or use --precision fp32"
            )

    def stop_reason(self) -> str:
        """Why the run ends before another update ("": it goes on)."""
        epoch_done = self.feed.end_of_epoch(self.progress.batch)
        return stop_reason(self.config, self.progress, epoch_done, self.over_time, self.schedule)

    def validation_due(self) -> bool:
        """Every --valid-every updates, or at the end of every epoch."""
        if self.config.valid_every:
            return self.step % self.config.valid_every == 0
        return self.feed.end_of_epoch(self.progress.batch)

    def run_validation(self) -> bool:
        """Validate, note the best, let the schedule react, report, and save. A signal during
        the pass cuts it short: checkpoint_last.pt is saved with the validation still to do
        (the resumed run does it first) and False returned."""
        p = self.progress
        loss = self.validate()
        if loss is None:
            p.valid_pending = True
            self.save()
            return False
        p.valid_pending = False
        p.last_valid_loss, p.last_valid_step = loss, self.step
        improved = loss < p.best_valid_loss
        if improved:
            p.best_valid_loss, p.best_step = loss, self.step
        self.schedule.on_validation(loss)
        lr = self.schedule.lr(self.step, p.wall_s)
        self.report.valid(p, self.epochs_done, loss, improved, lr)
        self.save(best=improved)
        return True

    def finish(self, exit_code: int, reason: str) -> dict:
        """Close the outputs, say how the run ended, and return its summary."""
        self.report.close(exit_code, reason, self.progress, self.run)
        return summary(exit_code, reason, self.progress, self.run)

    # -- the pieces ------------------------------------------------------------------------------

    @property
    def step(self) -> int:
        return self.progress.step

    @property
    def epochs_done(self) -> float:
        return self.progress.epoch + self.progress.batch / max(len(self.feed), 1)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def autocast(self):
        return torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.config.precision == "bf16"
        )

    def validate(self) -> float | None:
        """Mean NLL per target over the validation split; None when a signal stopped it."""
        args = (self.model, self.valid_feed, self.rows, self.dist, self.device, self.autocast)
        return validation_loss(*args, stop=self.stop_agreed)

    def stop_agreed(self, index: int) -> bool:
        """Whether all ranks stop before validation batch `index` (see gcnn.training.validation)."""
        requested = self.stopper is not None and self.stopper.requested
        return stop_agreed(requested, self.dist, self.device, index)

    def save(self, best: bool = False) -> None:
        """checkpoint_last.pt (and checkpoint_best.pt) of the state now; a collective."""
        carried = state_to_plain(self.train_state, self.dist)  # collective: before rank checks
        self.saved_step = self.step  # on every rank, so that all make the same save() calls
        if not self.dist.is_main:
            return
        ckpt = training_checkpoint(
            model=self.model,
            tokenizer=self.tokenizer,
            config=self.config,
            optimizer=self.optimizer,
            schedule=self.schedule,
            progress=self.progress,
            rows=self.rows,
            dist=self.dist,
            carried=carried,
            corpus=self.corpus_id,
        )
        self.run.save(ckpt, self.step, best)
