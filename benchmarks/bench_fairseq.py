"""Sentence scoring of a fairseq fconv_lm here (converted) and in fairseq: same sentences, threads.

    python benchmarks/bench_fairseq.py --fairseq MODEL.pt --dict DICT.txt [--threads 4]
    python benchmarks/bench_fairseq.py                        # a GCNN-14 of random weights
    python benchmarks/bench_fairseq.py --preset gcnn-small --vocab-size 1000 --sentences 16

Scores every sentence (its words and `</s>`, conditioned on a leading `</s>`), batch 1 and
batched (sorted by length, right-padded), and prints sentences/s and tokens/s for:

- gcnn: the converted checkpoint as `evaluate.py score` runs it (weight norm folded,
  `score_token_ids`: only the adaptive-softmax clusters the targets need);
- fairseq: its model from its own loader, scored by its SequenceScorer (what fairseq-eval-lm and
  its hub `score` use), weight norm as fairseq keeps it (recomputed every call);
- fairseq, weight norm folded: the same with `nn.utils.remove_weight_norm` first, so that the
  comparison does not rest on that one difference.

fairseq loads the converted model re-exported by `to-fairseq` (plain data, fairseq's ids: the
same network as the original for adaptive-softmax models), so no pickle is ever trusted. Without
--fairseq, a preset with random weights (speed does not depend on them) and a fairseq-layout
vocabulary is used. The per-sentence scores of both implementations are compared (max difference
printed). fairseq is optional: without it only gcnn is timed. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from gcnn.checkpoint import load_model, model_checkpoint, save_checkpoint
from gcnn.convert import convert_file, fairseq_import, to_fairseq
from gcnn.data import WordTokenizer
from gcnn.errors import GcnnError
from gcnn.evaluation.scoring import score_token_ids
from gcnn.machine import run_benchmark
from gcnn.models import build_model

WT103_VOCAB = 267_744  # fairseq's WikiText-103 dictionary: 4 specials + 267,733 words + padding


def import_fairseq():
    """fairseq with what the benchmark uses, or None where it is not installed."""
    return fairseq_import.import_fairseq("fairseq.checkpoint_utils", "fairseq.sequence_scorer")


def synthetic_checkpoint(preset: str, vocab: int, path: Path) -> None:
    """A preset with random weights and a fairseq-layout vocabulary (ids 0-3 its specials)."""
    words = ["<s>", "<pad>", "<eos>", "<unk>"] + [f"w{i}" for i in range(vocab - 4)]
    model = build_model(preset, vocab, dropout=0.0)
    save_checkpoint(path, model_checkpoint(model, WordTokenizer(words)))


def sentences(vocab: int, count: int, low: int, high: int, seed: int) -> list[list[int]]:
    """Random sentences of low..high words (ids 4.. of fairseq's order), each ending in </s>."""
    rng = np.random.default_rng(seed)
    return [
        rng.integers(4, vocab, rng.integers(low, high + 1)).tolist() + [2] for _ in range(count)
    ]


def fairseq_batches(sents: list[list[int]], batch_size: int, pad: int, eos: int):
    """Batches as fairseq's MonolingualDataset collates them: source [eos] + ids[:-1], target."""
    order = sorted(range(len(sents)), key=lambda i: -len(sents[i]))
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        width = max(len(sents[i]) for i in index)
        src = torch.full((len(index), width), pad, dtype=torch.long)
        tgt = torch.full((len(index), width), pad, dtype=torch.long)
        for row, i in enumerate(index):
            ids = torch.tensor(sents[i])
            src[row, : len(ids)] = torch.cat([torch.tensor([eos]), ids[:-1]])
            tgt[row, : len(ids)] = ids
        lengths = torch.tensor([len(sents[i]) for i in index])
        sample = {
            "id": torch.tensor(index),
            "net_input": {"src_tokens": src, "src_lengths": lengths},
            "target": tgt,
            "ntokens": int(lengths.sum()),
        }
        yield index, sample


def score_fairseq(model, scorer, sents, batch_size, device) -> list[float]:
    scores = [0.0] * len(sents)
    for index, sample in fairseq_batches(sents, batch_size, 1, 2):
        sample = {
            "id": sample["id"],
            "net_input": {k: v.to(device) for k, v in sample["net_input"].items()},
            "target": sample["target"].to(device),
            "ntokens": sample["ntokens"],
        }
        for i, hypos in zip(index, scorer.generate([model], sample), strict=True):
            scores[i] = hypos[0]["positional_scores"].double().sum().item()
    return scores


def timed(fn, repeats: int, device: str) -> tuple[float, list[float]]:
    """(median seconds of `repeats` runs after one warm-up run, the last run's result)."""
    result = fn()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fairseq", metavar="MODEL.pt", help="a fairseq fconv_lm checkpoint")
    p.add_argument("--dict", metavar="DICT.txt", help="its dictionary (with --fairseq)")
    p.add_argument("--preset", default="gcnn-14", help="without --fairseq (default gcnn-14)")
    p.add_argument("--vocab-size", type=int, default=WT103_VOCAB, help="without --fairseq")
    p.add_argument("--sentences", type=int, default=256)
    p.add_argument("--min-words", type=int, default=10)
    p.add_argument("--max-words", type=int, default=40)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if min(args.sentences, args.min_words, args.repeats, *args.batch_sizes) < 1:
        raise GcnnError("--sentences, --min-words, --repeats and --batch-sizes must be >= 1")
    if args.max_words < args.min_words:
        raise GcnnError("--max-words must be at least --min-words")
    if (args.fairseq is None) != (args.dict is None):
        raise GcnnError("--fairseq and --dict go together")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = tmp / "converted.pt"
        if args.fairseq is None:
            synthetic_checkpoint(args.preset, args.vocab_size, ckpt)
        else:
            convert_file(args.fairseq, args.dict, ckpt)  # read safely, never unpickled as code
        # fairseq gets the same model back as plain data (fairseq's own ids, no extra layer for
        # a fairseq vocabulary): its loader reads it without trusting any pickle
        exported = to_fairseq(ckpt, tmp / "fairseq")
        model_path, dict_path = exported.model_path, exported.dict_path
        model, tokenizer, _ = load_model(ckpt, args.device, inference=True)
        vocab = tokenizer.vocab_size
        sents = sentences(vocab, args.sentences, args.min_words, args.max_words, seed=0)
        tokens = sum(len(s) for s in sents)
        rows = []

        def record(impl: str, batch: int, seconds: float) -> None:
            rows.append(
                {
                    "impl": impl,
                    "batch_size": batch,
                    "threads": threads,
                    "device": args.device,
                    "sentences_per_s": len(sents) / seconds,
                    "tokens_per_s": tokens / seconds,
                }
            )

        reference = None
        for batch in args.batch_sizes:
            seconds, out = timed(
                lambda b=batch: [
                    s for s, _ in score_token_ids(model, sents, tokenizer.eos_id, b, args.device)
                ],
                args.repeats,
                args.device,
            )
            reference = out
            record("gcnn", batch, seconds)
        fairseq = import_fairseq()
        diff = None
        if fairseq is not None:
            from fairseq import checkpoint_utils
            from fairseq.sequence_scorer import SequenceScorer

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                models, _ = checkpoint_utils.load_model_ensemble(
                    [str(model_path)], {"data": str(dict_path.parent)}
                )
            fmodel = models[0].to(args.device).eval()
            scorer = SequenceScorer(fairseq.data.Dictionary())  # pad 1, eos 2: all it reads
            for folded in (False, True):
                if folded:
                    for m in fmodel.modules():
                        if hasattr(m, "weight_g"):
                            torch.nn.utils.remove_weight_norm(m)
                for batch in args.batch_sizes:
                    seconds, out = timed(
                        lambda b=batch: score_fairseq(fmodel, scorer, sents, b, args.device),
                        args.repeats,
                        args.device,
                    )
                    diff = max(abs(a - b) for a, b in zip(out, reference, strict=True))
                    record("fairseq, weight norm folded" if folded else "fairseq", batch, seconds)
    if args.json:
        print(json.dumps({"rows": rows, "max_score_difference": diff, "tokens": tokens}))
        return 0
    print(f"{len(sents)} sentences, {tokens:,} tokens, {threads} threads, {args.device}")
    print("| implementation | batch | sentences/s | tokens/s |\n|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['impl']} | {r['batch_size']} | {r['sentences_per_s']:,.1f} "
            f"| {r['tokens_per_s']:,.0f} |"
        )
    if diff is None:
        print("fairseq is not installed: gcnn only (pip install fairseq-fixed==0.12.3.1 --no-deps)")
    else:
        print(f"largest per-sentence log-probability difference gcnn vs fairseq: {diff:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_benchmark(main))
