"""Word and subword tokenizers with one interface (docs/design.md, `Tokenizer`).

Both give every line its ids followed by `<eos>`, and number the vocabulary by descending
frequency in the training text (id 0 = most frequent), because the adaptive softmax puts the
frequent head first. Their `state_dict()` holds only plain types and tensors, so a checkpoint
that carries the tokenizer still loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import sys
from collections.abc import Iterable, Mapping

import numpy as np
import torch

from gcnn import signals
from gcnn.errors import GcnnError

EOS = "<eos>"
UNK = "<unk>"


def count_words(line: str) -> int:
    """Whitespace words + 1 for the line's <eos>: the unit of per-word perplexity."""
    return len(line.split()) + 1


def split_words(text: str) -> list[str]:
    """All words of a chunk of text, with EOS after every line (including blank ones).

    Replacing each line break by a spaced EOS lets one C-level str.split() do all the work.
    A chunk as gcnn.data.corpus.read_chunks yields it ends with a line break, or with a space
    or tab where it cut a long line (the line goes on in the next chunk: no EOS yet).
    """
    if text and not text.endswith(("\n", " ", "\t")):
        text += "\n"  # a last line without a line break is still a line
    return text.replace("\n", f" {EOS} ").split()


class _Lookup(dict):
    """word -> id, with unknown words mapped to `<unk>` (a dict subclass keeps lookups in C)."""

    def __init__(self, words: Iterable[str], unk_id: int):
        super().__init__((w, i) for i, w in enumerate(words))
        self.unk_id = unk_id

    def __missing__(self, word: str) -> int:
        return self.unk_id


class WordTokenizer:
    """A word vocabulary: `words[i]` is the word with id i, sorted by descending frequency."""

    kind = "word"

    def __init__(self, words: list[str]):
        if EOS not in words or UNK not in words:
            raise GcnnError(f"a word vocabulary must contain {EOS} and {UNK}")
        if len(set(words)) != len(words):
            raise GcnnError("the word vocabulary has duplicate entries; rebuild it")
        self.words = list(words)
        self.eos_id = self.words.index(EOS)
        self.unk_id = self.words.index(UNK)
        self.lookup = _Lookup(self.words, self.unk_id)

    @classmethod
    def from_counts(
        cls, counts: Mapping[str, int], min_count: int = 1, max_vocab: int | None = None
    ) -> WordTokenizer:
        """Most frequent first, ties broken by the word's string; rare words fold into <unk>.

        <eos> and <unk> are always kept (with their counts, possibly 0) so every line ends
        and every unknown word has somewhere to go.
        """
        if min_count < 1:
            raise GcnnError(f"min_count must be >= 1 (got {min_count})")
        if max_vocab is not None and max_vocab < 2:
            raise GcnnError(f"max_vocab must be >= 2 to hold {EOS} and {UNK} (got {max_vocab})")
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        keep = [w for w, c in ranked if c >= min_count and w not in (EOS, UNK)]
        if max_vocab is not None:
            keep = keep[: max_vocab - 2]
        # <unk> stands for every folded word too, so it ranks by that total; the specials then
        # sort by their counts like ordinary words.
        kept = set(keep)
        folded = sum(c for w, c in counts.items() if w not in kept and w not in (EOS, UNK))
        entries = [(w, counts[w]) for w in keep]
        entries += [(EOS, counts.get(EOS, 0)), (UNK, counts.get(UNK, 0) + folded)]
        entries.sort(key=lambda item: (-item[1], item[0]))
        return cls([w for w, _ in entries])

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def encode(self, line: str) -> list[int]:
        get = self.lookup.__getitem__
        return [get(w) for w in line.split()] + [self.eos_id]

    def encode_text(self, text: str) -> np.ndarray:
        """All lines of a chunk of text as one int32 array (each line's ids then <eos>)."""
        words = split_words(text)
        return np.fromiter(map(self.lookup.__getitem__, words), dtype=np.int32, count=len(words))

    def decode(self, ids) -> str:
        """Words joined by spaces; each <eos> becomes a line break."""
        return _join_lines(
            _ints(ids), self.eos_id, lambda line: " ".join(self.words[i] for i in line)
        )

    def id_to_token(self, i: int) -> str:
        return self.words[int(i)]

    def count_words(self, line: str) -> int:
        return count_words(line)

    def state_dict(self) -> dict:
        return {"kind": self.kind, "words": list(self.words)}

    def fingerprint(self) -> str:
        return hashlib.sha256("\n".join(self.words).encode("utf-8")).hexdigest()


