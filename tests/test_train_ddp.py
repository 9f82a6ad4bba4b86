"""Data parallelism: two gloo processes on CPU follow the same loss trajectory (and reach the same
weights) as one process on the same global batch, because the loss is normalised by the GLOBAL
number of targets and BlockBatcher deals each global batch's blocks across the ranks."""

from __future__ import annotations

import json
import os
import re
import signal
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


# Each child runs train.py's entry point, then reports how many gloo worker threads are still
# alive after train() returned (Linux names them pt_gloo_runloop in /proc). There must be none:
# threads left running go on into interpreter shutdown, where releasing the tensors of the last
# collective needs the GIL and aborts the process (SIGABRT, "terminate called without an active
# exception") in about one run in ten. Counting them catches that leak deterministically.
CHILD = """
import os, sys
from gcnn.training.cli import main
code = main(sys.argv[1:])
names = []
if os.path.isdir("/proc/self/task"):
    for tid in os.listdir("/proc/self/task"):
        try:
            names.append(open(f"/proc/self/task/{tid}/comm").read().strip())
        except OSError:  # a thread that just ended
            pass
    print("gloo threads left:", sum(n.startswith("pt_gloo") for n in names), flush=True)
sys.exit(code)
"""


def child_failure(rank: int, code: int | None, err_log: Path, keep: int = 6000) -> str:
    """Why a child failed: its exit (signal name if killed) and its stderr, whole if short, else
    its head and its tail (the first error and the last words)."""
    how = f"exit code {code}"
    if code is not None and code < 0:
        how = f"killed by {signal.Signals(-code).name}"
    text = err_log.read_text(errors="replace")
    if len(text) > 2 * keep:
        cut = len(text) - 2 * keep
        text = f"{text[:keep]}\n[... {cut} characters, see {err_log} ...]\n{text[-keep:]}"
    return f"rank {rank} failed ({how}); its stderr ({err_log}):\n{text}"


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
    procs, logs = [], []
    for rank in range(2):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "RANK": str(rank),
               "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "GLOO_SOCKET_IFNAME": "lo", "PYTHONFAULTHANDLER": "1"}  # fmt: skip
        command = [sys.executable, "-c", CHILD, *args(tiny_corpus, ddp, *flags, base=base)]
        # Each child's whole stdout and stderr go to files: nothing is lost to a pipe's size or
        # truncated, and a failure below shows the child's real error, not just its last lines.
        out_log, err_log = tmp_path / f"rank{rank}.stdout", tmp_path / f"rank{rank}.stderr"
        logs.append((out_log, err_log))
        with open(out_log, "wb") as out, open(err_log, "wb") as err:
            procs.append(subprocess.Popen(command, env=env, stdout=out, stderr=err))
    try:
        for proc in procs:
            proc.wait(timeout=180)
    except subprocess.TimeoutExpired:
        pass  # a hung child is killed below and reported with its stderr (killed by SIGKILL)
    finally:
        for proc in procs:
            proc.kill()  # no-op for a child that has exited
            proc.wait()
    for rank, (proc, (_, err_log)) in enumerate(zip(procs, logs, strict=True)):
        assert proc.returncode == 0, child_failure(rank, proc.returncode, err_log)
    outputs = [out_log.read_text() for out_log, _ in logs]
    assert "best valid ppl" in outputs[0] and "best valid ppl" not in outputs[1]
    for rank, out in enumerate(outputs):
        left = re.search(r"gloo threads left: (\d+)", out)
        if left:  # (Linux only)
            assert left.group(1) == "0", (
                f"rank {rank}: the process group outlived train() ({left.group(1)} gloo "
                "threads still running; see init_distributed)"
            )

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
