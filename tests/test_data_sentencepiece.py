"""Subword tokenization: trained on train, ids by frequency, words kept for per-word perplexity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gcnn.data import SentencePieceTokenizer, prepare_corpus, tokenizer_from_state
from gcnn.errors import GcnnError


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("GCNN_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
def sp_corpus(tiny_corpus):
    # A few literal <unk>s, as in WikiText, so the user-defined piece is exercised.
    train = tiny_corpus / "train.txt"
    train.write_text(train.read_text() + "w1 <unk> w2\n<unk>\n", encoding="utf-8")
    return tiny_corpus


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_sentencepiece_corpus(sp_corpus, model_type, tmp_path):
    corpus = prepare_corpus(sp_corpus, "sentencepiece", vocab_size=64, sp_model_type=model_type)
    tok = corpus.tokenizer
    assert tok.kind == "sentencepiece" and 8 <= tok.vocab_size <= 64
    assert tok.id_to_token(tok.eos_id) == "<eos>" and tok.id_to_token(tok.unk_id) == "<unk>"

    # Ids are sorted by descending frequency in train (the adaptive softmax relies on it).
    counts = np.bincount(corpus.splits["train"], minlength=tok.vocab_size)
    assert np.all(np.diff(counts) <= 0)

    # Every line ends with <eos>; words per split are the whitespace words + 1 per line.
    for split in ("train", "valid", "test"):
        lines = (sp_corpus / f"{split}.txt").read_text().split("\n")[:-1]
        stats = corpus.stats[split]
        assert stats["lines"] == len(lines)
        assert stats["words"] == sum(len(line.split()) + 1 for line in lines)
        assert int((corpus.splits[split] == tok.eos_id).sum()) == len(lines)
        expected = [i for line in lines for i in tok.encode(line)]
        assert corpus.splits[split].tolist() == expected
    assert corpus.stats["train"]["unk"] == 2  # the literal <unk>s stay single pieces

    line = "w3 w1 w0 w10"
    assert tok.decode(tok.encode(line)) == line + "\n"
    assert tok.count_words(line) == 5

    # The state is tensors and plain types: it survives torch.load(weights_only=True).
    path = tmp_path / "sp.pt"
    torch.save(tok.state_dict(), path)
    again = tokenizer_from_state(torch.load(path, weights_only=True))
    assert isinstance(again, SentencePieceTokenizer)
    assert again.fingerprint() == tok.fingerprint() and again.encode(line) == tok.encode(line)

    # The cache holds the model: a second call does not retrain and gives the same streams.
    cached = prepare_corpus(sp_corpus, "sentencepiece", vocab_size=64, sp_model_type=model_type)
    assert cached.tokenizer.fingerprint() == tok.fingerprint()
    assert np.array_equal(cached.splits["test"], corpus.splits["test"])


def test_bad_sentencepiece_settings(sp_corpus):
    with pytest.raises(GcnnError, match="unigram or bpe"):
        prepare_corpus(sp_corpus, "sentencepiece", vocab_size=64, sp_model_type="char")
    with pytest.raises(GcnnError, match="at least 8"):
        prepare_corpus(sp_corpus, "sentencepiece", vocab_size=2)
    with pytest.raises(GcnnError, match="corrupt sentencepiece model"):
        tokenizer_from_state({"kind": "sentencepiece", "model": torch.zeros(5, dtype=torch.uint8)})


def test_sentencepiece_trains_when_stderr_has_no_file_descriptor(capsys):
    # capsys swaps sys.stderr for an object without fileno(), as notebooks do.
    lines = ["the cat sat on the mat"] * 50 + ["a dog ran far away"] * 50
    tok = SentencePieceTokenizer.train(lines, vocab_size=20)
    assert tok.decode(tok.encode("the cat")[:-1]) == "the cat"
