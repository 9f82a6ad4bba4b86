"""train.py end to end on a tiny corpus and a tiny model: files, metrics, refusals, NaN handling,
gradient accumulation, LSTM state, signals, bf16 and torch.compile paths."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gcnn.checkpoint import load_checkpoint, load_model
from gcnn.models.dropout import Dropout
from gcnn.training import trainer as trainer_module
from gcnn.training.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from conftest import write_synthetic_corpus  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "--model-arg", "embed_dim=16",
    "--model-arg", "blocks=[{layers=[[3, 16]], repeat=2}]",
    "--model-arg", "cutoffs=[20]",
    "--block-size", "16", "--tokens-per-batch", "64", "--warmup-updates", "5", "--lr", "0.01",
    "--device", "cpu", "--precision", "fp32", "--no-progress",
]  # fmt: skip
TINY_LSTM = [
    "--model", "lstm-small",
    "--model-arg", "embed_dim=16", "--model-arg", "hidden_size=16", "--model-arg", "cutoffs=[20]",
    "--block-size", "8", "--tokens-per-batch", "32", "--warmup-updates", "5", "--lr", "0.01",
    "--device", "cpu", "--precision", "fp32", "--no-progress",
]  # fmt: skip
# Tiny models gain nothing from a second thread, and on a busy machine OpenMP threads that wait
# for each other make every update many times slower: one thread here and in subprocesses.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def args(corpus: Path, out: Path, *extra: str, base=TINY) -> list[str]:
    return ["--data", str(corpus), "--out", str(out), *base, *extra]


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def hashes(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


def test_tiny_run_writes_checkpoints_metrics_and_config(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        args(tiny_corpus, out, "--max-updates", "30", "--valid-every", "10", "--log-every", "5")
    )
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "best valid ppl" in stdout and str(out / "checkpoint_best.pt") in stdout.splitlines()[-1]
    rows = metrics(out)
    keys = {"step", "epoch", "tokens", "train_loss", "valid_loss", "valid_ppl", "lr"}
    assert all(keys | {"tokens_per_s", "wall_s"} <= set(r) for r in rows)
    train = [r for r in rows if r["train_loss"] is not None]
    valid = [r for r in rows if r["valid_loss"] is not None]
    assert [r["step"] for r in train] == [5, 10, 15, 20, 25, 30]
    assert [r["step"] for r in valid] == [10, 20, 30]
    assert train[-1]["train_loss"] < train[0]["train_loss"]  # it learns
    assert math.isclose(valid[-1]["valid_ppl"], math.exp(valid[-1]["valid_loss"]))

    raw = torch.load(out / "checkpoint_last.pt", weights_only=True)
    keys = "model_config model tokenizer vocab_fingerprint train_config optimizer scheduler step"
    for key in (keys + " epoch data_position rng metrics").split():
        assert key in raw
    assert raw["step"] == 30 and set(raw["rng"]) >= {"torch", "numpy", "python"}
    best = load_checkpoint(out / "checkpoint_best.pt")
    assert best["metrics"]["best_valid_loss"] == min(r["valid_loss"] for r in valid)
    model, tokenizer, _ = load_model(out / "checkpoint_best.pt")
    assert model.config_dict()["embed_dim"] == 16 and tokenizer.vocab_size > 20
    assert "max_updates = 30" in (out / "config.toml").read_text()


def test_refusals_leave_existing_checkpoints_untouched(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(args(tiny_corpus, out, "--max-updates", "3")) == 0
    before = hashes(out)
    other_corpus = write_synthetic_corpus(tmp_path / "other", lines=50, seed=5)
    cases = [
        (args(tiny_corpus, out, "--max-updates", "3"), "--resume"),  # same run, no --resume
        (args(tiny_corpus, out, "--model-arg", "embed_dim=8"), "another model"),
        (args(tiny_corpus, out, "--model-arg", "embed_dim=8", "--resume"), "another model"),
        (args(other_corpus, out, "--resume"), "another vocabulary"),
        (args(tiny_corpus, out, "--model", "gcnn-99"), "unknown model preset"),
        (args(tiny_corpus, out, "--lr", "-3"), "--lr"),
        (args(tiny_corpus, tmp_path / "fresh", "--tokens-per-batch", "8"), "--tokens-per-batch"),
    ]
    for argv, needle in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
        assert hashes(out) == before
    assert not (tmp_path / "fresh").exists()  # a refused run writes nothing

    # A corrupt checkpoint_last with --resume: refused, and neither file is touched.
    last = out / "checkpoint_last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    before = hashes(out)
    assert main(args(tiny_corpus, out, "--resume")) == 2
    assert "corrupt" in capsys.readouterr().err
    assert hashes(out) == before


def test_train_py_prints_one_line_errors(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--optimizer", "sgd"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env=ENV,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1


def test_grad_accum_equals_the_big_batch(tiny_corpus, tmp_path):
    common = ("--max-updates", "8", "--log-every", "1", "--dropout", "0", "--valid-every", "4")
    assert main(args(tiny_corpus, tmp_path / "a", *common)) == 0
    assert main(args(tiny_corpus, tmp_path / "b", *common, "--grad-accum", "2")) == 0
    a, b = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert len(a) == len(b) == 10
    for ra, rb in zip(a, b, strict=True):
        for key in ("train_loss", "valid_loss"):
            if ra[key] is not None:
                assert rb[key] == pytest.approx(ra[key], abs=1e-6)
    wa = load_checkpoint(tmp_path / "a" / "checkpoint_last.pt")["model"]
    wb = load_checkpoint(tmp_path / "b" / "checkpoint_last.pt")["model"]
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_late_dropout_trains_its_first_epochs_without_dropout(tiny_corpus, tmp_path, monkeypatch):
    rates, updates = [], []  # the p of each training-mode dropout call; (epoch, rates) per update
    dropout_forward, update = Dropout.forward, trainer_module.Trainer.update

    def spy_dropout(self, x):
        if self.training and self.rate:  # the softmax's dropout is configured at 0
            rates.append(self.p)
        return dropout_forward(self, x)

    def spy_update(self, stopper):
        rates.clear()
        result = update(self, stopper)
        updates.append((self.progress.epoch, set(rates)))
        return result

    monkeypatch.setattr(Dropout, "forward", spy_dropout)
    monkeypatch.setattr(trainer_module.Trainer, "update", spy_update)
    flags = ("--dropout", "0.2", "--dropout-from-epoch", "1", "--max-epochs", "2")
    assert main(args(tiny_corpus, tmp_path / "run", *flags)) == 0
    by_epoch = {epoch: set().union(*(r for e, r in updates if e == epoch)) for epoch, _ in updates}
    assert by_epoch == {0: {0.0}, 1: {0.2}}


def test_nan_losses_are_skipped_counted_and_stop_the_run(
    tiny_corpus, tmp_path, capsys, monkeypatch
):
    real_forward = trainer_module.LossModule.forward
    calls = {"n": 0}
    poisoned = {3, 4} | set(range(10, 1000))  # two isolated NaNs, then NaN for ever

    def forward(self, *args, **kwargs):
        loss, count, state = real_forward(self, *args, **kwargs)
        calls["n"] += 1
        return (loss * math.nan if calls["n"] in poisoned else loss), count, state

    monkeypatch.setattr(trainer_module.LossModule, "forward", forward)
    out = tmp_path / "run"
    rc = main(args(tiny_corpus, out, "--max-updates", "50", "--save-every", "1",
                   "--max-bad-updates", "3"))  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err
    assert "diverged" in err and err.count("\n") == 1
    ckpt = load_checkpoint(out / "checkpoint_last.pt")
    # 9 good calls (1, 2, 5..9) -> 7 updates; the skipped ones moved no weight
    assert ckpt["step"] == 7 and ckpt["metrics"]["bad_updates"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_lstm_trains_with_carried_state(tiny_corpus, tmp_path):
    out = tmp_path / "lstm"
    rc = main(args(tiny_corpus, out, "--max-updates", "12", "--valid-every", "6", base=TINY_LSTM))
    assert rc == 0
    ckpt = load_checkpoint(out / "checkpoint_last.pt")
    h, c = ckpt["data_position"]["state"]
    assert h.shape == c.shape == (1, 4, 16)  # (layers, 32 tokens / 8 per row, hidden)
    assert ckpt["train_config"]["context"] == 0


def test_bf16_and_compile_paths(tiny_corpus, tmp_path, monkeypatch):
    assert (
        main(args(tiny_corpus, tmp_path / "bf16", "--max-updates", "3", "--precision", "bf16")) == 0
    )
    assert all(
        r["valid_loss"] is None or math.isfinite(r["valid_loss"])
        for r in metrics(tmp_path / "bf16")
    )
    # --compile: the real torch.compile (dynamo) with the eager backend, so the test does not
    # spend a minute generating C++; the loss must match the uncompiled run.
    real_compile = torch.compile
    used = []

    def compile_eager(model, **kwargs):
        used.append(True)
        return real_compile(model, **{**kwargs, "backend": "eager"})

    monkeypatch.setattr(torch, "compile", compile_eager)
    flags = ("--max-updates", "3", "--log-every", "1", "--dropout", "0")
    assert main(args(tiny_corpus, tmp_path / "compiled", *flags, "--compile")) == 0
    assert used
    assert main(args(tiny_corpus, tmp_path / "plain", *flags)) == 0
    compiled, plain = metrics(tmp_path / "compiled"), metrics(tmp_path / "plain")
    for rc, rp in zip(compiled, plain, strict=True):
        if rp["train_loss"] is not None:
            assert rc["train_loss"] == pytest.approx(rp["train_loss"], abs=1e-5)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_finishes_the_update_saves_and_resumes(tiny_corpus, tmp_path, monkeypatch, sig):
    # The signal arrives in the middle of the 3rd update (inside the forward pass).
    real_forward = trainer_module.LossModule.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), sig)
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(trainer_module.LossModule, "forward", forward)
    out = tmp_path / "run"
    # (under nohup or CI, SIGINT may start out ignored: compare with whatever was there)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    assert main(args(tiny_corpus, out, "--max-updates", "10")) == 128 + sig
    assert load_checkpoint(out / "checkpoint_last.pt")["step"] == 3
    assert {s: signal.getsignal(s) for s in before} == before  # handlers restored
    monkeypatch.setattr(trainer_module.LossModule, "forward", real_forward)
    assert main(args(tiny_corpus, out, "--max-updates", "10", "--resume")) == 0
    assert load_checkpoint(out / "checkpoint_last.pt")["step"] == 10


def test_sigterm_to_a_real_process_exits_143_after_saving(tiny_corpus, tmp_path):
    sig = signal.SIGTERM
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gcnn.training.cli",
            *args(tiny_corpus, out, "--max-updates", "1000000", "--log-every", "1"),
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        deadline = time.time() + 60
        while not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.02)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig, stderr
    assert "--resume" in stdout and "Traceback" not in stderr
    ckpt = load_checkpoint(out / "checkpoint_last.pt")
    assert ckpt["step"] >= 1
    assert not list(out.glob("*.tmp-*"))
