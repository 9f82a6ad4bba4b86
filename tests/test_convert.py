"""Conversion without fairseq installed: safe reading of pickles, the layer expression, the
dictionary, refusals, the two directions against each other, and the converted checkpoint in
evaluate.py. (Against fairseq's own code: tests/test_convert_fairseq.py.)"""

from __future__ import annotations

import json
import pickle
import sys
import time

import numpy as np
import pytest
import torch

from gcnn.checkpoint import load_model, model_checkpoint, save_checkpoint
from gcnn.convert import convert_file, from_fairseq, to_fairseq
from gcnn.convert.__main__ import main as convert_main
from gcnn.convert.dictionary import fairseq_symbols, read_dictionary
from gcnn.convert.fairseq_layout import (
    ARCH_DEFAULTS,
    MAX_LAYERS,
    group_blocks,
    parse_layer_list,
    parse_layers,
)
from gcnn.convert.fairseq_pickle import pickle_globals, read_fairseq_checkpoint
from gcnn.data import WordTokenizer, prepare_corpus
from gcnn.errors import GcnnError
from gcnn.evaluation.cli import main as evaluate_main
from gcnn.evaluation.fairseq_blocks import fairseq_blocks_nll
from gcnn.evaluation.perplexity import corpus_nll
from gcnn.models import PRESETS, model_from_config


def _native(tmp_path, seed=0, counts=None, **overrides):
    """A checkpoint as trained here (<eos>, <unk> among the words), random weights."""
    if counts is None:
        counts = {f"w{i}": 1000 // (i + 1) + 1 for i in range(60)}
        counts.update({"<eos>": 600, "<unk>": 250})
    tokenizer = WordTokenizer.from_counts(counts)
    config = {"family": "gcnn", "vocab_size": tokenizer.vocab_size, "embed_dim": 8}
    config.update({"cutoffs": [10, 30], "blocks": [{"layers": [[3, 32]], "repeat": 2}]})
    config.update(overrides)
    torch.manual_seed(seed)
    model = model_from_config(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if name.endswith("original0") else 0.0))
    path = tmp_path / "native.pt"
    save_checkpoint(path, model_checkpoint(model, tokenizer))
    return path, model, tokenizer


@pytest.fixture
def exported(tmp_path):
    """A valid fairseq fconv_lm checkpoint + dict.txt (this project's to-fairseq output)."""
    path, model, tokenizer = _native(tmp_path)
    return to_fairseq(path, tmp_path / "fairseq"), model, tokenizer


# --- both directions ------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [{}, {"softmax_dim": 20}, {"cutoffs": []}])
def test_to_fairseq_and_back_computes_the_same_function(tmp_path, overrides):
    path, model, tokenizer = _native(tmp_path, **overrides)
    out = to_fairseq(path, tmp_path / "fairseq")
    assert out.extra_layer  # a vocabulary trained here gets <s>, <pad> and the constant feature
    back = from_fairseq(out.model_path, out.dict_path)
    words, source = fairseq_symbols(tokenizer.words, tokenizer.eos_id, tokenizer.unk_id)
    assert back.tokenizer.words[4:] == words[4:] and back.tokenizer.eos_id == 2
    ids = torch.tensor([source.index(i) for i in range(tokenizer.vocab_size)])
    x = torch.randint(0, tokenizer.vocab_size, (2, 25), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model.next_token_log_probs(x)
        got = back.model.next_token_log_probs(ids[x])
    assert (got[..., ids] - expected).abs().max().item() < 1e-5
    assert got[..., :2].max().item() < -1000  # <s>, <pad>: never predicted


def test_published_layouts_are_the_papers_presets():
    """fairseq's wiki103 and gbw architectures are GCNN-14 and GCNN-14B, block for block."""
    wt103 = group_blocks(
        parse_layers(ARCH_DEFAULTS["fconv_lm_dauphin_wikitext103"]["decoder_layers"])
    )
    gbw = group_blocks(parse_layers(ARCH_DEFAULTS["fconv_lm_dauphin_gbw"]["decoder_layers"]))
    assert wt103.gcnn_blocks() == PRESETS["gcnn-14"]["blocks"]
    assert gbw.gcnn_blocks() == PRESETS["gcnn-14b"]["blocks"]


# --- the layer expression, never evaluated ----------------------------------------------------


def test_layer_expressions_read_as_python_would():
    assert parse_layer_list("[(850, 6)] * 3 + [(850, 1)]") == [(850, 6)] * 3 + [(850, 1)]
    assert parse_layer_list("2 * [(1, 2, 0), (3, 4, 2)]") == 2 * [(1, 2, 0), (3, 4, 2)]
    assert parse_layer_list("[(5, 5)] + [(4, 1, 0)] * 0") == [(5, 5)]
    assert parse_layer_list("False") is False
    gbw = parse_layers("[(512, 5)] + [(128, 1, 0), (128, 5, 0), (512, 1, 3)] * 2")
    assert [(x.channels, x.kernel, x.residual) for x in gbw] == [(512, 5, 1)] + [
        (128, 1, 0),
        (128, 5, 0),
        (512, 1, 3),
    ] * 2


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os').system('touch /tmp/x')",
        "[(850, 6)] * 3 + open('/etc/passwd')",
        "[(850, 6)] * (10 ** 9)",
        "[x for x in range(3)]",
        "[(850, 6)].__class__",
        "[(850.5, 6)]",
        "lambda: 1",
    ],
)
def test_layer_expressions_with_code_are_refused(expr):
    with pytest.raises(GcnnError) as err:
        parse_layers(expr)
    assert "\n" not in str(err.value)


