"""Faults from the outside world: a full disk, a read-only directory, a closed pipe.

Writes are made to fail by swapping the `open` a module uses for one whose files refuse to be
written (ENOSPC / EROFS / EACCES); the real file systems are only touched where the machine
allows it (a small tmpfs, CI runs as root). Each case checks the one-line message, the exit
status, that earlier files are intact and that nothing temporary is left.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import write_synthetic_corpus
from test_eval import tiny_model, write_checkpoint
from test_train import args

import gcnn.data.cache as cache_module
import gcnn.training.run_dir as run_dir_module
import gcnn.training.trainer as trainer_module
from gcnn.checkpoint import load_checkpoint, save_checkpoint
from gcnn.data import prepare_corpus
from gcnn.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_DISK_FULL,
    GcnnError,
    WriteError,
    run_cli,
    writing,
)
from gcnn.training.cli import configure
from gcnn.training.cli import main as train_main

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
CAUSES = {
    errno.ENOSPC: "no space left on device",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
}


# --- making writes fail ---------------------------------------------------------------------


class FullFile:
    """An open file that takes `room` more bytes, then fails every write with `code`."""

    def __init__(self, f, code: int, room: int = 0):
        self.f, self.code, self.room = f, code, room

    def write(self, data):
        if len(data) > self.room:
            self.f.write(data[: self.room])
            self.room = 0
            raise OSError(self.code, os.strerror(self.code))
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):  # flush, fileno, close, ... of the real file
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def failing_open(code: int, fails=lambda name: True, room: int = 0):
    """An `open` whose files opened for writing, if `fails(file name)`, are FullFiles."""

    def fake(file, mode="r", *rest, **kwargs):
        f = builtins.open(file, mode, *rest, **kwargs)  # noqa: SIM115 (the caller closes it)
        if any(c in mode for c in "wax") and fails(Path(file).name):
            return FullFile(f, code, room)
        return f

    return fake


def digests(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


def leftovers(directory: Path) -> list[str]:
    return sorted(
        p.name for p in directory.rglob("*") if ".tmp-" in p.name or "write-test" in p.name
    )


def one_error_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err[len("error: ") : -1]


# --- the message ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "cause", "advice"),
    [
        (errno.ENOSPC, "no space left on device", "free some space"),
        (errno.EROFS, "read-only file system", "writable file system"),
        (errno.EACCES, "permission denied", "fix its permissions"),
        (errno.EIO, "input/output error", "check the path"),
    ],
)
def test_write_error_names_the_path_the_cause_and_what_to_do(tmp_path, code, cause, advice):
    path = tmp_path / "x.bin"
    with pytest.raises(WriteError) as info, writing(path, "checkpoint"):
        raise OSError(code, os.strerror(code))
    message = str(info.value)
    assert message.startswith(f"cannot write checkpoint {path}: {cause}; ") and advice in message
    assert info.value.exit_code == 2 and info.value.disk_full == (code == errno.ENOSPC)


def test_run_cli_uses_the_errors_exit_status(capsys):
    def full():
        raise GcnnError("the disk is full", EXIT_DISK_FULL)

    assert run_cli(full) == 75
    assert capsys.readouterr().err == "error: the disk is full\n"


# --- checkpoints ----------------------------------------------------------------------------


@pytest.mark.parametrize("code", sorted(CAUSES))
def test_a_failed_checkpoint_write_keeps_the_old_file(tmp_path, monkeypatch, code):
    path = tmp_path / "model.pt"
    save_checkpoint(path, {"weights": torch.arange(10)})
    before = path.read_bytes()
    # the real torch.save into a file that fills up after 100 bytes: torch reports "unexpected
    # pos" (a RuntimeError); the message must still say what happened
    monkeypatch.setattr(cache_module, "open", failing_open(code, room=100), raising=False)
    with pytest.raises(WriteError) as info:
        save_checkpoint(path, {"weights": torch.zeros(100_000)})
    assert str(info.value).startswith(f"cannot write checkpoint {path}: {CAUSES[code]}; ")
    assert path.read_bytes() == before and leftovers(tmp_path) == []


def test_sigterm_during_a_save_waits_for_the_file(tmp_path):
    """SIGTERM with its default action, arriving in the middle of torch.save: the process still
    dies of it, but only once the checkpoint is complete (no half file, no temporary left)."""
    path = tmp_path / "model.pt"
    script = textwrap.dedent(f"""
        import os, signal, torch
        from gcnn.checkpoint import save_checkpoint

        real_save = torch.save
        def save_and_get_killed(obj, f):
            f.write(b"")
            os.kill(os.getpid(), signal.SIGTERM)  # delivered at once if nothing holds it
            real_save(obj, f)
        torch.save = save_and_get_killed
        save_checkpoint({str(path)!r}, {{"weights": torch.arange(1000)}})
        print("not reached: the held SIGTERM ends the process after the save")
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=120,
        cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGTERM, proc.stderr
    assert "not reached" not in proc.stdout
    assert torch.equal(torch.load(path, weights_only=True)["weights"], torch.arange(1000))
    assert leftovers(tmp_path) == []


