"""What a run tells while it trains: console lines, the progress bar, metrics.jsonl, TensorBoard.

Only rank 0 speaks; the other ranks make the same calls, which do nothing there. Training lines
of metrics.jsonl cover the updates since the previous one (an `Interval`): their mean loss and
their tokens per second, validation excluded.
"""

from __future__ import annotations

import dataclasses
import math
import time

from gcnn.errors import GcnnError, writing
from gcnn.training.config import TrainConfig
from gcnn.training.feed import Feed
from gcnn.training.run_dir import MetricsLog, RunDir
from gcnn.training.state import Progress, ppl


def require_tensorboard() -> None:
    """Fail at start-up, not at the first metrics line, when --tensorboard cannot work."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise GcnnError(
            "--tensorboard needs the tensorboard package: pip install 'gcnn[tensorboard]'"
        ) from None


@dataclasses.dataclass
class Interval:
    """The updates since the last training line of metrics.jsonl."""

    loss: float = 0.0  # summed NLL of their targets (over all ranks)
    count: float = 0.0  # their targets
    updates: int = 0
    t0: float = dataclasses.field(default_factory=time.perf_counter)  # when it began

    def add(self, loss_sum: float, count: float) -> None:
        self.loss += loss_sum
        self.count += count
        self.updates += 1

    @property
    def mean_loss(self) -> float:
        return self.loss / max(self.count, 1.0)

    def tokens_per_s(self) -> float:
        return self.count / max(time.perf_counter() - self.t0, 1e-9)


@dataclasses.dataclass(kw_only=True)
class MetricsRow:
    """One line of metrics.jsonl; a training line leaves the valid_* fields None and a
    validation line train_loss and tokens_per_s."""

    step: int
    epoch: float  # epochs done, fractional
    tokens: int  # scored targets trained on so far
    train_loss: float | None = None
    valid_loss: float | None = None
    valid_ppl: float | None = None
    lr: float | None = None
    tokens_per_s: float | None = None
    wall_s: float  # training time so far

    @classmethod
    def at(cls, p: Progress, epoch: float, **values) -> MetricsRow:
        """The row of the run as `p` has it (`epoch`: epochs done, fractional)."""
        return cls(
            step=p.step, epoch=round(epoch, 4), tokens=p.tokens, wall_s=round(p.wall_s, 3), **values
        )


class ProgressBar:
    """tqdm's bar of updates; with a time limit its end is where the clock will stop the run,
    if that comes before the run's last update (`horizon`)."""

    def __init__(self, progress: Progress, horizon: int | None, max_seconds: float | None):
        from tqdm import tqdm

        self.horizon, self.max_seconds = horizon, max_seconds
        self.start_step, self.start_wall_s = progress.step, progress.wall_s  # of this session
        self.bar = tqdm(
            total=horizon, initial=progress.step, unit="upd", dynamic_ncols=True, smoothing=0.1
        )

    def advance(self, p: Progress, interval: Interval, lr: float) -> None:
        """One update more; the numbers cover the updates since the last metrics line."""
        if interval.count:
            loss = interval.mean_loss
            self.bar.set_postfix(
                loss=f"{loss:.3f}",
                ppl=f"{ppl(loss):.1f}",
                lr=f"{lr:.2g}",
                tok_s=f"{interval.tokens_per_s():.0f}",
                refresh=False,
            )
        if self.max_seconds is not None:
            done, spent = p.step - self.start_step, p.wall_s - self.start_wall_s
            if done > 0 and spent > 0:
                at_limit = p.step + done / spent * max(0.0, self.max_seconds - p.wall_s)
                total = min(self.horizon or math.inf, math.ceil(at_limit))
                self.bar.total = max(int(total), p.step + 1)
        self.bar.update(1)

    def write(self, text: str) -> None:
        self.bar.write(text)

    def close(self) -> None:
        self.bar.close()