def test_huge_layer_counts_are_refused_before_they_are_built():
    start = time.perf_counter()
    with pytest.raises(GcnnError, match=f"more than {MAX_LAYERS} layers"):
        parse_layers("[(8, 3)] * 1000000000000")
    with pytest.raises(GcnnError, match="characters long"):
        parse_layers("[(8, 3)" + ", (8, 3)" * 3000 + "]")
    with pytest.raises(GcnnError, match="out of range"):
        parse_layers("[(100000000, 3)]")
    assert time.perf_counter() - start < 1.0  # nothing was expanded


@pytest.mark.parametrize(
    "expr, what",
    [
        ("[(8, 3, 2)]", "layer 0"),
        ("[(8, 3), (8, 3, 2)]", "across another residual connection"),
        ("[(8, 1, 0), (8, 3, 1)]", "have no residual"),
        ("[(8, 3), (8, 3, 0)]", "without a residual"),
    ],
)
def test_layouts_gcnn_cannot_express_are_refused_naming_the_layer(expr, what):
    with pytest.raises(GcnnError, match=what):
        group_blocks(parse_layers(expr))


# --- dictionaries -----------------------------------------------------------------------------


def test_dict_txt_ids_follow_fairseq(tmp_path):
    path = tmp_path / "dict.txt"
    path.write_text("the 100\n, 90\n. 80\n", encoding="utf-8")
    words = read_dictionary(path, 8)  # 4 specials + 3 lines, padded to 8 as fairseq does
    assert words == ["<s>", "<pad>", "<eos>", "<unk>", "the", ",", ".", "madeupword0000"]
    with pytest.raises(GcnnError, match="model has 16 rows"):
        read_dictionary(path, 16)
    with pytest.raises(GcnnError, match="only 6 rows"):
        read_dictionary(path, 6)
    path.write_text("the 100\nthe 90\n", encoding="utf-8")
    with pytest.raises(GcnnError, match="appears twice"):
        read_dictionary(path, 8)
    for clash in ("</s> 5\n", "<eos> 5\n"):
        path.write_text("the 100\n" + clash, encoding="utf-8")
        with pytest.raises(GcnnError, match="appears twice|ordinary word"):
            read_dictionary(path, 8)
    path.write_text("the 100\nthe 90 #fairseq:overwrite\n", encoding="utf-8")
    with pytest.raises(GcnnError, match="overwrite"):
        read_dictionary(path, 8)
    path.write_text("the\n", encoding="utf-8")
    with pytest.raises(GcnnError, match="not 'word count'"):
        read_dictionary(path, 8)


def test_wav2letter_vocabulary(tmp_path):
    path = tmp_path / "lm.vocab"
    path.write_text("<fairseq_style>\n<pad>\n</s>\n<unk>\nthe\na\n", encoding="utf-8")
    assert read_dictionary(path, 8)[:6] == ["<s>", "<pad>", "<eos>", "<unk>", "the", "a"]
    path.write_text("<fairseq_style>\n</s>\n<pad>\n<unk>\nthe\n", encoding="utf-8")
    with pytest.raises(GcnnError, match="wav2letter"):
        read_dictionary(path, 8)


