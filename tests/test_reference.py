"""Reference values that do not come from the model code.

Every other model test compares the model with itself (causal, incremental = full, sums to one),
which a wrong-but-consistent model passes: a residual path dropped, the GLU halves swapped, the
√½ scaling removed, weight normalisation not applied. Here the paper's equations are written out
again with plain tensor ops, on fixed weights, and the modules must agree with them:

    causal convolution   y_t = b + Σ_j W_j x_{t-(k-1)+j},  x_s = 0 for s < 0 (k-1 left zeros)
    GLU                  h = a ⊗ σ(b), a the FIRST half of the channels (fairseq's layout)
    residual block       out = (h(x) + x) · √½,  x projected by a 1×1 convolution if widths differ
    weight norm          w = g · v / ‖v‖, one norm per output unit
    adaptive softmax     p(w) = p_head(w) for a head word, p_head(cluster) · p_tail(w) otherwise

The comparisons run in float64, where the module-vs-reference noise is ~1e-15 (measured: at most
1.8e-15 on these tiny models, log-probabilities of the whole GCNN included), so a tolerance of
1e-10 leaves any real bug no room.

Last, a frozen reference: a tiny GCNN (bottleneck block with a residual projection, fc_out,
adaptive softmax with two tail clusters) and a tiny LSTM (with a projection and fc_out) get
weights that depend only on a seed and each parameter's name (numpy's PCG64 stream, the same on
every platform and version), and their outputs must equal the values stored in
tests/data/reference_outputs.json: any change to the function the models compute is seen, even
one that the hand-written references above do not model.
"""

from __future__ import annotations

import json
import math
import re
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.utils import parametrize

from gcnn.models import AdaptiveSoftmax, build_model
from gcnn.models.blocks import GatedConvBlock, gate, make_linear

FROZEN = Path(__file__).parent / "data" / "reference_outputs.json"
TOL = 1e-10  # float64; measured module-vs-reference difference <= 1.8e-15 (see the docstring)


# --- deterministic weights ------------------------------------------------------------------------


def fill_deterministic_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Overwrite every parameter with values that depend only on (seed, parameter name).

    numpy's PCG64 `random()` stream is fixed across platforms and versions, unlike torch's CPU
    generator's use in init functions, so the frozen outputs below stay valid as long as the
    model computes the same function. Weight-norm gains g are drawn independently of ‖v‖
    (0.5..1.5): with g = ‖v‖, as at initialisation, weight norm would be the identity and a
    missing or wrong one would go unseen.
    """
    with torch.no_grad():
        for name, p in module.named_parameters():
            rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
            u = torch.from_numpy(rng.random(p.numel())).view(p.shape)
            if name.endswith("original0"):  # weight-norm g
                values = 0.5 + u
            elif p.dim() == 1:  # biases
                values = 0.2 * (2 * u - 1)
            else:  # weights: uniform with unit variance per output unit (fan-in scaling)
                values = (2 * u - 1) * math.sqrt(3.0 / p[0].numel())
            p.copy_(values)
    return module


# --- the paper's equations, written out -----------------------------------------------------------


def weight_normed(module: torch.nn.Module) -> torch.Tensor:
    """w = g · v / ‖v‖ from the module's raw (g, v), the norm taken per output unit o."""
    assert parametrize.is_parametrized(module, "weight"), f"{module} is not weight-normalised"
    g, v = module.parametrizations.weight.original0, module.parametrizations.weight.original1
    g = g.reshape(-1)
    return torch.stack([g[o] * v[o] / v[o].pow(2).sum().sqrt() for o in range(v.size(0))])


def causal_conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """x (B, C, T), w (C', C, k): y[:, :, t] = b + Σ_j w[:, :, j] x[:, :, t-(k-1)+j], with zeros
    before the start of the sequence, tap by tap."""
    batch, _, steps = x.shape
    k = w.size(2)
    y = torch.zeros(batch, w.size(0), steps, dtype=x.dtype)
    if b is not None:
        y += b.view(1, -1, 1)
    for t in range(steps):
        for j in range(k):
            s = t - (k - 1) + j
            if s >= 0:  # s < 0 reads the left zero padding: adds nothing
                y[:, :, t] += x[:, :, s] @ w[:, :, j].T
    return y


def glu(h: torch.Tensor) -> torch.Tensor:
    """(X*W + b) ⊗ σ(X*V + c): the linear half a is the FIRST half of the channels."""
    c = h.size(1) // 2
    a, gate_half = h[:, :c], h[:, c:]
    return a * (1.0 / (1.0 + torch.exp(-gate_half)))


def residual_block(x: torch.Tensor, block: GatedConvBlock) -> torch.Tensor:
    """One residual block of GLU layers: (h_L(...h_1(x)) + residual(x)) · √½."""
    residual = x
    if block.proj is not None:  # widths differ: a weight-normalised 1×1 projection
        residual = causal_conv(x, weight_normed(block.proj), block.proj.bias)
    h = x
    for conv in block.convs:
        h = glu(causal_conv(h, weight_normed(conv), conv.bias))
    return (h + residual) * math.sqrt(0.5)


