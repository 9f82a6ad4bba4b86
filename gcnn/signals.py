"""SIGINT and SIGTERM: stop training after the current update; stop anything else at once, with
its cleanup; hold them while a file is written.

Every command runs inside `raising` (gcnn.errors.run_cli): a signal raises `Stopped`, which
unwinds like Ctrl-C does, so every `finally` and cleanup runs (a half-built token cache is
removed, a run directory released) and the command exits 128 + N with one line saying what was
kept. The training loop replaces that with `SignalStopper` (finish the update, save, exit);
a save holds the signals until its file is complete (`deferred`); a long C call with nothing to
clean up runs with the default action (`default_action`), which stops it at once.

All of them route the signals to a handler for a while and then put the previous handlers back,
through `routed`. Python runs signal handlers in the main thread only: a handler installed there
covers signals delivered to any thread (blocking them with pthread_sigmask would not: torch's
worker threads would still take them). Elsewhere nothing is installed.
"""

from __future__ import annotations

import contextlib
import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """A stop signal arrived outside the training loop. A KeyboardInterrupt (what Python's own
    SIGINT handler raises), so `except Exception` does not swallow it and code that already
    stops cleanly on Ctrl-C does so on SIGTERM too; `kept` says what was kept (set on the way
    out by whoever knows)."""

    def __init__(self, signum: int, kept: str = ""):
        super().__init__(signum, kept)  # the arguments let it cross a process pool (pickle)
        self.signum, self.kept = signum, kept

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


@contextlib.contextmanager
def raising():
    """Inside the block SIGINT and SIGTERM raise `Stopped` (a signal ignored when the process
    started, as under nohup, stays ignored)."""

    def handle(signum, frame):
        raise Stopped(signum)

    with routed(handle, keep_ignored=True):
        yield


@contextlib.contextmanager
def default_action():
    """The signals' default action (end the process at once) inside the block: for a long C
    call that would otherwise delay a Python handler until it returns, and leaves nothing to
    clean up."""
    with routed(signal.SIG_DFL, keep_ignored=True):
        yield


@contextlib.contextmanager
def routed(handler, keep_ignored: bool = False):
    """Send SIGINT and SIGTERM to `handler(signum, frame)` inside the block, then restore the
    previous handlers. A handler set outside Python (getsignal() is None) is left alone: it
    could not be put back; with `keep_ignored` so is an ignored signal."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            current = signal.getsignal(sig)
            if current is not None and not (keep_ignored and current == signal.SIG_IGN):
                previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def deferred():
    """Hold SIGINT and SIGTERM until the block ends, then act on them as before.

    Otherwise a SIGTERM with its default action kills the process in the middle of a write
    (leaving a temporary file and no new checkpoint), and a second Ctrl-C abandons the write it
    interrupts.
    """
    held: list[int] = []
    try:
        with routed(lambda signum, frame: held.append(signum)):
            yield
    finally:
        for sig in held:  # the previous handlers are back: they (or the default action) act now
            signal.raise_signal(sig)


class SignalStopper:
    """SIGINT/SIGTERM ask the training loop to stop after the current update (and save); a
    second Ctrl-C interrupts at once. Active inside `with SignalStopper() as stopper:`."""

    def __init__(self):
        self.signum: int | None = None
        self._routing = contextlib.ExitStack()

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def stopped_by(self) -> signal.Signals:
        """The signal that stopped training: this process's, else SIGTERM (another rank's)."""
        return signal.Signals(self.signum or signal.SIGTERM)

    def handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> SignalStopper:
        self._routing.enter_context(routed(self.handle))
        return self

    def __exit__(self, *exc) -> bool:
        return self._routing.__exit__(*exc)
