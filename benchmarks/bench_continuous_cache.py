"""Evaluation speed with the continuous cache against without it, on WikiText-2 valid.

    python benchmarks/bench_continuous_cache.py                       # gcnn-small, random weights
    python benchmarks/bench_continuous_cache.py RUN/checkpoint_best.pt OTHER/checkpoint_best.pt
    python benchmarks/bench_continuous_cache.py --tokens 20000 --repeats 1   # a quick smoke run

For each model, in interleaved rounds (so background load on a shared machine hits both alike),
times the exact perplexity of the split without the cache (`corpus_nll`) and with it
(`evaluate_with_cache`: the same model pass plus the cache), and prints the median tokens/s of
each and their ratio, with the CPU model. Speed does not depend on the weights, so without a
checkpoint gcnn-small with random weights is measured on WikiText-2's vocabulary.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gcnn.errors import GcnnError
from gcnn.evaluation.cache_evaluation import evaluate_with_cache
from gcnn.evaluation.continuous_cache import DEFAULT_SIZE, CacheConfig
from gcnn.evaluation.perplexity import corpus_nll
from gcnn.machine import cpu_name, run_benchmark


def models_and_tokens(checkpoints: list[str], split: str):
    """(name, model, tokenizer, tokens) for each checkpoint, or random gcnn-small."""
    from gcnn.data import find_split_files, prepare_corpus, resolve_corpus
    from gcnn.evaluation.perplexity import tokenize_split

    if not checkpoints:
        from gcnn.models import build_model

        corpus = prepare_corpus("wikitext-2", splits=("train", split))
        torch.manual_seed(0)
        model = build_model("gcnn-small", corpus.tokenizer.vocab_size)
        yield "gcnn-small (random weights)", model, corpus.tokenizer, corpus.splits[split]
        return
    from gcnn.checkpoint import load_model

    files = find_split_files(resolve_corpus("wikitext-2"))
    for path in checkpoints:
        model, tokenizer, ckpt = load_model(path)
        tokens = tokenize_split(tokenizer, files[split]).tokens
        preset = (ckpt.get("train_config") or {}).get("model") or model.family
        yield f"{preset} ({path})", model, tokenizer, tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="*", help="default: gcnn-small with random weights")
    p.add_argument("--split", default="valid", choices=("valid", "test"))
    p.add_argument("--tokens", type=int, default=0, help="first N tokens only (0 = all)")
    p.add_argument("--size", type=int, default=DEFAULT_SIZE)
    p.add_argument("--theta", type=float, default=0.3)
    p.add_argument("--lambda", dest="lam", type=float, default=0.1)
    p.add_argument("--block-size", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (median)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.repeats < 1 or args.tokens < 0 or (args.threads is not None and args.threads < 1):
        raise GcnnError("--repeats and --threads must be at least 1, --tokens at least 0")
    config = CacheConfig(args.size, args.theta, args.lam).validate()
    if args.threads:
        torch.set_num_threads(args.threads)
    options = dict(block_size=args.block_size, batch_size=args.batch_size)
    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}")
    print(
        f"cache: size {config.size}, theta {config.theta:g}, lambda {config.lam:g}; "
        f"blocks of {args.block_size} x {args.batch_size}; {args.split} split; "
        f"median of {args.repeats} rounds\n"
    )
    print("| model | tokens | without cache (tok/s) | with cache (tok/s) | with / without |")
    print("|---|---:|---:|---:|---:|")
    for name, model, tokenizer, tokens in models_and_tokens(args.checkpoints, args.split):
        model.eval()
        if args.tokens:
            tokens = tokens[: args.tokens]
        plain, cached = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            corpus_nll(model, tokens, tokenizer.eos_id, **options)
            plain.append(time.perf_counter() - start)
            start = time.perf_counter()
            evaluate_with_cache(model, tokenizer, tokens, config, **options)
            cached.append(time.perf_counter() - start)
        without = len(tokens) / statistics.median(plain)
        with_cache = len(tokens) / statistics.median(cached)
        print(
            f"| {name} | {len(tokens):,} | {without:,.0f} | {with_cache:,.0f} | "
            f"{with_cache / without:.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    raise SystemExit(run_benchmark(main))