def softmax(z: torch.Tensor) -> torch.Tensor:
    e = torch.exp(z - z.max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


def adaptive_log_prob(h: torch.Tensor, sm: AdaptiveSoftmax) -> torch.Tensor:
    """log p(w) for every word: head words from the head's softmax; a word of tail cluster i gets
    p_head(cluster i) · p_tail_i(w), its tail being d → d/4^(i+1) → cluster words (no biases)."""
    head = softmax(h @ sm.head.weight.T)
    shortlist = sm.cutoffs[0] if sm.cutoffs else sm.vocab_size
    bounds = list(sm.cutoffs) + [sm.vocab_size]
    probs = [head[..., :shortlist]]
    for i, tail in enumerate(sm.tails):
        down, up = [m for m in tail if isinstance(m, torch.nn.Linear)]
        assert down.weight.shape == (sm.in_features // 4 ** (i + 1), sm.in_features)
        assert up.weight.shape[0] == bounds[i + 1] - bounds[i]
        p_tail = softmax((h @ down.weight.T) @ up.weight.T)
        probs.append(head[..., shortlist + i : shortlist + i + 1] * p_tail)
    return torch.log(torch.cat(probs, dim=-1))


def gcnn_log_prob(model, inputs: torch.Tensor) -> torch.Tensor:
    """The whole model: embedding → fc_in → residual blocks → fc_out → adaptive softmax."""
    x = model.embed.weight[inputs]  # (B, T, E): a plain lookup, no positional embedding
    x = x @ weight_normed(model.fc_in).T + model.fc_in.bias
    x = x.transpose(1, 2)
    for block in model.blocks:
        x = residual_block(x, block)
    x = x.transpose(1, 2)
    if model.fc_out is not None:
        x = x @ weight_normed(model.fc_out).T + model.fc_out.bias
    return adaptive_log_prob(x, model.softmax)


# --- modules against the references ---------------------------------------------------------------


def tokens(batch: int, length: int, vocab: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, vocab, (batch, length)))


def block_input(channels: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.standard_normal((2, channels, 9)))


def test_glu_is_first_half_times_sigmoid_of_second_half():
    a = torch.tensor([[[1.0], [-2.0]]], dtype=torch.float64)
    b = torch.tensor([[[0.0], [3.0]]], dtype=torch.float64)
    out = gate(torch.cat([a, b], dim=1), "glu")
    assert torch.allclose(out, glu(torch.cat([a, b], dim=1)), rtol=0, atol=TOL)
    # by hand: 1·σ(0) = 0.5, -2·σ(3) = -1.9051...; the swapped halves would give 0 and 3·σ(-2)
    expected = torch.tensor([[[0.5], [-2.0 / (1.0 + math.exp(-3.0))]]], dtype=torch.float64)
    assert torch.allclose(out, expected, rtol=0, atol=TOL)


def test_weight_norm_is_g_times_v_over_its_norm_per_output_unit():
    conv = GatedConvBlock(6, [(3, 5)], weight_norm=True).convs[0]
    linear = make_linear(4, 7, dropout=0.0, weight_norm=True)
    for module in (conv, linear):
        fill_deterministic_(module.double(), seed=1)
        assert torch.allclose(module.weight, weight_normed(module), rtol=0, atol=TOL)
        # per output unit: each row's norm is its own g
        norms = module.weight.flatten(1).norm(dim=1)
        g = module.parametrizations.weight.original0.reshape(-1)
        assert torch.allclose(norms, g, rtol=0, atol=TOL)


def test_residual_block_matches_the_paper_equations():
    block = GatedConvBlock(6, [(4, 6)], gating="glu", weight_norm=True)
    fill_deterministic_(block.double().eval(), seed=2)
    assert block.proj is None
    x = block_input(6)
    with torch.no_grad():
        out, _ = block(x)
    assert torch.allclose(out, residual_block(x, block), rtol=0, atol=TOL)


def test_bottleneck_block_with_residual_projection_matches_the_paper_equations():
    # 1x1 -> k -> 1x1 and a wider output: the residual goes through the weight-normed projection
    block = GatedConvBlock(6, [(1, 3), (3, 3), (1, 10)], gating="glu", weight_norm=True)
    fill_deterministic_(block.double().eval(), seed=3)
    assert block.proj is not None
    x = block_input(6, seed=1)
    with torch.no_grad():
        out, _ = block(x)
    assert torch.allclose(out, residual_block(x, block), rtol=0, atol=TOL)


def test_adaptive_softmax_is_head_times_tail():
    sm = AdaptiveSoftmax(16, vocab_size=50, cutoffs=[8, 20], tail_factor=4)
    fill_deterministic_(sm.double().eval(), seed=4)
    h = torch.from_numpy(np.random.default_rng(5).standard_normal((3, 4, 16)))
    targets = tokens(3, 4, 50, seed=6)
    targets[0, :3] = torch.tensor([0, 8, 49])  # a head word, the first and the last tail word
    with torch.no_grad():
        full = sm.log_prob(h)
        picked = sm.target_log_prob(h, targets)
    expected = adaptive_log_prob(h, sm)
    assert torch.allclose(full, expected, rtol=0, atol=TOL)
    assert torch.allclose(picked, expected.gather(-1, targets[..., None])[..., 0], rtol=0, atol=TOL)


# A tiny GCNN with every part of the paper's architecture: a plain block, a bottleneck block whose
# output is wider (residual projection), fc_out to the softmax size, two adaptive-softmax tails.
GCNN_TINY = dict(
    embed_dim=6,
    blocks=[{"layers": [[3, 8]]}, {"layers": [[1, 4], [3, 4], [1, 12]]}],
    softmax_dim=16,
    cutoffs=[8, 20],
    dropout=0.1,  # off in eval mode; here so that a dropout left on in eval would show
)
LSTM_TINY = dict(
    embed_dim=6, hidden_size=8, proj_size=5, softmax_dim=16, cutoffs=[8, 20], dropout=0.1
)
VOCAB = 40


def tiny_gcnn():
    return fill_deterministic_(build_model("gcnn-small", VOCAB, **GCNN_TINY), 7).double().eval()


def tiny_lstm():
    return fill_deterministic_(build_model("lstm-2048", VOCAB, **LSTM_TINY), 8).double().eval()


def test_whole_gcnn_matches_the_paper_equations():
    model = tiny_gcnn()
    assert model.fc_out is not None and model.blocks[1].proj is not None
    x, y = tokens(2, 11, VOCAB, seed=9), tokens(2, 11, VOCAB, seed=10)
    with torch.no_grad():
        full = model.next_token_log_probs(x)
        picked = model.token_log_probs(x, y)
    expected = gcnn_log_prob(model, x)
    assert torch.allclose(full, expected, rtol=0, atol=TOL)
    assert torch.allclose(picked, expected.gather(-1, y[..., None])[..., 0], rtol=0, atol=TOL)


# --- frozen outputs -------------------------------------------------------------------------------

FROZEN_MODELS = {"gcnn": tiny_gcnn, "lstm": tiny_lstm}


def frozen_outputs(family: str, inputs: torch.Tensor, targets: torch.Tensor) -> dict:
    model = FROZEN_MODELS[family]()
    with torch.no_grad():
        picked = model.token_log_probs(inputs, targets)
        last = model.next_token_log_probs(inputs)[:, -1]  # every word: head and both tails
    return {
        "parameters": {name: list(p.shape) for name, p in model.named_parameters()},
        "token_log_probs": picked.tolist(),
        "last_log_probs": last.tolist(),
    }


def regenerate() -> None:
    """Rewrite tests/data/reference_outputs.json from the current code.

    Legitimate only when the function the models compute was changed ON PURPOSE (a fixed bug, a
    new architecture choice) or the parameters were renamed with the function unchanged (then the
    stored numbers must come out identical), and after the hand-written reference tests above
    pass. Never regenerate to make a failing test pass without knowing why it failed.
    Run: PYTHONPATH=. python tests/test_reference.py --regenerate
    """
    inputs, targets = tokens(2, 12, VOCAB, seed=11), tokens(2, 12, VOCAB, seed=12)
    data = {
        "about": "outputs of tests/test_reference.py's tiny models; see regenerate() there",
        "inputs": inputs.tolist(),
        "targets": targets.tolist(),
    }
    for family in FROZEN_MODELS:
        data[family] = frozen_outputs(family, inputs, targets)

    def rounded(value):  # 1e-12 is far below any bug and far above float64 platform noise
        if isinstance(value, float):
            return round(value, 12)
        if isinstance(value, list):
            return [rounded(v) for v in value]
        if isinstance(value, dict):
            return {k: rounded(v) for k, v in value.items()}
        return value

    text = json.dumps(rounded(data), indent=1)
    # one line per innermost list of numbers, for a readable diff
    text = re.sub(r"\[[^\[\]{}\"]*\]", lambda m: " ".join(m.group(0).split()), text)
    FROZEN.parent.mkdir(exist_ok=True)
    FROZEN.write_text(text + "\n")


@pytest.mark.filterwarnings("ignore:LSTM with projections")
@pytest.mark.parametrize("family", list(FROZEN_MODELS))
def test_frozen_tiny_model_outputs_are_unchanged(family):
    stored = json.loads(FROZEN.read_text())
    inputs, targets = torch.tensor(stored["inputs"]), torch.tensor(stored["targets"])
    now = frozen_outputs(family, inputs, targets)
    assert now["parameters"] == stored[family]["parameters"], (
        "the tiny model's parameters changed; if the computed function is the same, regenerate "
        "(see regenerate() in this file) and check that the stored numbers did not move"
    )
    for key in ("token_log_probs", "last_log_probs"):
        got = torch.tensor(now[key], dtype=torch.float64)
        want = torch.tensor(stored[family][key], dtype=torch.float64)
        # stored to 1e-12; float64 differences across platforms are ~1e-15
        assert torch.allclose(got, want, rtol=0, atol=1e-9), (key, (got - want).abs().max())


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit("usage: PYTHONPATH=. python tests/test_reference.py --regenerate")
    regenerate()
    print(f"wrote {FROZEN}")
