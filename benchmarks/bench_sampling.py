"""Per-token sampling time against prefix length: incremental state vs full recomputation.

    python benchmarks/bench_sampling.py [--models gcnn-small lstm-small] [--tokens 20]

For prefixes of 10, 100 and 1000 tokens, times the generation of the next `--tokens` tokens
(i) through the incremental state (`init_state` / `step`: a GCNN keeps each layer's last k-1
inputs, an LSTM its (h, c)) and (ii) by recomputing `next_token_log_probs` over the whole prefix
for every token. The incremental time should stay flat; the recomputation grows with the prefix.
Random weights (speed does not depend on them), WikiText-2's vocabulary size, fp32.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gcnn.errors import GcnnError
from gcnn.evaluation.sampling import SamplingConfig, choose_token
from gcnn.machine import run_benchmark
from gcnn.models import build_model

VOCAB = 33_278


@torch.inference_mode()
def per_token_seconds(model, prefix: list[int], tokens: int, incremental: bool) -> float:
    config = SamplingConfig(max_tokens=tokens, seed=0)
    generator = torch.Generator().manual_seed(0)
    history = list(prefix)
    if incremental:
        state = model.init_state(1)
        for t in history:  # feeding the prefix is not part of the per-token cost
            log_probs, state = model.step(torch.tensor([t]), state)
    times = []
    for _ in range(tokens):
        start = time.perf_counter()
        if incremental:
            token = choose_token(log_probs[0], config, generator)
            log_probs, state = model.step(torch.tensor([token]), state)
        else:
            log_probs = model.next_token_log_probs(torch.tensor([history]))[0, -1]
            token = choose_token(log_probs, config, generator)
        times.append(time.perf_counter() - start)
        history.append(token)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["gcnn-small", "lstm-small"])
    p.add_argument("--prefix-lengths", nargs="+", type=int, default=[10, 100, 1000])
    p.add_argument("--tokens", type=int, default=20, help="tokens generated per measurement")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if min([args.tokens, *args.prefix_lengths]) < 1 or (
        args.threads is not None and args.threads < 1
    ):
        raise GcnnError("--tokens, --prefix-lengths and --threads must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"median ms per generated token, fp32, {torch.get_num_threads()} thread(s)\n")
    print("| model | prefix | incremental (ms) | full recomputation (ms) | ratio |")
    print("|---|---:|---:|---:|---:|")
    for name in args.models:
        torch.manual_seed(0)
        model = build_model(name, VOCAB).eval().remove_weight_norm()
        g = torch.Generator().manual_seed(1)
        for n in args.prefix_lengths:
            prefix = torch.randint(0, VOCAB, (n,), generator=g).tolist()
            fast = per_token_seconds(model, prefix, args.tokens, incremental=True)
            slow = per_token_seconds(model, prefix, args.tokens, incremental=False)
            print(f"| {name} | {n} | {1e3 * fast:.2f} | {1e3 * slow:.2f} | {slow / fast:.1f}x |")


if __name__ == "__main__":
    raise SystemExit(run_benchmark(main))
