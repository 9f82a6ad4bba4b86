"""SIGINT and SIGTERM: stop training after the current update; hold them while a file is written.

Both uses route the two signals to a Python handler for a while and then put the previous
handlers back, so both go through `routed`. Python runs signal handlers in the main thread only:
a handler installed there covers signals delivered to any thread (blocking them with
pthread_sigmask would not: torch's worker threads would still take them). Elsewhere nothing is
installed.
"""

from __future__ import annotations

import contextlib
import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def routed(handler):
    """Send SIGINT and SIGTERM to `handler(signum, frame)` inside the block, then restore the
    previous handlers. A handler set outside Python (getsignal() is None) is left alone: it
    could not be put back."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            if signal.getsignal(sig) is not None:
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
