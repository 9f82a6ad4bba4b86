"""prepare_corpus: counts, vocabulary order, the cache, bad input, the real WikiText."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import gcnn.data.prepare as prepare_module
import gcnn.data.scan as scan_module
from gcnn.data import (
    BlockBatcher,
    WordTokenizer,
    atomic_write,
    find_split_files,
    prepare_corpus,
    resolve_corpus,
    tokenizer_from_state,
)
from gcnn.data.cache import is_writable_dir
from gcnn.errors import GcnnError, run_cli


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """No test may write into ~/.cache or a shared cache."""
    monkeypatch.delenv("GCNN_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def reference_counts(path: Path) -> tuple[list[str], Counter]:
    """The slow, obviously-correct tokenization: per line, split on whitespace, add <eos>."""
    tokens = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            tokens += line.split() + ["<eos>"]
    return tokens, Counter(tokens)


def assert_no_entry_left(cache: Path) -> None:
    """Neither a complete-looking entry nor a temporary one (lock files are fine)."""
    if cache.exists():
        assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []


def count_builds(monkeypatch) -> list:
    """Record every real build (cache misses) of the word tokenizer."""
    calls = []
    original = prepare_module._build_word

    def spy(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(prepare_module, "_build_word", spy)
    return calls


def test_tokens_vocabulary_and_stats_match_a_plain_reference(tiny_corpus):
    corpus = prepare_corpus(tiny_corpus)
    tok = corpus.tokenizer
    train, counts = reference_counts(tiny_corpus / "train.txt")
    # Ids sorted by descending frequency, ties by the word itself.
    expected_order = sorted(counts, key=lambda w: (-counts[w], w))
    assert tok.words[: len(expected_order)] == expected_order
    assert "<unk>" in tok.words and tok.vocab_size == len(counts) + ("<unk>" not in counts)
    assert corpus.splits["train"].dtype == np.int32
    assert [tok.words[i] for i in corpus.splits["train"]] == train
    for split in ("valid", "test"):
        words, _ = reference_counts(tiny_corpus / f"{split}.txt")
        ids = corpus.splits[split]
        expected = [w if w in tok.lookup else "<unk>" for w in words]
        assert [tok.words[i] for i in ids] == expected
        lines = (tiny_corpus / f"{split}.txt").read_text().count("\n")
        stats = corpus.stats[split]
        assert stats == {
            "tokens": len(words),
            "lines": lines,
            "unk": expected.count("<unk>"),
            "words": len(words),
        }
    assert corpus.to_json()["splits"]["train"] == {
        "tokens": len(train),
        "lines": corpus.stats["train"]["lines"],
        "unk": 0,
    }


def test_encode_decode_and_state_roundtrip(tiny_corpus, tmp_path):
    tok = prepare_corpus(tiny_corpus).tokenizer
    ids = tok.encode("w0 w1 never-seen w2")
    assert ids[-1] == tok.eos_id and ids[2] == tok.unk_id and tok.count_words("w0 w1 x w2") == 5
    assert tok.decode(ids) == "w0 w1 <unk> w2\n"
    path = tmp_path / "tok.pt"
    torch.save(tok.state_dict(), path)
    again = tokenizer_from_state(torch.load(path, weights_only=True))
    assert again.words == tok.words and again.fingerprint() == tok.fingerprint()


def test_min_count_and_max_vocab_fold_rare_words_into_unk(tiny_corpus):
    full = prepare_corpus(tiny_corpus).tokenizer
    capped = prepare_corpus(tiny_corpus, max_vocab=10)
    assert capped.tokenizer.vocab_size == 10
    assert {"<eos>", "<unk>"} <= set(capped.tokenizer.words)
    ids = np.asarray(capped.splits["train"])
    assert np.all(np.diff(np.bincount(ids, minlength=10)) <= 0), "ids must stay frequency-sorted"
    rare = prepare_corpus(tiny_corpus, min_count=5).tokenizer
    _, counts = reference_counts(tiny_corpus / "train.txt")
    assert set(rare.words) - {"<unk>"} == {w for w, c in counts.items() if c >= 5}
    assert full.vocab_size > rare.vocab_size


def test_compressed_and_wiki_named_files_give_the_same_streams(tiny_corpus, tmp_path):
    plain = prepare_corpus(tiny_corpus)
    packed = tmp_path / "packed"
    packed.mkdir()
    for split, opener, ext in (("train", lzma.open, ".xz"), ("valid", gzip.open, ".gz")):
        with opener(packed / f"wiki.{split}.tokens{ext}", "wb") as f:
            f.write((tiny_corpus / f"{split}.txt").read_bytes())
    with bz2.open(packed / "test.txt.bz2", "wb") as f:
        f.write((tiny_corpus / "test.txt").read_bytes())
    assert set(find_split_files(packed)) == {"train", "valid", "test"}
    other = prepare_corpus(packed)
    assert other.tokenizer.words == plain.tokenizer.words
    for split in ("train", "valid", "test"):
        assert np.array_equal(other.splits[split], plain.splits[split])


def test_a_last_line_without_newline_and_blank_lines_count(tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    (d / "train.txt").write_text("a b\n\n \nc", encoding="utf-8")
    corpus = prepare_corpus(d, splits=("train",))
    assert [corpus.tokenizer.words[i] for i in corpus.splits["train"]] == [
        "a", "b", "<eos>", "<eos>", "<eos>", "c", "<eos>",
    ]  # fmt: skip
    assert corpus.stats["train"]["lines"] == 4


def test_chunk_boundaries_do_not_split_words(tiny_corpus, monkeypatch):
    whole = prepare_corpus(tiny_corpus, cache_dir=tiny_corpus / "a")
    import gcnn.data.corpus as corpus_module

    monkeypatch.setattr(corpus_module, "CHUNK_BYTES", 7)  # many tiny chunks
    small = prepare_corpus(tiny_corpus, cache_dir=tiny_corpus / "b")
    for split in ("train", "valid", "test"):
        assert np.array_equal(whole.splits[split], small.splits[split])


def test_two_process_scan_matches_the_serial_one(tmp_path, monkeypatch):
    from conftest import write_synthetic_corpus

    directory = write_synthetic_corpus(tmp_path / "c", lines=3000, seed=3)
    serial = prepare_corpus(directory, cache_dir=tmp_path / "serial")
    monkeypatch.setattr(scan_module, "PARALLEL_BYTES", 1)  # every file in two halves
    parallel = prepare_corpus(directory, cache_dir=tmp_path / "parallel")
    assert parallel.tokenizer.words == serial.tokenizer.words
    assert parallel.stats == serial.stats
    for split in ("train", "valid", "test"):
        assert np.array_equal(parallel.splits[split], serial.splits[split])
    # A bad byte in the half the worker reads is still a one-line error with its offset.
    data = (directory / "train.txt").read_bytes()
    (directory / "train.txt").write_bytes(data[:-20] + b"\xff" + data[-19:])
    with pytest.raises(GcnnError, match=f"byte offset {len(data) - 20}"):
        prepare_corpus(directory, cache_dir=tmp_path / "parallel")


def test_cache_is_reused_then_invalidated_by_content_not_by_touch(tiny_corpus, monkeypatch):
    builds = count_builds(monkeypatch)
    first = prepare_corpus(tiny_corpus)
    assert first.cache_path.parent == tiny_corpus / ".gcnn-cache"
    assert isinstance(first.splits["train"], np.memmap)
    second = prepare_corpus(tiny_corpus)
    assert len(builds) == 1 and second.cache_path == first.cache_path
    assert np.array_equal(first.splits["train"], second.splits["train"])

    train = tiny_corpus / "train.txt"
    os.utime(train, ns=(1, 1))  # touched, same bytes: the sha256 check keeps the cache
    prepare_corpus(tiny_corpus)
    assert len(builds) == 1

    text = train.read_text()
    train.write_text(text.replace("w0", "w9", 1))  # same size, different content
    os.utime(train, ns=(2, 2))
    changed = prepare_corpus(tiny_corpus)
    assert len(builds) == 2
    assert not np.array_equal(changed.splits["train"], first.splits["train"])

    prepare_corpus(tiny_corpus, min_count=2)  # other settings: another entry
    assert len(builds) == 3
    prepare_corpus(tiny_corpus)
    assert len(builds) == 3


def test_concurrent_callers_build_once(tiny_corpus, monkeypatch):
    """Data-parallel ranks all call prepare_corpus: one builds, the others wait and load."""
    import threading

    builds = count_builds(monkeypatch)
    results, errors = [], []

    def rank():
        try:
            results.append(prepare_corpus(tiny_corpus, splits=None))
        except Exception as err:  # surfaced below; a thread cannot fail the test itself
            errors.append(err)

    threads = [threading.Thread(target=rank) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(builds) == 1
    assert all(np.array_equal(r.splits["train"], results[0].splits["train"]) for r in results)
    assert list(results[0].splits) == ["train", "valid", "test"]


def test_a_crash_mid_write_leaves_nothing_trusted(tiny_corpus, monkeypatch):
    builds = count_builds(monkeypatch)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # e.g. Ctrl-C while the tokenizer is being written

    with monkeypatch.context() as m:
        m.setattr(torch, "save", crash)
        with pytest.raises(KeyboardInterrupt):
            prepare_corpus(tiny_corpus)
    assert_no_entry_left(tiny_corpus / ".gcnn-cache")
    corpus = prepare_corpus(tiny_corpus)
    assert len(builds) == 2 and corpus.stats["train"]["tokens"] > 0

    # An entry damaged after the fact (truncated array, no metadata) is rebuilt, not trusted.
    entry, train = corpus.cache_path, np.array(corpus.splits["train"])
    del corpus  # drop the memmap before the file under it is cut short
    with open(entry / "train.npy", "r+b") as f:
        f.truncate(100)
    again = prepare_corpus(tiny_corpus)
    assert len(builds) == 3 and np.array_equal(again.splits["train"], train)
    (entry / "meta.json").unlink()
    prepare_corpus(tiny_corpus)
    assert len(builds) == 4


def test_unwritable_corpus_dir_caches_elsewhere(tiny_corpus, tmp_path, monkeypatch):
    tiny_corpus.chmod(0o555)
    try:
        corpus = prepare_corpus(tiny_corpus)
        assert not (tiny_corpus / ".gcnn-cache").exists()
        assert Path(os.environ["HOME"]) / ".cache" / "gcnn" in corpus.cache_path.parents
        monkeypatch.setenv("GCNN_CACHE", str(tmp_path / "elsewhere"))
        assert tmp_path / "elsewhere" in prepare_corpus(tiny_corpus).cache_path.parents
    finally:
        tiny_corpus.chmod(0o755)


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(path, "w") as f:
        f.write("half")
        raise RuntimeError("crash")
    assert path.read_text() == "old" and list(tmp_path.iterdir()) == [path]
    with atomic_write(path, "w") as f:
        f.write("new")
    assert path.read_text() == "new"


# --- bad input: a one-line GcnnError naming the file, and no cache left behind --------------


def _corpus(tmp_path: Path, **files: bytes) -> Path:
    d = tmp_path / "bad"
    d.mkdir(exist_ok=True)
    for name, data in files.items():
        (d / name.replace("_", ".")).write_bytes(data)
    return d


GOOD = b"a b c\nd e\n"


@pytest.mark.parametrize(
    "files, splits, expect",
    [
        ({"train_txt": GOOD, "valid_txt": GOOD}, ("train", "valid", "test"), "no test split"),
        ({"train_txt": GOOD, "valid_txt": b"", "test_txt": GOOD}, ("valid",), "is empty"),
        ({"train_txt": b"ok\nbad \xff\xfe here\n"}, ("train",), "not UTF-8 (line 2"),
        ({"train_txt_xz": lzma.compress(GOOD * 50)[:-30]}, ("train",), "truncated or corrupt"),
        ({"train_txt_gz": gzip.compress(GOOD * 50)[:-12]}, ("train",), "truncated or corrupt"),
        ({"train_txt_xz": b"not xz at all"}, ("train",), "truncated or corrupt"),
    ],
)
def test_bad_corpora_raise_one_line_errors(tmp_path, files, splits, expect):
    directory = _corpus(tmp_path, **files)
    with pytest.raises(GcnnError) as info:
        prepare_corpus(directory, splits=splits)
    message = str(info.value)
    assert expect in message and "\n" not in message
    assert str(directory) in message
    assert_no_entry_left(directory / ".gcnn-cache")


def test_missing_directory_and_unknown_names(tmp_path, monkeypatch):
    with pytest.raises(GcnnError, match="does not exist"):
        prepare_corpus(tmp_path / "nope")
    monkeypatch.setenv("GCNN_DATA", str(tmp_path))
    with pytest.raises(GcnnError, match="gcnn.data download wikitext-2"):
        resolve_corpus("wikitext-2")
    (tmp_path / "wikitext-2").mkdir()
    assert resolve_corpus("wikitext-2") == tmp_path / "wikitext-2"
    with pytest.raises(GcnnError, match="no corpus files|no train split"):
        prepare_corpus("wikitext-2")
    with pytest.raises(GcnnError, match="unknown tokenizer"):
        prepare_corpus(write_tiny(tmp_path), "chars")


def write_tiny(tmp_path: Path) -> Path:
    from conftest import write_synthetic_corpus

    return write_synthetic_corpus(tmp_path / "tiny2", lines=30)


def test_cli_prints_json_and_reports_errors_without_traceback(tiny_corpus, tmp_path, capsys):
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    env.pop("GCNN_CACHE", None)
    ok = subprocess.run(
        [sys.executable, "-m", "gcnn.data", "prepare", str(tiny_corpus), "--json"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert ok.returncode == 0, ok.stderr
    stats = json.loads(ok.stdout)
    assert stats == prepare_corpus(tiny_corpus).to_json()
    assert set(stats) == {"vocab_size", "splits"} and list(stats["splits"]) == [
        "train", "valid", "test",
    ]  # fmt: skip
    assert set(stats["splits"]["train"]) == {"tokens", "lines", "unk"}

    from gcnn.data.__main__ import main  # in-process: the same entry point, minus a start-up

    missing = tmp_path / "missing"
    assert run_cli(lambda: main(["prepare", str(missing), "--json"])) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(missing) in err and err.count("\n") == 1


# --- the real WikiText (skipped without $GCNN_DATA) ----------------------------------------


def test_wikitext2_counts_are_the_published_ones(wikitext2_dir):
    corpus = prepare_corpus(wikitext2_dir)
    if not is_writable_dir(wikitext2_dir):  # the shared copy is read-only: cache elsewhere
        assert wikitext2_dir not in corpus.cache_path.parents
    info = corpus.to_json()
    assert info["vocab_size"] == 33_278
    assert {s: v["tokens"] for s, v in info["splits"].items()} == {
        "train": 2_088_628,
        "valid": 217_646,
        "test": 245_569,
    }
    assert {s: v["lines"] for s, v in info["splits"].items()} == {
        "train": 36_718,
        "valid": 3_760,
        "test": 4_358,
    }
    assert [info["splits"][s]["unk"] for s in ("train", "valid", "test")] == [
        54_625,
        11_718,
        15_218,
    ]
    tok = corpus.tokenizer
    assert tok.words[0] == "the" and tok.id_to_token(tok.eos_id) == "<eos>"
    # Exact evaluation batches cover the whole test split once.
    batcher = BlockBatcher(corpus.splits["test"], tok.eos_id, 4096, 8, context=64)
    assert sum(batcher.num_batch_targets(0, i) for i in range(len(batcher))) == 245_569


def test_wikitext103_valid_test_counts_and_evaluation_with_a_wt2_vocabulary(
    wikitext2_dir, wikitext103_dir
):
    with pytest.raises(GcnnError, match="no train split"):
        prepare_corpus(wikitext103_dir)
    own = prepare_corpus(wikitext103_dir, splits=("valid", "test"))
    assert own.vocab_source == "valid+test" and "train" not in own.splits
    assert {s: own.stats[s]["tokens"] for s in own.splits} == {"valid": 217_646, "test": 245_569}
    assert [own.stats[s]["unk"] for s in ("valid", "test")] == [1_657, 2_492]
    # A model's own vocabulary (here WikiText-2's) encodes the WT103 files: same articles, so
    # exactly WikiText-2's streams come out.
    wt2 = prepare_corpus(wikitext2_dir)
    given = prepare_corpus(wikitext103_dir, wt2.tokenizer, splits=("valid", "test"))
    assert given.vocab_source == "given"
    for split in ("valid", "test"):
        assert np.array_equal(given.splits[split], wt2.splits[split])


def test_a_given_tokenizer_must_be_complete():
    with pytest.raises(GcnnError, match="must contain"):
        WordTokenizer(["a", "b"])
