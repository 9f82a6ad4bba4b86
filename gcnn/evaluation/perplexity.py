"""Exact perplexity over every target token of a split.

"Exact" means each of the N tokens (every line's words and its <eos>) is scored once with all the
history the model can use, so the number does not depend on how the split is cut into batches:

- GCNN: blocks of targets, each preceded by receptive_field − 1 tokens that are fed but not scored
  (BlockBatcher's `context`). A convolution stack sees at most that much history, so every token is
  scored exactly as if the whole split were one sequence, whatever the block and batch size.
- LSTM: one stream (batch 1) cut into chunks, the state carried from chunk to chunk, so the state
  runs across the whole split.

Log-probabilities are summed in float64: millions of float32 additions would drift. The stream
itself (`exact_stream`: hidden states, targets and their log-probabilities, batch by batch) is
the one every exact score of a text comes from, the continuous cache's included.

The split is tokenized with the *checkpoint's* tokenizer (WikiText-103 here has no train split to
rebuild a vocabulary from, and a vocabulary rebuilt from other data would silently differ).
Words it does not know become <unk>; if many do, the checkpoint was trained on other data and the
perplexity would be meaningless, so that is an error.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gcnn.data import BlockBatcher, StreamBatcher
from gcnn.errors import GcnnError
from gcnn.memory import require_memory
from gcnn.models.adaptive_softmax import SoftmaxPlan
from gcnn.models.bounds import batch_bytes

# More unknown words than this (fraction of the split's words) means the data does not match the
# checkpoint's vocabulary. WikiText splits have none at all with their own vocabulary (rare words
# are already <unk> in the files), so any real mismatch is far above it.
MAX_OOV_FRACTION = 0.01


@dataclass
class TokenizedSplit:
    tokens: np.ndarray  # int32 ids, every line's words then <eos>
    lines: int
    words: int  # whitespace words + 1 per line (what per-word perplexity divides by)
    oov: int  # words the tokenizer did not know (mapped to <unk>); word tokenizers only
    oov_examples: list[str]


@dataclass
class PerplexityResult:
    nll: float  # total negative log-likelihood, nats
    tokens: int
    seconds: float
    words: int | None = None  # set for subword tokenizers: per-word perplexity

    @property
    def loss(self) -> float:
        return self.nll / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)

    @property
    def word_perplexity(self) -> float | None:
        return math.exp(self.nll / self.words) if self.words else None

    def to_json(self) -> dict:
        out = {
            "loss": self.loss,
            "perplexity": self.perplexity,
            "tokens": self.tokens,
            "tokens_per_s": self.tokens_per_s,
        }
        if self.words:
            out["words"] = self.words
            out["word_perplexity"] = self.word_perplexity
        return out


def tokenize_split(tokenizer, path: str | Path) -> TokenizedSplit:
    """Encode every line of a split file with `tokenizer` (lines → words + <eos>)."""
    from gcnn.data.corpus import iter_lines

    ids: list[int] = []
    lines = words = oov = 0
    examples: list[str] = []
    check_oov = tokenizer.kind == "word"
    unk_word = tokenizer.id_to_token(tokenizer.unk_id) if check_oov else None
    for line in iter_lines(path):
        encoded = tokenizer.encode(line)
        ids.extend(encoded)
        lines += 1
        words += tokenizer.count_words(line)
        if check_oov and tokenizer.unk_id in encoded:
            for word, i in zip(line.split(), encoded[:-1], strict=True):
                if i == tokenizer.unk_id and word != unk_word:
                    oov += 1
                    if len(examples) < 3 and word not in examples:
                        examples.append(word)
    return TokenizedSplit(np.asarray(ids, dtype=np.int32), lines, words, oov, examples)


def check_vocabulary(split: TokenizedSplit, path: str | Path, ckpt_name: str) -> None:
    """GcnnError when the data's words are not the checkpoint's vocabulary."""
    if split.words and split.oov > MAX_OOV_FRACTION * split.words:
        examples = ", ".join(map(repr, split.oov_examples))
        raise GcnnError(
            f"vocabulary mismatch: {split.oov:,} of {split.words:,} words of {path} "
            f"({100 * split.oov / split.words:.1f}%, e.g. {examples}) "
            f"are not in the vocabulary of checkpoint {ckpt_name}; evaluate it on the corpus it "
            "was trained on"
        )


@dataclass
class StreamBatch:
    """One batch of the exact stream, on the device. Its rows are consecutive pieces of the text,
    so the scored targets, read row by row, come in stream order."""

    hidden: torch.Tensor  # (B, T, D) the states that entered the softmax
    targets: torch.Tensor  # (B, T) IGNORE_INDEX where not scored (context, padding)
    log_probs: torch.Tensor  # (B, T) fp32 log p_model(target); 0 where not scored
    plan: SoftmaxPlan  # the softmax plan of `targets` (on the device)

    @property
    def count(self) -> int:
        """Scored targets, known on the host (no device sync)."""
        return self.plan.count

    def scored(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(hidden (n, D), targets (n,), log_probs (n,)) of the scored targets, in stream order."""
        keep = self.plan.keep
        return (
            self.hidden.reshape(-1, self.hidden.size(-1)).index_select(0, keep),
            self.targets.reshape(-1).index_select(0, keep),
            self.log_probs.reshape(-1).index_select(0, keep),
        )


