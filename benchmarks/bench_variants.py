"""Training-step speed of recipe variants, interleaved in one process on real batches.

    python benchmarks/bench_variants.py "--model gcnn-8-small" \\
        "--model gcnn-8-small --model-arg tail_factor=4" "--model gcnn-8-small --block-size 512"

Each argument is a variant as train.py's flags. Each is built as train.py builds it (the recipe's
defaults, its optimizer, its own first batches of the WikiText-2 training split: the same rows,
context and softmax plans the run would train on) and the variants' steps are timed in
interleaved rounds, so that a slow minute of a shared machine falls on all of them alike. A
sequential timing, one `train.py` run per variant, read 15,663-20,823 tokens/s for the same model
across four runs within 15 minutes on the EPYC Zen 4 (experiments/records/recipe/speed-4-earlier/,
speed-4.json); this is how a variant's speed relative to the first is measured before a recipe
probe is given its budget.

Prints each variant's median step time and scored tokens/s, its speed relative to the first, and
the load before and after (a warning when other work was running). The first variant is timed a
second time as its own twin: a run whose twin strays more than 3% from it says that its ratios
are not to be trusted.
"""

from __future__ import annotations

import itertools
import shlex
import sys
from pathlib import Path

import torch

from gcnn.allocator import keep_large_blocks
from gcnn.errors import ArgumentParser, GcnnError, run_cli
from gcnn.machine import cpu_name, reported_load
from gcnn.timing import interleaved_timings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import gcnn_step  # noqa: E402

MAX_VARIANTS = 8
BATCHES = 4  # the first batches of the first epoch, each variant's own
STEPS_PER_TURN = 8
# How far the twin (the first variant built again) may stray from the first. On an EPYC Zen 4 an
# instance of a model now and then ran at 0.62-0.69x the speed of one doing the same work, for
# the whole run, in the same process: the instance, not the variant (experiments/records/recipe/
# variants-tries/); twins otherwise agreed within 1.5% (variants-tf2.txt, variants-tails-twin.txt).
TWIN_TOLERANCE = 0.03


def build_variant(flags: str, corpus, device: torch.device) -> tuple[str, object, int]:
    """(description, one step's callable, its scored tokens) of a variant given as train.py's
    flags: its model, optimizer and first training batch, as the trainer makes them."""
    from gcnn.training.config import compose, parse_flags
    from gcnn.training.distributed import Dist
    from gcnn.training.feed import rows_per_micro_batch, split_feed
    from gcnn.training.optim import make_optimizer
    from gcnn.training.recipe import build_checked_model

    config_file, values = parse_flags(shlex.split(flags))
    if config_file is not None:
        raise GcnnError(f"variant {flags!r}: give flags, not --config")
    config = compose(values)
    train = corpus.splits["train"]
    vocab = corpus.tokenizer.vocab_size
    model, config = build_checked_model(config, vocab, len(train), 1, device)
    model.to(device).train()
    rows = rows_per_micro_batch(config, 1)
    feed = split_feed(train, corpus.tokenizer.eos_id, model, rows, config, Dist(), device, True)
    optimizer, bf16 = make_optimizer(model, config, device), config.precision == "bf16"
    steps = []  # a few batches in turn: how many targets fall in each softmax tail varies
    for i in range(BATCHES):
        batch = feed.batch(0, i)
        steps.append(gcnn_step(model, batch.inputs, batch.targets, bf16, optimizer))
    turn = itertools.cycle(steps)

    def step():  # a turn of several steps: the run's caches warm, as in a run, not another's
        for _ in range(STEPS_PER_TURN):
            next(turn)()

    shape = f"{rows}x({config.context}+{config.block_size}), {config.precision}"
    return f"{flags} [{shape}]", step, rows * config.block_size


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python benchmarks/bench_variants.py", description=__doc__)
    p.add_argument("variants", nargs="+", help="each: train.py's flags, quoted")
    p.add_argument("--data", default="wikitext-2", help="the corpus whose batches are timed")
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16"],
                   help="each variant's, unless its flags say otherwise")  # fmt: skip
    p.add_argument("--rounds", type=int, default=9)
    a = p.parse_args(argv)
    if not 1 <= len(a.variants) < MAX_VARIANTS:
        raise GcnnError(f"give 1 to {MAX_VARIANTS - 1} variants (the first gets a twin)")
    if not 3 <= a.rounds <= 100:
        raise GcnnError(f"--rounds {a.rounds}: choose 3 to 100")
    from gcnn.data import prepare_corpus

    device = torch.device("cpu")
    print(keep_large_blocks())
    corpus = prepare_corpus(a.data, splits=("train",), download=False)
    # the first variant twice: a second instance of the same model, batches and optimizer, whose
    # speed should be the first's; where it is not, the run says so (see TWIN_TOLERANCE)
    built = [
        build_variant(f"--data {a.data} --precision {a.precision} {v}", corpus, device)
        for v in [*a.variants, a.variants[0]]
    ]
    built[-1] = (f"twin of the first: {built[-1][0]}", *built[-1][1:])
    with reported_load():
        print(f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
        timings = interleaved_timings([step for _, step, _ in built], a.rounds, 2, "cpu")
        base = rate = None
        print(
            f"| variant | ms/step (IQR over turns of {STEPS_PER_TURN}) | tokens/s | vs the first |"
        )
        print("|---|---:|---:|---:|")
        for (name, _, tokens), t in zip(built, timings, strict=True):
            rate = STEPS_PER_TURN * tokens / t.median
            base = base or rate
            ms = [1e3 * x / STEPS_PER_TURN for x in (t.median, t.q1, t.q3)]
            print(f"| {name} | {ms[0]:,.0f} ({ms[1]:,.0f}-{ms[2]:,.0f}) | {rate:,.0f} "
                  f"| {rate / base:.3f}x |")  # fmt: skip
        if abs(rate / base - 1) > TWIN_TOLERANCE:
            print(
                f"warning: the twin ran at {rate / base:.3f}x the first, the same model and "
                "batches: this run's ratios are not to be trusted beyond that; run it again"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
