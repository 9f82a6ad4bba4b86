"""The paper's findings re-run at CPU scale: one command per study, one record per finished run.

    python experiments/run.py gating      # Fig. 3, 5: GLU, GTU, bilinear, ReLU, Tanh, linear
    python experiments/run.py norm        # Fig. 6: weight norm and clipping, NAG and AdamW
    python experiments/run.py context     # Fig. 4: receptive field; history cut to k tokens
    python experiments/run.py lstm        # Tables 2-3: GCNN vs LSTM over time and FLOPs
    python experiments/run.py latency     # Table 4: evaluate.py latency, bench_roofline.py
    python experiments/run.py default     # `python train.py` as a user runs it (+ lstm-small)
    python experiments/run.py long        # the longer CPU recipes (experiments/wt2_*_long.toml)
    python experiments/run.py all --dry-run   # the runs of gating..latency and their time
    python experiments/report.py          # then: docs/results.md from the records

Every training run is `python train.py` with the study's flags and a seed, followed by an exact
evaluation of its best checkpoint on the valid and test splits; its record goes to
experiments/records/<study>/<variant>-s<seed>.json. Re-running a command skips finished runs
and resumes an interrupted one. Flags after `--` go to every train.py call (paths relative to
the repository), e.g. `-- --precision fp32`. At full scale only the dataset, preset and budget
change, e.g. `python experiments/run.py gating --data wikitext-103 --model gcnn-8
--max-epochs 35 --records experiments/records/wt103` (on GPUs; `--launch "torchrun
--nproc_per_node 4"` for several).
"""

from __future__ import annotations

import argparse
import fnmatch
import math
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from runner import (  # noqa: E402
    NAMES,
    ROOT,
    Interrupted,
    Options,
    Parser,
    Run,
    Runner,
    load_records,
    model_family,
    train_config,
)

from gcnn.errors import GcnnError, run_cli  # noqa: E402

STUDIES = ("gating", "norm", "context", "lstm", "latency", "default", "long")
ALL = ("gating", "norm", "context", "lstm", "latency")  # `all`: the ~3-hour CPU set

# Default budgets in updates of 4,096 tokens, sized so that `all` fits in about 3 hours of the
# 2-core CPU (see experiments/README.md); --max-updates / --max-minutes override them.
UPDATES = {"gating": 200, "norm": 150, "context": 200, "lstm": 300}
GATED, UNGATED = ("glu", "gtu", "bilinear"), ("relu", "tanh", "linear")
NORM_VARIANTS = {  # name -> flags; clipping at the optimizer's own default (NAG 0.1, AdamW 1.0)
    "both": [],
    "weight-norm-only": ["--clip-norm", "0"],
    "clipping-only": ["--no-weight-norm"],
    "neither": ["--no-weight-norm", "--clip-norm", "0"],
}
LONG_CONFIGS = {"gcnn": "experiments/wt2_gcnn_long.toml", "lstm": "experiments/wt2_lstm_long.toml"}


@dataclass
class StudyOptions:
    seeds: int | None = None  # None: 3 (1 for default and long)
    max_updates: int | None = None
    max_minutes: float | None = None
    max_epochs: int | None = None
    data: str = "wikitext-2"
    model: str = "gcnn-small"
    lstm_model: str = "lstm-small"
    valid_tokens: int = 32768  # validations during training (the curves); 0: the whole split
    valid_points: int = 8  # validations per run
    lrs: list[float] = field(default_factory=lambda: [5e-3, 1e-2, 2e-2, 4e-2])  # lstm study sweep
    nag_lrs: list[float] = field(default_factory=lambda: [0.1, 0.3, 1.0, 2.0])  # norm sweep
    kernels: list[int] = field(default_factory=lambda: [1, 2, 4, 8])  # context study
    context_tokens: int = 20000  # truncated-history evaluation: first N test tokens
    latency_models: list[str] = field(
        default_factory=lambda: ["gcnn-8b,lstm-2048", "gcnn-small,lstm-small"]
    )
    precisions: list[str] = field(default_factory=lambda: ["bf16", "fp32"])
    repeats: int = 20
    latency_args: list[str] = field(default_factory=list)  # more flags for both latency commands
    tools: list[str] = field(default_factory=lambda: ["evaluate", "roofline"])  # latency
    only: list[str] = field(default_factory=list)  # variant patterns (fnmatch)
    extra: list[str] = field(default_factory=list)  # flags after `--`


