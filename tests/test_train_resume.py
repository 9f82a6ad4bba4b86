"""Never lose progress: SIGKILL a run after a checkpoint, --resume it, and land on exactly the
weights and losses of the same run left uninterrupted (CPU, fp32: bit for bit)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gcnn.checkpoint import load_checkpoint
from gcnn.training.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from test_train import TINY, TINY_LSTM, args  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the reference below runs on one thread too


def losses(out: Path) -> dict[tuple[int, str], float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        (r["step"], key): r[key] for r in rows for key in ("train_loss", "valid_loss") if r[key]
    }


@pytest.mark.parametrize("family", ["gcnn", "lstm"])
def test_sigkill_then_resume_equals_an_uninterrupted_run(tiny_corpus, tmp_path, family):
    # Long enough (several epochs: reshuffling, lr decay, validations) that the kill lands
    # mid-run; dropout is on from the second epoch (late dropout: the resumed run must switch
    # it as the reference did), so the restored RNG state matters.
    base = TINY if family == "gcnn" else TINY_LSTM
    updates = 60
    flags = ("--max-updates", str(updates), "--valid-every", "15", "--save-every", "4",
             "--log-every", "1", "--dropout", "0.2", "--dropout-from-epoch", "1")  # fmt: skip

    reference = tmp_path / "reference"
    assert main(args(tiny_corpus, reference, *flags, base=base)) == 0

    run = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "gcnn.training.cli",
        *args(tiny_corpus, run, *flags, base=base),
    ]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    try:
        deadline = time.time() + 60
        while not (run / "checkpoint_last.pt").exists():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[1]
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)  # no handler, no cleanup: a crash
        proc.wait(timeout=30)
    finally:
        proc.kill()
    killed_at = load_checkpoint(run / "checkpoint_last.pt")["step"]
    assert 0 < killed_at < updates, "the kill came too late to test resuming"
    rows = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    dropout_starts = min(r["step"] for r in rows if r["epoch"] >= 1)
    assert killed_at < dropout_starts, "the kill came too late to resume across late dropout"

    resumed = subprocess.run(
        [*command, "--resume"], capture_output=True, text=True, env=ENV, timeout=120
    )
    assert resumed.returncode == 0, resumed.stderr

    want = load_checkpoint(reference / "checkpoint_last.pt")
    got = load_checkpoint(run / "checkpoint_last.pt")
    assert got["step"] == want["step"] == updates
    for name, tensor in want["model"].items():
        assert torch.equal(tensor, got["model"][name]), name
    assert got["metrics"]["best_valid_loss"] == want["metrics"]["best_valid_loss"]
    # The killed session's log past its checkpoint was dropped, the resumed one filled it in.
    assert losses(run) == losses(reference)
