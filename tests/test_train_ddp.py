"""Data parallelism: two gloo processes on CPU follow the same loss trajectory (and reach the same
weights) as one process on the same global batch, because the loss is normalised by the GLOBAL
number of targets and BlockBatcher deals each global batch's blocks across the ranks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gcnn.checkpoint import load_checkpoint
from gcnn.training.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from test_train import TINY, TINY_LSTM, args  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("family", ["gcnn", "lstm"])
def test_two_gloo_processes_match_one_process(tiny_corpus, tmp_path, family):
    # 8 rows per update: 8 in one process, 4 per rank in two (GCNN: blocks of 16 tokens, 12
    # updates cross an epoch boundary; LSTM: 8 streams, each rank carries 4). Dropout off: the
    # ranks draw their own masks.
    base = TINY if family == "gcnn" else TINY_LSTM
    tokens = "128" if family == "gcnn" else "64"
    flags = ("--tokens-per-batch", tokens, "--max-updates", "12", "--valid-every", "6",
             "--log-every", "1", "--dropout", "0")  # fmt: skip
    single = tmp_path / "single"
    assert main(args(tiny_corpus, single, *flags, base=base)) == 0

    ddp = tmp_path / "ddp"
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "RANK": str(rank),
               "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "GLOO_SOCKET_IFNAME": "lo"}  # fmt: skip
        command = [
            sys.executable,
            "-m",
            "gcnn.training.cli",
            *args(tiny_corpus, ddp, *flags, base=base),
        ]
        procs.append(
            subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        )
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=180))
    finally:
        for proc in procs:
            proc.kill()
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()[-3000:]
    assert b"best valid ppl" in outputs[0][0] and b"best valid ppl" not in outputs[1][0]

    one, two = rows(single), rows(ddp)  # only rank 0 writes metrics
    assert [r["step"] for r in one] == [r["step"] for r in two]
    assert sum(r["train_loss"] is not None for r in one) == 12
    for a, b in zip(one, two, strict=True):
        assert a["tokens"] == b["tokens"]
        for key in ("train_loss", "valid_loss"):
            if a[key] is not None:
                assert b[key] == pytest.approx(a[key], abs=1e-5), (a, b)
    w1 = load_checkpoint(single / "checkpoint_last.pt")["model"]
    w2 = load_checkpoint(ddp / "checkpoint_last.pt")["model"]
    for name in w1:
        assert torch.allclose(w1[name], w2[name], atol=1e-5), name
    if family == "lstm":  # the carried state of both ranks is saved, rows in rank order
        s1 = load_checkpoint(single / "checkpoint_last.pt")["data_position"]["state"]
        s2 = load_checkpoint(ddp / "checkpoint_last.pt")["data_position"]["state"]
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(s1, s2, strict=True))
