"""Tied input embeddings (`tie_embeddings`): the input word vectors are the adaptive softmax's own
weights (`AdaptiveSoftmax.embed`). Not in the paper; an option for the longer CPU recipes, proven
as every model here is: one copy of the weights, causal, incremental decoding equal to the full
forward pass, trained, saved and loaded back."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.utils import parametrize

from gcnn.checkpoint import load_checkpoint, load_model
from gcnn.errors import GcnnError
from gcnn.models import build_model, model_from_config
from gcnn.training.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from test_models import (  # noqa: E402
    CUTOFFS,
    INCREMENTAL_TOL,
    V,
    check_causal,
    embedding_gradient,
    random_tokens,
    tiny,
)
from test_train import TINY_LSTM, args  # noqa: E402

# tiny() makes 12-dim embeddings; tying brings the softmax's input to 12 too (an fc_out)
TIED = {"tie_embeddings": True}
NAMES = ["gcnn-small", "gcnn-8b", "lstm-small"]


@pytest.mark.parametrize("name", NAMES)
def test_input_vectors_are_the_softmax_weights_held_once(name):
    model = tiny(name, **TIED)
    softmax = model.softmax
    with torch.no_grad():
        vectors = model.embed(torch.arange(V).view(1, V))[0]
    head, (tail0, tail1) = softmax.head.weight, softmax.tails
    lo, mid = CUTOFFS
    torch.testing.assert_close(vectors[:lo], head[:lo], rtol=0, atol=0)
    # a tail word: its row of the tail's output matrix, back through the projection transposed
    torch.testing.assert_close(vectors[lo:mid], tail0[2].weight @ tail0[0].weight)
    torch.testing.assert_close(vectors[mid:], tail1[2].weight @ tail1[0].weight)
    assert tail0[2].weight.size(1) == 3 and tail1[2].weight.size(1) == 1  # 12 / 4, 12 / 16
    # no table of its own: the untied model has exactly one more V x 12 matrix
    assert not any(n.startswith("embed.") for n in model.state_dict())
    untied = tiny(name, softmax_dim=12)
    assert untied.num_parameters() - model.num_parameters() == V * 12
    copied = copy.deepcopy(model)  # evaluate.py latency copies models: the tie survives
    assert copied.embed._softmax[0] is copied.softmax is not softmax


@pytest.mark.parametrize("name", NAMES)
def test_tied_models_are_causal_and_decode_incrementally(name):
    model = tiny(name, **TIED)
    check_causal(model)
    x = random_tokens(1, 70)
    grad = embedding_gradient(model, x, 60)
    assert (grad[61:] == 0).all() and grad[60] > 0
    model = model.double()
    x = random_tokens(2, 40, seed=1)
    with torch.no_grad(), parametrize.cached():
        full = model.next_token_log_probs(x)
        state, steps = model.init_state(2), []
        for t in range(x.size(1)):
            log_probs, state = model.step(x[:, t], state)
            steps.append(log_probs)
    assert (torch.stack(steps, 1) - full).abs().max() <= INCREMENTAL_TOL


def test_gradient_reaches_the_shared_weights_from_the_input_side():
    model = tiny("lstm-small", **TIED)
    softmax = model.softmax
    model.embed(torch.tensor([[3, 30]])).sum().backward()  # a head word and a word of tail 1
    rows = softmax.head.weight.grad.abs().sum(1)
    assert rows[3] > 0 and rows.count_nonzero() == 1
    rows = softmax.tails[1][2].weight.grad.abs().sum(1)
    assert rows[30 - CUTOFFS[1]] > 0 and rows.count_nonzero() == 1
    assert softmax.tails[1][0].weight.grad.abs().sum() > 0  # the projection, transposed
    assert softmax.tails[0][2].weight.grad.abs().sum() == 0  # no word of tail 0 was read


def test_tied_embeddings_need_matching_widths():
    model = build_model("lstm-small", 100, embed_dim=8, hidden_size=16, tie_embeddings=True)
    assert model.softmax.in_features == 8 and model.fc_out.in_features == 16  # by default
    with pytest.raises(GcnnError, match="needs embed_dim=8 .* softmax_dim=16; leave softmax_dim"):
        build_model("lstm-small", 100, embed_dim=8, hidden_size=16, softmax_dim=16, **TIED)
    with pytest.raises(GcnnError, match="tie_embeddings='yes'"):
        build_model("gcnn-small", 100, tie_embeddings="yes")
    clone = model_from_config(model.config_dict())
    clone.load_state_dict(model.state_dict())  # strict: the same keys, no embedding table
    assert clone.config_dict()["tie_embeddings"] is True


def test_train_and_evaluate_a_tied_model(tiny_corpus, tmp_path):
    out = tmp_path / "run"
    flags = ["--max-updates", "6", "--model-arg", "tie_embeddings=true"]
    assert main(args(tiny_corpus, out, *flags, base=TINY_LSTM)) == 0
    ckpt = load_checkpoint(out / "checkpoint_last.pt")
    assert ckpt["step"] == 6 and ckpt["model_config"]["tie_embeddings"] is True
    assert not any(key.startswith("embed.") for key in ckpt["model"])
    model, _, _ = load_model(out / "checkpoint_last.pt")  # the evaluator's loader
    assert model.embed._softmax[0] is model.softmax
