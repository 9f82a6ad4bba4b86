"""gcnn.checkpoint: atomic saves, weights_only loads, clear errors, load_model, RNG states."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from gcnn.checkpoint import (
    load_checkpoint,
    load_model,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from gcnn.errors import GcnnError

TINY = {"embed_dim": 16, "blocks": [{"layers": [[3, 16]], "repeat": 2}], "cutoffs": [20]}


def make_ckpt(tiny_corpus):
    from gcnn.data import prepare_corpus
    from gcnn.models import build_model

    corpus = prepare_corpus(tiny_corpus)
    tok = corpus.tokenizer
    torch.manual_seed(0)
    model = build_model("gcnn-small", tok.vocab_size, **TINY)
    ckpt = {
        "format": "gcnn",
        "version": 1,
        "model_config": model.config_dict(),
        "model": model.state_dict(),
        "tokenizer": tok.state_dict(),
        "vocab_fingerprint": tok.fingerprint(),
        "train_config": {"lr": 1.0, "out": None},
        "step": 3,
        "epoch": 0,
        "data_position": {"epoch": 0, "batch": 3, "state": None},
        "rng": rng_state(),
        "metrics": {"best_valid_loss": float("inf")},
    }
    return model, tok, ckpt


def test_roundtrip_is_weights_only_and_atomic(tmp_path, tiny_corpus):
    model, tok, ckpt = make_ckpt(tiny_corpus)
    path = tmp_path / "run" / "checkpoint_last.pt"
    save_checkpoint(path, ckpt)
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint_last.pt"]  # no temp file left
    raw = torch.load(path, weights_only=True)  # plain torch can read it without pickled code
    assert raw["step"] == 3 and raw["vocab_fingerprint"] == tok.fingerprint()

    loaded, tokenizer, back = load_model(path)
    assert not loaded.training
    assert tokenizer.fingerprint() == tok.fingerprint()
    inputs = torch.randint(0, tok.vocab_size, (2, 9))
    model.eval()
    with torch.no_grad():
        assert torch.equal(
            model.token_log_probs(inputs, inputs), loaded.token_log_probs(inputs, inputs)
        )
    assert back["data_position"] == {"epoch": 0, "batch": 3, "state": None}


def test_overwrite_keeps_a_complete_file(tmp_path, tiny_corpus):
    _, _, ckpt = make_ckpt(tiny_corpus)
    path = tmp_path / "c.pt"
    save_checkpoint(path, ckpt)
    ckpt["step"] = 4
    save_checkpoint(path, ckpt)
    assert load_checkpoint(path)["step"] == 4


def ran_on_load(marker: str) -> int:
    """What a malicious checkpoint would do, harmlessly: leave a file behind when unpickled."""
    Path(marker).write_text("pickled code ran")
    return 0


class RunsCodeOnLoad:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (ran_on_load, (self.marker,))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "pickled", "foreign", "missing"])
def test_bad_files_give_one_line_errors(tmp_path, tiny_corpus, damage):
    _, _, ckpt = make_ckpt(tiny_corpus)
    path = tmp_path / "c.pt"
    save_checkpoint(path, ckpt)
    data = path.read_bytes()
    marker = tmp_path / "pickled-code-ran"
    if damage == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "pickled":
        # A complete, valid gcnn checkpoint plus one entry whose unpickling runs code: a full
        # pickle load (weights_only=False) would return it without complaint and leave the
        # marker file; only the weights-only refusal gives the "pickled Python objects" error.
        torch.save({**ckpt, "extra": RunsCodeOnLoad(marker)}, path)
    elif damage == "foreign":
        torch.save({"weights": torch.zeros(2)}, path)
    else:
        path = tmp_path / "nope.pt"
    with pytest.raises(GcnnError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    if damage == "pickled":
        assert "pickled Python objects" in message and "ran_on_load" in message
        assert not marker.exists()  # refused before any pickled code could run


def test_weights_of_another_architecture_are_refused(tmp_path, tiny_corpus):
    _, _, ckpt = make_ckpt(tiny_corpus)
    ckpt["model_config"]["embed_dim"] = 32  # weights say 16
    save_checkpoint(tmp_path / "c.pt", ckpt)
    with pytest.raises(GcnnError, match="do not match"):
        load_model(tmp_path / "c.pt")


def test_rng_states_roundtrip_through_weights_only(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.random(), np.random.rand(), torch.rand(1)
    torch.save({"rng": rng_state()}, tmp_path / "r.pt")
    expected = (random.random(), float(np.random.rand()), torch.rand(4))
    set_rng_state(torch.load(tmp_path / "r.pt", weights_only=True)["rng"])
    again = (random.random(), float(np.random.rand()), torch.rand(4))
    assert expected[:2] == again[:2] and torch.equal(expected[2], again[2])
