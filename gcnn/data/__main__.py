"""python -m gcnn.data download|prepare: fetch a corpus, or tokenize it and print statistics."""

from __future__ import annotations

import argparse
import json
import sys
import time

from gcnn.data.corpus import KNOWN_CORPORA
from gcnn.errors import GcnnError, run_cli


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gcnn.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    dl = sub.add_parser("download", help="download and extract wikitext-2 or wikitext-103")
    dl.add_argument("name", choices=KNOWN_CORPORA)
    dl.add_argument("--url", action="append", help="mirror to try (repeatable; file:// works)")
    dl.add_argument("--md5", help="expected MD5 of the archive (default: the official one)")
    dl.add_argument("--root", help="directory to extract into (default: $GCNN_DATA or ./data)")
    dl.add_argument("--timeout", type=float, default=30.0, help="seconds per connection")

    prep = sub.add_parser("prepare", help="tokenize a corpus, cache it, print statistics")
    prep.add_argument("corpus", help="wikitext-2, wikitext-103, or a directory")
    prep.add_argument("--tokenizer", choices=["word", "sentencepiece"], default="word")
    prep.add_argument("--vocab-size", type=int, help="sentencepiece size / word vocabulary cap")
    prep.add_argument("--model-type", choices=["unigram", "bpe"], default="unigram")
    prep.add_argument("--min-count", type=int, default=1, help="rarer words become <unk>")
    prep.add_argument("--splits", default=None, help="comma-separated (default: all present)")
    prep.add_argument("--cache-dir", help="where the cache goes (default: see docs/data.md)")
    prep.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _prepare(args) -> None:
    from gcnn.data.corpus import SPLITS, find_split_files, resolve_corpus
    from gcnn.data.prepare import prepare_corpus

    if args.splits:
        splits = tuple(s.strip() for s in args.splits.split(",") if s.strip())
    else:  # everything the directory has: a valid/test-only corpus just works
        present = find_split_files(resolve_corpus(args.corpus))
        splits = tuple(s for s in SPLITS if s in present)
    start = time.perf_counter()
    corpus = prepare_corpus(
        args.corpus,
        args.tokenizer,
        vocab_size=args.vocab_size,
        sp_model_type=args.model_type,
        min_count=args.min_count,
        cache_dir=args.cache_dir,
        splits=splits,
        progress=not args.json and sys.stderr.isatty(),
    )
    seconds = time.perf_counter() - start
    if corpus.vocab_source not in ("train", "given"):
        print(
            f"note: {corpus.directory} has no train split; the vocabulary was built from "
            f"{corpus.vocab_source}",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(corpus.to_json()))
        return
    print(f"corpus     {corpus.directory}")
    print(f"cache      {corpus.cache_path}  ({seconds:.2f} s)")
    print(f"tokenizer  {corpus.tokenizer.kind}, vocabulary {corpus.tokenizer.vocab_size:,}")
    print(f"{'split':<8}{'tokens':>14}{'lines':>11}{'unk':>10}{'words':>14}")
    for name in corpus.splits:
        s = corpus.stats[name]
        print(f"{name:<8}{s['tokens']:>14,}{s['lines']:>11,}{s['unk']:>10,}{s['words']:>14,}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "download":
        from gcnn.data.download import download_corpus

        path = download_corpus(
            args.name, root=args.root, urls=args.url, md5=args.md5, timeout=args.timeout
        )
        print(f"{args.name} is in {path}")
    elif args.command == "prepare":
        _prepare(args)
    else:  # argparse's `required=True` makes this unreachable
        raise GcnnError(f"unknown command {args.command!r}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
