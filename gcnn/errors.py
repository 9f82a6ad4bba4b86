"""The one exception type that means "the user did something wrong".

Everything the user can cause (a missing file, a bad flag value, a corrupt checkpoint) raises
`GcnnError` with a message that names the culprit and says what to do. The command-line entry
points catch it, print ``error: <message>`` on one line and exit with status 2; every other
exception is a bug in gcnn and is allowed to show its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class GcnnError(Exception):
    """A user-facing error: the message is printed on one line, without a traceback."""


def run_cli(main: Callable[[], int | None]) -> int:
    """Run a command-line `main`, turning GcnnError and Ctrl-C into a one-line message."""
    try:
        return int(main() or 0)
    except GcnnError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