# --- shared pieces -----------------------------------------------------------------------------


def seeds(o: StudyOptions, default: int = 3) -> range:
    return range(1, (o.seeds or default) + 1)


def budget_args(o: StudyOptions, default_updates: int | None) -> list[str]:
    """Stopping and validation flags: the study's update budget unless one is given."""
    updates = o.max_updates
    if updates is None and o.max_minutes is None and o.max_epochs is None:
        updates = default_updates
    args = []
    if updates is not None:
        args += ["--max-updates", str(updates)]
    if o.max_minutes is not None:
        args += ["--max-minutes", f"{o.max_minutes:g}"]
    if o.max_epochs is not None:
        args += ["--max-epochs", str(o.max_epochs)]
    every = 50
    if updates:  # the first divisor of the budget that gives at most valid_points validations
        every = next(
            d for d in range(math.ceil(updates / o.valid_points), updates + 1) if updates % d == 0
        )
    # log at every validation, so that training time is known at each point of the curve
    args += ["--valid-every", str(every), "--log-every", str(every)]
    if o.valid_tokens:
        args += ["--valid-tokens", str(o.valid_tokens)]
    return args


def training_args(o: StudyOptions, model: str, study: str) -> list[str]:
    return ["--data", o.data, "--model", model, *budget_args(o, UPDATES.get(study)), *o.extra]


def runs_for_seeds(o: StudyOptions, study: str, variant: str, args: list[str], **kw) -> list[Run]:
    return [Run(study, variant, s, list(args), **kw) for s in seeds(o)]


def selected(o: StudyOptions, runs: list[Run]) -> list[Run]:
    if not o.only:
        return runs
    return [r for r in runs if any(fnmatch.fnmatch(r.variant, p) for p in o.only)]


def lr_name(lr: float) -> str:
    return f"lr{lr:g}"


def best_lr(records: list[dict], lrs: list[float]) -> float | None:
    """The lr of the lowest exact valid perplexity among the sweep's records (None: incomplete)."""
    if len(records) < len(lrs):
        return None

    def score(record: dict) -> float:
        ppl = (record.get("eval") or {}).get("valid", {}).get("ppl")
        return ppl if record.get("status") == "ok" and ppl is not None else math.inf

    best = min(records, key=lambda r: (score(r), r["info"]["lr"]))
    return best["info"]["lr"]


def model_args(args: list[str]) -> dict:
    """The model options these train.py flags set (--model-arg KEY=VALUE, --dropout, ...)."""
    from gcnn.training.trainer import model_overrides

    return model_overrides(train_config(args))


def for_family(args: list[str], family: str) -> list[str]:
    """Drop the flags and --model-arg options that the family's models do not have."""
    import dataclasses

    from gcnn.models.config import CONFIGS

    known = {f.name for f in dataclasses.fields(CONFIGS[family])}
    gcnn_only = ("--gating", "--weight-norm", "--no-weight-norm")
    out, i = [], 0
    while i < len(args):
        flag, value = args[i].partition("=")[::2]
        takes_value = flag in ("--model-arg", "--gating") and not value
        if takes_value and i + 1 < len(args):
            value = args[i + 1]
        n = 2 if takes_value else 1
        keep = not (family == "lstm" and flag in gcnn_only)
        if flag == "--model-arg":
            keep = value.partition("=")[0].strip() in known
        if keep:
            out += args[i : i + n]
        i += n
    return out


def vocab_size(o: StudyOptions, download: bool = True) -> int:
    from gcnn.data import prepare_corpus

    c = train_config(["--data", o.data, *o.extra])  # the tokenizer the runs will use
    corpus = prepare_corpus(
        c.data, tokenizer=c.tokenizer, vocab_size=c.vocab_size, splits=("train",), download=download
    )
    return corpus.tokenizer.vocab_size


def count_params(preset: str, vocab: int, **overrides) -> int:
    import torch

    from gcnn.models import build_model

    with torch.device("meta"):  # shapes only: no memory, no initialisation
        return build_model(preset, vocab, **overrides).num_parameters()


# --- 1. gating (Fig. 3, Fig. 5) -----------------------------------------------------------------


