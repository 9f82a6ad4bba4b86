"""python -m gcnn.models [--vocab-size N]: every preset with its size and cost.

Models are built on PyTorch's `meta` device (shapes without storage), so even the billion-word
presets are listed instantly.
"""

from __future__ import annotations

import argparse

import torch

from gcnn.errors import GcnnError, run_cli
from gcnn.models import PRESETS, build_model
from gcnn.models.presets import PRESET_NOTES

WIKITEXT103_VOCAB = 267_735


def preset_rows(vocab_size: int, **overrides) -> list[dict]:
    rows = []
    for name in PRESETS:
        with torch.device("meta"):
            model = build_model(name, vocab_size, **overrides)
        data, ppl = PRESET_NOTES.get(name, ("", None))
        rows.append(
            {
                "name": name,
                "data": data,
                "params": model.num_parameters(),
                "receptive_field": model.receptive_field,
                "layers": model.num_layers,
                "cutoffs": model.softmax.cutoffs,
                "flops_full": model.flops_per_token(full_softmax=True),
                "flops_head": model.flops_per_token(full_softmax=False),
                "paper_ppl": ppl,
            }
        )
    return rows


def format_table(rows: list[dict]) -> str:
    header = (
        f"{'preset':<11} {'data':<16} {'params':>9} {'recept.':>7} {'layers':>6} "
        f"{'MFLOP/tok':>10} {'(head)':>8}  {'cutoffs':<22} {'paper ppl':>9}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        rf = "-" if r["receptive_field"] is None else str(r["receptive_field"])
        ppl = "" if r["paper_ppl"] is None else f"{r['paper_ppl']:.1f}"
        cutoffs = ",".join(str(c) for c in r["cutoffs"]) or "(full)"
        lines.append(
            f"{r['name']:<11} {r['data']:<16} {r['params'] / 1e6:>8.1f}M {rf:>7} {r['layers']:>6} "
            f"{r['flops_full'] / 1e6:>10.1f} {r['flops_head'] / 1e6:>8.1f}  {cutoffs:<22} {ppl:>9}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gcnn.models",
        description="List the model presets: parameters, receptive field, layers and FLOPs per "
        "token (2 x multiply-adds; 'MFLOP/tok' scores the full vocabulary, '(head)' only the "
        "adaptive-softmax head, the cost for a frequent word).",
    )
    parser.add_argument(
        "--vocab-size",
        type=int,
        default=WIKITEXT103_VOCAB,
        help="vocabulary size (default 267,735: WikiText-103; Google Billion Word: 793,471; "
        "WikiText-2: 33,278)",
    )
    args = parser.parse_args(argv)
    if args.vocab_size < 2:
        raise GcnnError(f"--vocab-size {args.vocab_size} must be at least 2")
    print(f"vocabulary: {args.vocab_size:,} words")
    print(format_table(preset_rows(args.vocab_size)))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