class Reporter:
    """The run's outputs besides checkpoints. `open` starts the files, `close` ends them."""

    def __init__(self, main: bool):
        self.main = main  # rank 0: the only one that writes or prints
        self.bar: ProgressBar | None = None
        self.metrics: MetricsLog | None = None
        self.tb = None  # TensorBoard's SummaryWriter, with --tensorboard

    def line(self, text: str) -> None:
        """A line on the console (above the progress bar, if one is shown)."""
        if not self.main:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def open(self, run: RunDir, progress: Progress, tensorboard: bool, fault) -> None:
        """metrics.jsonl (cut back to the resumed update) and TensorBoard's log; `fault` turns a
        failed metrics write into the run's error."""
        if not self.main:
            return
        self.metrics = MetricsLog(run.out / "metrics.jsonl", progress.step, fault)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            with writing(run.out / "tensorboard", "TensorBoard log"):
                self.tb = SummaryWriter(str(run.out / "tensorboard"))

    def show_bar(self, progress: Progress, horizon: int | None, max_seconds: float | None):
        if self.main:
            self.bar = ProgressBar(progress, horizon, max_seconds)

    def advance(self, progress: Progress, interval: Interval, lr: float) -> None:
        if self.bar is not None:
            self.bar.advance(progress, interval, lr)

    def train(self, p: Progress, epoch: float, interval: Interval, lr: float) -> None:
        """The training line of `interval`."""
        loss, rate = interval.mean_loss, interval.tokens_per_s()
        if not self.main:
            return
        row = MetricsRow.at(p, epoch, train_loss=loss, lr=lr, tokens_per_s=rate)
        self.metrics.write(dataclasses.asdict(row))
        if self.tb is not None:
            self.tb.add_scalar("train/loss", loss, p.step)
            self.tb.add_scalar("train/lr", lr, p.step)

    def valid(self, p: Progress, epoch: float, loss: float, improved: bool, lr: float) -> None:
        """A validation: its metrics line and its console line."""
        if not self.main:
            return
        row = MetricsRow.at(p, epoch, valid_loss=loss, valid_ppl=ppl(loss), lr=lr)
        self.metrics.write(dataclasses.asdict(row))
        if self.tb is not None:
            self.tb.add_scalar("valid/ppl", ppl(loss), p.step)
        mark = " (best)" if improved else ""
        self.line(
            f"update {p.step} epoch {epoch:.2f}: valid loss {loss:.4f} "
            f"ppl {ppl(loss):.2f}{mark} lr {lr:.3g}"
        )

    def close(self, exit_code: int, reason: str, p: Progress, run: RunDir) -> None:
        """End the bar and the logs; say how the run ended and where it is kept."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if not self.main:
            return
        self.metrics.close()
        if self.tb is not None:
            self.tb.close()
        if exit_code:
            self.line(
                f"{reason} after update {p.step}: saved {run.last_path}; "
                f"continue with --resume --out {run.out}"
            )
        else:
            self.line(
                f"{reason}: best valid ppl {ppl(p.best_valid_loss):.2f} (update "
                f"{p.best_step}), checkpoint {run.best_path}"
            )


def summary(exit_code: int, reason: str, p: Progress, run: RunDir) -> dict:
    """What `train` returns: how the run ended, its best validation and its checkpoints."""
    return {
        "exit_code": exit_code,
        "reason": reason,
        "step": p.step,
        "best_valid_loss": p.best_valid_loss,
        "best_valid_ppl": ppl(p.best_valid_loss),
        "best_checkpoint": str(run.best_path),
        "last_checkpoint": str(run.last_path),
        "wall_s": p.wall_s,
    }


def describe(
    config: TrainConfig, model, feed: Feed, horizon: int | None, device, p: Progress, run: RunDir
) -> str:
    """The run's first console line: model, recipe, batch shape, stopping, device, run dir."""
    c = config
    parameters = sum(t.numel() for t in model.parameters())
    until = f"{horizon} updates" if horizon else f"{c.max_minutes:g} minutes"
    resumed = f", resuming at update {p.step}" if p.step else ""
    late = f", no dropout for {c.dropout_from_epoch} epoch(s)" if c.dropout_from_epoch else ""
    return (
        f"{c.model}: {parameters / 1e6:.2f}M parameters, vocabulary {model.config.vocab_size}, "
        f"context {c.context}; {c.optimizer} lr {c.lr:g}{late}; {feed.rows} x {c.block_size} "
        f"tokens x {c.grad_accum} accum x {feed.batcher.world_size} proc per update; "
        f"{feed.updates_per_epoch} updates/epoch; {until} on {device} "
        f"({c.precision}){resumed}; run dir {run.out}"
    )
