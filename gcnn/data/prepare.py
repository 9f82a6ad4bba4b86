"""prepare_corpus: text files -> tokenizer + int32 token streams, built once and cached.

The word-level build reads each file once. Words are numbered in first-seen order while reading
(a dict lookup per word, done by C code through map()), counted with np.bincount, and then
renumbered by frequency with one vectorised gather, so no second pass over the text is needed.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gcnn.data.cache import CacheEntry, default_cache_dir, describe_sources, file_lock
from gcnn.data.corpus import (
    KNOWN_CORPORA,
    SPLITS,
    data_root,
    find_split_files,
    read_chunks,
    resolve_corpus,
)
from gcnn.data.download import download_corpus
from gcnn.data.scan import count_ids, progress_bar, renumber, scan_split
from gcnn.data.tokenizer import (
    SentencePieceTokenizer,
    Tokenizer,
    WordTokenizer,
    split_words,
    tokenizer_from_state,
)
from gcnn.errors import GcnnError, plain_cause
from gcnn.signals import Stopped

DEFAULT_SP_VOCAB = 8000


@dataclass
class Corpus:
    """A tokenized corpus. `splits[name]` is the int32 token stream (a read-only memmap)."""

    tokenizer: Tokenizer
    splits: dict[str, np.ndarray]
    stats: dict[str, dict]  # per split: tokens, lines, unk, words (whitespace words + 1 per line)
    directory: Path
    vocab_source: str = "train"  # "train", the splits it came from ("valid+test"), or "given"
    cache_path: Path | None = None  # the cache entry, None if the cache could not be written

    def to_json(self) -> dict:
        return {
            "vocab_size": self.tokenizer.vocab_size,
            "splits": {
                name: {k: self.stats[name][k] for k in ("tokens", "lines", "unk")}
                for name in self.splits
            },
        }


def _read_split(
    path: Path, split: str, encode, progress: bool, word_level: bool = True
) -> tuple[np.ndarray, dict]:
    """Encode one file chunk by chunk with `encode(text) -> int32 ids`; count lines and words.

    Words (whitespace words + 1 per line) equal the token count for word-level encoders; for
    subwords they are counted separately, for per-word perplexity.
    """
    parts, lines, words = [], 0, 0
    bar = progress_bar(progress, path, split)
    try:
        for text in read_chunks(path, progress=bar, cut_long_lines=word_level):
            lines += text.count("\n")  # every line's end is in a chunk, the last one's too
            ids = encode(text)
            parts.append(ids)
            words += len(ids) if word_level else len(split_words(text))
    finally:
        if bar is not None:
            bar.close()
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    if len(ids) == 0:
        raise GcnnError(f"split {split!r} ({path}) is empty; give it at least one line of text")
    return ids, {"lines": lines, "words": words}


def _build_word(files, vocab_splits, min_count, max_vocab, progress):
    vocab: dict[str, int] = {}  # provisional numbering, replaced by frequency order below
    raw, info = {}, {}
    for split in vocab_splits:
        raw[split], info[split] = scan_split(files[split], split, progress, vocab)
    counts = sum(count_ids(ids, len(vocab)) for ids in raw.values())
    words = list(vocab)
    tokenizer = WordTokenizer.from_counts(
        dict(zip(words, counts.tolist(), strict=True)), min_count, max_vocab
    )
    remap = np.fromiter(map(tokenizer.lookup.__getitem__, words), dtype=np.int32, count=len(words))
    arrays = {split: renumber(ids, remap) for split, ids in raw.items()}
    for split in files:
        if split not in arrays:
            arrays[split], info[split] = _read_split(
                files[split], split, tokenizer.encode_text, progress
            )
    return tokenizer, arrays, info


def _build_sentencepiece(files, vocab_splits, vocab_size, model_type, progress):
    from gcnn.data.corpus import iter_lines

    def training_lines():
        for split in vocab_splits:
            yield from iter_lines(files[split])

    plain = SentencePieceTokenizer.train(training_lines(), vocab_size, model_type)
    raw, info = {}, {}
    for split, path in files.items():
        raw[split], info[split] = _read_split(path, split, plain.encode_text, progress, False)
    counts = sum(count_ids(raw[s], plain.vocab_size) for s in vocab_splits)
    tokenizer = plain.renumbered(counts)
    arrays = {split: tokenizer.from_sp[ids] for split, ids in raw.items()}
    return tokenizer, arrays, info


def _build_given(files, tokenizer, progress):
    arrays, info = {}, {}
    for split, path in files.items():
        arrays[split], info[split] = _read_split(
            path, split, tokenizer.encode_text, progress, tokenizer.kind == "word"
        )
    return arrays, info


def _locate(name_or_dir: str | os.PathLike, download: bool) -> Path:
    """The corpus directory; with download=True a missing named corpus is fetched first."""
    name = str(name_or_dir)
    if download and name in KNOWN_CORPORA and not (data_root() / name).is_dir():
        # Data-parallel ranks all prepare their data: the first downloads, the others wait
        # here and then find the corpus in place.
        with file_lock(data_root() / f".{name}.download.lock"):
            download_corpus(name, root=data_root())
    return resolve_corpus(name)


def prepare_corpus(
    name_or_dir: str | os.PathLike,
    tokenizer: str | Tokenizer = "word",
    *,
    vocab_size: int | None = None,
    sp_model_type: str = "unigram",
    min_count: int = 1,
    max_vocab: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    splits: tuple[str, ...] | None = SPLITS,
    progress: bool = False,
    download: bool = False,
) -> Corpus:
    """Tokenize a corpus (or reuse its cache) and return the requested splits.

    tokenizer: "word", "sentencepiece", or a Tokenizer object (e.g. from a checkpoint) to encode
    with as is - that is how a checkpoint trained on WikiText-103 is evaluated on a directory
    holding only its valid/test files. Otherwise the vocabulary is built from the train split;
    a corpus without one builds it from the splits it has and says so in `vocab_source`.
    For the word tokenizer, `vocab_size` means the same as `max_vocab`.
    All split files present are encoded and cached; `splits` picks which are returned and must
    all exist (None: whichever are present).
    """
    directory = _locate(name_or_dir, download)
    files = find_split_files(directory)
    splits = tuple(s for s in SPLITS if s in files) if splits is None else tuple(splits)
    for split in splits:
        if split not in SPLITS:
            raise GcnnError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
        if split not in files:
            have = ", ".join(files) or "none"
            raise GcnnError(
                f"{directory} has no {split} split (wiki.{split}.tokens or {split}.txt, optionally "
                f".xz/.gz/.bz2; found: {have}); add it or ask only for the splits it has"
            )
    if not files:
        raise GcnnError(f"{directory} holds no corpus files (wiki.train.tokens or train.txt, ...)")

    given = None if isinstance(tokenizer, str) else tokenizer
    kind = tokenizer if given is None else given.kind
    if kind not in ("word", "sentencepiece"):
        raise GcnnError(f"unknown tokenizer {kind!r}; use word or sentencepiece")
    if kind == "word" and given is None and vocab_size is not None:
        if max_vocab is not None and max_vocab != vocab_size:
            raise GcnnError(f"vocab_size={vocab_size} and max_vocab={max_vocab} disagree")
        max_vocab = vocab_size
    if kind == "sentencepiece" and given is None:
        vocab_size = vocab_size or DEFAULT_SP_VOCAB
    vocab_splits = ["train"] if "train" in files else list(files)
    if given is not None:  # what the cache entry depends on besides the sources
        settings = {"given": given.fingerprint()}
    elif kind == "word":
        settings = {"min_count": min_count, "max_vocab": max_vocab}
    else:
        settings = {"vocab_size": vocab_size, "model_type": sp_model_type}
    plan = _Plan(
        directory=directory,
        files=files,
        splits=splits,
        kind=kind,
        given=given,
        vocab_splits=vocab_splits,
        vocab_source="given" if given is not None else "+".join(vocab_splits),
        settings=settings,
        progress=progress,
    )
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir(directory)
    entry = CacheEntry(
        cache_dir, kind, {"tokenizer": kind, "vocab_source": plan.vocab_source, **plan.settings}
    )
    # One builder at a time per entry: data-parallel ranks that all call prepare_corpus wait
    # for the first one's cache instead of each tokenizing the corpus again.
    try:
        with entry.lock():
            return _from_cache(entry, plan) or _build(entry, plan)
    except Stopped as stop:  # the cache is built in a temporary directory, removed on the way
        stop.kept = stop.kept or f"the token cache of {directory} was not written (nothing left)"
        raise


@dataclass
class _Plan:
    """What prepare_corpus was asked for, once the arguments are checked."""

    directory: Path
    files: dict[str, Path]
    splits: tuple[str, ...]
    kind: str
    given: Tokenizer | None
    vocab_splits: list[str]
    vocab_source: str
    settings: dict
    progress: bool

    def corpus(self, tokenizer, arrays, stats, cache_path) -> Corpus:
        return Corpus(
            tokenizer=tokenizer,
            splits={s: arrays[s] for s in self.splits},
            stats={s: stats[s] for s in SPLITS if s in stats},
            directory=self.directory,
            vocab_source=self.vocab_source,
            cache_path=cache_path,
        )


def _from_cache(entry: CacheEntry, plan: _Plan) -> Corpus | None:
    cached = entry.load(plan.files)
    if cached is None:
        return None
    meta, state, arrays = cached
    try:
        tok = plan.given if plan.given is not None else tokenizer_from_state(state)
    except GcnnError:
        return None  # a garbled tokenizer file: rebuild the entry
    if tok.fingerprint() != meta.get("tokenizer_fingerprint"):
        return None
    return plan.corpus(tok, arrays, meta["stats"], entry.path)


def _build(entry: CacheEntry, plan: _Plan) -> Corpus:
    """Tokenize every split file, write the cache entry, and return the corpus from it."""
    files, progress, opts = plan.files, plan.progress, plan.settings
    sources = describe_sources(files)
    if plan.given is not None:
        tok = plan.given
        arrays, info = _build_given(files, tok, progress)
    elif plan.kind == "word":
        tok, arrays, info = _build_word(
            files, plan.vocab_splits, opts["min_count"], opts["max_vocab"], progress
        )
    else:
        tok, arrays, info = _build_sentencepiece(
            files, plan.vocab_splits, opts["vocab_size"], opts["model_type"], progress
        )
    stats = {
        split: {
            "tokens": int(len(arrays[split])),
            "lines": info[split]["lines"],
            "unk": int(np.count_nonzero(arrays[split] == tok.unk_id)),
            "words": info[split]["words"],
        }
        for split in SPLITS
        if split in arrays
    }
    meta = {
        "stats": stats,
        "tokenizer_fingerprint": tok.fingerprint(),
        "directory": str(plan.directory),
    }
    try:
        entry.save(sources, tok.state_dict(), arrays, meta)
        cached = entry.load(files)
    except OSError as err:  # a full or read-only disk costs a rebuild next time, not this run
        print(
            f"warning: cannot write the cache in {entry.cache_dir} ({plain_cause(err)[0]}); "
            "going on without it; set GCNN_CACHE to a writable directory with free space to "
            "avoid rebuilding next time",
            file=sys.stderr,
        )
        cached = None
    if cached is None:
        return plan.corpus(tok, arrays, stats, None)
    return plan.corpus(tok, cached[2], stats, entry.path)  # memory-mapped: built arrays freed
