"""What the latency table times: models by name, realistic random sentences, the scoring call.

Sentences get realistic word frequencies (so the adaptive softmax's tails are needed about as
often as on real text); the call scores every token of a sentence, as serving it would."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from gcnn.errors import GcnnError

# Vocabulary sizes used when a preset is benchmarked with random weights. Speed depends on the
# vocabulary only through the embedding lookup and the adaptive-softmax tails, but the paper's
# Table 4 is about Google Billion Word models, so GBW presets get GBW's vocabulary.
GBW_VOCAB = 793_471
WT103_VOCAB = 267_735
WT2_VOCAB = 33_278


def default_vocab_size(preset: str) -> int:
    """The vocabulary of the corpus a preset was designed for (see the module constants)."""
    from gcnn.models.presets import PRESET_NOTES

    corpus = PRESET_NOTES.get(preset, ("",))[0]
    if corpus.startswith("GBW"):
        return GBW_VOCAB
    if corpus.startswith("WikiText-103"):
        return WT103_VOCAB
    return WT2_VOCAB


def load_for_latency(spec: str, vocab_size: int | None) -> tuple[str, nn.Module]:
    """(name, model) for MODEL, a preset name (random weights, seed 0) or a checkpoint path;
    on the CPU, for `prepare_for_inference` to move."""
    from gcnn.models import PRESETS, build_model

    if spec in PRESETS:
        vocab = vocab_size or default_vocab_size(spec)
        torch.manual_seed(0)
        return spec, build_model(spec, vocab)
    path = Path(spec)
    if path.exists():
        from gcnn.checkpoint import load_model

        model, _tokenizer, _ckpt = load_model(path, device="cpu")
        return path.name, model
    raise GcnnError(
        f"'{spec}' is neither a preset nor a checkpoint file; presets: {', '.join(sorted(PRESETS))}"
    )


# Word frequencies have two regimes (Ferrer i Cancho & Solé 2001): Zipf's law p(r) ∝ 1/r over a
# kernel lexicon of the ~5,000 most frequent words, then a steeper p(r) ∝ 1/r² beyond it. A plain
# 1/r law over 793k words would send one token in ten to the rarest 600k words; real text sends
# well under one in a hundred there.
KERNEL_LEXICON = 5000


def word_rank_probs(vocab_size: int) -> torch.Tensor:
    """p(id) for frequency-sorted ids under the two-regime law above (continuous at the knee)."""
    rank = torch.arange(1, vocab_size + 1, dtype=torch.float64)
    p = torch.where(rank <= KERNEL_LEXICON, 1.0 / rank, KERNEL_LEXICON / rank**2)
    return p / p.sum()


def random_sentences(vocab_size: int, batch: int, length: int, seed: int) -> torch.Tensor:
    """(batch, length) token ids with realistic word frequencies (see `word_rank_probs`), so
    the adaptive softmax needs its tail clusters about as often as on real sentences."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.multinomial(word_rank_probs(vocab_size), batch * length, True, generator=g)
    return ids.view(batch, length)


def scoring_fn(
    model: nn.Module, sentences: torch.Tensor, eos_id: int = 0, device: str | None = None
) -> Callable[[], object]:
    """Scoring calls: log-prob of every token of every sentence given a leading <eos>.

    `sentences` is (calls, batch, length) on the host: each call scores the next batch in turn
    (cycling), so repeats see different sentences (and different adaptive-softmax tails), like
    real traffic. A call does what serving a sentence that arrives as ids takes: plan the softmax
    on the host, copy ids and plan to `device` (default: the model's), score.
    """
    if sentences.dim() == 2:
        sentences = sentences[None]
    sentences = sentences.cpu()
    device = device or str(next(model.parameters()).device)
    inputs = torch.cat([torch.full_like(sentences[..., :1], eos_id), sentences[..., :-1]], dim=-1)
    turn = [0]

    def score():
        i = turn[0] % len(sentences)
        turn[0] += 1
        with torch.inference_mode():
            plan = model.plan(sentences[i]).to(device)
            x, y = inputs[i].to(device), sentences[i].to(device)
            return model.token_log_probs(x, y, plan)

    return score


def network_fn(model: nn.Module, sentences: torch.Tensor, eos_id: int = 0) -> Callable[[], object]:
    """Like `scoring_fn`, but stops before the softmax: only the network's hidden states.

    Not a way to score anything; it tells how a sentence's time splits between the network
    (convolutions or recurrence) and the adaptive softmax.
    """
    inputs = torch.cat([torch.full_like(sentences[:, :1], eos_id), sentences[:, :-1]], dim=-1)

    def forward():
        with torch.inference_mode():
            return model(inputs)[0]

    return forward


def vocab_size_of(model: nn.Module) -> int:
    config = model.config_dict() if hasattr(model, "config_dict") else {}
    if "vocab_size" in config:
        return int(config["vocab_size"])
    return int(model.vocab_size)
