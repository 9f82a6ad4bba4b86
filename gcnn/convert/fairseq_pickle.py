"""Read a fairseq checkpoint as data: tensors and plain containers, never pickled code.

fairseq `.pt` files are pickles from the internet. torch's weights-only unpickler builds tensors,
numbers, strings, lists, dicts and OrderedDicts, and refuses every other name the pickle mentions
before anything is called. Two kinds of name are let through on top of that, neither able to run
code:

- `argparse.Namespace`, the `args` of 2017-2019 checkpoints (and the `cfg["model"]` of later
  ones for argparse-era models such as fconv_lm): a bag of attributes, rebuilt as one;
- objects this project never reads (fairseq's training meters in `extra_state`, numpy scalars or
  dtypes in optimizer history, omegaconf nodes): every name under `fairseq.`, `numpy.` or
  `omegaconf.` becomes `Inert`, a placeholder that accepts any arguments and state and keeps none.

Any other name (`os.system`, `builtins.eval`, `subprocess.Popen`, ...) makes torch refuse the whole
file, and `read_fairseq_checkpoint` says so in one line: nothing in the file has run.
"""

from __future__ import annotations

import argparse
import io
import pickle
import pickletools
import zipfile
from pathlib import Path

import torch

from gcnn.errors import GcnnError

# Names under these prefixes are replaced by Inert (never imported, never called).
INERT_PREFIXES = ("fairseq.", "numpy.", "omegaconf.")


class Inert:
    """A stand-in for an object the converter does not need: takes anything, keeps nothing."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __repr__(self) -> str:
        return f"<placeholder for {type(self).__qualname__}>"


def _placeholder(full_name: str) -> type:
    # one subclass per name, so an error can say which object a placeholder stands for
    return type(full_name, (Inert,), {"__module__": __name__})


def pickle_globals(path: Path) -> list[str]:
    """Every `module.name` the checkpoint's main pickle mentions, read without unpickling."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if len(names) != 1:
                raise GcnnError(f"{path} is a zip archive but not a torch checkpoint (no data.pkl)")
            return _globals_in(io.BytesIO(archive.read(names[0])))
    # torch's legacy format (torch < 1.6, most published fairseq models): a pickled magic number,
    # protocol version and system info, then the object itself, then the tensor data
    with open(path, "rb") as f:
        for _ in range(3):
            _globals_in(f)
        return _globals_in(f)


def _globals_in(stream) -> list[str]:
    """The GLOBAL / STACK_GLOBAL names of one pickle, leaving `stream` just after its STOP."""
    names: list[str] = []
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(stream):
            if op.name == "GLOBAL":
                module, _, name = str(arg).partition(" ")
                names.append(f"{module}.{name}")
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except (ValueError, EOFError, pickle.UnpicklingError) as err:
        raise GcnnError(f"not a readable torch checkpoint ({err})") from None
    return names


def read_fairseq_checkpoint(path: str | Path) -> dict:
    """The checkpoint's top-level dict, built from data only; GcnnError (one line) otherwise."""
    path = Path(path)
    if not path.is_file():
        raise GcnnError(f"fairseq checkpoint {path} does not exist; pass the path of its .pt file")
    if not hasattr(torch.serialization, "safe_globals"):
        raise GcnnError("reading fairseq checkpoints safely needs torch >= 2.6; upgrade torch")
    try:
        names = pickle_globals(path)
    except GcnnError as err:
        raise GcnnError(f"{path}: {err}") from None
    allowed: list = [argparse.Namespace]
    allowed += [(_placeholder(n), n) for n in sorted(set(names)) if n.startswith(INERT_PREFIXES)]
    try:
        with torch.serialization.safe_globals(allowed):
            # read into memory, not mmap'ed: a file rewritten in place while its tensors are
            # mapped would kill the process with SIGBUS
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = " ".join(str(err).split())
        found = _named_global(text)
        what = f"names {found}, which is not data" if found else f"is not data ({text[:120]})"
        raise GcnnError(
            f"refusing {path}: its pickle {what}; nothing in it was run. Only tensors, plain "
            "containers, argparse.Namespace and fairseq's own objects (skipped) are read"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, MemoryError, zipfile.BadZipFile) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise GcnnError(f"{path} is not a readable torch checkpoint ({first})") from None
    if not isinstance(ckpt, dict):
        raise GcnnError(
            f"{path} holds a {type(ckpt).__name__}, not a fairseq checkpoint (a dict with 'model')"
        )
    return ckpt


def _named_global(text: str) -> str | None:
    """The `module.name` torch's refusal mentions, if it mentions one."""
    for marker in (
        "GLOBAL ",
        "unrecognized function ",
        "allowlisted via `add_safe_globals` but got ",
    ):
        if marker in text:
            return text.split(marker, 1)[1].split(" ")[0].rstrip(".,")
    return None