class SentencePieceTokenizer:
    """A sentencepiece model, its pieces renumbered by descending frequency in the train split.

    `<eos>` and `<unk>` are user-defined pieces, so WikiText's literal `<unk>` stays one token
    (and `unk` counts stay comparable with the word tokenizer). `order[i]` is the sentencepiece
    id of our id i.
    """

    kind = "sentencepiece"

    def __init__(self, model: bytes, order: list[int] | np.ndarray | None = None):
        import sentencepiece as spm

        self.model = bytes(model)
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(self.model)
        except Exception as err:  # sentencepiece raises bare RuntimeError/OSError
            raise GcnnError(f"corrupt sentencepiece model ({err}); rebuild the cache") from None
        size = self.sp.get_piece_size()
        order = np.arange(size) if order is None else np.asarray(order, dtype=np.int64)
        if sorted(order.tolist()) != list(range(size)):
            raise GcnnError("sentencepiece id order does not match the model; rebuild the cache")
        self.order = order
        self.from_sp = np.empty(size, dtype=np.int32)
        self.from_sp[order] = np.arange(size, dtype=np.int32)
        for piece in (EOS, UNK):
            if self.sp.piece_to_id(piece) == self.sp.unk_id():
                raise GcnnError(f"sentencepiece model lacks the piece {piece}; rebuild the cache")
        self.eos_id = int(self.from_sp[self.sp.piece_to_id(EOS)])
        self.unk_id = int(self.from_sp[self.sp.piece_to_id(UNK)])

    @classmethod
    def train(
        cls, lines: Iterable[str], vocab_size: int, model_type: str = "unigram"
    ) -> SentencePieceTokenizer:
        """Train on `lines` (blank lines skipped); ids still in sentencepiece order."""
        import sentencepiece as spm

        if model_type not in ("unigram", "bpe"):
            raise GcnnError(f"sentencepiece model type must be unigram or bpe (got {model_type!r})")
        if vocab_size < 8:
            raise GcnnError(f"--vocab-size must be at least 8 (got {vocab_size})")
        buffer = io.BytesIO()
        try:
            # Training runs in C++ for minutes on a big corpus, where a Python signal handler
            # would wait for it to return; nothing is on disk yet: a signal ends it at once.
            with open(os.devnull, "w") as quiet, signals.default_action():
                # sentencepiece silences its log by redirecting file descriptor 2, which a
                # replaced sys.stderr (pytest's capsys, notebooks) does not have: then rely on
                # minloglevel alone.
                silence = {"logstream": quiet} if _has_fileno(sys.stderr) else {}
                spm.SentencePieceTrainer.Train(
                    sentence_iterator=(line for line in lines if line.strip()),
                    model_writer=buffer,
                    vocab_size=vocab_size,
                    model_type=model_type,
                    user_defined_symbols=[EOS, UNK],
                    unk_piece="<sp-unk>",  # characters never seen in training
                    unk_id=0,
                    bos_id=-1,
                    eos_id=-1,
                    pad_id=-1,
                    hard_vocab_limit=False,  # a small corpus gets a smaller vocabulary, not a crash
                    input_sentence_size=2_000_000,  # cap on training lines, for speed
                    shuffle_input_sentence=True,
                    num_threads=2,
                    minloglevel=2,
                    **silence,
                )
        except RuntimeError as err:
            raise GcnnError(f"sentencepiece training failed: {err}") from None
        return cls(buffer.getvalue())

    def renumbered(self, sp_counts: np.ndarray) -> SentencePieceTokenizer:
        """The same model with ids sorted by descending count (ties: sentencepiece id)."""
        size = self.sp.get_piece_size()
        order = np.lexsort((np.arange(size), -np.asarray(sp_counts[:size])))
        return SentencePieceTokenizer(self.model, order)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, line: str) -> list[int]:
        return self.from_sp[self.sp.encode(line)].tolist() + [self.eos_id]

    def encode_text(self, text: str) -> np.ndarray:
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        pieces = self.sp.encode(lines, num_threads=2)
        eos = self.sp.piece_to_id(EOS)
        ids = np.fromiter(itertools.chain.from_iterable(p + [eos] for p in pieces), np.int32)
        return self.from_sp[ids]

    def decode(self, ids) -> str:
        """Detokenized text; each <eos> becomes a line break."""
        return _join_lines(
            _ints(ids), self.eos_id, lambda line: self.sp.decode([int(self.order[i]) for i in line])
        )

    def id_to_token(self, i: int) -> str:
        return self.sp.id_to_piece(int(self.order[int(i)]))

    def count_words(self, line: str) -> int:
        return count_words(line)

    def state_dict(self) -> dict:
        # Bytes are not loadable with weights_only=True; a uint8 tensor is.
        return {
            "kind": self.kind,
            "model": torch.frombuffer(bytearray(self.model), dtype=torch.uint8),
            "order": torch.from_numpy(self.order.astype(np.int64)),
        }

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.model)
        h.update(self.order.astype(np.int64).tobytes())
        return h.hexdigest()


Tokenizer = WordTokenizer | SentencePieceTokenizer


def tokenizer_from_state(state: dict) -> Tokenizer:
    """Rebuild a tokenizer from `state_dict()` (e.g. out of a checkpoint)."""
    kind = state.get("kind") if isinstance(state, dict) else None
    if kind == "word":
        return WordTokenizer(list(state["words"]))
    if kind == "sentencepiece":
        model = state["model"]
        model = model.numpy().tobytes() if isinstance(model, torch.Tensor) else bytes(model)
        order = state.get("order")
        order = order.numpy() if isinstance(order, torch.Tensor) else order
        return SentencePieceTokenizer(model, order)
    raise GcnnError(f"unknown tokenizer state (kind={kind!r}); was it saved by gcnn?")


def _join_lines(ids: list[int], eos_id: int, render) -> str:
    """Render each run of ids between <eos> tokens; an <eos> becomes a line break."""
    out, line = [], []
    for i in ids:
        if i == eos_id:
            out.append(render(line) + "\n")
            line = []
        else:
            line.append(i)
    if line:
        out.append(render(line))
    return "".join(out)


def _ints(ids) -> list[int]:
    if isinstance(ids, torch.Tensor):
        return ids.flatten().tolist()
    return [int(i) for i in np.asarray(ids).ravel()]


def _has_fileno(stream) -> bool:
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return False
    return True
