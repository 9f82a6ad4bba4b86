"""Shared fixtures: small synthetic corpora, and the real WikiText where $GCNN_DATA points to it."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny test models run fastest on one thread: no OpenMP barriers, no fight for 2 cores.

    Reset around every test, since CLI code under test may change the thread count.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _wikitext(name: str) -> Path:
    root = os.environ.get("GCNN_DATA")
    if not root or not (Path(root) / name).is_dir():
        pytest.skip(f"{name} not available (set GCNN_DATA to a directory holding {name}/)")
    return Path(root) / name


@pytest.fixture
def wikitext2_dir() -> Path:
    return _wikitext("wikitext-2")


@pytest.fixture
def wikitext103_dir() -> Path:
    return _wikitext("wikitext-103")


def write_synthetic_corpus(directory: Path, lines: int = 200, seed: int = 0) -> Path:
    """A Zipf-ish toy corpus in the plain {train,valid,test}.txt layout (valid/test smaller)."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(60)]
    weights = [1.0 / (i + 1) for i in range(len(words))]
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (
        ("train", lines),
        ("valid", max(lines // 10, 5)),
        ("test", max(lines // 10, 5)),
    ):
        with open(directory / f"{split}.txt", "w", encoding="utf-8") as f:
            for _ in range(n):
                length = rng.randint(0, 12)
                f.write(" ".join(rng.choices(words, weights, k=length)) + "\n")
    return directory


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    return write_synthetic_corpus(tmp_path / "tiny")
