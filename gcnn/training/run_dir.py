"""The run directory: whose it is, whether it has room, and every write into it (rank 0).

RUN_DIR holds checkpoint_last.pt, checkpoint_best.pt, metrics.jsonl and config.toml, and the
lock that makes the run their only writer (gcnn.training.run_lock). A run is refused before its
first update if another process holds the directory, if the directory holds anything that is not
a gcnn run, if it belongs to another run or if it cannot take its checkpoints; a refused run
leaves the directory as it found it. A write that fails later ends the run with one line saying
what is kept and how to go on (`fault`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from pathlib import Path

from gcnn.checkpoint import load_checkpoint, save_checkpoint
from gcnn.data import atomic_write
from gcnn.data.cache import is_writable_dir
from gcnn.errors import EXIT_DISK_FULL, GcnnError, WriteError, writing
from gcnn.training.distributed import Dist
from gcnn.training.run_lock import LOCK_NAME, RunLock

CHECKPOINTS = ("checkpoint_last.pt", "checkpoint_best.pt")


def write_text_atomic(path: Path, text: str, what: str = "file") -> None:
    with writing(path, what), atomic_write(path, "w") as f:
        f.write(text)


def free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.1f} MB"


class RunDir:
    """One run's directory and what the run knows about it."""

    def __init__(self, out: Path):
        self.out = out
        self.last_path = out / "checkpoint_last.pt"
        self.best_path = out / "checkpoint_best.pt"
        self.kept_step: int | None = None  # the update checkpoint_last.pt holds (None: no file)
        self.ckpt_bytes: int | None = None  # estimated size of one checkpoint (see preflight)
        self.lock = RunLock(out)
        self.created = False  # this run created the directory
        self.written = False  # this run wrote into it (its config.toml first)

    def claim(self) -> None:
        """Make this process the directory's one writer (rank 0, before anything is written):
        refuse a directory that cannot be written, one holding files that are not a gcnn run's,
        and one that another process holds. Undone by `release`."""
        self.check_writable()
        self.check_foreign()
        self.created = not self.out.exists()
        try:
            self.lock.acquire()
        except BaseException:
            self.release()
            raise

    def claim_on_rank(self, env: Dist) -> GcnnError | None:
        """`claim` on rank 0. With several processes its refusal is returned, for `agree` to
        stop every rank once the process group exists; one process raises it at once."""
        if not env.is_main:
            return None
        try:
            self.claim()
        except GcnnError as err:
            if not env.enabled:
                raise
            return err
        return None

    def release(self) -> None:
        """Let go of the directory; if the run wrote nothing into it, leave it as it was found
        (the lock file removed if this run made it, the directory if this run created it)."""
        self.lock.release(remove=self.lock.created and not self.written)
        if self.created and not self.written:
            with contextlib.suppress(OSError):  # not empty: someone else wrote there meanwhile
                self.out.rmdir()
        self.created = False

    def agree(self, problem: GcnnError | None, dist: Dist, device) -> None:
        """Every rank stops when rank 0 could not claim the directory (a collective)."""
        self._shared(problem, dist, device)

    def check_foreign(self) -> None:
        """Refuse a directory that holds anything and is not a gcnn run: its files would be
        overwritten. A gcnn run has the lock file, or (older runs) a checkpoint."""
        out = self.out
        if out.exists() and not out.is_dir():
            raise GcnnError(f"--out {out} is a file, not a directory; choose another --out")
        names = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
        if not names or LOCK_NAME in names or set(CHECKPOINTS) & set(names):
            return
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        raise GcnnError(
            f"run directory {out} holds files that are not a gcnn run's ({shown}); a run "
            "writes config.toml, metrics.jsonl and checkpoints there: choose an empty or new "
            "--out (nothing was written)"
        )

    def check_owner(
        self, resume_ckpt: dict | None, model_config: dict, fingerprint: str, data: str
    ) -> None:
        """Refuse to overwrite another run; refuse to resume a checkpoint of another model."""

        def mismatch(ckpt: dict) -> str:
            if ckpt["vocab_fingerprint"] != fingerprint:
                return f"was trained on another vocabulary than {data}"
            theirs = ckpt["model_config"]
            if theirs != model_config:
                keys = sorted(k for k in set(theirs) | set(model_config)
                              if theirs.get(k) != model_config.get(k))  # fmt: skip
                diff = ", ".join(f"{k} {theirs.get(k)!r} vs {model_config.get(k)!r}" for k in keys)
                return f"is a checkpoint of another model ({theirs.get('name')}: {diff})"
            return ""

        if resume_ckpt is not None:
            why = mismatch(resume_ckpt)
            if why:
                raise GcnnError(
                    f"{self.last_path} {why}; resume with the run's own settings or choose "
                    "another --out"
                )
            return
        for path in (self.last_path, self.best_path):
            if not path.exists():
                continue
            try:
                why = mismatch(load_checkpoint(path)) or "already holds a checkpoint"
            except GcnnError:
                why = "holds an unreadable checkpoint"
            raise GcnnError(
                f"run directory {self.out}: {path.name} {why}; pass --resume to continue that "
                "run or choose another --out (nothing was overwritten)"
            )

    def preflight(self, step: int, ckpt_bytes: int, dist: Dist, device) -> None:
        """Refuse a run directory that cannot take this run's checkpoints now, not after hours
        of training (`check_room`), and note what the run starts from (checkpoint_last.pt of
        update `step`, if any) for the message of a failed write later. A collective: only rank
        0 writes, the other ranks stop with it rather than wait for it in the next collective."""
        self.ckpt_bytes = ckpt_bytes
        self.kept_step = step if self.last_path.exists() else None
        problem = None
        if dist.is_main:
            try:
                self.check_room()
            except GcnnError as err:
                problem = err
        self._shared(problem, dist, device)

    def _shared(self, problem: GcnnError | None, dist: Dist, device) -> None:
        (refused,) = dist.all_sum([float(problem is not None)], device)
        if problem is not None:
            raise problem
        if refused:
            raise GcnnError(f"rank 0 cannot use the run directory {self.out} (see its error)")

    def check_writable(self) -> None:
        """Refuse a run directory that cannot be created or written, before creating it."""
        out, hint = self.out, "choose another --out or make it writable"
        # By mode bits too, on the directory or the one it will be created in: root passes
        # every access check, yet a directory made read-only must not be written into.
        existing = next(d for d in (out, *out.parents) if d.exists())
        if not is_writable_dir(existing):
            read_only = hasattr(os, "statvfs") and os.statvfs(existing).f_flag & os.ST_RDONLY
            fault = OSError(errno.EROFS if read_only else errno.EACCES, "not writable")
            raise WriteError(out, fault, "run directory", hint)

    def check_room(self) -> None:
        """Refuse a run directory that cannot be written, or whose file system lacks room for
        checkpoint_last.pt, checkpoint_best.pt and the temporary copy a save writes (a run
        directory that this run created is removed again by `release`)."""
        out, hint = self.out, "choose another --out or make it writable"
        self.check_writable()
        with writing(out, "run directory", hint):
            out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        with writing(out, "run directory", hint):  # a read-only mount shows here, even to root
            probe.write_bytes(b"")
            probe.unlink()
        # Peak use while saving checkpoint_best.pt: last + best + the temporary copy; files of a
        # resumed run already count in the used space.
        have = sum(p.stat().st_size for p in (self.last_path, self.best_path) if p.exists())
        need = max(0, 3 * self.ckpt_bytes - have)
        free = free_bytes(out)
        if free is not None and free < need:
            raise GcnnError(
                f"run directory {out}: {mb(free)} free on its file system, this run needs "
                f"about {mb(need)} (checkpoint_last.pt and checkpoint_best.pt of about "
                f"{mb(self.ckpt_bytes)} each, plus a temporary copy while saving); free "
                "some space or choose another --out"
            )

    def save(self, ckpt: dict, step: int, best: bool) -> None:
        """checkpoint_last.pt (and checkpoint_best.pt) := `ckpt`, the state after `step`."""
        try:
            save_checkpoint(self.last_path, ckpt)
            self.kept_step = step
            if best:
                save_checkpoint(self.best_path, ckpt)
        except WriteError as err:
            raise self.fault(err, step) from None

    def write_config(self, text: str) -> None:
        self.written = True  # the run's first write: from here on the directory is its own
        write_text_atomic(self.out / "config.toml", text, "run config")

    def fault(self, err: WriteError, step: int) -> GcnnError:
        """A write failed after update `step`: one line saying why, what is kept and how to go
        on. A full disk exits with its own status (75) so that a job script can retry after
        freeing space."""
        if self.kept_step is None:
            kept = "no checkpoint was saved yet"
        else:
            kept = f"{self.last_path} (update {self.kept_step}) is intact"
        where = f"training stopped after update {step}; {kept}"
        resume = f"continue with --resume --out {self.out}"
        if err.disk_full:
            free = free_bytes(self.out)
            figures = f" ({mb(free)} free, a checkpoint takes about {mb(self.ckpt_bytes)})"
            return GcnnError(
                f"cannot write {err.what} {err.path}: {err.cause}{'' if free is None else figures}"
                f"; {where}; free some space, then {resume}",
                EXIT_DISK_FULL,
            )
        return GcnnError(
            f"cannot write {err.what} {err.path}: {err.cause}; {where}; make {self.out} writable "
            f"again and {resume} (a copy of it on another disk resumes too)"
        )


