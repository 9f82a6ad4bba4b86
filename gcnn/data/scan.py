"""The word-level build's one pass over a text: words numbered in first-seen order while
reading, a big file's two halves scanned by two processes at once, the numberings merged.

Used by gcnn.data.prepare; a module of its own because the worker process, its signals and its
errors are a concern of their own.
"""

from __future__ import annotations

import multiprocessing
import signal
import sys
from pathlib import Path

import numpy as np

from gcnn.data.corpus import line_aligned_ranges, read_chunks
from gcnn.data.tokenizer import split_words
from gcnn.errors import GcnnError
from gcnn.signals import STOP_SIGNALS

PARALLEL_BYTES = 64 << 20  # files at least this big are scanned by two processes


def progress_bar(enabled: bool, path: Path, split: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(
        desc=f"{split} ({path.name})", unit="B", unit_scale=True, leave=False, file=sys.stderr
    )


class _FirstSeen(dict):
    """word -> provisional id in order of first appearance (assigned on a miss, in C-speed map)."""

    def __missing__(self, word: str) -> int:
        i = self[word] = len(self)
        return i


def renumber(ids: np.ndarray, remap: np.ndarray, step: int = 1 << 22) -> np.ndarray:
    """ids[i] = remap[ids[i]] in place, a slice at a time. (`remap[ids]` builds a second
    stream, and np.take(..., out=ids) a 64-bit copy of the indices plus a buffer: 3x the
    stream's size at once on a 100M-token corpus.)"""
    for i in range(0, len(ids), step):
        ids[i : i + step] = remap[ids[i : i + step]]
    return ids


def count_ids(ids: np.ndarray, size: int, step: int = 1 << 22) -> np.ndarray:
    """np.bincount a slice at a time (on int32 ids it makes a 64-bit copy of all of them)."""
    counts = np.zeros(size, dtype=np.int64)
    for i in range(0, len(ids), step):
        counts += np.bincount(ids[i : i + step], minlength=size)
    return counts


def _scan(path: Path, start: int = 0, end: int | None = None, progress=None):
    """Number the words of a byte range in first-seen order: (words, id chunks, lines).

    Runs in a worker process for the second half of a big file, so it returns plain data. The
    ids stay in per-chunk arrays: joining them here and again in the caller would hold the
    stream twice over (memory, not time, is what a 100M-token corpus runs short of).
    """
    first, parts, lines = _FirstSeen(), [], 0
    for text in read_chunks(path, progress=progress, start=start, end=end, cut_long_lines=True):
        lines += text.count("\n")  # a long line comes in pieces cut at spaces (bounded memory)
        words = split_words(text)
        parts.append(np.fromiter(map(first.__getitem__, words), dtype=np.int32, count=len(words)))
    return list(first), parts, lines


def _scan_in_worker(conn, path: Path, start: int, end: int) -> None:
    """`_scan` of a byte range in a forked process; the result (or the error) goes back
    through `conn`. Signals take their default action here: the parent decides what stops."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked by the parent for the fork
    try:
        conn.send((True, _scan(path, start, end)))
    except Exception as err:  # a GcnnError (bad UTF-8 in this half, say) crosses as it is
        conn.send((False, err))
    finally:
        conn.close()


def _scan_halves(path: Path, ranges, bar) -> list:
    """The first range scanned here, the second by a forked worker at the same time. A signal
    or an error here ends the worker at once (no waiting for its half of the file)."""
    context = multiprocessing.get_context("fork")  # the worker needs no torch, only numpy
    receive, send = context.Pipe(duplex=False)
    worker = context.Process(target=_scan_in_worker, args=(send, path, *ranges[1]), daemon=True)
    # the stop signals wait until the worker has its own handlers: one arriving in between would
    # run this process's handler in the worker (a traceback on stderr instead of a quiet end)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        worker.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    send.close()
    try:
        first = _scan(path, *ranges[0], progress=bar)
        try:
            ok, second = receive.recv()
        except EOFError:
            raise GcnnError(
                f"the process scanning the second half of {path} ended without a result "
                f"(exit status {worker.exitcode}); out of memory? try again"
            ) from None
        if not ok:
            raise second
        return [first, second]
    finally:
        if worker.is_alive():
            worker.terminate()
        worker.join()
        receive.close()


def scan_split(path: Path, split: str, progress: bool, vocab: dict) -> tuple[np.ndarray, dict]:
    """Ids of a whole split in `vocab`'s numbering (words are added to `vocab` as met).

    A big plain file is scanned by two processes, one per half, because this is the slow
    part of building a WikiText-103-sized cache (a dict lookup per word, ~100M words) and the
    machines this targets have two or more cores. The halves' numberings are merged after.
    """
    parallel = (
        path.suffix not in (".xz", ".gz", ".bz2")
        and path.stat().st_size >= PARALLEL_BYTES
        and "fork" in multiprocessing.get_all_start_methods()
    )
    ranges = line_aligned_ranges(path, 2) if parallel else [(0, None)]
    bar = progress_bar(progress, path, split)
    try:
        if len(ranges) == 1:
            results = [_scan(path, progress=bar)]
        else:
            results = _scan_halves(path, ranges, bar)
    finally:
        if bar is not None:
            bar.close()
    parts, lines = [], 0
    for words, chunks, n in results:
        remap = np.fromiter(
            (vocab.setdefault(w, len(vocab)) for w in words), dtype=np.int32, count=len(words)
        )
        for chunk in chunks:
            renumber(chunk, remap)
        parts.extend(chunks)
        lines += n
    del results
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    del parts
    if len(ids) == 0:
        raise GcnnError(f"split {split!r} ({path}) is empty; give it at least one line of text")
    return ids, {"lines": lines, "words": len(ids)}


