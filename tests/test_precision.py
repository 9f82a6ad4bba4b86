"""--precision auto: decided by timing the model's own work, cached, and harmless to the run."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from gcnn import precision
from gcnn.models import build_model
from gcnn.timing import Timing
from gcnn.training.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from test_train import args  # noqa: E402


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GCNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)


def timings(fp32: float, bf16: float) -> dict[str, Timing]:
    return {"fp32": Timing.of([fp32]), "bf16": Timing.of([bf16])}


def tiny():
    torch.manual_seed(0)
    model = build_model("gcnn-small", 60, embed_dim=8, blocks=[{"layers": [[3, 8]]}], cutoffs=[9])
    x = torch.randint(0, 60, (2, 16))
    return model, x, x.roll(-1, 1)


@pytest.mark.parametrize("faster", ["fp32", "bf16"])
def test_auto_picks_the_faster_and_measures_once(monkeypatch, faster):
    model, x, y = tiny()
    calls = []

    def fake(model, inputs, targets, mode, rounds=3):
        calls.append(mode)
        return timings(1.0, 2.0) if faster == "fp32" else timings(2.0, 1.0)

    monkeypatch.setattr(precision, "measure_precisions", fake)
    assert precision.choose_precision(model, x, y, "train") == faster
    assert precision.choose_precision(model, x, y, "train") == faster  # from the cache
    assert calls == ["train"]
    assert precision.choose_precision(model, x[:1], y[:1], "train") == faster  # another shape
    assert precision.choose_precision(model, x, y, "score") == faster  # another kind of work
    assert calls == ["train", "train", "score"]
    cached = json.loads(precision.cache_path().read_text())
    assert sum(isinstance(v, dict) for v in cached.values()) == 3


def test_measuring_leaves_the_model_and_the_random_stream_alone():
    model, x, y = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    seconds = precision.measure_precisions(model, x, y, "train", rounds=1)
    assert set(seconds) == {"fp32", "bf16"} and all(t.median > 0 for t in seconds.values())
    assert torch.equal(torch.rand(3), expected)  # dropout draws did not advance the generator
    assert all(p.grad is None for p in model.parameters()) and model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_an_unwritable_cache_only_warns(monkeypatch, tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("")
    monkeypatch.setenv("GCNN_CACHE", str(blocked / "sub"))  # a directory under a file
    monkeypatch.setattr(precision, "measure_precisions", lambda *a, **k: timings(1, 2))
    model, x, y = tiny()
    with pytest.warns(UserWarning, match="could not cache"):
        assert precision.choose_precision(model, x, y) == "fp32"


def test_cpu_without_bf16_needs_no_measurement(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(precision, "measure_precisions", lambda *a, **k: pytest.fail("measured"))
    model, x, y = tiny()
    assert precision.choose_precision(model, x, y) == "fp32"


@pytest.mark.parametrize("faster", ["fp32", "bf16"])
def test_training_with_auto_records_what_it_measured(tiny_corpus, tmp_path, monkeypatch, faster):
    seen = []

    def fake(model, inputs, targets, mode, rounds=3):
        seen.append((mode, tuple(inputs.shape)))
        return timings(1.0, 2.0) if faster == "fp32" else timings(2.0, 1.0)

    monkeypatch.setattr(precision, "measure_precisions", fake)
    out = tmp_path / "run"
    assert main(args(tiny_corpus, out, "--max-updates", "2", "--precision", "auto")) == 0
    assert seen == [("train", (4, 16 + 4))]  # 4 rows of context 4 + block 16: the real batch
    saved = tomllib.loads((out / "config.toml").read_text())
    assert saved["precision"] == faster  # a resumed run keeps the same numerics


def test_the_real_measurement_returns_a_choice():
    model, x, y = tiny()
    assert precision.choose_precision(model, x, y, "score") in ("fp32", "bf16")


@pytest.mark.parametrize("family", ["gcnn", "lstm"])
def test_evaluation_precision_flag(tiny_corpus, tmp_path, capsys, monkeypatch, family):
    """fp32 is the default; bf16 autocast stays close to it; auto measures the scoring work."""
    from test_eval import tiny_model, write_checkpoint

    from gcnn.data import prepare_corpus
    from gcnn.evaluation.cli import main as evaluate

    corpus = prepare_corpus(tiny_corpus)
    path = write_checkpoint(
        tmp_path / "m.pt", tiny_model(family, corpus.tokenizer.vocab_size), corpus.tokenizer,
        tiny_corpus,
    )  # fmt: skip
    seen = []
    monkeypatch.setattr(
        precision,
        "measure_precisions",
        lambda model, inputs, targets, mode, rounds=3: seen.append(mode) or timings(2, 1),
    )
    results = {}
    for flag in ("fp32", "bf16", "auto"):
        assert evaluate(["perplexity", str(path), "--json", "--precision", flag]) == 0
        results[flag] = json.loads(capsys.readouterr().out)["perplexity"]
    assert seen == ["score"]
    assert results["bf16"] == pytest.approx(results["fp32"], rel=0.02)
    assert results["auto"] == results["bf16"]  # auto chose bf16, the (pretended) faster
