"""The token cache: one directory per (corpus, tokenizer settings), trusted only when complete.

Layout of an entry::

    <cache dir>/<kind>-<settings hash>/
        train.npy valid.npy test.npy   int32 token ids, opened with np.load(mmap_mode="r")
        tokenizer.pt                   tokenizer.state_dict(), loadable with weights_only=True
        meta.json                      written last: format, settings, source checksums, stats

An entry is built in a hidden temporary directory and renamed into place, and meta.json is the
last file written into it, so a crash at any point leaves either the old entry, no entry, or a
directory without meta.json: none of them is ever taken for a complete cache. An entry is reused
while every source file has the same size and modification time (fast path) or, failing that,
the same sha256; anything else (a changed file, a new split, another format version) rebuilds it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import torch

FORMAT_VERSION = 1
META = "meta.json"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb"):
    """Write `path` via a temporary sibling, flushed and fsynced, then os.replace'd into place.

    Readers see the old file or the complete new one, never a half-written file.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    encoding = None if "b" in mode else "utf-8"
    f = open(tmp, mode, encoding=encoding)  # noqa: SIM115 (closed below, before the rename)
    try:
        yield f
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, path)
    except BaseException:
        # On a full disk close() fails too, flushing what is still buffered; the file is closed
        # all the same, and the temporary file must go whatever the error.
        with contextlib.suppress(OSError):
            f.close()
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)  # make the rename itself durable


class _WriteWatcher:
    """A file wrapper that remembers the OSError of a failed write (see `torch_save`)."""

    def __init__(self, f):
        self.f = f
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.f.flush()


def torch_save(obj, f) -> None:
    """torch.save(obj, f) into an open binary file; a failed write raises its own OSError.

    On a full disk torch's zip writer reports only "RuntimeError: [enforce fail at
    inline_container.cc] unexpected pos ..."; this raises the "No space left on device" OSError
    behind it instead, so callers can say what happened.
    """
    watched = _WriteWatcher(f)
    try:
        torch.save(obj, watched)
    except RuntimeError:
        if watched.error is not None:
            raise watched.error from None
        raise


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive advisory lock on `path` (created if needed) for the duration of the block.

    Best effort: without fcntl (Windows) or a writable directory, no lock is taken; the atomic
    renames that every writer uses still keep the files consistent, only work may be repeated.
    """
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+b")  # noqa: SIM115 (closed below)
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        handle.close()  # closing releases the lock


def is_writable_dir(path: Path) -> bool:
    """Writable by mode bits too: root passes os.access everywhere, but a read-only shared
    data directory (mode r-x) must not be written into even by root."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return os.access(path, os.W_OK) and bool(mode & stat.S_IWUSR)


def default_cache_dir(corpus_dir: Path) -> Path:
    """$GCNN_CACHE/<name>-<hash> if set; else <corpus>/.gcnn-cache if writable; else
    ~/.cache/gcnn/<name>-<hash> (the hash of the corpus's absolute path keeps corpora apart)."""
    corpus_dir = Path(corpus_dir).resolve()
    tag = f"{corpus_dir.name}-{hashlib.sha256(str(corpus_dir).encode()).hexdigest()[:12]}"
    if os.environ.get("GCNN_CACHE"):
        return Path(os.environ["GCNN_CACHE"]).expanduser() / tag
    if is_writable_dir(corpus_dir):
        return corpus_dir / ".gcnn-cache"
    return Path.home() / ".cache" / "gcnn" / tag


def settings_key(settings: dict) -> str:
    blob = json.dumps({"format": FORMAT_VERSION, **settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def describe_sources(files: dict[str, Path], checksum: bool = True) -> dict[str, dict]:
    """What a cache entry depends on: each split file's name, size, mtime and sha256."""
    out = {}
    for split, path in files.items():
        st = path.stat()
        out[split] = {"file": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        if checksum:
            out[split]["sha256"] = file_sha256(path)
    return out


def _sources_match(recorded: dict, files: dict[str, Path]) -> bool:
    if set(recorded) != set(files):
        return False
    for split, path in files.items():
        rec = recorded[split]
        st = path.stat()
        if rec.get("file") != path.name or rec.get("size") != st.st_size:
            return False
        if rec.get("mtime_ns") != st.st_mtime_ns and rec.get("sha256") != file_sha256(path):
            return False  # touched and changed; a touched but identical file is still fine
    return True


class CacheEntry:
    """One cache entry directory (see the module docstring)."""

    def __init__(self, cache_dir: Path, kind: str, settings: dict):
        self.cache_dir = Path(cache_dir)
        self.settings = {"format": FORMAT_VERSION, **settings}
        self.path = self.cache_dir / f"{kind}-{settings_key(settings)}"

    def lock(self):
        """Hold an exclusive lock on this entry while checking and (re)building it."""
        return file_lock(self.cache_dir / f".{self.path.name}.lock")

    def load(self, files: dict[str, Path]):
        """(meta, tokenizer state, {split: memmap}) if the entry is complete and current, else None.

        Anything unexpected (missing or garbled files, truncated arrays) means "not cached":
        the caller rebuilds, which is always safe.
        """
        try:
            meta = json.loads((self.path / META).read_text(encoding="utf-8"))
            if meta.get("format") != FORMAT_VERSION or meta.get("settings") != self.settings:
                return None
            if not _sources_match(meta["sources"], files):
                return None
            arrays = {}
            for split, info in meta["arrays"].items():
                arr = np.load(self.path / f"{split}.npy", mmap_mode="r", allow_pickle=False)
                if arr.dtype != np.int32 or arr.shape != (info["tokens"],):
                    return None
                arrays[split] = arr
            state = torch.load(self.path / "tokenizer.pt", weights_only=True)
            return meta, state, arrays
        except (OSError, ValueError, KeyError, TypeError, EOFError, RuntimeError):
            return None
        except Exception:  # e.g. unpickling errors from a garbled tokenizer.pt
            return None

    def save(self, sources: dict, tokenizer_state: dict, arrays: dict, meta: dict) -> None:
        """Write a fresh entry next to the old one, then swap it in.

        `sources` is describe_sources() taken *before* reading the files, so a file edited
        during the build does not match the entry afterwards.
        """
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_dir / f".{self.path.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            for split, ids in arrays.items():
                with open(tmp / f"{split}.npy", "wb") as f:
                    np.save(f, np.ascontiguousarray(ids, dtype=np.int32))
                    f.flush()
                    os.fsync(f.fileno())
            with open(tmp / "tokenizer.pt", "wb") as f:
                torch_save(tokenizer_state, f)
                f.flush()
                os.fsync(f.fileno())
            meta = {
                "format": FORMAT_VERSION,
                "settings": self.settings,
                "sources": sources,
                "arrays": {split: {"tokens": int(len(ids))} for split, ids in arrays.items()},
                **meta,
            }
            with open(tmp / META, "w", encoding="utf-8") as f:  # last: marks the entry complete
                json.dump(meta, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            _fsync_dir(tmp)
            old = self.cache_dir / f".{self.path.name}.old-{os.getpid()}"
            if self.path.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(self.path, old)
            try:
                os.replace(tmp, self.path)
            except OSError:
                if not self.path.exists():  # not a race with another writer: a real failure
                    raise
                # Another process without the lock (e.g. no fcntl) put its entry there first:
                # both were built from the same sources, so keep theirs.
            _fsync_dir(self.cache_dir)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