def study_gating(runner: Runner, o: StudyOptions) -> None:
    """Each gating at the same budget, seeds and batches. Ungated convolutions emit c instead of
    2c channels; by default (match_params) their widths grow by sqrt(2) to keep the parameter
    count, and a control at the preset's width (match_params=false) shows the unmatched count."""
    args = training_args(o, o.model, "gating")
    runs = []
    for g in GATED + UNGATED:
        label = NAMES[g] if g in GATED else f"{NAMES[g]} (width ×√2: matched parameters)"
        runs += runs_for_seeds(
            o, "gating", g, [*args, "--gating", g], label=label, info={"gating": g, "matched": True}
        )
    for g in UNGATED:
        flags = [*args, "--gating", g, "--model-arg", "match_params=false"]
        runs += runs_for_seeds(
            o,
            "gating",
            f"{g}-unmatched",
            flags,
            label=f"{NAMES[g]} (preset width)",
            info={"gating": g, "matched": False},
        )
    runner.run(selected(o, runs))


# --- 2. weight normalisation and clipping (Fig. 6) ----------------------------------------------


def study_norm(runner: Runner, o: StudyOptions) -> None:
    """Both / weight norm only / clipping only / neither, with the paper's NAG (momentum 0.99,
    clip 0.1, at the best lr of a short sweep) and with the small presets' AdamW recipe."""
    base = training_args(o, o.model, "norm")
    nag = [*base, "--optimizer", "nag"]
    sweep = [
        Run(
            "norm",
            f"nag-both-{lr_name(lr)}",
            1,
            [*nag, "--lr", f"{lr:g}"],
            label="NAG both",
            info={"optimizer": "nag", "variant": "both", "lr": lr, "sweep": True},
        )
        for lr in o.nag_lrs
    ]
    lr = best_lr(runner.run(selected(o, sweep)), o.nag_lrs)
    placeholder = lr is None
    lr = o.nag_lrs[0] if lr is None else lr
    runs = []
    for name, flags in NORM_VARIANTS.items():
        info = {"optimizer": "nag", "variant": name, "lr": lr, "placeholder": placeholder}
        runs += runs_for_seeds(
            o,
            "norm",
            f"nag-{name}-{lr_name(lr)}",
            [*nag, "--lr", f"{lr:g}", *flags],
            label=f"NAG {name}",
            info=info,
        )
    for name, flags in NORM_VARIANTS.items():
        info = {"optimizer": "adamw", "variant": name}
        runs += runs_for_seeds(
            o,
            "norm",
            f"adamw-{name}",
            [*base, "--optimizer", "adamw", *flags],
            label=f"AdamW {name}",
            info=info,
        )
    runner.run(selected(o, runs))


# --- 3. context (Fig. 4) ------------------------------------------------------------------------


def base_blocks(o: StudyOptions) -> list[dict]:
    from gcnn.models import PRESETS

    blocks = model_args(o.extra).get("blocks", PRESETS.get(o.model, {}).get("blocks"))
    if not blocks:
        raise GcnnError(f"--model {o.model}: the context study needs a GCNN preset")
    return [{"layers": b["layers"], "repeat": b.get("repeat", 1)} for b in blocks]


def with_kernel(blocks: list[dict], kernel: int) -> list[dict]:
    """Every convolution wider than 1 gets `kernel`, every width x sqrt(k_base / kernel): the
    convolutions keep their parameter count (k x c_in x c_out) and the receptive field changes."""
    k_base = max(k for b in blocks for k, _ in b["layers"])
    scale = math.sqrt(k_base / kernel)
    return [
        {
            "layers": [[kernel if k > 1 else 1, max(1, round(c * scale))] for k, c in b["layers"]],
            "repeat": b["repeat"],
        }
        for b in blocks
    ]


def receptive_field(blocks: list[dict]) -> int:
    return 1 + sum(b["repeat"] * sum(k - 1 for k, _ in b["layers"]) for b in blocks)


def toml_blocks(blocks: list[dict]) -> str:
    return (
        "[" + ", ".join(f"{{layers = {b['layers']}, repeat = {b['repeat']}}}" for b in blocks) + "]"
    )


