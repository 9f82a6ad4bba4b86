"""What exact perplexity costs: python benchmarks/bench_perplexity.py

Exact perplexity feeds every block of targets its receptive_field - 1 tokens of history, which
are computed but not scored. Plain non-overlapping blocks (what a naive evaluation does) skip
that and score each block's first tokens with too little history. This times both on the same
tokens (WikiText-2's validation split, the first --tokens of it; random weights: only the cost
matters), interleaved, and prints the ratio: the target is at most 1.2x. It also prints both
perplexities of the random model, to show the two differ (the plain one is not exact).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from gcnn.data import BlockBatcher, prepare_corpus
from gcnn.errors import GcnnError
from gcnn.machine import cpu_name, run_benchmark
from gcnn.models import build_model


@torch.inference_mode()
def blocks_nll(model, tokens, eos_id: int, block: int, batch: int, context: int) -> float:
    total = torch.zeros((), dtype=torch.float64)
    for inputs, targets in BlockBatcher(tokens, eos_id, block, batch, context=context).epoch(0):
        total -= model.token_log_probs(inputs, targets, model.plan(targets)).double().sum()
    return total.item()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/bench_perplexity.py", description=__doc__
    )
    parser.add_argument("--models", nargs="+", default=["gcnn-small", "gcnn-8", "gcnn-14"])
    parser.add_argument("--data", default="wikitext-2")
    parser.add_argument("--tokens", type=int, default=20_000, help="validation tokens to score")
    parser.add_argument("--block-size", type=int, default=512, help="evaluate.py's default")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if min(args.tokens, args.block_size, args.batch_size, args.rounds) < 1:
        raise GcnnError("--tokens, --block-size, --batch-size and --rounds must be positive")
    corpus = prepare_corpus(args.data, splits=("valid",))
    tokens = np.asarray(corpus.splits["valid"][: args.tokens])
    eos = corpus.tokenizer.eos_id
    print(f"{cpu_name()}; torch {torch.__version__}; {torch.get_num_threads()} threads")
    print(f"{len(tokens):,} tokens of {args.data} valid, blocks of {args.block_size}, fp32\n")
    print(
        "| model | history | exact (s) | plain blocks (s) | exact / plain | ppl exact | ppl plain |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in args.models:
        torch.manual_seed(0)
        model = build_model(name, corpus.tokenizer.vocab_size).remove_weight_norm().eval()
        history = model.receptive_field - 1
        times = {history: [], 0: []}
        nll = {}
        for _ in range(args.rounds):
            for context in (history, 0):
                start = time.perf_counter()
                nll[context] = blocks_nll(
                    model, tokens, eos, args.block_size, args.batch_size, context
                )
                times[context].append(time.perf_counter() - start)
        exact, plain = min(times[history]), min(times[0])
        ppl = {c: float(np.exp(v / len(tokens))) for c, v in nll.items()}
        print(
            f"| {name} | {history} | {exact:.2f} | {plain:.2f} | {exact / plain:.2f}x "
            f"| {ppl[history]:,.1f} | {ppl[0]:,.1f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(run_benchmark(main))
