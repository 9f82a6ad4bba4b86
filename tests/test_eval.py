"""evaluate.py: exact perplexity, sentence scoring, sampling and its bad-input errors.

Every test builds a tiny model, saves it with gcnn.checkpoint.save_checkpoint in the documented
layout, and evaluates that file, so the whole path a user takes is exercised.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_synthetic_corpus

from gcnn.checkpoint import model_checkpoint, save_checkpoint
from gcnn.data import IGNORE_INDEX, prepare_corpus
from gcnn.data.corpus import find_split_files, open_binary
from gcnn.evaluation.cli import main
from gcnn.evaluation.perplexity import corpus_nll, tokenize_split
from gcnn.evaluation.sampling import SamplingConfig, sample
from gcnn.evaluation.scoring import score_token_ids
from gcnn.models import build_model

REPO = Path(__file__).resolve().parents[1]

# Tiny versions of the presets: receptive field 1 + 3 + 2 + 2 = 8 for the GCNN.
GCNN_TINY = dict(
    embed_dim=16,
    blocks=[
        {"layers": [[4, 24]], "repeat": 1},
        {"layers": [[1, 12], [3, 12], [1, 24]], "repeat": 2},
    ],
    cutoffs=[10, 30],
    dropout=0.0,
)
LSTM_TINY = dict(embed_dim=16, hidden_size=24, num_layers=2, cutoffs=[10, 30], dropout=0.0)


def tiny_model(family: str, vocab_size: int, seed: int = 0):
    torch.manual_seed(seed)
    if family == "gcnn":
        model = build_model("gcnn-small", vocab_size, **GCNN_TINY)
    else:
        model = build_model("lstm-small", vocab_size, **LSTM_TINY)
    return model.eval()


def write_checkpoint(path: Path, model, tokenizer, corpus_dir: Path | None = None) -> Path:
    train_config = {"data": str(corpus_dir)} if corpus_dir else {}
    ckpt = model_checkpoint(model, tokenizer, train_config=train_config, step=0, epoch=0)
    save_checkpoint(path, ckpt)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    directory = write_synthetic_corpus(tmp_path_factory.mktemp("eval") / "tiny", lines=300)
    return prepare_corpus(directory, cache_dir=directory / "cache")


@pytest.fixture(scope="module", params=["gcnn", "lstm"])
def family(request):
    return request.param


@pytest.fixture(scope="module")
def checkpoint(corpus, family, tmp_path_factory):
    model = tiny_model(family, corpus.tokenizer.vocab_size)
    path = tmp_path_factory.mktemp(family) / "model.pt"
    return write_checkpoint(path, model, corpus.tokenizer, corpus.directory), model


def run_main(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def full_sequence_nll(model, tokens: np.ndarray, eos_id: int) -> float:
    """The definition of exact: the whole split as ONE sequence, every token in one pass."""
    t = torch.from_numpy(np.asarray(tokens, dtype=np.int64))[None]
    x = torch.cat([torch.tensor([[eos_id]]), t[:, :-1]], dim=1)
    with torch.inference_mode():
        return -float(model.token_log_probs(x, t).double().sum())


# --- perplexity -------------------------------------------------------------------------------


def test_perplexity_is_exact_for_any_block_and_batch_size(corpus, family):
    model = tiny_model(family, corpus.tokenizer.vocab_size)
    tokens = corpus.splits["valid"]
    eos = corpus.tokenizer.eos_id
    reference = full_sequence_nll(model, tokens, eos)
    for block_size, batch_size in [(5, 1), (16, 3), (1000, 2)]:
        nll, count = corpus_nll(model, tokens, eos, block_size=block_size, batch_size=batch_size)
        assert count == len(tokens)
        assert nll == pytest.approx(reference, rel=1e-5), (block_size, batch_size)


def test_gcnn_without_history_would_differ(corpus):
    """The test above has teeth: blocks with no history in front score tokens differently."""
    from gcnn.data import BlockBatcher

    model = tiny_model("gcnn", corpus.tokenizer.vocab_size)
    tokens = corpus.splits["valid"]
    eos = corpus.tokenizer.eos_id
    t = torch.from_numpy(tokens.astype(np.int64))[None]
    x = torch.cat([torch.tensor([[eos]]), t[:, :-1]], dim=1)
    with torch.inference_mode():
        exact = model.token_log_probs(x, t)[0]
        cut = []
        for inputs, targets in BlockBatcher(tokens, eos, 5, 4, context=0).epoch(0):
            lp = model.token_log_probs(inputs, targets)
            cut.append(lp[targets != IGNORE_INDEX])
    diff = (torch.cat(cut) - exact).abs()
    assert diff[:5].max() < 1e-5  # the first block has no history either way
    assert diff.max() > 1e-2  # later blocks lose theirs


def test_perplexity_cli_json(checkpoint, corpus, capsys):
    path, model = checkpoint
    code, out, _ = run_main(
        ["perplexity", path, "--data", corpus.directory, "--split", "valid", "--json"], capsys
    )
    assert code == 0
    result = json.loads(out)
    assert set(result) >= {"loss", "perplexity", "tokens", "tokens_per_s"}
    tokens = corpus.splits["valid"]
    assert result["tokens"] == len(tokens) == corpus.stats["valid"]["tokens"]
    reference = full_sequence_nll(model, tokens, corpus.tokenizer.eos_id) / len(tokens)
    assert result["loss"] == pytest.approx(reference, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(reference), rel=1e-5)
    # the checkpoint remembers its corpus, the text report names the numbers
    code, out, _ = run_main(["perplexity", path, "--split", "valid", "--block-size", "7"], capsys)
    assert code == 0 and "perplexity" in out and f"{len(tokens):,} tokens" in out


def test_tokenize_split_matches_the_pipeline_on_wikitext2(wikitext2_dir, tmp_path):
    """Full WikiText-2 test split through the checkpoint's tokenizer: 245,569 tokens, no OOV,
    whether the file is stored compressed or not (both layouts are accepted corpora)."""
    corpus = prepare_corpus(wikitext2_dir, cache_dir=tmp_path / "cache", splits=("test",))
    stored = find_split_files(wikitext2_dir)["test"]
    plain = tmp_path / "plain" / "wiki.test.tokens"
    plain.parent.mkdir()
    with open_binary(stored) as src, open(plain, "wb") as dst:
        shutil.copyfileobj(src, dst)
    for directory in (wikitext2_dir, plain.parent):
        split = tokenize_split(corpus.tokenizer, find_split_files(directory)["test"])
        assert len(split.tokens) == 245_569 and split.oov == 0, directory
        # same ids as the data pipeline
        assert np.array_equal(split.tokens, corpus.splits["test"]), directory


@pytest.fixture
def sp_corpus(tmp_path):
    # built outside capsys: sentencepiece's trainer needs a real sys.stderr file descriptor
    directory = write_synthetic_corpus(tmp_path / "sp", lines=300)
    return prepare_corpus(directory, tokenizer="sentencepiece", vocab_size=60, cache_dir=tmp_path)


def test_subword_perplexity_reports_per_word(sp_corpus, tmp_path, capsys):
    corpus, directory = sp_corpus, sp_corpus.directory
    tok = corpus.tokenizer
    model = tiny_model("gcnn", tok.vocab_size)
    path = write_checkpoint(tmp_path / "sp.pt", model, tok)
    code, out, _ = run_main(["perplexity", path, "--data", directory, "--json"], capsys)
    assert code == 0
    result = json.loads(out)
    words = corpus.stats["test"]["words"]
    assert result["words"] == words
    nll = result["loss"] * result["tokens"]
    assert result["word_perplexity"] == pytest.approx(math.exp(nll / words), rel=1e-9)
    assert result["tokens"] != words  # subword tokens are not words here


def test_vocabulary_mismatch_is_an_error(checkpoint, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    for split in ("train", "valid", "test"):
        (other / f"{split}.txt").write_text("completely different words here\n" * 20)
    path, _ = checkpoint
    code, _, err = run_main(["perplexity", path, "--data", other], capsys)
    assert code == 2
    assert err.startswith("error: vocabulary mismatch") and err.count("\n") == 1
    assert "'completely'" in err
    # the user can insist: unknown words are then scored as <unk>
    code, out, err = run_main(
        ["perplexity", path, "--data", other, "--allow-oov", "--json"], capsys
    )
    assert code == 0 and json.loads(out)["tokens"] == 20 * 5 and "unknown words" in err


# --- scoring ----------------------------------------------------------------------------------


def test_score_equals_per_sentence_perplexity_path(checkpoint, corpus, tmp_path, capsys):
    """Summing `score` over a text = the perplexity path run on each line as its own text."""
    path, model = checkpoint
    lines = [" ".join(f"w{(7 * i + j) % 50}" for j in range(i % 9)) for i in range(23)]
    text = tmp_path / "text.txt"
    text.write_text("\n".join(lines) + "\n")
    code, out, _ = run_main(["score", path, text, "--json", "--batch-size", "4"], capsys)
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["text"] for r in records] == lines
    tok = corpus.tokenizer
    for r, line in zip(records, lines, strict=True):
        ids = np.asarray(tok.encode(line), dtype=np.int32)
        nll, count = corpus_nll(model, ids, tok.eos_id, block_size=3, batch_size=2)
        assert r["tokens"] == count == len(line.split()) + 1
        assert -r["logprob"] == pytest.approx(nll, rel=1e-5, abs=1e-5)
        assert r["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)
    total = sum(r["logprob"] for r in records)
    one_by_one = sum(
        s for s, _ in score_token_ids(model, [tok.encode(x) for x in lines], tok.eos_id, 1)
    )
    assert total == pytest.approx(one_by_one, rel=1e-6)  # batching changes nothing


def test_score_of_a_single_line_matches_the_perplexity_cli(checkpoint, corpus, tmp_path, capsys):
    path, _ = checkpoint
    data = tmp_path / "one"
    data.mkdir()
    line = "w1 w2 w3 w5 w8 w13 w21 w34 w1 w2 w3 w0 w0 w9"
    (data / "test.txt").write_text(line + "\n")
    _, out, _ = run_main(["perplexity", path, "--data", data, "--json"], capsys)
    ppl = json.loads(out)
    (tmp_path / "line.txt").write_text(line + "\n")
    _, out, _ = run_main(["score", path, tmp_path / "line.txt", "--json"], capsys)
    score = json.loads(out)
    assert score["tokens"] == ppl["tokens"] == 15
    assert -score["logprob"] / score["tokens"] == pytest.approx(ppl["loss"], rel=1e-5)


def test_score_reads_stdin_and_prints_tsv(checkpoint, monkeypatch, capsys):
    import io

    path, _ = checkpoint
    monkeypatch.setattr(sys, "stdin", io.StringIO("w1 w2\n\nw3\n"))
    code, out, _ = run_main(["score", path, "-"], capsys)
    rows = [line.split("\t") for line in out.splitlines()]
    assert code == 0 and len(rows) == 3
    assert [int(r[1]) for r in rows] == [3, 1, 2] and rows[0][3] == "w1 w2"
    assert all(float(r[0]) < 0 for r in rows)


# --- sampling ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        SamplingConfig(max_tokens=25, seed=1),
        SamplingConfig(max_tokens=25, seed=2, temperature=0.7, top_k=8),
        SamplingConfig(max_tokens=25, seed=3, temperature=1.3, top_p=0.8),
        SamplingConfig(max_tokens=10, temperature=0),
    ],
)
def test_incremental_sampling_equals_full_recomputation(corpus, family, config):
    model = tiny_model(family, corpus.tokenizer.vocab_size, seed=5)
    prompt = corpus.tokenizer.encode("w1 w2 w3")[:-1]
    eos = corpus.tokenizer.eos_id
    fast = sample(model, prompt, eos, config, incremental=True)
    slow = sample(model, prompt, eos, config, incremental=False)
    assert fast == slow
    assert len(fast) == config.max_tokens
    assert all(0 <= t < corpus.tokenizer.vocab_size for t in fast)


def test_sampling_depends_on_seed_and_filters(corpus):
    model = tiny_model("gcnn", corpus.tokenizer.vocab_size, seed=5)
    eos = corpus.tokenizer.eos_id
    a = sample(model, [], eos, SamplingConfig(max_tokens=30, seed=1))
    b = sample(model, [], eos, SamplingConfig(max_tokens=30, seed=2))
    assert a != b
    # top-k 1 is greedy whatever the seed
    greedy = sample(model, [], eos, SamplingConfig(max_tokens=30, temperature=0))
    assert sample(model, [], eos, SamplingConfig(max_tokens=30, seed=9, top_k=1)) == greedy
    # with top-k 3 every token is among the 3 most likely next words
    with torch.inference_mode():
        out = sample(model, [], eos, SamplingConfig(max_tokens=15, seed=4, top_k=3))
        log_probs = model.next_token_log_probs(torch.tensor([[eos] + out[:-1]]))[0]
    top3 = log_probs.topk(3, dim=-1).indices
    assert all(t in top3[i] for i, t in enumerate(out))


def test_sample_cli(checkpoint, capsys):
    path, _ = checkpoint
    argv = ["sample", path, "--prompt", "w1 w2", "--max-tokens", "12", "--seed", "3"]
    code, out, _ = run_main(argv + ["--top-p", "0.9"], capsys)
    assert code == 0 and out.startswith("w1 w2")
    _, again, _ = run_main(argv + ["--top-p", "0.9"], capsys)
    assert again == out  # same seed, same text
    code, _, err = run_main(argv + ["--top-p", "1.5"], capsys)
    assert code == 2 and err.startswith("error: --top-p 1.5")


# --- bad input --------------------------------------------------------------------------------


class NotAPlainType:  # what an untrusted checkpoint could smuggle in
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize("kind", ["corrupt", "truncated", "foreign", "pickled", "missing"])
def test_bad_checkpoints_are_one_line_errors(kind, checkpoint, tmp_path, capsys):
    good, _ = checkpoint
    bad = tmp_path / f"{kind}.pt"
    if kind == "corrupt":
        bad.write_bytes(b"definitely not a checkpoint")
    elif kind == "truncated":
        bad.write_bytes(good.read_bytes()[:2000])
    elif kind == "foreign":
        torch.save({"weights": torch.zeros(3)}, bad)
    elif kind == "pickled":
        torch.save({"format": "gcnn", "version": 1, "payload": NotAPlainType()}, bad)
    text = tmp_path / "text.txt"
    text.write_text("w1 w2\n")
    for command in (["perplexity", bad], ["score", bad, text], ["sample", bad]):
        code, out, err = run_main(command, capsys)
        assert code == 2, command
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert str(bad) in err and "Traceback" not in err and "this must never run" not in out


def test_empty_input_file_is_an_error(checkpoint, tmp_path, capsys):
    path, _ = checkpoint
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code, _, err = run_main(["score", path, empty], capsys)
    assert code == 2 and err == f"error: input file {empty} is empty; give one sentence per line\n"
    code, _, err = run_main(["score", path, tmp_path / "nope.txt"], capsys)
    assert code == 2 and "does not exist" in err


def test_empty_split_and_mismatched_checkpoint_are_errors(checkpoint, corpus, tmp_path, capsys):
    path, _ = checkpoint
    (tmp_path / "test.txt").write_text("")
    code, _, err = run_main(["perplexity", path, "--data", tmp_path], capsys)
    assert (
        code == 2
        and err == f"error: split file {tmp_path / 'test.txt'} is empty; nothing to evaluate\n"
    )
    # a model for 100 words saved with the 62-word tokenizer
    wrong = write_checkpoint(tmp_path / "wrong.pt", tiny_model("gcnn", 100), corpus.tokenizer)
    code, _, err = run_main(["sample", wrong], capsys)
    assert code == 2 and "model has 100 words but its tokenizer" in err


def test_console_entry_point_prints_no_traceback(tmp_path):
    """The real process: `python evaluate.py` with a bad file exits 2 with one line."""
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    proc = subprocess.run(
        [sys.executable, str(REPO / "evaluate.py"), "perplexity", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: checkpoint") and proc.stderr.count("\n") == 1


def test_ignored_targets_do_not_count(corpus):
    """Padding rows of SentenceBatcher contribute nothing: a lone short line scores the same
    in a batch with long ones."""
    model = tiny_model("lstm", corpus.tokenizer.vocab_size)
    tok = corpus.tokenizer
    short = tok.encode("w1")
    long = tok.encode(" ".join(["w2"] * 30))
    alone = score_token_ids(model, [short], tok.eos_id, 1)[0]
    together = score_token_ids(model, [long, short, long], tok.eos_id, 3)[1]
    assert alone[1] == together[1] == 2
    assert alone[0] == pytest.approx(together[0], rel=1e-6)
    assert IGNORE_INDEX == -100


def test_sampling_filters_mean_what_they_say():
    from gcnn.evaluation.sampling import choose_token

    log_probs = torch.tensor([0.6, 0.3, 0.1]).log()
    draws = lambda config: {  # noqa: E731
        choose_token(log_probs, config, torch.Generator().manual_seed(s)) for s in range(200)
    }
    assert draws(SamplingConfig()) == {0, 1, 2}
    assert draws(SamplingConfig(top_p=0.5)) == {0}  # the nucleus is the 0.6 word alone
    assert draws(SamplingConfig(top_p=0.8)) == {0, 1}  # 0.6 + 0.3 reaches 0.8
    assert draws(SamplingConfig(top_k=2)) == {0, 1}
    assert draws(SamplingConfig(temperature=0)) == {0}  # greedy
    # temperature reshapes the distribution: colder concentrates on the likeliest word
    cold = [
        choose_token(log_probs, SamplingConfig(temperature=0.2), torch.Generator().manual_seed(s))
        for s in range(400)
    ]
    warm = [
        choose_token(log_probs, SamplingConfig(temperature=5.0), torch.Generator().manual_seed(s))
        for s in range(400)
    ]
    assert cold.count(0) > 370  # p(0) = 0.6^5 / (0.6^5 + 0.3^5 + 0.1^5) ≈ 0.97
    assert 120 < warm.count(0) < 200  # p(0) ≈ 0.40 at T = 5
