"""How long the paper's GCNN-14 run would take on one GPU, from counted FLOPs: a projection.

    python benchmarks/project_gpu_time.py                       # H100, a range of MFUs
    python benchmarks/project_gpu_time.py --mfu 0.31 --peak-tflops 798   # a measured MFU

Training FLOPs per scored token = 3 x the forward pass (the backward costs twice the forward),
counted from the model itself (gcnn.build_model(...).flops_per_token): the network on every fed
token (each 1024-token block is fed receptive_field - 1 tokens of context too), the adaptive
softmax's head on every scored token, and each tail on the share of tokens whose words fall in
it. That share follows the two-regime word-frequency law the latency benchmark uses
(gcnn.evaluation.workload.word_rank_probs); WikiText-103's real train split is not here to count.
The run: fairseq's recipe, 35 epochs of WikiText-103's 103,227,021 training tokens.

This is arithmetic, not a measurement: the MFU it assumes is the uncertain part. Until a GPU
runs benchmarks/gpu_check.sh (which measures gcnn-14's step and its MFU), the table shows a
range; pass the measured MFU to replace it.
"""

from __future__ import annotations

import argparse

import torch

from gcnn.errors import GcnnError
from gcnn.evaluation.workload import WT103_VOCAB, word_rank_probs
from gcnn.machine import run_benchmark
from gcnn.models import build_model

WT103_TRAIN_TOKENS = 103_227_021


def training_flops_per_token(preset: str, vocab_size: int, block: int) -> dict:
    with torch.device("meta"):
        model = build_model(preset, vocab_size)
    softmax = model.softmax
    head = 2 * softmax.in_features * softmax.head.out_features
    network = model.flops_per_token(full_softmax=False) - head
    context = model.receptive_field - 1
    probs = word_rank_probs(vocab_size)
    tails = 0.0
    for i, tail in enumerate(softmax.tails):
        share = float(probs[softmax.bounds[i] : softmax.bounds[i + 1]].sum())
        per_row = sum(m.in_features * m.out_features for m in tail if hasattr(m, "in_features"))
        tails += share * 2 * per_row
    forward = network * (block + context) / block + head + tails
    return {
        "network": network,
        "context_factor": (block + context) / block,
        "head": head,
        "tails": tails,
        "training": 3 * forward,
        "params": sum(p.numel() for p in model.parameters()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/project_gpu_time.py", description=__doc__
    )
    parser.add_argument("--preset", default="gcnn-14")
    parser.add_argument("--vocab-size", type=int, default=WT103_VOCAB)
    parser.add_argument("--block", type=int, default=1024, help="scored tokens per row (fairseq)")
    parser.add_argument("--epochs", type=float, default=35)
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=989.0,
        help="the GPU's dense bf16 peak (default: H100 SXM's 989; an 8192^3 product measured "
        "798 on the H100s lent here)",
    )
    parser.add_argument("--mfu", type=float, nargs="+", default=[0.2, 0.3, 0.4, 0.5])
    args = parser.parse_args(argv)
    if args.epochs <= 0 or args.peak_tflops <= 0 or any(not 0 < m <= 1 for m in args.mfu):
        raise GcnnError("--epochs and --peak-tflops must be positive, --mfu in (0, 1]")
    f = training_flops_per_token(args.preset, args.vocab_size, args.block)
    tokens = args.epochs * WT103_TRAIN_TOKENS
    total = f["training"] * tokens
    print(
        f"{args.preset}, vocabulary {args.vocab_size:,}: {f['params'] / 1e6:.1f}M parameters; "
        f"forward MFLOP per scored token: network {f['network'] / 1e6:.1f} x "
        f"{f['context_factor']:.3f} (context), head {f['head'] / 1e6:.1f}, tails "
        f"{f['tails'] / 1e6:.1f}; training {f['training'] / 1e6:.0f} MFLOP per token"
    )
    print(
        f"{args.epochs:g} epochs x {WT103_TRAIN_TOKENS:,} tokens = {tokens / 1e9:.2f}B tokens: "
        f"{total:.3g} FLOP"
    )
    print("| MFU | sustained TFLOP/s | time on one GPU |")
    print("|---:|---:|---:|")
    for mfu in args.mfu:
        rate = mfu * args.peak_tflops * 1e12
        hours = total / rate / 3600
        print(f"| {100 * mfu:.0f}% | {rate / 1e12:.0f} | {hours:.1f} h |")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_benchmark(main))
