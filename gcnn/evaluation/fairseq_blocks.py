"""Perplexity as `fairseq-eval-lm` measures it by default, to compare with numbers quoted from it.

fairseq's language-modelling task cuts the split's token stream into non-overlapping blocks of
`tokens_per_sample` tokens (default 1,024; TokenBlockDataset, break mode "none") and scores each
block on its own: its first token is conditioned on the token just before the block (`<eos>` for
the first block) and nothing earlier, so the first tokens of every block see less history than
the model could use. `--context-window C` feeds the C tokens before each block as well (unscored)
and shrinks the blocks to tokens_per_sample - C (LMContextWindowDataset).

That is BlockBatcher with `block_size = tokens_per_sample - C` and `context = C`. Every token is
still scored exactly once, so the number is comparable with fairseq's, not with this project's
exact perplexity (gcnn.evaluation.perplexity), which gives every token its full receptive field
and is lower (better) by the cost of the truncated contexts.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from gcnn.data import BlockBatcher
from gcnn.errors import GcnnError
from gcnn.evaluation.perplexity import PerplexityResult

TOKENS_PER_SAMPLE = 1024  # fairseq's LanguageModelingConfig default


@torch.inference_mode()
def fairseq_blocks_nll(
    model: torch.nn.Module,
    tokens: np.ndarray,
    eos_id: int,
    *,
    tokens_per_sample: int = TOKENS_PER_SAMPLE,
    context_window: int = 0,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> tuple[float, int]:
    """(total NLL in nats, scored tokens) with fairseq-eval-lm's blocks (see the module doc)."""
    if tokens_per_sample < 1:
        raise GcnnError(f"--fairseq-blocks {tokens_per_sample}: must be at least 1")
    if not 0 <= context_window < tokens_per_sample:
        raise GcnnError(
            f"--context-window {context_window}: must be 0 or more and below the block size "
            f"{tokens_per_sample} (fairseq-eval-lm shrinks the blocks by it)"
        )
    model.eval()
    block = tokens_per_sample - context_window
    batcher = BlockBatcher(tokens, eos_id, block, batch_size, context=context_window)
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    for inputs, targets in batcher.epoch(0):
        plan = model.plan(targets)
        inputs, targets = inputs.to(device), targets.to(device)
        # every row starts from zeros (a GCNN's causal padding, a fresh LSTM state): no history
        # beyond the row, as in fairseq
        total -= model.token_log_probs(inputs, targets, plan.to(device)).double().sum()
        count += plan.count
    if count != len(tokens):  # a batcher that skips or repeats targets is a bug
        raise RuntimeError(f"scored {count} targets, expected {len(tokens)}")
    return total.item(), count


def evaluate_fairseq_blocks(
    model: torch.nn.Module,
    tokenizer,
    tokens: np.ndarray,
    *,
    words: int | None = None,
    tokens_per_sample: int = TOKENS_PER_SAMPLE,
    context_window: int = 0,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> PerplexityResult:
    """`fairseq_blocks_nll` as a PerplexityResult (per-word perplexity for subword models)."""
    if len(tokens) == 0:
        raise GcnnError("nothing to evaluate: the split has no tokens")
    start = time.perf_counter()
    nll, count = fairseq_blocks_nll(
        model,
        tokens,
        tokenizer.eos_id,
        tokens_per_sample=tokens_per_sample,
        context_window=context_window,
        batch_size=batch_size,
        device=device,
    )
    seconds = time.perf_counter() - start
    per_word = words if tokenizer.kind != "word" else None
    return PerplexityResult(nll=nll, tokens=count, seconds=seconds, words=per_word)
