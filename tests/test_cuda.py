"""The CUDA paths, run for real where a GPU is present (`pytest -m cuda`; skipped elsewhere).

benchmarks/gpu_check.sh runs these first on a lent GPU. Their CPU-side logic is tested in
tests/test_device_paths.py on every machine; these show that the GPU does what that logic
assumes: bf16 autocast trains, the LSTM's recurrence stays out of fp16, torch.compile and the
fused optimizer work, a resumed run equals an uninterrupted one, incremental decoding equals the
full forward pass, and an update synchronises with the host exactly once.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from gcnn.checkpoint import load_checkpoint
from gcnn.evaluation.latency import LatencyConfig, run_latency
from gcnn.evaluation.perplexity import corpus_nll
from gcnn.models import build_model
from gcnn.training import trainer as trainer_module
from gcnn.training.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from test_device_paths import config_of  # noqa: E402
from test_train import TINY, TINY_LSTM, args  # noqa: E402

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def on_cuda(argv: list[str], *extra: str) -> list[str]:
    """The CPU test flags, moved to the GPU (later flags win)."""
    return [*argv, "--device", "cuda", *extra]


def losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["train_loss"] for r in rows if r["train_loss"] is not None]


@pytest.mark.parametrize("base", [TINY, TINY_LSTM], ids=["gcnn", "lstm"])
def test_bf16_autocast_trains(tiny_corpus, tmp_path, base):
    out = tmp_path / "run"
    flags = ("--max-updates", "20", "--log-every", "1", "--precision", "bf16")
    assert main(on_cuda(args(tiny_corpus, out, *flags, base=base))) == 0
    trained = losses(out)
    assert all(np.isfinite(trained)) and trained[-1] < trained[0]


def test_lstm_recurrence_is_not_run_in_fp16_under_autocast():
    model = build_model("lstm-small", 100, embed_dim=16, hidden_size=16, cutoffs=[]).cuda()
    seen = []
    model.lstm.register_forward_hook(lambda m, i, o: seen.append(o[0].dtype))
    x = torch.randint(0, 100, (4, 12), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        nll, count, state = model.loss(x, x)
    (nll / count).backward()
    assert seen == [torch.float32]
    assert all(s.dtype == torch.float32 for s in state)
    assert all(p.grad.dtype == torch.float32 for p in model.lstm.parameters())


def test_compile_and_fused_adamw(tiny_corpus, tmp_path):
    out = tmp_path / "run"
    flags = ("--max-updates", "6", "--log-every", "1", "--compile")
    assert main(on_cuda(args(tiny_corpus, out, *flags))) == 0
    assert all(np.isfinite(losses(out)))
    trainer = trainer_module.Trainer(config_of(on_cuda(args(tiny_corpus, tmp_path / "b"))))
    assert trainer.optimizer.defaults["fused"] is True


def test_resume_on_gpu_equals_an_uninterrupted_run(tiny_corpus, tmp_path):
    # NAG's lr does not depend on --max-updates (AdamW's cosine horizon would), and both runs
    # validate at update 10, where the plateau schedule may act
    flags = ("--log-every", "1", "--dropout", "0.2", "--optimizer", "nag", "--lr", "0.05",
             "--valid-every", "10")  # fmt: skip
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main(on_cuda(args(tiny_corpus, whole, "--max-updates", "20", *flags))) == 0
    assert main(on_cuda(args(tiny_corpus, split, "--max-updates", "10", *flags))) == 0
    resume = ("--max-updates", "20", "--resume")
    assert main(on_cuda(args(tiny_corpus, split, *resume, *flags))) == 0
    # index_add on CUDA adds in a nondeterministic order: equal up to float rounding
    np.testing.assert_allclose(losses(split), losses(whole), rtol=1e-4)
    a = load_checkpoint(whole / "checkpoint_last.pt")["model"]
    b = load_checkpoint(split / "checkpoint_last.pt")["model"]
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


@pytest.mark.parametrize("family", ["gcnn", "lstm"])
def test_incremental_decoding_equals_the_full_forward_pass(family):
    torch.manual_seed(0)
    if family == "gcnn":
        blocks = [{"layers": [[4, 32]]}, {"layers": [[1, 16], [3, 16], [1, 32]], "repeat": 2}]
        model = build_model("gcnn-small", 300, embed_dim=16, blocks=blocks, cutoffs=[50, 150])
    else:
        model = build_model("lstm-small", 300, embed_dim=16, hidden_size=32, cutoffs=[50, 150])
    model = model.cuda().double().eval()
    x = torch.randint(0, 300, (3, 40), device="cuda")
    with torch.no_grad():
        full = model.next_token_log_probs(x)
        state, steps = model.init_state(3), []
        for t in range(x.size(1)):
            log_probs, state = model.step(x[:, t], state)
            steps.append(log_probs)
    torch.testing.assert_close(torch.stack(steps, 1), full, rtol=0, atol=1e-9)


@pytest.mark.parametrize("base", [TINY, TINY_LSTM], ids=["gcnn", "lstm"])
def test_an_update_synchronises_once(tiny_corpus, tmp_path, base):
    trainer = trainer_module.Trainer(
        config_of(on_cuda(args(tiny_corpus, tmp_path / "r", base=base)))
    )
    trainer.session_t0 = 0.0
    trainer.model.train()
    trainer.update(trainer_module.SignalStopper())  # warm-up: lazy CUDA state, optimizer state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.update(trainer_module.SignalStopper())
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) == 1, [str(w.message) for w in syncs]  # the final all_sum


def test_perplexity_on_gpu_equals_cpu():
    model = build_model("gcnn-small", 80, embed_dim=16, cutoffs=[20], dropout=0.0).double()
    tokens = np.random.default_rng(0).integers(0, 80, 3000).astype(np.int32)
    cpu, n = corpus_nll(model, tokens, 0, block_size=64, batch_size=4)
    gpu, m = corpus_nll(model.cuda(), tokens, 0, block_size=64, batch_size=4, device="cuda")
    assert n == m == len(tokens) and gpu == pytest.approx(cpu, rel=1e-10)


def test_latency_on_gpu_gives_the_lstm_fp16_in_bf16_mode():
    config = LatencyConfig(repeats=3, warmup=1, device="cuda", precision="bf16", batch_sizes=(4,))
    results = run_latency(["gcnn-small", "lstm-small"], config)
    assert {r.model: r.precision for r in results} == {"gcnn-small": "bf16", "lstm-small": "fp16"}
    assert all(r.latency_ms > 0 for r in results)
