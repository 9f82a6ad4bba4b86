"""The adaptive softmax against dense references built from the same weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gcnn.errors import GcnnError
from gcnn.models import IGNORE_INDEX, AdaptiveSoftmax
from gcnn.models.adaptive_softmax import padded_length

V, D = 57, 24


def dense_reference(asm: AdaptiveSoftmax, hidden: torch.Tensor) -> torch.Tensor:
    """log p(w) for every word, written out from the weights, one cluster at a time."""
    head = F.log_softmax(hidden @ asm.head.weight.T, dim=-1)
    columns = [head[:, : asm.shortlist]]
    for i, tail in enumerate(asm.tails):
        # The tail's two projections compose into one dense (cluster size x d) matrix.
        weight = tail[2].weight @ tail[0].weight
        columns.append(head[:, asm.shortlist + i : asm.shortlist + i + 1])
        columns[-1] = columns[-1] + F.log_softmax(hidden @ weight.T, dim=-1)
    return torch.cat(columns, dim=1)


@pytest.mark.parametrize("cutoffs", [[], [10], [5, 20, 40]])
def test_log_prob_equals_dense_log_softmax(cutoffs):
    torch.manual_seed(0)
    asm = AdaptiveSoftmax(D, V, cutoffs).double().eval()
    hidden = torch.randn(30, D, dtype=torch.float64)
    full = asm.log_prob(hidden)
    assert full.shape == (30, V)
    torch.testing.assert_close(full, dense_reference(asm, hidden), rtol=0, atol=1e-10)
    torch.testing.assert_close(full.exp().sum(-1), torch.ones(30, dtype=torch.float64))
    if not cutoffs:  # a plain softmax
        expected = F.log_softmax(hidden @ asm.head.weight.T, dim=-1)
        torch.testing.assert_close(full, expected, rtol=0, atol=1e-12)


def test_matches_torch_adaptive_log_softmax():
    """Same structure as torch.nn.AdaptiveLogSoftmaxWithLoss(div_value=4, no head bias)."""
    torch.manual_seed(1)
    cutoffs, d = [8, 20, 45], 64  # torch has no max(1, d // 4**3) guard: keep d // 64 >= 1
    ours = AdaptiveSoftmax(d, V, cutoffs).eval()
    ref = torch.nn.AdaptiveLogSoftmaxWithLoss(d, V, cutoffs, div_value=4.0).eval()
    with torch.no_grad():
        ref.head.weight.copy_(ours.head.weight)
        for mine, theirs in zip(ours.tails, ref.tail, strict=True):
            theirs[0].weight.copy_(mine[0].weight)
            theirs[1].weight.copy_(mine[2].weight)
    hidden = torch.randn(40, d)
    targets = torch.randint(0, V, (40,))
    torch.testing.assert_close(ours.log_prob(hidden), ref.log_prob(hidden), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        ours.target_log_prob(hidden, targets), ref(hidden, targets).output, rtol=1e-5, atol=1e-5
    )


def test_target_log_prob_gathers_log_prob_and_ignores_padding():
    torch.manual_seed(2)
    asm = AdaptiveSoftmax(D, V, [6, 30]).eval()
    hidden = torch.randn(4, 9, D)
    targets = torch.randint(0, V, (4, 9))
    targets[0, 3] = targets[2, -2:] = IGNORE_INDEX
    lp = asm.target_log_prob(hidden, targets)
    assert lp.shape == (4, 9) and lp.dtype == torch.float32
    full = asm.log_prob(hidden)
    mask = targets != IGNORE_INDEX
    expected = full.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
    torch.testing.assert_close(lp, expected, rtol=1e-6, atol=1e-6)
    assert lp[0, 3] == 0 and (lp[2, -2:] == 0).all()


def test_unused_tails_get_no_gradient_and_do_not_crash():
    asm = AdaptiveSoftmax(D, V, [6, 30])
    hidden = torch.randn(5, D, requires_grad=True)
    targets = torch.tensor([0, 1, 5, 2, IGNORE_INDEX])  # head words only
    (-asm.target_log_prob(hidden, targets).sum()).backward()
    assert asm.head.weight.grad is not None
    assert all(p.grad is None for p in asm.tails.parameters())
    # Everything ignored: a zero loss that still backpropagates.
    out = asm.target_log_prob(hidden, torch.full((5,), IGNORE_INDEX))
    assert out.abs().sum() == 0
    out.sum().backward()


def test_padded_tail_rows_change_no_value_and_no_gradient():
    """A tail runs on its rows padded to padded_length (copies of the last row): what reaches
    the log-probabilities and the gradients is the real rows' only."""
    torch.manual_seed(4)
    asm = AdaptiveSoftmax(D, V, [6, 30])
    hidden = torch.randn(3, 11, D, requires_grad=True)
    targets = torch.randint(6, V, (3, 11))  # 33 tail targets: padded to 40 and less
    plan = asm.plan(targets)
    assert [len(r) for r in plan.rows] == [padded_length(n) for n in plan.counts]
    assert sum(plan.counts) == 33 and any(
        len(r) > n for r, n in zip(plan.rows, plan.counts, strict=True)
    )
    lp = asm.target_log_prob(hidden, plan=plan)
    grads = torch.autograd.grad(lp.sum(), [hidden, *asm.parameters()])
    ref = asm.log_prob(hidden).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    ref_grads = torch.autograd.grad(ref.sum(), [hidden, *asm.parameters()])
    torch.testing.assert_close(lp, ref, rtol=1e-6, atol=1e-6)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


