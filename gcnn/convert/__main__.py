"""`python -m gcnn.convert {from-fairseq, to-fairseq}`: one `error:` line on any user mistake."""

from __future__ import annotations

import argparse
import sys

from gcnn.errors import run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gcnn.convert",
        description="Convert gated convolutional LMs between fairseq (fconv_lm) and gcnn.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    q = sub.add_parser(
        "from-fairseq",
        help="a fairseq / wav2letter fconv_lm .pt + its dictionary -> a gcnn checkpoint",
    )
    q.add_argument("model", metavar="MODEL.pt", help="fairseq checkpoint (never unpickled as code)")
    q.add_argument(
        "--dict",
        required=True,
        metavar="DICT.txt",
        help="its dictionary: fairseq's dict.txt or wav2letter's .vocab",
    )
    q.add_argument("--out", required=True, metavar="CKPT.pt", help="the gcnn checkpoint to write")
    q.set_defaults(run=_from_fairseq)
    q = sub.add_parser("to-fairseq", help="a gcnn checkpoint -> DIR/model.pt + DIR/dict.txt")
    q.add_argument("checkpoint", metavar="CKPT.pt")
    q.add_argument("--out", required=True, metavar="DIR", help="directory to write into")
    q.set_defaults(run=_to_fairseq)
    return p


def _from_fairseq(args) -> int:
    from gcnn.convert.from_fairseq import convert_file, describe

    converted = convert_file(args.model, args.dict, args.out)
    print(describe(converted))
    print(f"wrote {args.out}")
    return 0


def _to_fairseq(args) -> int:
    from gcnn.convert.to_fairseq import to_fairseq

    out = to_fairseq(args.checkpoint, args.out)
    print(f"fconv_lm --decoder-layers '{out.decoder_layers}', vocabulary {out.vocab_size:,}")
    if out.extra_layer:
        print("  + one 1x1 layer: a constant feature keeps <s>/<pad> at probability 0 (and fc_out)")
    print(f"wrote {out.model_path} and {out.dict_path}")
    return 0


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
