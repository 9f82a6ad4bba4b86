"""Hostile input, run as a user would: real processes under a memory cap and a time limit.

Every case of issue 20 (run directories with two writers or someone else's files, a resume that
is another run, sizes taken on trust from flags, configs and checkpoints, long lines, signals in
long phases, standard input) runs train.py, evaluate.py or `python -m gcnn.data` in a subprocess
with RLIMIT_AS = CAP and a timeout, and checks: one `error:` line (or the signal's one line), the
exit status, no traceback, files intact, and peak resident memory under PEAK. A tiny run peaks at
about 0.4 GB resident here; what the issue saw was 4 to 22 GB.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import random
import resource
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_synthetic_corpus
from test_train import TINY, TINY_LSTM, args, hashes

from gcnn.checkpoint import load_checkpoint, load_model
from gcnn.errors import GcnnError
from gcnn.training import resume as resume_module
from gcnn.training import trainer as trainer_module
from gcnn.training.cli import main as train_main
from gcnn.training.config import TrainConfig
from gcnn.training.run_lock import LOCK_NAME

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
CAP = 3 * 10**9  # address space: torch's import alone maps about 1 GB of it
PEAK = 10**9  # resident memory no case may reach
WORKERS = 3  # one-shot cases run at once (see `background`)
BIG = "1000000000"


@dataclasses.dataclass
class Result:
    status: int
    out: str
    err: str
    peak: int  # bytes, the process's maximum resident set

    def one_line(self, start: str = "error: ") -> str:
        """The one line on stderr (no traceback), without `start`."""
        assert self.err.count("\n") == 1 and self.err.startswith(start), self.err
        assert "Traceback" not in self.err + self.out
        assert self.peak < PEAK, f"peak {self.peak / 1e9:.2f} GB"
        return self.err[len(start) : -1]


def _capped(close_stdin: bool):
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (CAP, CAP))
        if close_stdin:
            os.close(0)

    return limit


def start(argv: list[str], *, close_stdin=False, stdin=subprocess.DEVNULL, env=None):
    return subprocess.Popen(
        [sys.executable, *argv], stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=env or ENV, cwd=REPO, preexec_fn=_capped(close_stdin),
    )  # fmt: skip


def finish(proc: subprocess.Popen, timeout: float = 120, data: bytes | None = None) -> Result:
    """Wait for `proc` (killed after `timeout` s: a failure), collecting its output and its
    peak memory (wait4's rusage: this process alone)."""
    streams = {"out": proc.stdout, "err": proc.stderr}
    got: dict[str, bytes] = {}
    readers = [
        threading.Thread(target=lambda k=k, s=s: got.__setitem__(k, s.read()))
        for k, s in streams.items()
    ]
    if data is not None:
        readers.append(
            threading.Thread(target=lambda: (proc.stdin.write(data), proc.stdin.close()))
        )
    for t in readers:
        t.start()
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    _, status, usage = os.wait4(proc.pid, 0)
    timed_out = not timer.is_alive()
    timer.cancel()
    for t in readers:
        t.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert not timed_out, f"still running after {timeout} s: {got['err'].decode()[-2000:]}"
    decode = lambda k: got[k].decode(errors="replace")  # noqa: E731
    return Result(proc.returncode, decode("out"), decode("err"), usage.ru_maxrss * 1024)


def run(argv: list[str], timeout: float = 120, data: bytes | None = None, **kw) -> Result:
    stdin = subprocess.PIPE if data is not None else subprocess.DEVNULL
    return finish(start(argv, stdin=stdin, **kw), timeout, data)


def exited(proc: subprocess.Popen) -> bool:
    """Whether `proc` has ended, without reaping it (finish's wait4 must still find it)."""
    flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
    return proc.returncode is not None or os.waitid(os.P_PID, proc.pid, flags) is not None


def wait_for(condition, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert not exited(proc), finish(proc).err[-2000:]
        assert time.time() < deadline, "the awaited state never came"
        time.sleep(0.02)


def train(out: Path, corpus: Path, *extra: str, base=TINY) -> list[str]:
    return ["train.py", *args(corpus, out, *extra, base=base)]


def leftovers(directory: Path) -> list[str]:
    return sorted(str(p) for p in directory.rglob("*") if ".tmp-" in p.name)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_synthetic_corpus(tmp_path_factory.mktemp("hostile") / "tiny")


@pytest.fixture(scope="module")
def checkpoint(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hostile-run") / "run"
    assert train_main(args(corpus, out, "--max-updates", "3")) == 0
    return out / "checkpoint_last.pt"


@pytest.fixture(scope="module")
def background(corpus, checkpoint, tmp_path_factory):
    """The one-shot cases of this module (RESUME_, FLAG_, CHECKPOINT_, EVALUATION_CASES), run
    WORKERS at a time from the module's start: {(group, case): () -> (path, hashes before,
    Result)}. Each is still its own process under the cap; only the waiting overlaps."""
    root = tmp_path_factory.mktemp("cases")
    pool = ThreadPoolExecutor(WORKERS)
    jobs = {}

    def submit(key, path, argv, before=None):
        future = pool.submit(run, argv, 120)
        jobs[key] = lambda: (path, before, future.result())

    for case, (flags, _) in RESUME_CASES.items():
        out = copy_of_run(checkpoint, root / f"resume-{case}")
        submit(("resume", case), out, train(out, corpus, "--resume", *flags), hashes(out))
    for case, (flags, _) in FLAG_CASES.items():
        out, base = root / f"flag-{case}", TINY_LSTM if case.startswith("lstm") else TINY
        submit(("flag", case), out, train(out, corpus, *flags, base=base))
    for case, (claim, _) in CHECKPOINT_CASES.items():
        path = forged(checkpoint, root / f"checkpoint-{case}", **claim)
        (path.parent / "in.txt").write_text("w1 w2\n")
        submit(("checkpoint", case), path, ["evaluate.py", "score", str(path),
                                            str(path.parent / "in.txt")])  # fmt: skip
    for case, (argv, _) in EVALUATION_CASES.items():
        argv = [str(checkpoint) if a == "CKPT" else a for a in argv]
        submit(("evaluation", case), None, ["evaluate.py", *argv])
    yield jobs
    pool.shutdown(cancel_futures=True)


def rows(out: Path) -> list[dict]:
    """metrics.jsonl's rows (a line being written is left out)."""
    found = []
    for line in (out / "metrics.jsonl").read_text().splitlines():
        with contextlib.suppress(ValueError):
            found.append(json.loads(line))
    return found


def train_steps(out: Path) -> list[int]:
    return [r["step"] for r in rows(out) if r["train_loss"] is not None]


# --- run directories: one writer, its own files, the same run ------------------------------


@pytest.mark.slow
def test_a_second_writer_is_refused_while_a_run_holds_the_directory(corpus, tmp_path):
    """Two runs started at once on one --out (other seeds and lrs), then a --resume of the run
    in progress: only the first writes; the others are refused in one line naming it."""
    out = tmp_path / "run"
    forever = ("--max-updates", "100000", "--log-every", "1", "--save-every", "2")
    first = start(train(out, corpus, *forever, "--seed", "1", "--lr", "0.01"))
    second = start(train(out, corpus, *forever, "--seed", "2", "--lr", "0.02"))
    try:
        deadline = time.time() + 60
        while not exited(first) and not exited(second):
            assert time.time() < deadline, "neither run was refused"
            time.sleep(0.02)
        # whichever claimed the directory first runs on; the other was refused
        winner, loser = (first, second) if exited(second) else (second, first)
        refused = finish(loser, 30)
        assert refused.status == 2
        message = refused.one_line()
        assert message.startswith(f"run directory {out} is in use by train.py (process ")
        assert f"process {winner.pid} on " in message and message.endswith("choose another --out")
        wait_for(lambda: (out / "checkpoint_last.pt").exists(), winner)
        again = run(train(out, corpus, "--resume"), 60)
        assert (
            again.status == 2
            and f"is in use by train.py (process {winner.pid} " in again.one_line()
        )
        winner.send_signal(signal.SIGTERM)
        stopped = finish(winner, 60)
    finally:
        first.kill(), second.kill()
    assert stopped.status == 143 and "stopped by SIGTERM after update" in stopped.out
    seed = 1 if winner is first else 2
    ckpt = load_checkpoint(out / "checkpoint_last.pt")
    assert ckpt["train_config"]["seed"] == seed and ckpt["train_config"]["lr"] == 0.01 * seed
    assert f"seed = {seed}" in (out / "config.toml").read_text()
    logged = train_steps(out)
    assert logged == list(range(1, len(logged) + 1))  # one run's rows, each once
    assert not fcntl_held(out / LOCK_NAME)


def fcntl_held(path: Path) -> bool:
    with open(path, "a+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def test_a_run_killed_with_sigkill_leaves_no_stale_lock(corpus, tmp_path):
    out = tmp_path / "run"
    proc = start(train(out, corpus, "--max-updates", "100000", "--save-every", "2"))
    try:
        wait_for(lambda: (out / "checkpoint_last.pt").exists(), proc)
        assert fcntl_held(out / LOCK_NAME)
        holder = json.loads((out / LOCK_NAME).read_text())
        assert holder["pid"] == proc.pid and holder["command"] == "train.py"
        proc.send_signal(signal.SIGKILL)  # no handler, no cleanup: the kernel drops the lock
        proc.wait(30)
    finally:
        proc.kill()
    assert not fcntl_held(out / LOCK_NAME)  # the file still names the dead holder; no matter
    step = load_checkpoint(out / "checkpoint_last.pt")["step"]
    resumed = run(train(out, corpus, "--resume", "--max-updates", str(step + 2)), 60)
    assert resumed.status == 0, resumed.err
    assert load_checkpoint(out / "checkpoint_last.pt")["step"] == step + 2
    assert (out / LOCK_NAME).read_text() == ""  # released: emptied, kept as the run's mark


def test_a_directory_of_someone_elses_files_is_refused(corpus, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.toml").write_text("lr = 3  # my own notes\n")
    (out / "metrics.jsonl").write_text('{"my": "measurements"}\n')
    before = hashes(out)
    result = run(train(out, corpus, "--max-updates", "2"), 60)
    assert result.status == 2
    assert result.one_line() == (
        f"run directory {out} holds files that are not a gcnn run's (config.toml, "
        "metrics.jsonl); a run writes config.toml, metrics.jsonl and checkpoints there: choose "
        "an empty or new --out (nothing was written)"
    )
    assert hashes(out) == before and sorted(p.name for p in out.iterdir()) == [
        "config.toml", "metrics.jsonl",
    ]  # fmt: skip


def test_a_gcnn_run_that_saved_nothing_yet_starts_over(corpus, tmp_path):
    """A run killed before its first checkpoint: its directory holds the lock file, config.toml
    and metrics.jsonl of gcnn; the same command starts it over (nothing resumable is lost)."""
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text("")
    (out / "config.toml").write_text("# gcnn training configuration (resolved)\n")
    assert train_main(args(corpus, out, "--max-updates", "2")) == 0
    assert load_checkpoint(out / "checkpoint_last.pt")["step"] == 2


def copy_of_run(checkpoint: Path, out: Path) -> Path:
    out.mkdir(parents=True)
    for name in ("checkpoint_last.pt", "config.toml", "metrics.jsonl", LOCK_NAME):
        (out / name).write_bytes((checkpoint.parent / name).read_bytes())
    return out


def test_a_refused_run_leaves_an_older_run_directory_as_it_was(corpus, checkpoint, tmp_path):
    """A run directory from before the lock (checkpoints, no lock file): a fresh run on it is
    refused by its checkpoint and leaves no lock file behind either."""
    out = copy_of_run(checkpoint, tmp_path / "run")
    (out / LOCK_NAME).unlink()
    before = hashes(out)
    assert train_main(args(corpus, out, "--max-updates", "3")) == 2
    assert hashes(out) == before


RESUME_CASES = {
    "batch-shape": (["--block-size", "8", "--tokens-per-batch", "32"],
                    "--block-size 16 (not 8), --tokens-per-batch 64 (not 32)"),
    "seed-and-context": (["--seed", "5", "--context", "1"],
                         "--context 4 (not 1), --seed 1 (not 5)"),
    "accumulation": (["--grad-accum", "2", "--tokens-per-batch", "128"],
                     "--tokens-per-batch 64 (not 128), --grad-accum 1 (not 2)"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(RESUME_CASES))
def test_a_resume_that_would_be_another_run_is_refused(background, case):
    _, said = RESUME_CASES[case]
    out, before, result = background["resume", case]()
    assert result.status == 2
    assert result.one_line() == (
        f"--resume: the run in {out} was trained with {said}; a resumed run must see the same "
        "tokens in the same order: drop those settings (the run's own are used) or start a new "
        "run with another --out"
    )
    assert hashes(out) == before


def test_every_setting_is_either_fixed_or_free_on_resume():
    r = resume_module
    lists = (r.SAME_DATA_ORDER, r.SAME_OPTIMIZER, r.SAME_MODEL, r.SAME_CORPUS, r.MAY_CHANGE)
    named = [name for names in lists for name in names]
    assert sorted(named) == sorted(f.name for f in dataclasses.fields(TrainConfig))
    assert len(named) == len(set(named))
    documented = (REPO / "docs" / "training.md").read_text()
    for name in resume_module.MAY_CHANGE:
        if name not in ("out", "resume"):
            assert f"`--{name.replace('_', '-')}`" in documented, name


def test_another_world_size_or_corpus_is_refused(checkpoint):
    ckpt = load_checkpoint(checkpoint)
    config = TrainConfig.from_dict(ckpt["train_config"])
    corpus = ckpt["data_position"]["corpus"]
    resume_module.check_same_run(ckpt, config, 1, corpus, "RUN")  # the same run: fine
    with pytest.raises(GcnnError, match=r"trained with 1 process\(es\) \(not 2\)"):
        resume_module.check_same_run(ckpt, config, 2, corpus, "RUN")
    other = {**corpus, "sha256": "0" * 16}
    with pytest.raises(GcnnError, match="is not the one the run in RUN trained on"):
        resume_module.check_same_run(ckpt, config, 1, other, "RUN")


# --- sizes taken on trust ------------------------------------------------------------------

FLAG_CASES = {
    "block-size": (["--block-size", BIG], "--block-size 1000000000: more than the "),
    "tokens-per-batch": (["--tokens-per-batch", "1000000000000"], "--tokens-per-batch "),
    "context": (["--context", BIG], "this model sees at most 4 tokens of history"),
    "channels": (["--model-arg", "blocks=[{layers=[[3, 100000000]], repeat=1}]"],
                 "more than any machine holds"),
    "embed-dim": (["--model-arg", "embed_dim=1000000000000"], "needs at least"),
    "softmax-dim": (["--model-arg", "softmax_dim=1000000000"], "more than any machine holds"),
    "kernel": (["--model-arg", "blocks=[{layers=[[1000000000, 16]], repeat=1}]"],
               "the largest tensor is blocks.0.convs.0"),
    "repeat": (["--model-arg", "blocks=[{layers=[[3, 16]], repeat=10000000}]"],
               "model config: 10,000,000 layers, more than the 1,000 gcnn builds"),
    # once spun in a Python loop over 3.1e10 rows, deaf to SIGTERM
    "lstm-tokens-per-batch": (["--tokens-per-batch", "1000000000000"],
                              "--tokens-per-batch 1000000000000: more than the "),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(FLAG_CASES))
def test_sizes_from_flags_are_bounded_before_allocation(background, case):
    _, said = FLAG_CASES[case]
    out, _, result = background["flag", case]()
    assert result.status == 2 and said in result.one_line()
    assert not out.exists()  # refused: nothing written, the directory not even left behind


def test_a_size_from_a_config_file_is_bounded_too(corpus, tmp_path):
    toml = tmp_path / "big.toml"
    toml.write_text("max_updates = 1\n[model_args]\nvocab_size = 5\n")
    result = run(train(tmp_path / "run", corpus, "--config", str(toml)), 60)
    assert result.status == 2 and "cannot be overridden" in result.one_line()
    toml.write_text("max_updates = 1\n[model_args]\nsoftmax_dim = 10000000\n")
    result = run(train(tmp_path / "run", corpus, "--config", str(toml)), 60)
    assert result.status == 2
    # the first tail is softmax_dim / tail_factor (gcnn-8-small's 2) wide
    assert "the largest tensor is softmax.tails.0.0.weight 5,000,000 x 10,000,000" in (
        result.one_line()
    )
    assert not (tmp_path / "run").exists()


def forged(checkpoint: Path, tmp_path: Path, **config) -> Path:
    """The small checkpoint with its model config claiming `config`."""
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["model_config"].update(config)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "forged.pt"
    torch.save(ckpt, path)
    return path


CHECKPOINT_CASES = {
    "vocabulary": ({"vocab_size": 30_000_000},
                   "weights do not match its model config (embed.weight is "),
    "repeat": ({"blocks": [{"layers": [[3, 16]], "repeat": 10_000_000}]},
               "model config: 10,000,000 layers, more than the 1,000 gcnn builds"),
    "embedding": ({"embed_dim": 10**12}, "weights do not match its model config (embed.weight is "),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CHECKPOINT_CASES))
def test_a_checkpoints_config_is_checked_against_its_tensors_first(background, case):
    _, said = CHECKPOINT_CASES[case]
    path, _, result = background["checkpoint", case]()
    assert result.status == 2
    message = result.one_line()
    assert message.startswith(f"checkpoint {path}: ") and said in message


def test_a_resumed_checkpoints_tensors_are_checked_too(corpus, checkpoint, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    forged(checkpoint, tmp_path, vocab_size=30_000_000).rename(out / "checkpoint_last.pt")
    result = run(train(out, corpus, "--resume"), 60)
    assert result.status == 2 and "weights do not match its model config" in result.one_line()


EVALUATION_CASES = {
    "latency-vocabulary": (["latency", "gcnn-small", "--vocab-size", "1000000000000"],
                           "the largest tensor is embed.weight 1,000,000,000,000 x 128) needs "),
    "latency-length": (["latency", "gcnn-small", "--vocab-size", "1000", "--sentence-length", BIG],
                       "lower --sentence-length or --batch-size"),
    "sample-length": (["sample", "CKPT", "--max-tokens", "1000000000000"], "lower --max-tokens"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(EVALUATION_CASES))
def test_evaluation_sizes_are_bounded(background, case):
    _, said = EVALUATION_CASES[case]
    _, _, result = background["evaluation", case]()
    assert result.status == 2 and said in result.one_line()


def test_perplexity_with_an_enormous_block_is_the_same_perplexity(corpus, checkpoint):
    """A block (or batch) longer than the split is the split: the same exact result, in the
    memory of the split's size."""
    base = ["evaluate.py", "perplexity", str(checkpoint), "--data", str(corpus), "--json"]
    want = json.loads(run(base, 60).out)
    for flags in (["--block-size", BIG], ["--batch-size", BIG]):
        result = run([*base, *flags], 60)
        assert result.status == 0 and result.peak < PEAK, result.err
        got = json.loads(result.out)
        assert got["tokens"] == want["tokens"] and got["loss"] == pytest.approx(want["loss"])


def long_line(words: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choices([f"w{i}" for i in range(60)], k=words)) + "\n"


@pytest.mark.slow
def test_score_of_a_line_of_200000_tokens_stays_small(checkpoint, tmp_path):
    text = tmp_path / "long.txt"
    text.write_text(long_line(199_999) + "w1 w2\n")
    result = run(["evaluate.py", "score", str(checkpoint), str(text)], 120)
    assert result.status == 0 and result.err == "" and result.peak < PEAK
    rows = [line.split("\t") for line in result.out.splitlines()]
    assert [int(r[1]) for r in rows] == [200_000, 3]


@pytest.mark.parametrize("family", ["gcnn", "lstm"])
def test_a_long_line_is_scored_exactly_in_chunks(tiny_corpus, tmp_path, family, monkeypatch):
    import gcnn.evaluation.scoring as scoring

    out = tmp_path / "run"
    base = TINY if family == "gcnn" else TINY_LSTM
    assert train_main(args(tiny_corpus, out, "--max-updates", "2", base=base)) == 0
    model, tokenizer, _ = load_model(out / "checkpoint_last.pt", inference=True)
    lines = [long_line(300, seed=1).strip(), "w1 w2", long_line(40, seed=2).strip()]
    whole = scoring.score_lines(model, tokenizer, lines, batch_size=2)
    monkeypatch.setattr(scoring, "LONG_LINE", 16)  # the long lines in chunks of 16 tokens
    chunked = scoring.score_lines(model, tokenizer, lines, batch_size=2)
    for a, b in zip(whole, chunked, strict=True):
        assert (a.tokens, a.text) == (b.tokens, b.text)
        assert b.logprob == pytest.approx(a.logprob, rel=1e-5)


def test_preparing_a_long_line_reads_it_in_pieces(tmp_path, monkeypatch):
    """Word-level preparation of a line longer than a chunk: the same ids as whole lines."""
    import gcnn.data.corpus as corpus_module
    from gcnn.data import prepare_corpus

    directory = tmp_path / "c"
    directory.mkdir()
    (directory / "train.txt").write_text("a b\n" + long_line(5000) + "w1 w2 \n\t\nlast words")
    whole = prepare_corpus(directory, cache_dir=tmp_path / "a", splits=("train",))
    seen = []
    real = corpus_module._decode
    monkeypatch.setattr(corpus_module, "CHUNK_BYTES", 64)
    monkeypatch.setattr(corpus_module, "_decode", lambda d, *a: seen.append(len(d)) or real(d, *a))
    pieces = prepare_corpus(directory, cache_dir=tmp_path / "b", splits=("train",))
    assert max(seen) < 2 * 64  # never the whole 20 kB line at once
    assert np.array_equal(whole.splits["train"], pieces.splits["train"])
    assert whole.stats == pieces.stats and whole.stats["train"]["lines"] == 5


# --- signals and streams -------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_during_validation_saves_within_the_pass_and_resumes(tmp_path):
    """A validation split that takes many seconds: SIGTERM in it stops the pass at the next
    batch, saves checkpoint_last.pt with the validation still to do, and exits 143; the
    resumed run does that validation first."""
    corpus = tmp_path / "corpus"
    write_synthetic_corpus(corpus, lines=200)
    (corpus / "valid.txt").write_text(long_line(40) * 40_000)  # 1.6M tokens
    out = tmp_path / "run"
    proc = start(train(out, corpus, "--max-updates", "4", "--valid-every", "2", "--log-every", "1"))
    try:
        wait_for(lambda: (out / "metrics.jsonl").exists() and 2 in train_steps(out), proc, 120)
        proc.send_signal(signal.SIGTERM)  # the validation of update 2 has begun
        result = finish(proc, 120)
    finally:
        proc.kill()
    assert result.status == 143 and "Traceback" not in result.err and result.peak < PEAK
    assert f"stopped by SIGTERM after update 2: saved {out / 'checkpoint_last.pt'}" in result.out
    ckpt = load_checkpoint(out / "checkpoint_last.pt")
    assert ckpt["step"] == 2 and ckpt["metrics"]["valid_pending"] is True
    assert not [r for r in rows(out) if r["valid_loss"] is not None]  # the pass was cut short
    assert leftovers(out) == []
    resumed = run(train(out, corpus, "--resume", "--max-updates", "2", "--valid-tokens", "500"))
    assert resumed.status == 0, resumed.err
    assert [r["step"] for r in rows(out) if r["valid_loss"] is not None] == [2]


def test_an_interrupted_validation_resumes_to_the_uninterrupted_run(tiny_corpus, tmp_path,
                                                                    monkeypatch):  # fmt: skip
    flags = ("--max-updates", "10", "--valid-every", "5", "--log-every", "1", "--dropout", "0.2")
    reference = tmp_path / "reference"
    assert train_main(args(tiny_corpus, reference, *flags)) == 0
    real = trainer_module.Trainer.stop_agreed

    def signal_in_the_first_validation(self, index):
        if self.step == 5 and index == 1 and not self.progress.valid_pending:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, index)

    monkeypatch.setattr(trainer_module.Trainer, "stop_agreed", signal_in_the_first_validation)
    out = tmp_path / "run"
    assert train_main(args(tiny_corpus, out, *flags)) == 143
    assert load_checkpoint(out / "checkpoint_last.pt")["metrics"]["valid_pending"]
    monkeypatch.undo()
    assert train_main(args(tiny_corpus, out, *flags, "--resume")) == 0
    want, got = (load_checkpoint(d / "checkpoint_last.pt") for d in (reference, out))
    for name, tensor in want["model"].items():
        assert torch.equal(tensor, got["model"][name]), name
    assert got["metrics"]["best_valid_loss"] == want["metrics"]["best_valid_loss"]


def injected(setup: str, then: str) -> list[str]:
    """`python -c`: `setup` (e.g. slowing something down), then a command-line main."""
    return ["-c", textwrap.dedent(setup) + "\n" + textwrap.dedent(then)]


def test_sigterm_during_prepare_removes_the_half_built_cache(corpus, tmp_path):
    """Preparing stops at once, says so, and leaves no temporary cache directory."""
    cache = tmp_path / "cache"
    setup = """
        import sys, time
        import numpy as np
        real = np.save
        def slow_save(f, array, *rest, **kw):
            real(f, array, *rest, **kw)
            time.sleep(120)  # a big corpus: the signal comes while the cache is written
        np.save = slow_save
    """
    then = f"""
        from gcnn.data.__main__ import main
        from gcnn.errors import run_cli
        sys.exit(run_cli(lambda: main(["prepare", {str(corpus)!r}, "--cache-dir", {str(cache)!r}])))
    """
    proc = start(injected(setup, then))
    try:
        wait_for(lambda: cache.exists() and any(cache.glob(".*.tmp-*/*.npy")), proc)
        proc.send_signal(signal.SIGTERM)
        result = finish(proc, 60)
    finally:
        proc.kill()
    assert result.status == 143
    line = result.one_line(start="stopped by SIGTERM; ")
    assert line == f"the token cache of {corpus} was not written (nothing left)"
    assert leftovers(cache) == [] and [p for p in cache.iterdir() if "lock" not in p.name] == []


def test_sigterm_during_a_two_process_scan_ends_both(corpus, tmp_path):
    """A big file is scanned by this process and a forked worker: a signal ends both at once
    (the worker is not waited for), with the same one line."""
    marker, cache = tmp_path / "scanning", tmp_path / "cache"
    setup = f"""
        import pathlib, sys, time
        import gcnn.data.scan as scan
        scan.PARALLEL_BYTES = 1  # every file in two halves
        real = scan._scan
        def slow_scan(*a, **kw):
            pathlib.Path({str(marker)!r}).touch()
            time.sleep(120)  # a half of WikiText-103 takes a while
            return real(*a, **kw)
        scan._scan = slow_scan
    """
    then = f"""
        from gcnn.data.__main__ import main
        from gcnn.errors import run_cli
        sys.exit(run_cli(lambda: main(["prepare", {str(corpus)!r}, "--cache-dir", {str(cache)!r}])))
    """
    proc = start(injected(setup, then))
    try:
        wait_for(marker.exists, proc)
        wait_for(lambda: Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text(), proc)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        proc.send_signal(signal.SIGTERM)
        result = finish(proc, 60)
    finally:
        proc.kill()
    assert result.status == 143
    assert result.one_line(start="stopped by SIGTERM; ").startswith("the token cache of ")
    assert children and not any(Path(f"/proc/{pid}").exists() for pid in children)


def test_sigterm_during_sampling_stops_at_once(checkpoint, tmp_path):
    marker = tmp_path / "sampling"
    setup = f"""
        import sys, pathlib
        import gcnn.evaluation.sampling as sampling
        real = sampling.choose_token
        def choose(*a, **kw):
            pathlib.Path({str(marker)!r}).touch()
            return real(*a, **kw)
        sampling.choose_token = choose
    """
    then = f"""
        from gcnn.evaluation.cli import main
        sys.exit(main(["sample", {str(checkpoint)!r}, "--max-tokens", "20000000"]))
    """
    proc = start(injected(setup, then))
    try:
        wait_for(marker.exists, proc)
        proc.send_signal(signal.SIGTERM)
        result = finish(proc, 60)
    finally:
        proc.kill()
    assert result.status == 143 and result.out == ""
    assert result.one_line(start="stopped by SIGTERM; ") == "nothing was written"


def test_stdin_is_read_like_a_file(checkpoint, tmp_path):
    """Invalid UTF-8 under a strict locale: the file's error, naming standard input; a closed
    standard input: one line."""
    bad = b"w1 w2\nw3 \xff w4\n"
    (tmp_path / "bad.txt").write_bytes(bad)
    strict = {**ENV, "LC_ALL": "C", "PYTHONIOENCODING": "ascii:strict", "PYTHONUTF8": "0"}
    score = ["evaluate.py", "score", str(checkpoint)]
    from_file = run([*score, str(tmp_path / "bad.txt")], 60, env=strict)
    from_stdin = run([*score, "-"], 60, data=bad, env=strict)
    assert from_file.status == from_stdin.status == 2
    where = "line 2, byte offset 9: b'\\xff w4'); re-encode the text as UTF-8, e.g. with iconv"
    assert from_file.one_line() == f"{tmp_path / 'bad.txt'} is not UTF-8 ({where}"
    assert from_stdin.one_line() == f"standard input is not UTF-8 ({where}"
    good = run([*score, "-"], 60, data=b"w1 w2\n", env=strict)
    assert good.status == 0 and len(good.out.splitlines()) == 1
    closed = run([*score, "-"], 60, close_stdin=True)
    assert closed.status == 2 and closed.one_line() == (
        "standard input is closed; pipe text into it or pass a text file instead of -"
    )
