"""evaluate.py latency: inference preparation keeps the model's outputs; the table and JSON are
well formed. No timing assertions (speed claims live in the latency command's output itself)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.utils import parametrize

from gcnn.evaluation.cli import main
from gcnn.evaluation.inference import GemmConv1d, prepare_for_inference
from gcnn.evaluation.workload import (
    GBW_VOCAB,
    WT2_VOCAB,
    WT103_VOCAB,
    default_vocab_size,
    random_sentences,
    scoring_fn,
)
from gcnn.models import build_model

GCNN_TINY = dict(
    embed_dim=16,
    blocks=[
        {"layers": [[5, 24]], "repeat": 1},
        {"layers": [[1, 12], [3, 12], [1, 32]], "repeat": 2},  # bottleneck + residual projection
    ],
    cutoffs=[20, 60],
    dropout=0.1,
)
# small enough for a test, the same presets' code paths; LSTM with a projection like lstm-2048
# one thread: on a busy shared machine, two OpenMP threads on two cores stall each other
SMALL = ["--vocab-size", "300", "--sentence-length", "6", "--repeats", "2", "--warmup", "1"]
SMALL += ["--threads", "1"]


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # --threads is process-wide


def run_main(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def tiny_gcnn():
    # built afresh rather than deep-copied: copies of a parametrized module share its class, and
    # removing the weight norm of one (torch deletes the class attribute) breaks the others
    torch.manual_seed(0)
    return build_model("gcnn-small", 100, **GCNN_TINY).eval()


def test_preparation_keeps_the_gcnn_outputs():
    reference = tiny_gcnn()
    fast = prepare_for_inference(tiny_gcnn(), torch.float32, "cpu")
    low = prepare_for_inference(tiny_gcnn(), torch.bfloat16, "cpu")
    # weight norm folded away, every convolution a single matmul, nothing left to train
    assert not any(parametrize.is_parametrized(m) for m in fast.modules())
    assert not any(isinstance(m, torch.nn.Conv1d) for m in fast.modules())
    assert (
        sum(isinstance(m, GemmConv1d) for m in fast.modules()) == 7 + 1
    )  # 7 convolutions + 1 residual projection
    assert not any(p.requires_grad for p in fast.parameters())
    assert fast.receptive_field == reference.receptive_field == 1 + 4 + 2 + 2

    targets = random_sentences(100, 3, 17, seed=1)
    inputs = torch.cat([torch.zeros_like(targets[:, :1]), targets[:, :-1]], dim=1)
    with torch.inference_mode():
        expected = reference.token_log_probs(inputs, targets)
        assert torch.allclose(scoring_fn(fast, targets)(), expected, atol=1e-5)
        # the incremental state still works through the swapped convolutions
        state, steps = fast.init_state(3), []
        for t in range(inputs.size(1)):
            hidden, state = fast(inputs[:, t : t + 1], state)
            steps.append(hidden)
        whole, _ = reference(inputs)
        assert torch.allclose(torch.cat(steps, dim=1), whole, atol=1e-5)
        # bf16 inference weights: same numbers to bf16 precision
        assert low.embed.weight.dtype == torch.bfloat16
        assert torch.allclose(scoring_fn(low, targets)(), expected, atol=0.15, rtol=0.05)


@pytest.mark.filterwarnings("ignore:LSTM with projections")
def test_preparation_keeps_the_lstm_outputs():
    torch.manual_seed(0)
    model = build_model("lstm-2048", 100, embed_dim=16, hidden_size=32, proj_size=8).eval()
    reference = copy.deepcopy(model)  # no weight norm in the LSTM: a deep copy is safe
    fast = prepare_for_inference(model, torch.float32, "cpu")
    targets = random_sentences(100, 2, 9, seed=2)
    inputs = torch.cat([torch.zeros_like(targets[:, :1]), targets[:, :-1]], dim=1)
    with torch.inference_mode():
        assert torch.allclose(
            scoring_fn(fast, targets)(), reference.token_log_probs(inputs, targets), atol=1e-6
        )


def test_zipf_sentences_are_frequency_sorted_and_reproducible():
    a = random_sentences(1000, 200, 30, seed=0)
    assert a.shape == (200, 30) and a.min() >= 0 and a.max() < 1000
    assert torch.equal(a, random_sentences(1000, 200, 30, seed=0))
    counts = torch.bincount(a.flatten(), minlength=1000)
    assert counts[:10].sum() > counts[500:].sum()  # frequent ids come first, like real text


def test_default_vocabulary_follows_the_presets_corpus():
    assert default_vocab_size("gcnn-8b") == default_vocab_size("lstm-2048") == GBW_VOCAB
    assert default_vocab_size("gcnn-14") == WT103_VOCAB
    assert default_vocab_size("gcnn-small") == WT2_VOCAB


def test_latency_json(capsys):
    code, out, err = run_main(
        ["latency", "gcnn-small", "lstm-small", "--json", "--batch-size", "2", *SMALL], capsys
    )
    assert code == 0, err
    records = json.loads(out)
    assert [r["model"] for r in records] == ["gcnn-small", "lstm-small"]
    for r in records:
        assert {"model", "params", "throughput", "responsiveness", "latency_ms"} <= set(r)
        assert r["params"] > 0 and r["throughput"] > 0 and r["responsiveness"] > 0
        # responsiveness is the sentence's tokens over its median latency
        assert r["responsiveness"] == pytest.approx(6 / (r["latency_ms"] / 1e3))
        # the default, --precision auto, gives each model whichever dtype is faster here
        assert r["throughput_batch_size"] == 2 and r["precision"] in ("fp32", "bf16")
    # weight norm folded: the count of plain weights, fewer than the (g, v) pairs of training
    built = build_model("gcnn-small", 300)
    assert records[0]["params"] == built.remove_weight_norm().num_parameters()
    assert records[0]["params"] < build_model("gcnn-small", 300).num_parameters()


def test_latency_table_bf16_and_checkpoint(tmp_path, capsys):
    from gcnn.checkpoint import model_checkpoint, save_checkpoint
    from gcnn.data import WordTokenizer

    tokenizer = WordTokenizer(["<eos>", "<unk>"] + [f"w{i}" for i in range(298)])
    model = build_model("gcnn-small", 300, **GCNN_TINY)
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, model_checkpoint(model, tokenizer))
    argv = ["latency", path, "lstm-small", "--precision", "bf16", *SMALL]
    code, out, err = run_main(argv, capsys)
    assert code == 0, err
    assert "| Model | Params | Throughput (tok/s) | Responsiveness (tok/s) | Latency (ms) |" in out
    assert "| tiny.pt |" in out and "| lstm-small |" in out
    assert "bf16, 1 thread(s)" in out
    assert "GCNN/LSTM: tiny.pt vs lstm-small: responsiveness" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["latency", "gcnn-small", "gcnn-99"], "'gcnn-99' is neither a preset nor a checkpoint"),
        (["latency", "gcnn-small", "--sentence-length", "0"], "--sentence-length 0"),
        (["latency", "gcnn-small", "--device", "cuda"], "--device cuda"),
        (["latency", "gcnn-small", "--threads", "0"], "--threads 0"),
    ],
)
def test_latency_bad_input(argv, message, capsys):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    code, _, err = run_main(argv, capsys)
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1


def test_plot_needs_matplotlib_or_writes_a_file(tmp_path, capsys):
    plot = tmp_path / "latency.png"
    argv = ["latency", "gcnn-small", "lstm-small", "--plot", plot, "--batch-size", "1", *SMALL]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        code, _, err = run_main(argv, capsys)
        assert code == 2 and "matplotlib is not installed" in err and not plot.exists()
    else:
        code, _, err = run_main(argv, capsys)
        assert code == 0, err
        assert plot.stat().st_size > 0


def test_plot_draws_one_line_per_model(tmp_path, monkeypatch, capsys):
    """The --plot path with a stand-in matplotlib (the real one is an optional extra)."""
    import sys
    import types
    from unittest import mock

    fig, ax = mock.MagicMock(), mock.MagicMock()
    fig.savefig.side_effect = lambda f, format: f.write(b"image:" + format.encode())
    pyplot = types.ModuleType("matplotlib.pyplot")
    pyplot.subplots = mock.Mock(return_value=(fig, ax))
    pyplot.close = mock.Mock()
    matplotlib = types.ModuleType("matplotlib")
    matplotlib.use = mock.Mock()
    matplotlib.pyplot = pyplot
    monkeypatch.setitem(sys.modules, "matplotlib", matplotlib)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", pyplot)

    plot = tmp_path / "latency.svg"
    argv = ["latency", "gcnn-small", "lstm-small", "--plot", plot, "--batch-size", "1", *SMALL]
    code, _, err = run_main(argv, capsys)
    assert code == 0, err
    assert plot.read_bytes() == b"image:svg"
    assert not list(tmp_path.glob("*.tmp-*"))  # written atomically
    lines = ax.plot.call_args_list
    assert [c.kwargs["label"] for c in lines] == ["gcnn-small", "lstm-small"]
    lengths, latencies = lines[0].args
    assert lengths == [5, 6, 10, 20, 50, 100] and all(t > 0 for t in latencies)


def test_roofline_benchmark_bounds_every_model_below_its_measured_latency():
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_roofline.py"
    args = ["--models", "gcnn-small", "lstm-small", "--vocab-size", "300", "--repeats", "2"]
    args += ["--sentence-length", "8", "--precision", "fp32"]
    run = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "load average before: " in run.stdout and "load average after: " in run.stdout
    rows = [line.split("|")[1:-1] for line in run.stdout.splitlines() if line.startswith("| ")]
    rows = {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[1:]}
    assert set(rows) == {"gcnn-small", "lstm-small"}
    for _gflop, _mb, by_flops, by_bytes, bound, _recurrence, measured, _of in rows.values():
        # the roofline bound is at least each of its two limits, and nothing beats the peak
        # GEMM rate (these tiny models' weights fit in cache: their bound is their FLOPs)
        assert float(bound) >= max(float(by_flops), float(by_bytes)) * 0.99
        assert 0 < float(by_flops) <= float(measured)
    assert rows["gcnn-small"][5] == "–" and float(rows["lstm-small"][5]) > 0
    assert "gcnn-small vs lstm-small: measured ratio" in run.stdout
    bad = subprocess.run([sys.executable, str(script), "--vocab-size", "1"], capture_output=True)
    assert bad.returncode == 2 and b"error: --vocab-size 1" in bad.stderr


@pytest.mark.parametrize("faster", ["fp32", "bf16"])
def test_auto_precision_gives_each_model_its_faster_dtype(monkeypatch, faster):
    from gcnn import precision
    from gcnn.evaluation.latency import LatencyConfig, fastest_precision
    from gcnn.timing import Timing

    def timings(calls, repeats, warmup, device):  # fp32 first, bf16 second (PRECISIONS order)
        fast, slow = Timing.of([1.0]), Timing.of([2.0])
        return [fast, slow] if faster == "fp32" else [slow, fast]

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)  # measured, not decided
    monkeypatch.setattr(precision, "interleaved_timings", timings)
    chosen = fastest_precision("tiny", tiny_gcnn(), LatencyConfig(sentence_length=6), print)
    dtypes = {p.dtype for p in chosen.parameters()}
    assert dtypes == {torch.float32 if faster == "fp32" else torch.bfloat16}
    assert not any(parametrize.is_parametrized(m) for m in chosen.modules())