def study_context(runner: Runner, o: StudyOptions) -> None:
    """(a) Models whose kernels (hence receptive fields) differ at equal convolution parameters;
    the softmax input stays the preset's width. (b) The preset's own model evaluated on the test
    split with every token's history cut to 1, 2, 4, ... tokens (exactly: gcnn.evaluation)."""
    base = base_blocks(o)
    k_base = max(k for b in base for k, _ in b["layers"])
    width = base[-1]["layers"][-1][1]
    field_base = receptive_field(base)
    histories = [h for h in (2**i for i in range(12)) if h < field_base] + [field_base]
    args = training_args(o, o.model, "context")
    runs = []
    for kernel in sorted(set(o.kernels) | {k_base}):
        blocks = with_kernel(base, kernel)
        flags = [
            *args,
            "--model-arg",
            f"blocks={toml_blocks(blocks)}",
            "--model-arg",
            f"softmax_dim={width}",
        ]
        is_base = kernel == k_base
        runs += runs_for_seeds(
            o,
            "context",
            f"k{kernel}",
            flags,
            label=f"kernel {kernel}",
            info={"kernel": kernel, "receptive_field": receptive_field(blocks), "base": is_base},
            contexts=tuple(h - 1 for h in histories) if is_base else (),
            context_tokens=o.context_tokens if is_base else 0,
        )
    runner.run(selected(o, runs))


# --- 4. GCNN against LSTM (Tables 2-3, Fig. 2) --------------------------------------------------


def matched_lstm_hidden(o: StudyOptions, lstm_overrides: dict, plan: bool) -> tuple:
    """(hidden size, LSTM params, GCNN params): the LSTM hidden size with the GCNN's count.

    Needs the corpus' vocabulary; when only planning and the corpus is not there yet (it is
    downloaded by the first run), the hidden size is left to be solved then."""
    try:
        vocab = vocab_size(o, download=not plan)
    except GcnnError:
        if not plan:
            raise
        return "<matched>", None, None
    gcnn_overrides = model_args(o.extra)
    target = count_params(o.model, vocab, **gcnn_overrides)
    params = lambda h: count_params(o.lstm_model, vocab, **{**lstm_overrides, "hidden_size": h})  # noqa: E731
    lo, hi = 1, 2
    while params(hi) < target:
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # params grows with h: the last h below the target and the first above
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if params(mid) < target else (lo, mid)
    best = min((lo, hi), key=lambda h: abs(params(h) - target))
    return best, params(best), target


def study_lstm(runner: Runner, o: StudyOptions) -> None:
    """gcnn-small and an LSTM of the same parameter count (its hidden size solved for), same
    corpus, tokens per update and number of updates; each family at its best lr of a sweep."""
    budget = budget_args(o, UPDATES["lstm"])
    lstm_extra = for_family(o.extra, "lstm")
    lstm_overrides = model_args(lstm_extra)
    hidden, lstm_params, gcnn_params = matched_lstm_hidden(o, lstm_overrides, runner.plan)
    families = {
        "gcnn": ["--data", o.data, "--model", o.model, *budget, *o.extra],
        "lstm": [
            "--data",
            o.data,
            "--model",
            o.lstm_model,
            *budget,
            *lstm_extra,
            "--model-arg",
            f"hidden_size={hidden}",
        ],
    }
    info = {"gcnn_params": gcnn_params, "lstm_params": lstm_params, "lstm_hidden": hidden}
    sweeps = {}
    for family, args in families.items():
        sweep = [
            Run(
                "lstm",
                f"{family}-{lr_name(lr)}",
                1,
                [*args, "--lr", f"{lr:g}"],
                label=family,
                info={**info, "family": family, "lr": lr},
            )
            for lr in o.lrs
        ]
        sweeps[family] = best_lr(runner.run(selected(o, sweep)), o.lrs)
    runs = []
    for family, args in families.items():
        lr = sweeps[family] or o.lrs[0]
        extra_info = {"family": family, "lr": lr, "placeholder": sweeps[family] is None}
        runs += runs_for_seeds(
            o,
            "lstm",
            f"{family}-{lr_name(lr)}",
            [*args, "--lr", f"{lr:g}"],
            label=family,
            info={**info, **extra_info},
        )
    runner.run(selected(o, runs))


# --- 5. latency (Table 4) -----------------------------------------------------------------------


def study_latency(runner: Runner, o: StudyOptions) -> None:
    """`evaluate.py latency` (throughput, responsiveness) and `benchmarks/bench_roofline.py` for
    each pair of models and precision, one thread (the machine is shared), output recorded."""
    runs = []
    for pair in o.latency_models:
        models = [m for m in pair.split(",") if m]
        slug = "-".join(models)
        for precision in o.precisions:
            common = ["--precision", precision, "--threads", "1", "--repeats", str(o.repeats)]
            tools = {
                "evaluate": ("evaluate.py", ["latency", *models, *common, "--json"]),
                "roofline": ("benchmarks/bench_roofline.py", ["--models", *models, *common]),
            }
            for tool in o.tools:
                script, args = tools[tool]
                run_id = f"{tool}-{slug}-{precision}"
                label = f"{script} {precision}"
                info = {"models": models, "precision": precision, "tool": tool}
                args = [*args, *o.latency_args]
                runs.append(
                    Run("latency", run_id, None, args, script=script, label=label, info=info)
                )
    runner.run(selected(o, runs))


