"""The one exception type that means "the user (or the machine) did something wrong".

Everything the user can cause (a missing file, a bad flag value, a corrupt checkpoint) raises
`GcnnError` with a message that names the culprit and says what to do. So do faults of the
environment around a write (a full disk, a read-only directory, missing permissions), through
`WriteError`. The command-line entry points catch it, print ``error: <message>`` on one line and
exit with its status (2 unless it says otherwise); every other exception is a bug in gcnn and is
allowed to show its traceback.

Exit statuses of every gcnn command:
    0    done
    2    a user error or a failed write: one ``error:`` line on stderr
    75   training stopped on a full disk; checkpoint_last.pt is intact, free space and --resume
         (EX_TEMPFAIL of sysexits.h: "try again later")
    141  the reader of the output went away (``| head``): stopped quietly, like a Unix tool
         killed by SIGPIPE (128 + 13)
    128 + N  stopped by signal N (130 Ctrl-C, 143 SIGTERM): training after saving, anything
         else at once with its temporary files removed; one line says what was kept
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
import typing
from collections.abc import Callable
from pathlib import Path

EXIT_ERROR = 2
EXIT_DISK_FULL = 75
EXIT_BROKEN_PIPE = 141


class GcnnError(Exception):
    """A user-facing error: the message is printed on one line, without a traceback."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR):
        super().__init__(message)
        self.exit_code = exit_code


# errno -> (the cause in plain words, what to do about it)
_SPACE = "free some space or choose a directory on another disk"
_CAUSES = {
    errno.ENOSPC: ("no space left on device", _SPACE),
    errno.EDQUOT: ("disk quota exceeded", _SPACE),
    errno.EROFS: ("read-only file system", "choose a directory on a writable file system"),
    errno.EACCES: ("permission denied", "fix its permissions or choose a writable directory"),
    errno.EPERM: ("operation not permitted", "fix its permissions or choose a writable directory"),
}


def plain_cause(err: OSError) -> tuple[str, str]:
    """(what went wrong in plain words, what to do) for an OSError raised by a write."""
    if err.errno in _CAUSES:
        return _CAUSES[err.errno]
    cause = (err.strerror or str(err) or type(err).__name__).lower()
    return cause, "check the path and try again"


class WriteError(GcnnError):
    """Writing `path` failed for a reason outside gcnn (full disk, read-only, permissions).

    The message names the file, the cause in plain words and what to do; `errno` and `path`
    stay available for callers that add context (the trainer says which checkpoint is kept).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        err: OSError,
        what: str = "file",
        hint: str | None = None,
        exit_code: int = EXIT_ERROR,
    ):
        self.path = Path(path)
        self.errno = err.errno
        self.what = what
        self.cause, self.advice = plain_cause(err)
        message = f"cannot write {what} {path}: {self.cause}; {hint or self.advice}"
        super().__init__(message, exit_code)

    @property
    def disk_full(self) -> bool:
        return self.errno in (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def writing(path: str | os.PathLike, what: str = "file", hint: str | None = None):
    """Turn an OSError raised inside the block into a one-line WriteError about `path`."""
    try:
        yield
    except BrokenPipeError:
        raise  # a closed pipe is not a file fault: run_cli stops quietly on it
    except OSError as err:
        raise WriteError(path, err, what, hint) from None


def run_cli(main: Callable[[], int | None]) -> int:
    """Run a command-line `main`: GcnnError, Ctrl-C and a closed pipe end in one line at most."""
    from gcnn import signals

    try:
        with signals.raising():
            code = int(main() or 0)
            # Flush here: a reader that went away must show up inside this try, not in the
            # interpreter's own flush at exit ("Exception ignored ... BrokenPipeError").
            if sys.stdout is not None:
                sys.stdout.flush()
        return code
    except signals.Stopped as stop:
        _say(f"stopped by {stop.name}" + (f"; {stop.kept}" if stop.kept else ""))
        return 128 + stop.signum
    except GcnnError as err:
        _say(f"error: {' '.join(str(err).split())}")
        return err.exit_code
    except BrokenPipeError:
        # `... | head`: the reader has what it wanted. Stop quietly as Unix tools do, and point
        # stdout at /dev/null so the interpreter's final flush of what is left cannot fail again.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        _say("interrupted")
        return 130


def _say(line: str) -> None:
    with contextlib.suppress(BrokenPipeError):  # stderr may be the closed pipe (`2>&1 | head`)
        print(line, file=sys.stderr)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes are one `error:` line and exit status 2 (GcnnError + run_cli),
    not a usage dump."""

    def error(self, message: str) -> typing.NoReturn:
        raise GcnnError(f"{message} (see `{self.prog} --help`)")