def test_padded_length_keeps_few_shapes_and_little_waste():
    lengths = [padded_length(n) for n in range(4097)]
    assert lengths[0] == 0 and lengths[1] == 8
    assert all(n <= p <= n + max(7, n // 8) and p % 8 == 0 for n, p in enumerate(lengths))
    assert len(set(lengths[150:351])) <= 12  # a tail's row counts in a default batch


def test_only_needed_tails_run():
    asm = AdaptiveSoftmax(D, V, [6, 30])
    calls = []
    for i, tail in enumerate(asm.tails):
        tail.register_forward_hook(lambda m, args, out, i=i: calls.append((i, args[0].shape[0])))
    asm.target_log_prob(torch.randn(6, D), torch.tensor([0, 7, 8, 3, 2, 1]))
    assert calls == [(0, 8)]  # two rows in cluster 0 (padded to 8), cluster 1 never computed


def test_bf16_autocast_keeps_fp32_log_sum_exp():
    torch.manual_seed(3)
    asm = AdaptiveSoftmax(D, V, [6, 30])
    hidden = torch.randn(64, D)
    targets = torch.randint(0, V, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp = asm.target_log_prob(hidden, targets)
        full = asm.log_prob(hidden)
    assert lp.dtype == torch.float32 and full.dtype == torch.float32
    assert torch.isfinite(lp).all()
    torch.testing.assert_close(full.exp().sum(-1), torch.ones(64), rtol=0, atol=1e-5)
    torch.testing.assert_close(lp, asm.target_log_prob(hidden, targets), rtol=0.05, atol=0.1)


def test_cutoffs_beyond_vocabulary_are_dropped_and_bad_cutoffs_rejected():
    asm = AdaptiveSoftmax(D, 25, [10, 20, 50, 100])
    assert asm.cutoffs == [10, 20] and len(asm.tails) == 2
    assert asm.head.out_features == 12
    assert [t[0].out_features for t in asm.tails] == [D // 4, D // 16]
    with pytest.raises(GcnnError, match="increasing"):
        AdaptiveSoftmax(D, V, [20, 10])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        asm.target_log_prob(torch.randn(2, D), torch.tensor([0, 25]))


def test_target_log_softmax_values_and_gradient():
    """The fused per-row log-probability equals log_softmax + gather, with an exact gradient."""
    from gcnn.models.adaptive_softmax import target_log_softmax

    torch.manual_seed(3)
    logits = torch.randn(9, 13, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 13, (9,))
    expected = F.log_softmax(logits, -1).gather(1, target[:, None]).squeeze(1)
    torch.testing.assert_close(target_log_softmax(logits, target), expected, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x: target_log_softmax(x, target), (logits,))
    # bf16 logits: the log-softmax is taken in fp32, the gradient comes back in bf16
    low = logits.detach().bfloat16().requires_grad_()
    out = target_log_softmax(low, target)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert low.grad.dtype == torch.bfloat16