# --- training -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_synthetic_corpus(tmp_path_factory.mktemp("faults") / "tiny")


@pytest.fixture(scope="module")
def base_run(corpus, tmp_path_factory) -> Path:
    """A finished 5-update run: the files that every fault below must leave as they are."""
    out = tmp_path_factory.mktemp("base") / "run"
    assert train_main(args(corpus, out, "--max-updates", "5", "--valid-every", "5")) == 0
    return out


def resume_args(corpus: Path, out: Path) -> list[str]:
    return args(corpus, out, "--max-updates", "10", "--valid-every", "5", "--resume")


@pytest.mark.parametrize("code", sorted(CAUSES))
@pytest.mark.parametrize(
    ("site", "module", "name"),
    [
        ("config", cache_module, "config.toml"),
        ("checkpoint", cache_module, "checkpoint_last.pt"),
        ("metrics", run_dir_module, "metrics.jsonl"),
    ],
)
def test_write_faults_in_a_run(corpus, base_run, tmp_path, monkeypatch, capsys, site, module,
                               name, code):  # fmt: skip
    out = tmp_path / "run"
    shutil.copytree(base_run, out)
    before, metrics = digests(out), (out / "metrics.jsonl").read_bytes()
    fails = failing_open(code, lambda file: file.startswith(name))
    monkeypatch.setattr(module, "open", fails, raising=False)
    status = train_main(resume_args(corpus, out))
    message = one_error_line(capsys.readouterr().err)
    what = {"config": "run config", "checkpoint": "checkpoint", "metrics": "metrics log"}[site]
    assert message.startswith(f"cannot write {what} {out / name}: {CAUSES[code]}")
    if site == "config":  # before the first update: a plain error
        assert status == 2
    else:  # mid-run: what is kept and how to go on; a full disk has its own status
        assert status == (EXIT_DISK_FULL if code == errno.ENOSPC else 2)
        kept = (
            f"training stopped after update 10; {out / 'checkpoint_last.pt'} (update 5) is intact"
        )
        assert kept in message and f"--resume --out {out}" in message
    after = digests(out)
    for checkpoint in ("checkpoint_last.pt", "checkpoint_best.pt"):
        assert after[checkpoint] == before[checkpoint]
    if site == "config":
        assert after == before
    else:  # metrics up to the failure were appended (a resumed run drops those past update 5)
        assert (out / "metrics.jsonl").read_bytes().startswith(metrics)
    assert leftovers(out) == []


def test_full_disk_at_the_second_save_then_resume(corpus, tmp_path, monkeypatch, capsys):
    """ENOSPC at the second save: exit 75, the first checkpoint intact; once there is space
    again, --resume finishes the run exactly as if nothing had happened."""
    flags = ("--max-updates", "15", "--valid-every", "5", "--log-every", "1")
    reference = tmp_path / "reference"
    assert train_main(args(corpus, reference, *flags)) == 0

    out = tmp_path / "run"
    saves, first = [], {}
    real_open = failing_open(errno.ENOSPC)

    def open_(file, mode="r", *rest, **kwargs):
        if Path(file).name.startswith("checkpoint_last.pt.tmp-"):
            saves.append(file)
            if len(saves) == 2:
                first["bytes"] = (out / "checkpoint_last.pt").read_bytes()
                return real_open(file, mode, *rest, **kwargs)
        return builtins.open(file, mode, *rest, **kwargs)

    monkeypatch.setattr(cache_module, "open", open_, raising=False)
    assert train_main(args(corpus, out, *flags)) == EXIT_DISK_FULL
    message = one_error_line(capsys.readouterr().err)
    assert message.startswith(
        f"cannot write checkpoint {out / 'checkpoint_last.pt'}: no space left on device ("
    )
    kept = f"training stopped after update 10; {out / 'checkpoint_last.pt'} (update 5) is intact"
    assert kept in message
    assert message.endswith(f"free some space, then continue with --resume --out {out}")
    assert (out / "checkpoint_last.pt").read_bytes() == first["bytes"]
    assert leftovers(out) == []

    monkeypatch.undo()  # space is back
    assert train_main(args(corpus, out, *flags, "--resume")) == 0
    want = load_checkpoint(reference / "checkpoint_last.pt")
    got = load_checkpoint(out / "checkpoint_last.pt")
    assert got["step"] == 15
    for key, tensor in want["model"].items():
        assert torch.equal(tensor, got["model"][key]), key
    assert (out / "metrics.jsonl").read_text() != ""


