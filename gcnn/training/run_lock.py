"""One writer per run directory: an OS file lock held for the life of a run.

The lock is `flock` on RUN_DIR/.gcnn-run.lock. The kernel releases it when the process ends,
however it ends (SIGKILL, a crash, a lost node), so a killed run never leaves a stale lock: the
next run takes it at once. While it is held the file names its holder (process, host, start,
command) for the refusal of a second writer; on release the file is emptied, and it stays as
the mark that the directory is a gcnn run directory.

Without `fcntl` (Windows) or on a file system that refuses locks, runs go on unlocked.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from gcnn.errors import GcnnError, writing

LOCK_NAME = ".gcnn-run.lock"


@dataclass
class Holder:
    """Who holds a run directory's lock (written into the lock file while it is held)."""

    pid: int
    host: str
    started: str  # local time, seconds
    command: str

    @classmethod
    def this_process(cls) -> Holder:
        started = datetime.datetime.now().isoformat(sep=" ", timespec="seconds")
        command = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
        return cls(os.getpid(), socket.gethostname(), started, command)

    def describe(self) -> str:
        return f"{self.command} (process {self.pid} on {self.host}, since {self.started})"


def _read_holder(fd: int) -> Holder | None:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8")
        return Holder(**json.loads(text))
    except (OSError, ValueError, TypeError):
        return None  # written but not yet filled in, or by another version


class RunLock:
    """The lock of one run directory; `acquire` refuses a directory another process holds."""

    def __init__(self, directory: Path):
        self.path = directory / LOCK_NAME
        self.fd: int | None = None
        self.created = False  # this run created the lock file (so it may remove it)

    @property
    def held(self) -> bool:
        return self.fd is not None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:
            return
        # The file can be removed between our open and our lock (a refused run cleaning up the
        # directory it created): then the lock is on a file nobody else can see, so try again.
        for _ in range(10):
            with writing(self.path, "run lock", "choose another --out or make it writable"):
                self.path.parent.mkdir(parents=True, exist_ok=True)
                created = not self.path.exists()
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                holder = _read_holder(fd)
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    who = holder.describe() if holder else "another process"
                    raise GcnnError(
                        f"run directory {self.path.parent} is in use by {who}; wait for it to "
                        "end (or stop it), or choose another --out"
                    ) from None
                print(f"warning: cannot lock {self.path} ({err.strerror}); going on without a "
                      "lock: make sure no other run writes there", file=sys.stderr)  # fmt: skip
                return
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd, self.created = fd, created
                self._write(json.dumps(asdict(Holder.this_process())))
                return
            os.close(fd)
        raise GcnnError(f"cannot lock {self.path}: it keeps being replaced; try again")

    def _write(self, text: str) -> None:
        with contextlib.suppress(OSError):  # the name is for messages only
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, text.encode("utf-8"), 0)

    def release(self, remove: bool = False) -> None:
        """Let go of the lock; `remove` deletes the lock file too (a refused run leaves the
        directory as it found it)."""
        if self.fd is None:
            return
        if remove:
            with contextlib.suppress(OSError):
                self.path.unlink()
        else:
            self._write("")
        os.close(self.fd)  # closing releases the flock
        self.fd = None
