"""The optimisation recipe as behaviour, not just config values: schedules, clipping, autocast."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from gcnn.training import trainer as trainer_module
from gcnn.training.cli import main
from gcnn.training.config import TrainConfig
from gcnn.training.optim import LRSchedule, make_optimizer

sys.path.insert(0, str(Path(__file__).parent))
from test_train import args, metrics  # noqa: E402


def test_adamw_schedule_warms_up_then_follows_a_cosine_to_min_lr():
    config = TrainConfig(optimizer="adamw", lr=1e-2, min_lr=1e-4, warmup_updates=10)
    s = LRSchedule(config, horizon=110, max_seconds=None)
    assert s.lr(0, 0.0) == pytest.approx(1e-3)  # (step + 1) / warmup of the peak
    assert s.lr(9, 0.0) == pytest.approx(1e-2)
    halfway = 1e-4 + 0.5 * (1e-2 - 1e-4)  # cosine at progress 1/2
    assert s.lr(60, 0.0) == pytest.approx(halfway)
    assert s.lr(110, 0.0) == pytest.approx(1e-4)
    lrs = [s.lr(step, 0.0) for step in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))  # monotone decay
    # a time limit reached first drives the decay instead
    timed = LRSchedule(config, horizon=None, max_seconds=100.0)
    assert timed.lr(50, 50.0) == pytest.approx(halfway)


def test_nag_schedule_halves_on_plateau_and_stops_below_min_lr():
    config = TrainConfig(optimizer="nag", lr=1.0, lr_shrink=0.5, min_lr=0.2)
    s = LRSchedule(config, horizon=None, max_seconds=None)
    s.on_validation(5.0)  # improvement: unchanged
    assert s.lr(100, 0.0) == 1.0
    s.on_validation(5.1)  # no improvement: halve
    assert s.lr(100, 0.0) == 0.5 and not s.exhausted()
    s.on_validation(4.0)
    assert s.lr(100, 0.0) == 0.5
    s.on_validation(4.0)
    s.on_validation(4.0)
    assert s.lr(100, 0.0) == 0.125 and s.exhausted()
    restored = LRSchedule(config, horizon=None, max_seconds=None)
    restored.load_state_dict(s.state_dict())
    assert restored.lr(0, 0.0) == 0.125


def test_nag_is_nesterov_sgd_with_the_papers_momentum():
    model = torch.nn.Linear(3, 2)
    opt = make_optimizer(model, TrainConfig(optimizer="nag", lr=1.0, weight_decay=5e-6))
    assert isinstance(opt, torch.optim.SGD)
    group = opt.param_groups[0]
    assert group["nesterov"] and group["momentum"] == 0.99 and group["weight_decay"] == 5e-6


def test_metrics_lr_column_follows_the_schedule(tiny_corpus, tmp_path):
    out = tmp_path / "run"
    extra = ["--max-updates", "12", "--warmup-updates", "4", "--lr", "0.01", "--log-every", "1"]
    assert main(args(tiny_corpus, out, *extra)) == 0
    lrs = [r["lr"] for r in metrics(out) if r["train_loss"] is not None]
    # logged after each update: the lr that update used (warm-up 1/4, 2/4, ... then decay)
    # then the cosine from its peak (progress 0 at the first update after warm-up) downwards
    assert lrs[:5] == pytest.approx([0.0025, 0.005, 0.0075, 0.01, 0.01])
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:], strict=False))
    min_lr = TrainConfig().min_lr
    assert lrs[8] == pytest.approx(min_lr + 0.5 * (0.01 - min_lr))  # halfway


def test_clip_norm_bounds_the_gradient_of_every_update(tiny_corpus, tmp_path, monkeypatch):
    norms = []
    real_clip = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *a, **k):
        params = list(params)
        total = real_clip(params, max_norm, *a, **k)  # returns the norm before clipping
        after = torch.norm(torch.stack([p.grad.norm() for p in params]))
        norms.append((float(total), float(after)))
        return total

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    out = tmp_path / "run"
    assert main(args(tiny_corpus, out, "--max-updates", "3", "--clip-norm", "1e-3")) == 0
    assert len(norms) == 3
    for before, after in norms:
        assert before > 1e-3  # the tiny model's gradients are far larger than the bound ...
        assert after == pytest.approx(1e-3, rel=1e-3)  # ... and are scaled down to it


@pytest.mark.parametrize("precision, expect", [("bf16", True), ("fp32", False)])
def test_precision_flag_turns_cpu_autocast_on_and_off(
    tiny_corpus, tmp_path, monkeypatch, precision, expect
):
    seen = []
    real_forward = trainer_module.LossModule.forward

    def forward(self, *args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu"))
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(trainer_module.LossModule, "forward", forward)
    out = tmp_path / precision
    assert main(args(tiny_corpus, out, "--max-updates", "2", "--precision", precision)) == 0
    assert seen and all(s == expect for s in seen)
    assert all(r["valid_loss"] is None or math.isfinite(r["valid_loss"]) for r in metrics(out))