def test_read_only_run_directory_is_refused_before_training(corpus, tmp_path, capsys):
    parent = tmp_path / "readonly"
    parent.mkdir()
    parent.chmod(0o555)  # root ignores it, gcnn does not
    try:
        for out in (parent / "run", parent):  # to be created in it, or the directory itself
            assert train_main(args(corpus, out, "--max-updates", "5")) == 2
            message = one_error_line(capsys.readouterr().err)
            assert message == (
                f"cannot write run directory {out}: permission denied; choose another --out "
                "or make it writable"
            )
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(0o755)


def test_too_little_space_is_refused_with_the_figures(corpus, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    monkeypatch.setattr(run_dir_module, "free_bytes", lambda path: 50_000)
    assert train_main(args(corpus, out, "--max-updates", "5")) == 2
    message = one_error_line(capsys.readouterr().err)
    assert message.startswith(f"run directory {out}: 0.1 MB free on its file system, this run ")
    assert "checkpoint_last.pt and checkpoint_best.pt of about " in message
    assert message.endswith("free some space or choose another --out")
    assert not out.exists()  # nothing written, not even the directory


@pytest.mark.parametrize("optimizer", ["adamw", "nag"])
def test_checkpoint_size_estimate_covers_the_real_file(corpus, tmp_path, optimizer):
    config, _ = configure(args(corpus, tmp_path / "run", "--max-updates", "2", "--optimizer",
                               optimizer))  # fmt: skip
    trainer = trainer_module.Trainer(config)
    trainer.fit()
    real = (tmp_path / "run" / "checkpoint_last.pt").stat().st_size
    # tiny models: the fixed allowance for metadata dominates; gcnn-small is within 0.1%
    assert real <= trainer.run.ckpt_bytes <= real + 200_000


def mount_tmpfs(directory: Path, size: str, *options: str) -> bool:
    directory.mkdir(parents=True, exist_ok=True)
    opts = ",".join((*options, f"size={size}"))
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(directory)],
                              capture_output=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def unmount(directory: Path) -> None:
    if subprocess.run(["umount", str(directory)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(directory)], capture_output=True)


def test_a_real_full_disk_at_the_second_save(corpus, tmp_path, monkeypatch, capsys):
    """On a 2 MB tmpfs: something else fills the disk after the first save; the second save
    fails for real, the first checkpoint is kept, and --resume finishes once space is back."""
    disk = tmp_path / "disk"
    if not mount_tmpfs(disk, "2m"):
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        out = disk / "run"
        filler = disk / "other-program.bin"
        real_save = trainer_module.Trainer.save

        def save_then_fill(self, best=False):
            real_save(self, best)
            if not filler.exists():  # leave room for metrics lines, not for a checkpoint
                filler.write_bytes(b"\0" * (shutil.disk_usage(disk).free - 16_384))

        monkeypatch.setattr(trainer_module.Trainer, "save", save_then_fill)
        flags = ("--max-updates", "10", "--valid-every", "5")
        assert train_main(args(corpus, out, *flags)) == EXIT_DISK_FULL
        message = one_error_line(capsys.readouterr().err)
        assert "checkpoint_last.pt: no space left on device" in message
        assert f"{out / 'checkpoint_last.pt'} (update 5) is intact" in message
        assert load_checkpoint(out / "checkpoint_last.pt")["step"] == 5
        assert leftovers(out) == []

        filler.unlink()
        monkeypatch.undo()
        assert train_main(args(corpus, out, *flags, "--resume")) == 0
        assert load_checkpoint(out / "checkpoint_last.pt")["step"] == 10
    finally:
        unmount(disk)


