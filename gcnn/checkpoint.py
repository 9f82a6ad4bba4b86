"""Checkpoints: one plain dict that `torch.load(weights_only=True)` can read back.

A checkpoint holds everything needed to evaluate a model (its config, weights and tokenizer) and
everything needed to continue training to the exact step (optimizer, scheduler, data position and
RNG states). Only tensors and plain Python types go in, so loading never runs pickled code: a
checkpoint downloaded from someone else is as safe to open as a .npy file.

    {"format": "gcnn", "version": 1, "model_config": dict, "model": state_dict,
     "tokenizer": dict, "vocab_fingerprint": str, "train_config": dict, "optimizer": dict,
     "scheduler": dict, "step": int, "epoch": int, "data_position": dict, "rng": dict,
     "metrics": dict}
"""

from __future__ import annotations

import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gcnn import signals
from gcnn.data.cache import atomic_write, torch_save
from gcnn.errors import GcnnError, writing

FORMAT = "gcnn"
VERSION = 1
# The keys `load_model` needs; training adds the rest.
REQUIRED_KEYS = ("format", "version", "model_config", "model", "tokenizer", "vocab_fingerprint")


def model_checkpoint(model: torch.nn.Module, tokenizer, **extra: Any) -> dict:
    """The checkpoint dict of a model and its tokenizer: everything `load_model` needs.

    Training adds its own keys (optimizer, step, data position, ...) through `extra`; a model
    built and trained outside train.py can be saved this way and used by evaluate.py.
    """
    return {
        "format": FORMAT,
        "version": VERSION,
        "model_config": model.config_dict(),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "tokenizer": tokenizer.state_dict(),
        "vocab_fingerprint": tokenizer.fingerprint(),
        **extra,
    }


def save_checkpoint(path: str | Path, ckpt: dict) -> None:
    """Write `ckpt` to `path` atomically: readers see the old file or the new one, never half.

    A full disk, a read-only directory or missing permissions raise WriteError (one line, the
    old file intact, no temporary file left). SIGINT/SIGTERM arriving meanwhile are held until
    the file is complete.
    """
    path = Path(path)
    with writing(path, "checkpoint"), signals.deferred():
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "wb") as f:
            torch_save(ckpt, f)


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """Read a checkpoint written by `save_checkpoint`; GcnnError if missing, corrupt or foreign."""
    path = Path(path)
    if not path.is_file():
        raise GcnnError(f"checkpoint {path} does not exist; pass the path of a .pt file")
    # torch.save writes a zip archive; anything else is a truncated or foreign file.
    if not zipfile.is_zipfile(path):
        raise GcnnError(
            f"checkpoint {path} is corrupt or truncated (not a torch zip archive); "
            "use another checkpoint (e.g. checkpoint_best.pt) or retrain"
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # weights_only refuses anything but tensors and plain types: this file holds pickled code.
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        what = found.group(1) if found else "a non-plain object"
        raise GcnnError(
            f"checkpoint {path} contains pickled Python objects ({what}); gcnn loads only "
            "tensors and plain types, re-save it with gcnn"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise GcnnError(
            f"checkpoint {path} is corrupt or truncated ({type(err).__name__}); "
            "use another checkpoint (e.g. checkpoint_best.pt) or retrain"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise GcnnError(f"{path} is not a gcnn checkpoint (no 'format': 'gcnn' entry)")
    if ckpt.get("version") != VERSION:
        raise GcnnError(
            f"checkpoint {path} has format version {ckpt.get('version')!r}, this gcnn reads "
            f"version {VERSION}; use a matching gcnn release"
        )
    missing = [key for key in REQUIRED_KEYS if key not in ckpt]
    if missing:
        raise GcnnError(f"checkpoint {path} lacks {', '.join(missing)}; it is incomplete")
    return ckpt


def load_model(path: str | Path, device: str | torch.device = "cpu", inference: bool = False):
    """(model in eval mode on `device`, tokenizer, checkpoint dict) from a checkpoint file.

    inference=True folds weight normalisation into plain weights (the same function, but each
    w = g·v/‖v‖ is computed once here instead of on every forward call): for scoring and
    sampling. Leave it False to keep training the model (its parameters are then g and v).
    """
    # Imported here so that `gcnn.checkpoint` stays importable while only reading files.
    from gcnn.data import tokenizer_from_state
    from gcnn.models import model_from_config
    from gcnn.models.bounds import check_weights

    ckpt = load_checkpoint(path)
    # The config is checked against the tensors on the meta device first: a small file whose
    # config claims a huge vocabulary must not cost gigabytes before it is refused.
    check_weights(ckpt["model_config"], ckpt["model"], f"checkpoint {path}")
    try:
        model = model_from_config(ckpt["model_config"])
        model.load_state_dict(ckpt["model"])
    except GcnnError:
        raise
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise GcnnError(
            f"checkpoint {path}: weights do not match its model config ({first})"
        ) from None
    tokenizer = tokenizer_from_state(ckpt["tokenizer"])
    if tokenizer.fingerprint() != ckpt["vocab_fingerprint"]:
        raise GcnnError(f"checkpoint {path}: tokenizer does not match its vocabulary fingerprint")
    if inference:
        model.remove_weight_norm()
    model.to(device).eval()
    return model, tokenizer, ckpt


# --- RNG states as tensors and plain types ------------------------------------------------------
# torch.load(weights_only=True) refuses numpy arrays and tuples of odd types, so the states of
# Python's and numpy's generators are converted to lists / tensors and back.


def rng_state() -> dict:
    """The state of every random generator training touches (dropout, shuffling, sampling)."""
    py_version, py_internal, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
        "numpy": {
            "kind": np_kind,
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` captured (CUDA states only when CUDA is present)."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = list(state["cuda"])
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