class MetricsLog:
    """metrics.jsonl, one JSON object per line; on resume, lines past the checkpoint are dropped
    (the killed session logged updates that the resumed one is about to redo, or a line a full
    disk cut short). `fault` turns a failed write into the run's error."""

    def __init__(self, path: Path, resume_step: int, fault=None):
        self.path = path
        self.fault = fault
        if path.exists():
            kept = []
            if resume_step > 0:
                for line in path.read_text(encoding="utf-8").splitlines():
                    try:
                        if json.loads(line)["step"] <= resume_step:
                            kept.append(line)
                    except (ValueError, KeyError, TypeError):
                        continue  # a line cut short by the kill
            write_text_atomic(path, "".join(line + "\n" for line in kept), "metrics log")
        with writing(path, "metrics log"):
            self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def write(self, row: dict) -> None:
        try:
            with writing(self.path, "metrics log"):
                self.file.write(json.dumps(row) + "\n")
                self.file.flush()
        except WriteError as err:
            with contextlib.suppress(OSError):
                self.file.close()  # the unwritten rest of the line is dropped with it
            raise (self.fault(err) if self.fault else err) from None

    def close(self) -> None:
        self.fault = None  # the trainer's callback: drop the reference cycle with it
        with writing(self.path, "metrics log"):
            self.file.close()