# --- the default run and the longer recipe ------------------------------------------------------


def user_budget(o: StudyOptions) -> list[str]:
    args = []
    if o.max_updates is not None:
        args += ["--max-updates", str(o.max_updates)]
    if o.max_minutes is not None:
        args += ["--max-minutes", f"{o.max_minutes:g}"]
    if o.max_epochs is not None:
        args += ["--max-epochs", str(o.max_epochs)]
    return args


def study_default(runner: Runner, o: StudyOptions) -> None:
    """`python train.py` exactly as a user types it (only --seed and --out added), timed, then the
    exact valid and test perplexity; `python train.py --model lstm-small` beside it."""
    data = [] if o.data == "wikitext-2" else ["--data", o.data]
    commands = {
        "gcnn-small": [*data, *user_budget(o), *o.extra],
        "lstm-small": [
            "--model",
            "lstm-small",
            *data,
            *user_budget(o),
            *for_family(o.extra, "lstm"),
        ],
    }
    runs = []
    for s in seeds(o, default=1):
        for variant, args in commands.items():
            label = shlex.join(["python", "train.py", *args])
            info = {"family": model_family(variant)}
            runs.append(Run("default", variant, s, args, label=label, info=info))
    runner.run(selected(o, runs))


def study_long(runner: Runner, o: StudyOptions) -> None:
    """The longer CPU recipes (at most 60 minutes each), GCNN and LSTM at the same budget."""
    data = [] if o.data == "wikitext-2" else ["--data", o.data]
    runs = []
    for s in seeds(o, default=1):
        for family, config in LONG_CONFIGS.items():
            args = ["--config", config, *data, *user_budget(o), *for_family(o.extra, family)]
            label = shlex.join(["python", "train.py", *args])
            info = {"family": family, "config": config}
            runs.append(Run("long", family, s, args, label=label, info=info))
    runner.run(selected(o, runs))


STUDY_FUNCTIONS = {
    "gating": study_gating,
    "norm": study_norm,
    "context": study_context,
    "lstm": study_lstm,
    "latency": study_latency,
    "default": study_default,
    "long": study_long,
}


