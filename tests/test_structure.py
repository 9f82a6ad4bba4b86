"""Structural assertions, for bugs that leave every output plausible.

A convolution without weight normalisation still trains; a training context one token short
still gives a validation loss; an LSTM kept in fp32 in a bf16 latency run, or walked token by
token in Python, still returns the same scores. Such bugs only show in the structure of what was
built or called, so that is what these tests check.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from gcnn.checkpoint import load_model
from gcnn.data import prepare_corpus
from gcnn.evaluation.inference import prepare_for_inference
from gcnn.evaluation.latency import LatencyConfig, run_latency
from gcnn.evaluation.perplexity import corpus_nll
from gcnn.evaluation.workload import random_sentences, scoring_fn
from gcnn.models import PRESETS, build_model
from gcnn.training.cli import main as train_main
from gcnn.training.config import TrainConfig
from gcnn.training.trainer import resolve

sys.path.insert(0, str(Path(__file__).parent))
from test_train import TINY, TINY_LSTM, args  # noqa: E402

GCNN_PRESETS = [name for name, p in PRESETS.items() if p["family"] == "gcnn"]
LSTM_PRESETS = [name for name, p in PRESETS.items() if p["family"] == "lstm"]


# --- weight normalisation ---------------------------------------------------------------------


def weight_layers(model) -> dict[str, nn.Module]:
    """Every convolution and linear map of a GCNN outside the adaptive softmax (which, as in
    fairseq, has no weight norm): fc_in, each block's convolutions and residual projection,
    fc_out. Found by type, so a layer added later is covered without editing this test."""
    softmax = set(model.softmax.modules())
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv1d | nn.Linear) and m not in softmax
    }


@pytest.mark.parametrize("name", GCNN_PRESETS)
def test_every_convolution_and_projection_is_weight_normalised(name):
    with torch.device("meta"):  # the full paper architectures, without allocating them
        model = build_model(name, 1000, softmax_dim=64)  # softmax_dim: an fc_out too
        plain = build_model(name, 1000, softmax_dim=64, weight_norm=False)
    layers = weight_layers(model)
    convs = [conv for block in model.blocks for conv in block.convs]
    projs = [block.proj for block in model.blocks if block.proj is not None]
    expected = [model.fc_in, *convs, *projs, model.fc_out]
    assert {id(m) for m in expected} == {id(m) for m in layers.values()}  # the whole network
    unnormalised = [n for n, m in layers.items() if not parametrize.is_parametrized(m, "weight")]
    assert not unnormalised, f"no weight norm on {unnormalised} ({len(layers)} layers)"
    for m in layers.values():  # torch's weight norm: a gain g per output unit and a direction v
        g, v = m.parametrizations.weight.original0, m.parametrizations.weight.original1
        assert g.shape == (v.size(0),) + (1,) * (v.dim() - 1) and v.shape == m.weight.shape
    # ...and with weight_norm=False, none is
    assert not any(parametrize.is_parametrized(m) for m in plain.modules())
    assert weight_layers(plain).keys() == layers.keys()


# --- the trainer's context --------------------------------------------------------------------


@pytest.mark.parametrize("name", GCNN_PRESETS + LSTM_PRESETS)
def test_resolved_context_is_the_receptive_field_minus_one(name):
    with torch.device("meta"):
        model = build_model(name, 1000)
    context = resolve(TrainConfig(model=name), model).context
    if model.is_recurrent:
        assert context == 0  # an LSTM carries its state instead
    else:
        # every scored token gets its full history: the receptive field is the token itself
        # plus receptive_field - 1 before it (paper: GCNN-8 sees 25 tokens, GCNN-14 47)
        assert context == model.receptive_field - 1
        assert resolve(TrainConfig(model=name, context=3), model).context == 3  # as asked


@pytest.mark.parametrize("family", ["gcnn", "lstm"])
def test_validation_during_training_equals_the_exact_evaluator(tiny_corpus, tmp_path, family):
    """The valid loss the trainer logs is the exact corpus NLL of the checkpoint it saves.

    GCNN: short blocks (4 targets), so a context one token short would touch a quarter of the
    tokens. LSTM: one stream (one row of 8 tokens), as the evaluator uses."""
    out = tmp_path / "run"
    if family == "gcnn":
        flags = ["--block-size", "4", "--tokens-per-batch", "32"]
        base = TINY
    else:
        flags = ["--block-size", "8", "--tokens-per-batch", "8"]
        base = TINY_LSTM
    flags += ["--max-updates", "4", "--valid-every", "4", "--log-every", "4", "--dropout", "0"]
    assert train_main(args(tiny_corpus, out, *flags, base=base)) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [r["valid_loss"] for r in rows if r["valid_loss"] is not None][-1]

    model, tokenizer, ckpt = load_model(out / "checkpoint_last.pt")
    assert ckpt["step"] == 4
    valid = prepare_corpus(tiny_corpus).splits["valid"]
    nll, count = corpus_nll(model, valid, tokenizer.eos_id)
    assert count == len(valid)
    # Both sum fp32 log-probabilities in float64: measured to agree to 8e-9 (relative); a GCNN
    # context one token short (receptive field - 2) makes them differ by 2.4e-4 here.
    assert logged == pytest.approx(nll / count, rel=1e-6, abs=0)


# --- latency: what is timed ------------------------------------------------------------------

GCNN_TINY = dict(
    embed_dim=16,
    blocks=[{"layers": [[3, 16]]}, {"layers": [[1, 8], [3, 8], [1, 24]]}],
    cutoffs=[20, 60],
)
LSTM_TINY = dict(embed_dim=16, hidden_size=24, proj_size=8, cutoffs=[20, 60])


def tiny_latency_models():
    torch.manual_seed(0)
    yield build_model("gcnn-small", 100, **GCNN_TINY)
    yield build_model("lstm-2048", 100, **LSTM_TINY)


def wrong_dtypes(module: nn.Module, dtype: torch.dtype, recurse: bool = True) -> list[str]:
    tensors = [*module.named_parameters(recurse=recurse), *module.named_buffers(recurse=recurse)]
    return [f"{n} {t.dtype}" for n, t in tensors if t.is_floating_point() and t.dtype != dtype]


@pytest.mark.filterwarnings("ignore:LSTM with projections")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_prepared_latency_models_hold_the_requested_dtype(precision):
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    for model in tiny_latency_models():
        prepared = prepare_for_inference(model, dtype, "cpu")
        assert not wrong_dtypes(prepared, dtype), (model.family, wrong_dtypes(prepared, dtype))
        lstms = [m for m in prepared.modules() if isinstance(m, nn.LSTM)]
        assert len(lstms) == (model.family == "lstm")


class ModuleCalls:
    """Every nn.Module call made in inference mode while active (a global forward hook): which
    modules ran, with which inputs and in which dtypes. The benchmark scores in inference mode,
    its preparation (folding weight norm in fp32, before the cast) does not: this sees the models
    exactly as they were timed."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype
        self.bad: list[str] = []
        self.lstm_lengths: list[int] = []

    def hook(self, module, inputs):
        if not torch.is_inference_mode_enabled():
            return
        # recurse=False: each module answers for its own tensors (all modules are hooked)
        wrong = wrong_dtypes(module, self.dtype, recurse=False)
        if wrong:
            self.bad.append(f"{type(module).__name__}: {', '.join(wrong)}")
        if isinstance(module, nn.LSTM):
            self.lstm_lengths.append(inputs[0].size(1))

    def __enter__(self):
        self.handle = nn.modules.module.register_module_forward_pre_hook(self.hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.filterwarnings("ignore:LSTM with projections")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_latency_benchmark_times_every_model_in_the_requested_dtype(precision):
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    config = LatencyConfig(
        sentence_length=5, batch_sizes=(2,), repeats=1, warmup=1, precision=precision
    )
    with ModuleCalls(dtype) as calls:
        results = run_latency(["gcnn-small", "lstm-2048"], config, vocab_size=300)
    assert [r.family for r in results] == ["gcnn", "lstm"]
    assert not calls.bad, sorted(set(calls.bad))
    # the LSTM saw whole sentences, one nn.LSTM call each (never a Python loop over tokens)
    assert calls.lstm_lengths and set(calls.lstm_lengths) == {5}


@pytest.mark.filterwarnings("ignore:LSTM with projections")
@pytest.mark.parametrize("batch", [1, 3])
def test_lstm_is_called_once_per_scored_batch_of_sentences(batch):
    _, model = tiny_latency_models()
    prepared = prepare_for_inference(model, torch.float32, "cpu")
    calls = []
    for lstm in (m for m in prepared.modules() if isinstance(m, nn.LSTM)):
        lstm.register_forward_hook(lambda m, inputs, out: calls.append(tuple(inputs[0].shape)))
    sentences = random_sentences(100, batch, 7, seed=0)
    scores = scoring_fn(prepared, sentences)()
    assert scores.shape == (batch, 7) and torch.isfinite(scores).all()
    assert calls == [(batch, 7, 16)]  # one call over the whole sentence: (batch, tokens, embed)
