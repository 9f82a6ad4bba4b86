"""pyplot(): matplotlib's pyplot drawing to files (Agg), or a GcnnError saying how to install it."""

from __future__ import annotations

from gcnn.errors import GcnnError

INSTALL = "pip install -e '.[plot]'"


def pyplot(purpose: str = "plotting"):
    """matplotlib.pyplot, drawing to files only (Agg: no display needed on a server).

    matplotlib is an optional extra; `purpose` (e.g. "--plot out.png") names what needed it in
    the error. Call it before long work, so a missing extra fails first, not last.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise GcnnError(f"{purpose}: matplotlib is not installed; {INSTALL}") from None
    return plt