def test_a_real_read_only_file_system(corpus, tmp_path, capsys):
    disk = tmp_path / "ro"
    if not mount_tmpfs(disk, "1m", "ro"):
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        out = disk / "run"
        assert train_main(args(corpus, out, "--max-updates", "5")) == 2
        message = one_error_line(capsys.readouterr().err)
        assert message == (
            f"cannot write run directory {out}: read-only file system; choose another --out "
            "or make it writable"
        )
    finally:
        unmount(disk)


def test_tensorboard_that_cannot_write(corpus, tmp_path, monkeypatch, capsys):
    """TensorBoard (an optional extra) stood in for by a writer whose directory is read-only."""
    import types

    def summary_writer(logdir):
        raise OSError(errno.EROFS, "Read-only file system", logdir)

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = summary_writer
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    out = tmp_path / "run"
    assert train_main(args(corpus, out, "--max-updates", "5", "--tensorboard")) == 2
    message = one_error_line(capsys.readouterr().err)
    assert message.startswith(f"cannot write TensorBoard log {out / 'tensorboard'}: read-only")


# --- data cache and plots -------------------------------------------------------------------


def test_a_full_disk_leaves_the_cache_out_and_goes_on(tmp_path, monkeypatch, capsys):
    corpus = write_synthetic_corpus(tmp_path / "tiny", lines=50)
    monkeypatch.setattr(cache_module, "open", failing_open(errno.ENOSPC), raising=False)
    prepared = prepare_corpus(corpus, cache_dir=tmp_path / "cache")
    assert prepared.cache_path is None and len(prepared.splits["train"]) > 0
    err = capsys.readouterr().err
    assert f"warning: cannot write the cache in {tmp_path / 'cache'} (no space left on " in err
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []


def test_a_plot_that_cannot_be_written(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from types import SimpleNamespace

    from gcnn.evaluation.latency_report import plot_latency

    plot = tmp_path / "latency.png"
    plot.write_bytes(b"old plot")
    result = SimpleNamespace(model="m", latency_by_length={5: 1.0, 10: 2.0}, device="cpu",
                             precision="fp32")  # fmt: skip
    monkeypatch.setattr(cache_module, "open", failing_open(errno.EACCES), raising=False)
    with pytest.raises(WriteError, match=f"cannot write plot {plot}: permission denied"):
        plot_latency([result], plot)
    assert plot.read_bytes() == b"old plot" and leftovers(tmp_path) == []


# --- a closed pipe --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(corpus, tmp_path_factory) -> Path:
    prepared = prepare_corpus(corpus)
    model = tiny_model("gcnn", prepared.tokenizer.vocab_size)
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", model, prepared.tokenizer)


def closed_pipe(command: list[str], read: int = 0) -> tuple[int, bytes, str]:
    """Run `command` with stdout into a pipe whose reader takes `read` bytes, then goes away
    (`| head -c N`). Returns (exit status, what was read, stderr)."""
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, cwd=REPO
    )
    try:
        got = proc.stdout.read(read) if read else b""
        proc.stdout.close()
        err = proc.stderr.read().decode()
        proc.wait(timeout=120)
    finally:
        proc.kill()
    return proc.returncode, got, err


def test_score_into_a_closed_pipe_stops_quietly(checkpoint, tmp_path):
    # far more than a pipe holds (64 KiB), so the writer meets the closed end mid-stream
    text = tmp_path / "lines.txt"
    text.write_text("w1 w2 w3 w4\n" * 4000)
    command = [sys.executable, "evaluate.py", "score", str(checkpoint), str(text), "--json"]
    status, got, err = closed_pipe(command, read=200)
    assert json.loads(got.splitlines()[0])["text"] == "w1 w2 w3 w4"  # `| head -2`
    assert (status, err) == (EXIT_BROKEN_PIPE, "")


@pytest.mark.parametrize(
    "command",
    [
        ["evaluate.py", "sample", "CKPT", "--max-tokens", "200"],
        ["-m", "gcnn.models"],
        ["-m", "gcnn.data", "prepare", "CORPUS", "--json"],
        ["benchmarks/bench_dropout.py", "--help"],  # the load lines too (gcnn.machine)
    ],
    ids=["sample", "models", "data-prepare", "benchmark-help"],
)
def test_printing_commands_into_a_closed_pipe(checkpoint, corpus, command):
    command = [str(checkpoint) if a == "CKPT" else str(corpus) if a == "CORPUS" else a
               for a in command]  # fmt: skip
    status, _, err = closed_pipe([sys.executable, *command])  # the reader is gone at once
    assert (status, err) == (EXIT_BROKEN_PIPE, "")