# --- command line -------------------------------------------------------------------------------


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
    p = Parser(
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
    p.add_argument("--data", default="wikitext-2", help="wikitext-2, wikitext-103 or a directory")
    p.add_argument("--model", default="gcnn-small", help="the GCNN preset (default gcnn-small)")
    p.add_argument("--lstm-model", default="lstm-small", help="the LSTM preset of the lstm study")
    p.add_argument(
        "--valid-tokens",
        type=int,
        default=32768,
        help="validation tokens for the curves during training (0: all); the final "
        "figures are exact, on every token",
    )
    p.add_argument("--valid-points", type=int, default=8, help="validations per run")
    p.add_argument(
        "--lrs", type=float_list, default=[5e-3, 1e-2, 2e-2, 4e-2], help="lstm study sweep"
    )
    p.add_argument(
        "--nag-lrs",
        type=float_list,
        default=[0.1, 0.3, 1.0, 2.0],
        help="norm study: NAG learning rates to sweep",
    )
    p.add_argument("--kernels", type=int_list, default=[1, 2, 4, 8], help="context study")
    p.add_argument(
        "--context-tokens",
        type=int,
        default=20000,
        help="context study: test tokens for the truncated histories (0: all)",
    )
    p.add_argument(
        "--latency-models",
        nargs="+",
        default=["gcnn-8b,lstm-2048", "gcnn-small,lstm-small"],
        metavar="GCNN,LSTM",
    )
    p.add_argument("--precisions", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32"])
    p.add_argument("--repeats", type=int, default=20, help="latency: timed repeats")
    p.add_argument(
        "--tools",
        nargs="+",
        default=["evaluate", "roofline"],
        choices=["evaluate", "roofline"],
        help="latency: evaluate.py latency and/or benchmarks/bench_roofline.py (CPU only)",
    )
    p.add_argument(
        "--latency-args",
        default="",
        help='latency: more flags for both commands, e.g. "--sentence-length 50"',
    )
    p.add_argument(
        "--only",
        nargs="+",
        default=[],
        metavar="PATTERN",
        help="run only the variants matching these patterns (e.g. 'glu' 'relu*')",
    )
    p.add_argument(
        "--records", default=str(ROOT / "experiments" / "records"), help="record directory"
    )
    p.add_argument(
        "--runs",
        default=str(ROOT / "runs" / "experiments"),
        help="scratch directory for run directories (checkpoints)",
    )
    p.add_argument(
        "--eval-device", default="auto", help="exact evaluation: cpu, cuda or auto (cuda if any)"
    )
    p.add_argument("--keep-runs", action="store_true", help="keep checkpoints after the record")
    p.add_argument(
        "--launch", default="", help='train.py launcher, e.g. "torchrun --nproc_per_node 4"'
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
    for name in ("seeds", "max_updates", "max_epochs", "valid_points", "repeats"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise GcnnError(f"--{name.replace('_', '-')} {value}: must be at least 1")
    if args.max_minutes is not None and not args.max_minutes > 0:
        raise GcnnError(f"--max-minutes {args.max_minutes}: must be positive")
    if min(args.valid_tokens, args.context_tokens) < 0:
        raise GcnnError("--valid-tokens and --context-tokens must be 0 or more")
    if not args.kernels or min(args.kernels) < 1 or not args.lrs or not args.nag_lrs:
        raise GcnnError("--kernels, --lrs and --nag-lrs need positive values")
    if args.eval_device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise GcnnError(f"--eval-device {args.eval_device}: no CUDA device; use cpu or auto")
    elif args.eval_device not in ("auto", "cpu"):
        raise GcnnError(f"--eval-device {args.eval_device}: choose auto, cpu or cuda")
    data = args.data
    if Path(data).exists():  # a corpus directory: absolute, since train.py runs in the repository
        data = str(Path(data).resolve())
    study = StudyOptions(
        seeds=args.seeds,
        max_updates=args.max_updates,
        max_minutes=args.max_minutes,
        max_epochs=args.max_epochs,
        data=data,
        model=args.model,
        lstm_model=args.lstm_model,
        valid_tokens=args.valid_tokens,
        valid_points=args.valid_points,
        lrs=args.lrs,
        nag_lrs=args.nag_lrs,
        kernels=args.kernels,
        context_tokens=args.context_tokens,
        latency_models=args.latency_models,
        precisions=args.precisions,
        repeats=args.repeats,
        latency_args=shlex.split(args.latency_args),
        tools=args.tools,
        only=args.only,
        extra=extra,
    )
    options = Options(
        records=Path(args.records).resolve(),
        runs=Path(args.runs).resolve(),
        in_process=args.in_process,
        eval_device=args.eval_device,
        keep_runs=args.keep_runs,
        launch=shlex.split(args.launch),
    )
    return args, study, options


def main(argv: list[str] | None = None) -> int:
    args, o, options = parse(sys.argv[1:] if argv is None else argv)
    studies = list(
        dict.fromkeys(s for name in args.studies for s in (ALL if name == "all" else [name]))
    )

    planner = Runner(options, plan=True)  # first only collect: what is done, what is left
    known = load_records(options.records)
    total = 0.0
    for name in studies:
        before_pending, before_done = len(planner.pending), len(planner.done)
        STUDY_FUNCTIONS[name](planner, o)
        pending = list(planner.pending.values())[before_pending:]
        seconds, source = planner.estimate(pending, known)
        total += seconds
        done = len(planner.done) - before_done
        line = f"{name}: {done} run(s) recorded, {len(pending)} to do"
        if pending:
            line += f", about {seconds / 60:.0f} min (from {source})"
        print(line, flush=True)
        if args.dry_run:
            for run in pending:
                note = "  [lr: chosen by the sweep]" if run.info.get("placeholder") else ""
                print(f"  {run.run_id}: {shlex.join(planner.command(run))}{note}")
    if len(studies) > 1:
        print(f"in all: about {total / 60:.0f} min", flush=True)
    if args.dry_run:
        return 0

    runner = Runner(options)
    runner.total = len(planner.pending)
    try:
        for name in studies:
            STUDY_FUNCTIONS[name](runner, o)
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
