"""evaluate.py / gcnn-evaluate: perplexity, score, sample and latency subcommands."""

from __future__ import annotations

import argparse
import io
import json
import sys
import warnings
from pathlib import Path

import numpy as np

from gcnn.devices import resolve_device
from gcnn.errors import GcnnError, run_cli


def _load(path: str, device: str):
    """(model, tokenizer, checkpoint), refusing a checkpoint whose parts disagree."""
    from gcnn.checkpoint import load_model

    model, tokenizer, ckpt = load_model(path, device=device, inference=True)
    vocab = model.config_dict().get("vocab_size")
    if vocab != tokenizer.vocab_size:
        raise GcnnError(
            f"checkpoint {path}: its model has {vocab} words but its tokenizer "
            f"{tokenizer.vocab_size}; the file was assembled wrongly, use another checkpoint"
        )
    return model, tokenizer, ckpt


def _positive(flag: str, value: int) -> int:
    if value < 1:
        raise GcnnError(f"{flag} {value}: must be at least 1")
    return value


# --- perplexity --------------------------------------------------------------------------------


def cmd_perplexity(args) -> int:
    from gcnn.data import find_split_files, resolve_corpus
    from gcnn.evaluation.cache_cli import cache_requested, check_cache_flags, perplexity_with_cache
    from gcnn.evaluation.perplexity import check_vocabulary, evaluate_perplexity, tokenize_split

    device = resolve_device(args.device)
    _positive("--batch-size", args.batch_size)
    _positive("--block-size", args.block_size)
    check_cache_flags(args)
    model, tokenizer, ckpt = _load(args.checkpoint, device)
    source = args.data or args.dataset or _trained_on(ckpt)
    if source is None:
        raise GcnnError(
            f"checkpoint {args.checkpoint} does not say which corpus it was trained on; "
            "pass --dataset NAME or --data DIR"
        )
    directory = resolve_corpus(source)
    files = find_split_files(directory)
    if args.split not in files:
        raise GcnnError(
            f"{directory} has no {args.split} split (found: {', '.join(files) or 'none'}); "
            "pick another --split"
        )
    if args.fairseq_blocks is None and args.context_window:
        raise GcnnError("--context-window applies to --fairseq-blocks only")
    if args.fairseq_blocks is not None and cache_requested(args):
        raise GcnnError("--fairseq-blocks does not combine with the continuous cache")
    if cache_requested(args):
        return perplexity_with_cache(args, model, tokenizer, directory, files, device)
    split = tokenize_split(tokenizer, files[args.split])
    if len(split.tokens) == 0:
        raise GcnnError(f"split file {files[args.split]} is empty; nothing to evaluate")
    if not args.allow_oov:
        check_vocabulary(split, files[args.split], args.checkpoint)
    if split.oov:
        print(f"warning: {split.oov} unknown words scored as <unk>", file=sys.stderr)
    with _autocast(args, model, device, split.tokens, tokenizer.eos_id):
        if args.fairseq_blocks is not None:  # as fairseq-eval-lm measures it (not exact)
            from gcnn.evaluation.fairseq_blocks import evaluate_fairseq_blocks

            result = evaluate_fairseq_blocks(
                model,
                tokenizer,
                split.tokens,
                words=split.words,
                tokens_per_sample=args.fairseq_blocks,
                context_window=args.context_window,
                batch_size=args.batch_size,
                device=device,
            )
        else:
            result = evaluate_perplexity(
                model,
                tokenizer,
                split.tokens,
                words=split.words,
                block_size=args.block_size,
                batch_size=args.batch_size,
                device=device,
            )
    if args.json:
        print(json.dumps(result.to_json()))
        return 0
    if args.fairseq_blocks is not None:
        print(
            f"as fairseq-eval-lm: blocks of {args.fairseq_blocks} tokens, context window "
            f"{args.context_window} (not the exact perplexity)"
        )
    print(f"{directory.name} {args.split}: {result.tokens:,} tokens")
    print(f"loss {result.loss:.4f} nats/token   perplexity {result.perplexity:.2f}")
    if result.word_perplexity is not None:
        print(f"per-word perplexity {result.word_perplexity:.2f} ({result.words:,} words)")
    print(f"{result.tokens_per_s:,.0f} tokens/s ({result.seconds:.1f} s)")
    return 0