@torch.inference_mode()
def exact_stream(
    model: torch.nn.Module,
    tokens: np.ndarray,
    eos_id: int,
    *,
    block_size: int = 512,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    context: int | None = None,
) -> Iterator[StreamBatch]:
    """The token stream scored exactly, batch by batch in order: every target once.

    `context` cuts every token's history to the previous `context` + 1 tokens (the input right
    before it plus `context` more; paper Fig. 4): one scored target per row, so no token sees
    more. None: all the history the model can use (receptive_field - 1 for a GCNN, the whole
    stream for an LSTM). Which targets count, and which softmax clusters they need, is planned
    on the host from each batch, so nothing here waits for the device.
    """
    model.eval()
    full = None if model.is_recurrent else max(0, int(model.receptive_field) - 1)
    if context is not None and context < 0:
        raise GcnnError(f"context {context}: must be 0 or more")
    # A block longer than the text is the text: the result is the same, the memory is not.
    block_size = max(1, min(block_size, len(tokens)))
    if context is not None and (full is None or context < full):
        # every row starts from a fresh state: no history beyond the row
        rows = max(1, block_size * batch_size // (context + 1))
        batches, carry = BlockBatcher(tokens, eos_id, 1, rows, context=context), False
    elif model.is_recurrent:
        # batch of one stream: the state runs from the first token to the last
        batches, carry = StreamBatcher(tokens, eos_id, block_size, 1), True
    else:
        batches, carry = BlockBatcher(tokens, eos_id, block_size, batch_size, context=full), False
    check_batch_memory(model, batches, device)
    state = None
    for inputs, targets in batches.epoch(0):
        plan = model.plan(targets).to(device)
        inputs, targets = inputs.to(device), targets.to(device)
        hidden, new_state = model(inputs, state)
        state = new_state if carry else None
        log_probs = model.softmax.target_log_prob(hidden, targets, plan)
        yield StreamBatch(hidden, targets, log_probs, plan)


def check_batch_memory(model, batches, device) -> None:
    """Refuse a batch shape whose activations cannot fit (before the first batch is built)."""
    rows = min(batches.batch_size, getattr(batches, "num_blocks", batches.batch_size))
    width = getattr(batches, "width", batches.block_size)
    require_memory(
        batch_bytes(model, rows * width, rows * batches.block_size, training=False),
        f"scoring batches of {rows:,} x {width:,} tokens",
        "lower --block-size or --batch-size",
        device,
    )


@torch.inference_mode()
def corpus_nll(
    model: torch.nn.Module,
    tokens: np.ndarray,
    eos_id: int,
    *,
    block_size: int = 512,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    context: int | None = None,
) -> tuple[float, int]:
    """(total NLL in nats, number of scored tokens) over the token stream, exactly (see
    `exact_stream` for `context`)."""
    # summed on the device in float64: no host sync until the end
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    options = dict(block_size=block_size, batch_size=batch_size, device=device, context=context)
    for batch in exact_stream(model, tokens, eos_id, **options):
        total -= batch.log_probs.double().sum()  # unscored targets score 0
        count += batch.count
    nll = total.item()
    if count != len(tokens):  # a batcher that skips or repeats targets is a bug
        raise RuntimeError(f"scored {count} targets, expected {len(tokens)}")
    return nll, count


def evaluate_perplexity(
    model: torch.nn.Module,
    tokenizer,
    tokens: np.ndarray,
    *,
    words: int | None = None,
    block_size: int = 512,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    context: int | None = None,
) -> PerplexityResult:
    """Perplexity of `model` on `tokens`; per-word perplexity too for subword tokenizers.

    `context`: cut every token's history to `context` + 1 tokens (see `corpus_nll`)."""
    if len(tokens) == 0:
        raise GcnnError("nothing to evaluate: the split has no tokens")
    start = time.perf_counter()
    nll, count = corpus_nll(
        model,
        tokens,
        tokenizer.eos_id,
        block_size=block_size,
        batch_size=batch_size,
        device=device,
        context=context,
    )
    seconds = time.perf_counter() - start
    per_word = words if tokenizer.kind != "word" else None
    return PerplexityResult(nll=nll, tokens=count, seconds=seconds, words=per_word)
