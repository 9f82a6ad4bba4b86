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
