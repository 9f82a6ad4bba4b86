"""gcnn's Dropout: the same distribution as nn.Dropout, drawn faster on CPU."""

from __future__ import annotations

import pytest
import torch

from gcnn.models.dropout import Dropout


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_keeps_1_minus_p_scaled_and_backpropagates_through_the_mask(dtype):
    torch.manual_seed(0)
    p = 0.3
    drop = Dropout(p).train()
    x = torch.ones(200_000, dtype=dtype, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert y.dtype == dtype
    assert abs(kept.float().mean().item() - (1 - p)) < 0.005  # ~4 standard deviations
    torch.testing.assert_close(
        y[kept].float(), torch.full_like(y[kept].float(), 1 / (1 - p)), rtol=1e-2, atol=0
    )
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())  # d(x * mask * scale)/dx = mask * scale
    assert torch.equal(drop.eval()(x), x)  # identity in eval mode
    assert torch.equal(Dropout(0.0).train()(x), x)


def test_dropout_draws_from_the_seeded_generator():
    x = torch.randn(64, 64)
    masks = []
    for _ in range(2):
        torch.manual_seed(7)
        masks.append(Dropout(0.5).train()(x) != 0)
    assert torch.equal(*masks)  # so a resumed run redraws the same masks


def test_every_position_of_a_random_word_keeps_1_minus_p_independently():
    # four elements share one int64 draw: each of the four 16-bit lanes must be uniform
    # (a sign bit held at 0 would keep every fourth element more often), and neighbours
    # must not be correlated
    torch.manual_seed(1)
    p = 0.25
    keep = Dropout(p).train()(torch.ones(400_003)) != 0  # not a multiple of 4
    lanes = keep[:400_000].view(-1, 4).float()
    for lane in range(4):
        assert abs(lanes[:, lane].mean().item() - (1 - p)) < 0.006  # ~4 standard deviations
    both = (lanes[:, 0] * lanes[:, 1]).mean().item()
    assert abs(both - (1 - p) ** 2) < 0.006


def test_p_16_bits_cannot_realize_draws_uniform_floats_instead():
    from gcnn.models.dropout import drop_cut

    assert drop_cut(0.1) == 6554 and drop_cut(0.5) == 32768
    assert drop_cut(0.001) is None and drop_cut(0.9999) is None
    torch.manual_seed(2)
    p = 0.002
    y = Dropout(p).train()(torch.ones(500_000))
    assert abs((y == 0).float().mean().item() - p) < 0.00025  # ~4 standard deviations
    torch.testing.assert_close(y[y != 0], torch.full_like(y[y != 0], 1 / (1 - p)))


def test_the_scale_uses_the_realized_p_so_the_expectation_is_exact():
    from gcnn.models.dropout import BITS, drop_cut

    torch.manual_seed(3)
    p = 0.1
    y = Dropout(p).train()(torch.ones(1000))
    scale = y[y != 0].unique()
    assert scale.numel() == 1
    assert scale.item() == pytest.approx(1 / (1 - drop_cut(p) / 2**BITS), rel=1e-7)


def test_dropout_benchmark_runs_and_refuses_bad_sizes():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_dropout.py"
    small = ["--rows", "2", "--tokens", "30", "--channels", "8", "--rounds", "2"]
    run = subprocess.run(
        [sys.executable, str(script), *small, "--step-rounds", "1"], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert (
        "| bit mask | bf16 |" in run.stdout and "| bf16 |" in run.stdout.split("training step")[1]
    )
    bad = subprocess.run(
        [sys.executable, str(script), "--rows", "0"], capture_output=True, text=True
    )
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "--rows" in bad.stderr


def test_dropout_compiles_as_one_graph():
    # torch.compile cannot trace random_: a compiled model takes the float mask, without a
    # graph break per dropout (fullgraph=True raises on one)
    torch.manual_seed(4)
    compiled = torch.compile(Dropout(0.1).train(), backend="eager", fullgraph=True)
    x = torch.ones(50_000, requires_grad=True)
    y = compiled(x)
    assert abs((y == 0).float().mean().item() - 0.1) < 0.006
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())
