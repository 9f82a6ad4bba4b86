"""resolve_device: a --device name checked against this machine (GcnnError when it cannot run)."""

from __future__ import annotations

import torch

from gcnn.errors import GcnnError


def resolve_device(name: str, flag: str = "--device") -> str:
    """`name` ("cpu", "cuda", "cuda:N" or "auto") as a device this machine has.

    "auto" is the first GPU if there is one, else the CPU. A GPU that is not there fails here, in
    one line, rather than deep inside the first tensor copy.
    """
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise GcnnError(f"{flag} {name}: not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise GcnnError(f"{flag} {name}: no CUDA device is available; use {flag} cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise GcnnError(f"{flag} {name}: only {torch.cuda.device_count()} GPU(s) here")
    return name
