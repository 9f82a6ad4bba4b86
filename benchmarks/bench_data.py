"""Tokenizing + caching speed on a WikiText-103-sized corpus, and cached load time.

The corpus is WikiText-2's train split repeated (default 50 times = 540 MB of uncompressed
text, the size of WikiText-103's train split), written to a temporary directory together with
the real valid/test splits. Prints seconds and MB/s for the build and for loading the cache.

    python benchmarks/bench_data.py              # the full 540 MB
    python benchmarks/bench_data.py --repeat 2   # a quick smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path

from gcnn.data import find_split_files, prepare_corpus, read_chunks, resolve_corpus
from gcnn.errors import GcnnError
from gcnn.machine import run_benchmark


def build_corpus(source: Path, target: Path, repeat: int) -> int:
    """Write source's train repeated `repeat` times (plus valid/test) as plain text."""
    files = find_split_files(source)
    train = "".join(read_chunks(files["train"])).encode("utf-8")
    with open(target / "train.txt", "wb") as f:
        for _ in range(repeat):
            f.write(train)
    for split in ("valid", "test"):
        (target / f"{split}.txt").write_bytes("".join(read_chunks(files[split])).encode("utf-8"))
    return sum((target / f"{s}.txt").stat().st_size for s in ("train", "valid", "test"))


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished worker processes."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def resident_mb(pid: int | str = "self") -> float:
    """Resident memory of one process (Linux /proc), 0 if it has gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def children() -> list[str]:
    pids = []
    for task in Path("/proc/self/task").glob("*/children"):
        with contextlib.suppress(OSError):
            pids += task.read_text().split()
    return pids


class MemorySampler(threading.Thread):
    """The peak of (this process + its worker processes) resident memory, sampled every 20 ms:
    what the machine must have free, since the build's processes run at the same time."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak = 0.0
        self.done = threading.Event()

    def run(self):
        while not self.done.wait(0.02):
            total = resident_mb() + sum(resident_mb(pid) for pid in children())
            self.peak = max(self.peak, total)

    def stop(self) -> float:
        self.done.set()
        self.join()
        return self.peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="wikitext-2", help="corpus whose train is repeated")
    parser.add_argument("--repeat", type=int, default=50, help="50 x WikiText-2 train = 540 MB")
    parser.add_argument("--tokenizer", default="word", choices=["word", "sentencepiece"])
    parser.add_argument("--workdir", help="where to write the corpus (default: a temp dir)")
    args = parser.parse_args()
    if args.repeat < 1:
        raise GcnnError(f"--repeat {args.repeat}: must be at least 1")
    source = resolve_corpus(args.source)  # a missing corpus fails before any file is written

    work = Path(tempfile.mkdtemp(prefix="gcnn-bench-", dir=args.workdir))
    try:
        size = build_corpus(source, work, args.repeat)
        mb = size / 1e6
        print(f"corpus: {mb:.0f} MB of text ({args.repeat} x {args.source} train + valid/test)")
        print(f"cores : {os.cpu_count()}")

        sampler = MemorySampler()
        before = resident_mb()
        sampler.start()
        start, cpu0 = time.perf_counter(), cpu_seconds()
        corpus = prepare_corpus(work, args.tokenizer, cache_dir=work / "cache")
        build, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
        peak = sampler.stop()
        tokens = sum(s["tokens"] for s in corpus.stats.values())
        print(
            f"build : {build:7.2f} s  {mb / build:7.1f} MB/s  "
            f"{tokens / build / 1e6:6.2f} M tokens/s"
        )
        print(f"        {tokens:,} tokens, vocabulary {corpus.tokenizer.vocab_size:,}")
        # Wall time depends on what else runs on the machine; CPU time much less so.
        load_now = os.getloadavg()[0]
        print(f"        CPU {cpu:.1f} s (this process + workers), load average {load_now:.1f}")
        print(
            f"memory: peak {peak:,.0f} MB resident, this process and its workers together "
            f"({before:,.0f} MB before the build; the text is {mb:,.0f} MB); target <= 2,000 MB"
        )
        del corpus

        start = time.perf_counter()
        corpus = prepare_corpus(work, args.tokenizer, cache_dir=work / "cache")
        load = time.perf_counter() - start
        assert sum(s["tokens"] for s in corpus.stats.values()) == tokens
        print(f"load  : {load:7.3f} s  {mb / load:7.0f} MB/s (cached; memory-mapped)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(run_benchmark(main))
