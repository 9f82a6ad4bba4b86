"""The paper's findings re-run at CPU scale: one command per study, one record per finished run.

    python experiments/run.py gating      # Fig. 3, 5: GLU, GTU, bilinear, ReLU, Tanh, linear
    python experiments/run.py norm        # Fig. 6: weight norm and clipping, NAG and AdamW
    python experiments/run.py context     # Fig. 4: receptive field; history cut to k tokens
    python experiments/run.py lstm        # Tables 2-3: GCNN vs LSTM over time and FLOPs
    python experiments/run.py latency     # Table 4: evaluate.py latency, bench_roofline.py
    python experiments/run.py default     # `python train.py` as a user runs it (+ lstm-small)
    python experiments/run.py long        # the longer CPU recipes (experiments/wt2_*_long.toml)
    python experiments/run.py flops       # GCNN vs LSTM matched on FLOPs per token, two sizes
    python experiments/run.py budget      # GCNN vs LSTM at equal time and FLOP budgets
    python experiments/run.py all --dry-run   # the runs of gating..latency and their time
    python experiments/run.py gating norm context flops budget --jobs 2   # two runs at a time
    python experiments/report.py          # then: docs/results.md (and README's table)

Every training run is `python train.py` with the study's flags and a seed, followed by an exact
evaluation of its best checkpoint on the valid and test splits; its record goes to
experiments/records/<study>/<variant>-s<seed>.json. Re-running a command skips finished runs
and resumes an interrupted one. `--jobs 2` runs two 1-thread runs side by side (update budgets
only: timed runs still run alone). Flags after `--` go to every train.py call (paths relative to
the repository), e.g. `-- --precision fp32`. At full scale only the dataset, preset and budget
change, e.g. `python experiments/run.py gating --data wikitext-103 --model gcnn-8
--max-epochs 35 --records experiments/records/wt103` (on GPUs; `--launch "torchrun
--nproc_per_node 4"` for several).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from estimate import estimate  # noqa: E402
from launch import Interrupted  # noqa: E402
from records import RECORDS, RUNS, load_records  # noqa: E402
from runner import Options, Runner  # noqa: E402
from studies import ALL, STUDIES  # noqa: E402
from study import StudyOptions  # noqa: E402

from gcnn.devices import resolve_device  # noqa: E402
from gcnn.errors import ArgumentParser, GcnnError, run_cli  # noqa: E402

DEFAULTS = StudyOptions()  # the flags' defaults are the options' own


def float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}"
        ) from None


def int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers separated by commas, got {text!r}"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python experiments/run.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument(
        "studies",
        nargs="+",
        metavar="STUDY",
        choices=[*STUDIES, "all"],
        help=f"{', '.join(STUDIES)} or all ({', '.join(ALL)})",
    )
    p.add_argument("--seeds", type=int, help="seeds per configuration (default 3; default/long: 1)")
    p.add_argument("--max-updates", type=int, help="budget per run (default: the study's)")
    p.add_argument("--max-minutes", type=float, help="budget per run in minutes of training")
    p.add_argument("--max-epochs", type=int, help="budget per run in epochs")
    p.add_argument("--data", default=DEFAULTS.data, help="wikitext-2, wikitext-103 or a directory")
    p.add_argument(
        "--model", default=DEFAULTS.model, help=f"the GCNN preset (default {DEFAULTS.model})"
    )
    p.add_argument(
        "--lstm-model", default=DEFAULTS.lstm_model, help="the LSTM preset of the lstm study"
    )
    p.add_argument(
        "--valid-tokens",
        type=int,
        default=DEFAULTS.valid_tokens,
        help="validation tokens for the curves during training (0: all); the final "
        "figures are exact, on every token",
    )
    p.add_argument(
        "--valid-points", type=int, default=DEFAULTS.valid_points, help="validations per run"
    )
    p.add_argument("--lrs", type=float_list, default=DEFAULTS.lrs, help="lstm study sweep")
    p.add_argument(
        "--nag-lrs",
        type=float_list,
        default=DEFAULTS.nag_lrs,
        help="norm study: NAG learning rates to sweep",
    )
    p.add_argument(
        "--unclipped-lrs",
        type=float_list,
        default=DEFAULTS.unclipped_lrs,
        help="norm study: NAG learning rates to sweep without clipping (its own best lr)",
    )
    p.add_argument(
        "--budget-minutes",
        type=float_list,
        default=DEFAULTS.budget_minutes,
        help="budget study: wall-time budgets in minutes",
    )
    p.add_argument(
        "--budget-pflops",
        type=float_list,
        default=DEFAULTS.budget_pflops,
        help="budget study: training-FLOP budgets in PFLOP",
    )
    p.add_argument("--kernels", type=int_list, default=DEFAULTS.kernels, help="context study")
    p.add_argument(
        "--context-tokens",
        type=int,
        default=DEFAULTS.context_tokens,
        help="context study: test tokens for the truncated histories (0: all)",
    )
    p.add_argument(
        "--latency-models",
        nargs="+",
        default=DEFAULTS.latency_models,
        metavar="GCNN,LSTM",
    )
    p.add_argument("--precisions", nargs="+", default=DEFAULTS.precisions, choices=["bf16", "fp32"])
    p.add_argument("--repeats", type=int, default=DEFAULTS.repeats, help="latency: timed repeats")
    p.add_argument(
        "--tools",
        nargs="+",
        default=DEFAULTS.tools,
        choices=["evaluate", "roofline"],
        help="latency: evaluate.py latency and/or benchmarks/bench_roofline.py (CPU only)",
    )
    p.add_argument(
        "--latency-args",
        default=shlex.join(DEFAULTS.latency_args),
        help='latency: more flags for both commands, e.g. "--sentence-length 50"',
    )
    p.add_argument(
        "--only",
        nargs="+",
        default=DEFAULTS.only,
        metavar="PATTERN",
        help="run only the variants matching these patterns (e.g. 'glu' 'relu*')",
    )
    p.add_argument("--records", default=str(RECORDS), help="record directory")
    p.add_argument(
        "--runs",
        default=str(RUNS),
        help="scratch directory for run directories (checkpoints)",
    )
    p.add_argument(
        "--eval-device", default="auto", help="exact evaluation: cpu, cuda or auto (cuda if any)"
    )
    p.add_argument("--keep-runs", action="store_true", help="keep checkpoints after the record")
    p.add_argument(
        "--launch", default="", help='train.py launcher, e.g. "torchrun --nproc_per_node 4"'
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs launched at once (each with its share of the cores: --jobs 2 on 2 cores "
        "runs two 1-thread runs side by side); for update-budget studies, not timed ones",
    )
    p.add_argument("--dry-run", action="store_true", help="list the runs to do and their time")
    p.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)  # tests
    return p


def parse(argv: list[str]) -> tuple[argparse.Namespace, StudyOptions, Options]:
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    args = build_parser().parse_args(argv)
    for name in ("seeds", "max_updates", "max_epochs", "valid_points", "repeats", "jobs"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise GcnnError(f"--{name.replace('_', '-')} {value}: must be at least 1")
    if args.max_minutes is not None and not args.max_minutes > 0:
        raise GcnnError(f"--max-minutes {args.max_minutes}: must be positive")
    if min(args.valid_tokens, args.context_tokens) < 0:
        raise GcnnError("--valid-tokens and --context-tokens must be 0 or more")
    sweeps = (args.lrs, args.nag_lrs, args.unclipped_lrs, args.budget_minutes, args.budget_pflops)
    if not args.kernels or min(args.kernels) < 1 or not all(sweeps) or min(map(min, sweeps)) <= 0:
        raise GcnnError(
            "--kernels, --lrs, --nag-lrs, --unclipped-lrs and the budgets need positive values"
        )
    resolve_device(args.eval_device, "--eval-device")  # a missing GPU fails before any run
    data = args.data
    if Path(data).exists():  # a corpus directory: absolute, since train.py runs in the repository
        data = str(Path(data).resolve())
    given = {f.name: getattr(args, f.name) for f in fields(StudyOptions) if hasattr(args, f.name)}
    given.update(data=data, latency_args=shlex.split(args.latency_args), extra=extra)
    study = StudyOptions(**given)
    options = Options(
        records=Path(args.records).resolve(),
        runs=Path(args.runs).resolve(),
        in_process=args.in_process,
        eval_device=args.eval_device,
        keep_runs=args.keep_runs,
        launch=shlex.split(args.launch),
        jobs=args.jobs,
    )
    return args, study, options


def main(argv: list[str] | None = None) -> int:
    args, o, options = parse(sys.argv[1:] if argv is None else argv)
    studies = list(
        dict.fromkeys(s for name in args.studies for s in (ALL if name == "all" else [name]))
    )

    planner = Runner(options, plan=True)  # first only collect: what is done, what is left
    known = load_records(options.records)
    jobs = max(options.jobs, 2)  # the side-by-side estimate: 1-thread runs, two at a time
    totals = [0.0, 0.0]  # one at a time; side by side
    for name in studies:
        before_pending, before_done = len(planner.pending), len(planner.done)
        STUDIES[name].runs(planner, o)
        pending = list(planner.pending.values())[before_pending:]
        seconds, source = estimate(pending, known)
        timed = [r for r in pending if r.timed]
        side = (
            estimate(timed, known)[0]
            + estimate([r for r in pending if not r.timed], known, threads=1)[0] / jobs
        )
        totals = [totals[0] + seconds, totals[1] + side]
        done = len(planner.done) - before_done
        line = f"{name}: {done} run(s) recorded, {len(pending)} to do"
        if pending:
            line += (
                f", about {seconds / 60:.0f} min (from {source}); {jobs} at a time "
                f"(--jobs {jobs}; timed runs alone): about {side / 60:.0f} min"
            )
        print(line, flush=True)
        if args.dry_run:
            for run in pending:
                note = "  [lr: chosen by the sweep]" if run.info.get("placeholder") else ""
                note += "  [timed: runs alone]" if run.timed else ""
                print(f"  {run.run_id}: {shlex.join(planner.command(run))}{note}")
    if len(studies) > 1:
        print(
            f"in all: about {totals[0] / 60:.0f} min one at a time, about {totals[1] / 60:.0f} "
            f"min with --jobs {jobs}",
            flush=True,
        )
    if args.dry_run:
        return 0

    runner = Runner(options)
    runner.total = len(planner.pending)
    try:
        for name in studies:
            STUDIES[name].runs(runner, o)
    except Interrupted:
        print(
            "interrupted: finished runs are recorded; run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    print(f"\nrecords in {options.records}; the results page: python experiments/report.py")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