# --- reading pickles safely ---------------------------------------------------------------------


class _Payload:
    """A pickled call: unpickling it runs `touch MARKER`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy-format", "zip-format"])
def test_a_pickled_call_is_refused_and_never_runs(exported, tmp_path, capsys, legacy):
    out, _, _ = exported
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(_Payload(marker)))  # the payload is live: an ordinary unpickler
    assert marker.exists()  # runs it
    marker.unlink()
    ckpt = read_fairseq_checkpoint(out.model_path)  # a valid fairseq checkpoint...
    ckpt["extra_state"]["train_meters"] = {"loss": _Payload(marker)}  # ...plus a pickled call
    evil = tmp_path / "evil.pt"
    torch.save(ckpt, evil, _use_new_zipfile_serialization=not legacy)
    code = convert_main(
        ["from-fairseq", str(evil), "--dict", str(out.dict_path), "--out", str(tmp_path / "o.pt")]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: refusing")
    assert "posix.system" in err and "nothing in it was run" in err
    assert not marker.exists() and not (tmp_path / "o.pt").exists()


def test_fairseq_objects_become_inert_placeholders(exported, tmp_path, monkeypatch):
    """Objects under fairseq.* (meters) are read as placeholders: their code is never called,
    even when the pickle asks for a call."""
    out, model, tokenizer = exported
    marker = tmp_path / "called"
    module = type(sys)("gcnn_test_stand_in")

    def run(command):  # what the pickle will name fairseq.meters.run
        raise AssertionError("never called")

    run.__module__, run.__qualname__ = module.__name__, "run"
    module.run = run
    monkeypatch.setitem(sys.modules, module.__name__, module)

    class Call:
        def __reduce__(self):
            return (run, (f"touch {marker}",))

    ckpt = read_fairseq_checkpoint(out.model_path)
    ckpt["extra_state"]["train_meters"] = {"wall": Call()}
    path = tmp_path / "meters.pt"
    torch.save(ckpt, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes().replace(b"gcnn_test_stand_in\nrun\n", b"fairseq.meters\nrun\n")
    path.write_bytes(data)
    assert "fairseq.meters.run" in pickle_globals(path)  # the pickle now asks for that call
    converted = convert_file(path, out.dict_path, tmp_path / "ok.pt")
    assert converted.model.config.vocab_size == tokenizer.vocab_size + 2
    assert not marker.exists()


def _rewrite(src, dst, change):
    ckpt = read_fairseq_checkpoint(src)
    change(ckpt)
    torch.save(ckpt, dst)
    return dst


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c["cfg"]["model"].update(arch="transformer_lm", _name=None), "transformer_lm"),
        (lambda c: c["model"].pop("decoder.adaptive_softmax.version"), "predates fairseq 0.7"),
        (lambda c: c["cfg"]["model"].update(decoder_attention="True"), "attention"),
        (lambda c: c["cfg"]["model"].update(decoder_embed_dim=10**9), "out of range"),
        (
            lambda c: c["cfg"]["model"].update(decoder_layers="[(32, 5)] * 2 + [(33, 1)]"),
            "inconsistent",
        ),
        (lambda c: c["cfg"]["model"].update(adaptive_softmax_cutoff="5,30"), "splits at"),
        (lambda c: c["model"].update({"decoder.extra.weight": torch.zeros(1)}), "does not use"),
        (lambda c: c.update(cfg=None), "neither 'args' nor 'cfg'"),
    ],
)
def test_checkpoints_that_cannot_be_converted_are_refused(exported, tmp_path, change, message):
    out, _, _ = exported
    bad = _rewrite(out.model_path, tmp_path / "bad.pt", change)
    with pytest.raises(GcnnError, match=message) as err:
        from_fairseq(bad, out.dict_path)
    assert "\n" not in str(err.value)


def test_files_that_are_not_checkpoints_are_refused(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a pickle at all")
    for path, message in [(tmp_path / "missing.pt", "does not exist"), (garbage, "readable")]:
        with pytest.raises(GcnnError, match=message):
            read_fairseq_checkpoint(path)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(GcnnError, match="not a fairseq checkpoint"):
        read_fairseq_checkpoint(tmp_path / "list.pt")


# --- to-fairseq refusals --------------------------------------------------------------------------


def test_to_fairseq_refuses_what_fconv_lm_cannot_hold(tmp_path):
    path, _, _ = _native(tmp_path, gating="relu")
    with pytest.raises(GcnnError, match="GLU only"):
        to_fairseq(path, tmp_path / "a")
    counts = {f"w{i}": 1000 - i for i in range(40)}
    counts.update({"<eos>": 1, "<unk>": 500})  # <eos> the rarest word: in the last cluster
    path, _, _ = _native(tmp_path, counts=counts)
    with pytest.raises(GcnnError, match="outside the adaptive softmax's head"):
        to_fairseq(path, tmp_path / "b")
    lstm = model_from_config({"family": "lstm", "vocab_size": 10, "embed_dim": 4, "hidden_size": 4})
    tok = WordTokenizer(["<eos>", "<unk>"] + [f"w{i}" for i in range(8)])
    save_checkpoint(tmp_path / "lstm.pt", model_checkpoint(lstm, tok))
    with pytest.raises(GcnnError, match="fconv_lm is a GCNN"):
        to_fairseq(tmp_path / "lstm.pt", tmp_path / "c")
    assert not any((tmp_path / d).exists() for d in "abc")


# --- the converted checkpoint in evaluate.py ------------------------------------------------------


def test_converted_checkpoint_works_in_evaluate(exported, tmp_path, tiny_corpus, capsys):
    out, _, _ = exported
    # a fairseq model over the tiny corpus' own vocabulary
    tokenizer = prepare_corpus(tiny_corpus).tokenizer
    path, _, _ = _native(
        tmp_path, counts=dict.fromkeys(tokenizer.words, 1) | {"<eos>": 9, "<unk>": 8}
    )
    fs = to_fairseq(path, tmp_path / "fs2")
    ckpt = tmp_path / "converted.pt"
    assert (
        convert_main(
            ["from-fairseq", str(fs.model_path), "--dict", str(fs.dict_path), "--out", str(ckpt)]
        )
        == 0
    )
    assert "wrote" in capsys.readouterr().out
    test = tiny_corpus / "test.txt"
    assert evaluate_main(["score", str(ckpt), str(test), "--json"]) == 0
    scores = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(scores) == len(test.read_text().splitlines())
    assert evaluate_main(["sample", str(ckpt), "--max-tokens", "5"]) == 0
    capsys.readouterr()
    flags = ["perplexity", str(ckpt), "--data", str(tiny_corpus), "--json"]
    assert evaluate_main(flags) == 0
    exact = json.loads(capsys.readouterr().out)
    assert evaluate_main(flags + ["--fairseq-blocks", "16"]) == 0
    blocks = json.loads(capsys.readouterr().out)
    assert blocks["tokens"] == exact["tokens"] and blocks["perplexity"] != exact["perplexity"]
    assert evaluate_main(flags + ["--context-window", "3"]) == 2
    assert "--fairseq-blocks only" in capsys.readouterr().err


# --- perplexity in fairseq-eval-lm's blocks ------------------------------------------------------


def test_fairseq_blocks_agree_with_the_exact_evaluator_where_they_must(tmp_path):
    path, _, _ = _native(tmp_path, blocks=[{"layers": [[4, 16]], "repeat": 3}])
    model, tokenizer, _ = load_model(path)
    tokens = np.random.default_rng(0).integers(0, tokenizer.vocab_size, 300).astype(np.int32)
    eos = tokenizer.eos_id
    full = model.receptive_field - 1  # 9: a window this long gives every token its full history
    exact, _ = corpus_nll(model, tokens, eos)
    windowed, _ = fairseq_blocks_nll(model, tokens, eos, tokens_per_sample=40, context_window=full)
    assert windowed == pytest.approx(exact, rel=1e-6)
    # blocks of one token: each conditioned on the one before it only (the context study's 0)
    one, _ = fairseq_blocks_nll(model, tokens, eos, tokens_per_sample=1)
    assert one == pytest.approx(corpus_nll(model, tokens, eos, context=0)[0], rel=1e-6)
    blocks, count = fairseq_blocks_nll(model, tokens, eos, tokens_per_sample=40)
    assert count == len(tokens) and abs(blocks - exact) > 1e-4 * exact  # truncated contexts
    with pytest.raises(GcnnError, match="context-window"):
        fairseq_blocks_nll(model, tokens, eos, tokens_per_sample=8, context_window=8)