def _autocast(args, model, device: str, tokens, eos_id: int):
    """bf16 autocast when --precision says so, or when auto measures it faster here (on a
    sample of the work: up to batch-size blocks of the text); fp32 (the default) otherwise:
    reported perplexities stay comparable with fp32 ones unless asked."""
    import torch

    precision = args.precision
    if precision == "auto":
        from gcnn.data import BlockBatcher
        from gcnn.precision import choose_precision

        rows = min(args.batch_size, 8)
        block = min(getattr(args, "block_size", 128), max(1, len(tokens) // rows))
        batcher = BlockBatcher(tokens, eos_id, block, rows, (model.receptive_field or 1) - 1)
        inputs, targets = batcher.batch(0, 0)
        precision = choose_precision(
            model, inputs.to(device), targets.to(device), "score", log=_log
        )
    return torch.autocast(torch.device(device).type, torch.bfloat16, enabled=precision == "bf16")


def _log(text: str) -> None:
    print(text, file=sys.stderr)


def _trained_on(ckpt: dict) -> str | None:
    """The corpus the checkpoint's run trained on (TrainConfig.data), if it says."""
    value = (ckpt.get("train_config") or {}).get("data")
    return value if isinstance(value, str) and value else None


# --- score -------------------------------------------------------------------------------------


def _read_lines(path: str) -> list[str]:
    """The lines of a text file, or of standard input ("-"): the same bytes read and decoded
    the same way (strict UTF-8 whatever the locale), with the same errors."""
    from gcnn.data.corpus import iter_lines, iter_stream_lines

    if path == "-":
        if sys.stdin is None:  # started with standard input closed (`<&-`)
            raise GcnnError(
                "standard input is closed; pipe text into it or pass a text file instead of -"
            )
        stream = getattr(sys.stdin, "buffer", None)
        if stream is None:  # a text stream put in its place (a notebook, a test)
            stream = io.BytesIO(sys.stdin.read().encode("utf-8"))
        lines = list(iter_stream_lines(stream, "standard input"))
    else:
        if not Path(path).exists():
            raise GcnnError(f"input file {path} does not exist; pass a text file or - for stdin")
        if Path(path).is_dir():
            raise GcnnError(f"input {path} is a directory; pass a text file or - for stdin")
        lines = list(iter_lines(path))
    if not lines:
        where = "standard input" if path == "-" else f"input file {path}"
        raise GcnnError(f"{where} is empty; give one sentence per line")
    return lines


def cmd_score(args) -> int:
    from gcnn.evaluation.scoring import score_lines

    device = resolve_device(args.device)
    _positive("--batch-size", args.batch_size)
    lines = _read_lines(args.input)
    model, tokenizer, _ = _load(args.checkpoint, device)
    sample = np.asarray([i for line in lines[:64] for i in tokenizer.encode(line)], np.int32)
    with _autocast(args, model, device, sample, tokenizer.eos_id):
        scores = score_lines(model, tokenizer, lines, batch_size=args.batch_size, device=device)
    for s in scores:
        if args.json:
            print(json.dumps(s.to_json()))
        else:
            print(f"{s.logprob:.4f}\t{s.tokens}\t{s.perplexity:.2f}\t{s.text}")
    return 0


# --- sample ------------------------------------------------------------------------------------


def cmd_sample(args) -> int:
    from gcnn.evaluation.sampling import SamplingConfig, sample

    device = resolve_device(args.device)
    config = SamplingConfig(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop_at_eos=args.stop_at_eos,
    )
    config.validate()
    model, tokenizer, _ = _load(args.checkpoint, device)
    # the prompt's words only: encode() appends an <eos> that would end the sentence
    prompt = tokenizer.encode(args.prompt)[:-1] if args.prompt else []
    out = sample(model, prompt, tokenizer.eos_id, config, device=device)
    text = tokenizer.decode(out)
    print(f"{args.prompt} {text}".strip() if args.prompt else text)
    return 0


# --- latency -----------------------------------------------------------------------------------


def cmd_latency(args) -> int:
    from gcnn.evaluation.latency import LatencyConfig, run_latency
    from gcnn.evaluation.latency_report import json_records, markdown_table, plot_latency
    from gcnn.plotting import pyplot

    # nn.LSTM with proj_size (lstm-2048) runs ATen's own kernel instead of oneDNN; torch warns
    # on every call, which would drown the table (docs/evaluation.md says so once)
    warnings.filterwarnings("ignore", message="LSTM with projections is not supported")
    if args.plot:
        pyplot(f"--plot {args.plot}")  # fail before minutes of timing, not after
    config = LatencyConfig(
        sentence_length=args.sentence_length,
        repeats=_positive("--repeats", args.repeats),
        warmup=args.warmup,
        device=resolve_device(args.device),
        precision=args.precision,
    )
    if args.batch_size is not None:
        config.batch_sizes = (args.batch_size,)
    plot_lengths = sorted({5, 10, 20, 50, 100, args.sentence_length}) if args.plot else ()
    results = run_latency(
        args.models,
        config,
        vocab_size=args.vocab_size,
        plot_lengths=plot_lengths,
        log=lambda s: print(s, file=sys.stderr),
    )
    if args.json:
        print(json.dumps(json_records(results)))
    else:
        print(markdown_table(results))
    if args.plot:
        plot_latency(results, args.plot)
    return 0


# --- main --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gcnn-evaluate",
        description="Evaluate gcnn checkpoints: perplexity, sentence scores, samples, latency.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    def common(q, batch_size):
        q.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
        q.add_argument(
            "--precision",
            default="fp32",
            choices=("auto", "fp32", "bf16"),
            help="fp32 (default: results comparable with fp32 ones), bf16 autocast, or auto: "
            "whichever is faster here (measured; cached and re-checked)",
        )
        q.add_argument("--batch-size", type=int, default=batch_size)
        q.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")

    q = sub.add_parser("perplexity", help="exact perplexity of a checkpoint on a split")
    q.add_argument("checkpoint")
    src = q.add_mutually_exclusive_group()
    src.add_argument("--dataset", help="wikitext-2 or wikitext-103 (found via $GCNN_DATA)")
    src.add_argument("--data", help="a corpus directory")
    q.add_argument("--split", default="test", choices=("valid", "test"))
    q.add_argument("--block-size", type=int, default=512, help="targets per row (default 512)")
    q.add_argument("--allow-oov", action="store_true", help="score unknown words as <unk>")
    q.add_argument(
        "--fairseq-blocks",
        type=int,
        nargs="?",
        const=1024,
        metavar="N",
        help="score as fairseq-eval-lm does by default, to compare with its numbers: "
        "non-overlapping blocks of N tokens (default 1024), no history before a block",
    )
    q.add_argument(
        "--context-window",
        type=int,
        default=0,
        metavar="C",
        help="with --fairseq-blocks: fairseq-eval-lm's --context-window (default 0)",
    )
    q.add_argument("--json", action="store_true")
    common(q, 8)
    from gcnn.evaluation.cache_cli import add_cache_flags

    add_cache_flags(q)
    q.set_defaults(run=cmd_perplexity)

    q = sub.add_parser("score", help="log-probability of each line of a text")
    q.add_argument("checkpoint")
    q.add_argument(
        "input", nargs="?", default="-", help="text file, one sentence per line (- = stdin)"
    )
    q.add_argument("--json", action="store_true", help="JSON lines")
    common(q, 32)
    q.set_defaults(run=cmd_score)

    q = sub.add_parser("sample", help="generate text")
    q.add_argument("checkpoint")
    q.add_argument("--prompt", default="")
    q.add_argument("--max-tokens", type=int, default=50)
    q.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    q.add_argument("--top-k", type=int, default=0, help="0 = off")
    q.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--stop-at-eos", action="store_true", help="stop after the first <eos>")
    q.add_argument("--device", default="cpu")
    q.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    q.set_defaults(run=cmd_sample)

    q = sub.add_parser("latency", help="throughput and responsiveness (paper Table 4)")
    q.add_argument("models", nargs="+", metavar="MODEL", help="preset name or checkpoint")
    q.add_argument("--device", default="cpu")
    q.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    q.add_argument("--sentence-length", type=int, default=30)
    q.add_argument(
        "--batch-size", type=int, default=None, help="throughput batch (default: best of 4/16/64)"
    )
    q.add_argument(
        "--vocab-size",
        type=int,
        default=None,
        help="vocabulary for presets (default: the preset's corpus: GBW 793,471, "
        "WikiText-103 267,735, WikiText-2 33,278)",
    )
    q.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16"),
        help="auto (default): each model in whichever of fp32/bf16 scores a sentence faster here",
    )
    q.add_argument("--repeats", type=int, default=10)
    q.add_argument("--warmup", type=int, default=3)
    q.add_argument("--json", action="store_true")
    q.add_argument("--plot", metavar="FILE", help="latency vs sentence length (needs matplotlib)")
    q.set_defaults(run=cmd_latency)
    return p


def _main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        import torch

        torch.set_num_threads(_positive("--threads", args.threads))
    return args.run(args)


def _main_reporting(argv: list[str] | None) -> int:
    from gcnn.signals import Stopped

    try:
        return _main(argv)
    except Stopped as stop:  # every command writes its output files atomically, at its end
        stop.kept = stop.kept or "nothing was written"
        raise


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: user mistakes become one `error:` line and exit status 2."""
    return run_cli(lambda: _main_reporting(argv))


if __name__ == "__main__":
    sys.exit(main())
