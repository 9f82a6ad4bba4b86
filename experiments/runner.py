"""The machinery behind experiments/run.py: runs, their records, resuming and time estimates.

A *run* is one train.py call with one seed (or one benchmark command). When it has finished, the
runner evaluates its best checkpoint exactly (gcnn.evaluation, fp32, every token of the valid and
test splits) and writes one *record*: a small JSON file experiments/records/<study>/<run-id>.json
holding the settings, seed, budget, machine (CPU model, torch version, threads), parameter count,
the validation curve [(update, tokens, wall time, training FLOPs, valid ppl)] and the final
perplexities. Records are what the results page (experiments/report.py) is built from; the run
directory with its checkpoints goes to a scratch directory (runs/experiments/ by default, ignored
by git) and is deleted once the record is written.

Re-running a study skips every run whose record exists with the same settings, and a run that
was interrupted continues from its checkpoint_last.pt (train.py --resume).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib
import importlib.util
import io
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gcnn.errors import GcnnError

ROOT = Path(__file__).resolve().parent.parent
RECORDS = ROOT / "experiments" / "records"
RUNS = ROOT / "runs" / "experiments"
FORMAT = "gcnn-experiment"
# the gating variants as the paper names them (run.py labels, report.py tables)
NAMES = {
    "glu": "GLU",
    "gtu": "GTU",
    "bilinear": "bilinear",
    "relu": "ReLU",
    "tanh": "Tanh",
    "linear": "linear",
}

# Before any record exists, estimates use these rates: seconds per training token of gcnn-small /
# lstm-small on WikiText-2, bf16, on the idle 2-core AMD EPYC (docs/training.md: 9,500 and about
# 25,000 tokens/s), and the seconds a run spends besides training (start-up, validations, the
# exact valid + test evaluation; an LSTM scores one stream at batch 1) - a guess until the first
# records of a machine replace both.
FALLBACK_RATE = {"gcnn": 1 / 9500, "lstm": 1 / 20000}
FALLBACK_EVAL_S = {"gcnn": 30.0, "lstm": 90.0}
FALLBACK_COMMAND_S = 90.0


class Interrupted(Exception):
    """The user stopped a run (Ctrl-C / SIGTERM): its checkpoint is saved, re-running resumes."""


# --- what a run is -----------------------------------------------------------------------------


@dataclass
class Run:
    study: str
    variant: str  # names the run together with the seed: <variant>-s<seed>
    seed: int | None  # None: a benchmark command, no seed
    args: list[str]  # train.py flags (without --seed, --out), or the command's arguments
    label: str = ""  # the variant as the results page names it
    info: dict = field(default_factory=dict)  # study-specific facts copied into the record
    script: str = "train.py"  # train.py, or a command run for its output (latency)
    splits: tuple[str, ...] = ("valid", "test")  # exact evaluation after training
    contexts: tuple[int, ...] = ()  # also evaluate the test split with truncated histories
    context_tokens: int = 0  # ... on its first N tokens (0: all)

    @property
    def run_id(self) -> str:
        return self.variant if self.seed is None else f"{self.variant}-s{self.seed}"

    @property
    def is_training(self) -> bool:
        return self.script == "train.py"

    def spec(self) -> dict:
        """What makes two runs the same run (see `spec_diff`). For training, the settings
        train.py resolves from the flags too: a changed default or recipe file is a new run."""
        spec = {
            "script": self.script,
            "args": list(self.args),
            "seed": self.seed,
            "splits": list(self.splits),
            "contexts": list(self.contexts),
            "context_tokens": self.context_tokens,
        }
        if self.is_training:
            config = train_config([*self.args, "--seed", str(self.seed)]).to_dict()
            spec["config"] = {k: v for k, v in config.items() if k not in UNSPECIFIC}
        return spec


# Settings that do not change what a run computes.
UNSPECIFIC = ("out", "resume", "progress", "tensorboard", "log_every", "save_every")


def spec_diff(recorded: dict, wanted: dict) -> str:
    """What differs between a record's spec and the run asked for (empty: the same run).
    Settings that the record does not know (added to train.py since) are not counted."""
    diffs = []
    for key in sorted(set(recorded) | set(wanted)):
        old, new = recorded.get(key), wanted.get(key)
        if key == "config" and isinstance(old, dict) and isinstance(new, dict):
            diffs += [
                f"{k}: recorded {old[k]!r}, now {new[k]!r}"
                for k in old
                if k in new and old[k] != new[k]
            ]
        elif old != new:
            diffs.append(f"{key}: recorded {old!r}, now {new!r}")
    return "; ".join(diffs)


@dataclass
class Options:
    records: Path = RECORDS  # where records are read and written
    runs: Path = RUNS  # scratch: run directories with checkpoints
    in_process: bool = False  # run train.py etc. in this process (tests); default: subprocesses
    keep_runs: bool = False  # keep run directories (checkpoints) after the record is written
    launch: list[str] = field(default_factory=list)  # e.g. ["torchrun", "--nproc_per_node", "4"]
    eval_device: str = "auto"  # the exact evaluation's device; auto: cuda if there is one
    eval_batch_size: int = 8
    eval_block_size: int = 512


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one `error:` line and exit status 2 (GcnnError + run_cli)."""

    def error(self, message: str):
        raise GcnnError(f"{message} (see `{self.prog} --help`)")


# --- the machine -------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """Where a figure was measured: CPU model and features, cores, torch, threads, GPU."""
    flags = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cpu_bf16": bool(flags & {"avx512_bf16", "amx_bf16"}),
        "torch": torch.__version__,
        "threads": int(os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads()),
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if commit.returncode == 0:
            info["commit"] = commit.stdout.strip()
    return info


def describe_machine(m: dict) -> str:
    threads = m.get("threads")
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    return (
        f"{m.get('cpu', '?')} ({m.get('cores', '?')} cores{', bf16' if m.get('cpu_bf16') else ''}),"
        f" torch {m.get('torch', '?')}, {threads} thread{'s' if threads != 1 else ''}{gpu}"
    )


# --- launching train.py and other scripts ------------------------------------------------------

# Scripts that execute on import: in-process runs call their library entry point instead.
IN_PROCESS = {"train.py": "gcnn.training.cli", "evaluate.py": "gcnn.evaluation.cli"}


def launch(
    script: str, argv: list[str], options: Options, capture: bool = False
) -> tuple[int, str, str]:
    """Run `python script argv` (exit status, stdout if captured, stderr's last lines)."""
    if options.in_process:
        return _launch_in_process(script, argv, capture)
    prefix = options.launch if (options.launch and script == "train.py") else [sys.executable]
    cmd = [*prefix, str(ROOT / script), *argv]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,  # paths in the flags are relative to the repository (e.g. --config)
    )
    try:
        if capture:
            out, err = proc.communicate()
            sys.stderr.write(err)
            return proc.returncode, out, err
        tail: list[str] = []
        for line in proc.stderr:  # echo as it comes, keep the end for the error message
            sys.stderr.write(line)
            tail = (tail + [line])[-20:]
        return proc.wait(), "", "".join(tail)
    except KeyboardInterrupt:
        proc.wait()  # train.py saves its checkpoint on Ctrl-C, then exits 130
        raise Interrupted from None


def _launch_in_process(script: str, argv: list[str], capture: bool) -> tuple[int, str, str]:
    from gcnn.errors import run_cli

    if script in IN_PROCESS:
        main = importlib.import_module(IN_PROCESS[script]).main
        entry = lambda: main(argv)  # noqa: E731
    else:
        spec = importlib.util.spec_from_file_location(Path(script).stem, ROOT / script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        entry = lambda: run_cli(lambda: module.main(argv))  # noqa: E731
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(ROOT), contextlib.redirect_stderr(err):
        if capture:
            with contextlib.redirect_stdout(out):
                rc = entry()
        else:
            rc = entry()
    sys.stderr.write(err.getvalue())
    return int(rc or 0), out.getvalue(), err.getvalue()


# --- training configs, budgets, FLOPs ----------------------------------------------------------


def train_config(args: list[str]):
    """The TrainConfig that train.py would run with these flags (defaults resolved)."""
    from gcnn.training.config import compose, parse_flags
    from gcnn.training.trainer import resolve

    config_file, flags = parse_flags(args)
    with contextlib.chdir(ROOT):  # where train.py runs: --config paths are relative to it
        return resolve(compose(flags, config_file))


def model_from_flags(argv: list[str]):
    """The model train.py builds from these flags (untrained), and its resolved config dict."""
    from gcnn.data import prepare_corpus
    from gcnn.models import build_model
    from gcnn.training.trainer import model_overrides, resolve

    config = train_config(argv)
    corpus = prepare_corpus(
        config.data, tokenizer=config.tokenizer, vocab_size=config.vocab_size, splits=("train",)
    )
    model = build_model(config.model, corpus.tokenizer.vocab_size, **model_overrides(config))
    return model, dataclasses.asdict(resolve(config, model))


def model_family(preset: str) -> str:
    from gcnn.models import PRESETS

    return PRESETS.get(preset, {}).get("family", "gcnn")


def flops_per_token(model, config: dict, train_tokens: np.ndarray) -> dict:
    """Forward and training FLOPs per scored training token (2 x multiply-adds).

    forward = network x (block + context) / block   (a GCNN also runs its unscored context)
            + adaptive-softmax head                  (runs on scored targets only)
            + expected tail: sum_i P(target in cluster i) x FLOPs of tail i, P from the train split
    training = 3 x forward (the backward pass costs about twice the forward: Kaplan et al. 2020).
    Ignored: embedding lookups, gates, residual sums, weight norm, dropout, the optimizer.
    """
    softmax = model.softmax
    head = softmax.flops_per_token(full=False)
    network = model.flops_per_token(full_softmax=False) - head
    if not model.is_recurrent:
        block, context = config["block_size"], config.get("context") or 0
        network = network * (block + context) / block
    counts = np.bincount(np.asarray(train_tokens), minlength=softmax.vocab_size)
    tail = 0.0
    for i, layers in enumerate(softmax.tails):
        share = counts[softmax.bounds[i] : softmax.bounds[i + 1]].sum() / max(1, counts.sum())
        linears = [m for m in layers if isinstance(m, torch.nn.Linear)]
        tail += share * 2 * sum(m.in_features * m.out_features for m in linears)
    forward = network + head + tail
    return {
        "network": network,
        "head": head,
        "tail": tail,
        "forward": forward,
        "train": 3 * forward,
    }


def read_metrics(path: Path) -> list[dict]:
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                rows.append(json.loads(line))
    return rows


def validation_curve(rows: list[dict], train_flops_per_token: float) -> list[dict]:
    """One point per validation. `train_s` is training time alone, summed from the logged rates
    (each metrics line's tokens/s covers the updates since the previous line, validations
    excluded); `wall_s` is the trainer's clock, validations included."""
    points, train_s, last_tokens, last_rate = [], 0.0, 0, None
    for row in rows:
        if row.get("train_loss") is not None and row.get("tokens_per_s"):
            train_s += (row["tokens"] - last_tokens) / row["tokens_per_s"]
            last_tokens, last_rate = row["tokens"], row["tokens_per_s"]
        if row.get("valid_ppl") is not None:
            since = row["tokens"] - last_tokens
            t = train_s + (since / last_rate if last_rate else 0.0)
            points.append(
                {
                    "update": row["step"],
                    "tokens": row["tokens"],
                    "epoch": row.get("epoch"),
                    "wall_s": row.get("wall_s"),
                    "train_s": round(t if last_rate else row.get("wall_s") or 0.0, 3),
                    "train_flops": row["tokens"] * train_flops_per_token,
                    "valid_ppl": row["valid_ppl"],
                }
            )
    return points


# --- exact evaluation --------------------------------------------------------------------------


def exact_perplexity(model, tokenizer, data: str, splits, contexts, context_tokens, options):
    """{split: result} over every token, and the test split with truncated histories."""
    from gcnn.data import find_split_files, resolve_corpus
    from gcnn.evaluation import evaluate_perplexity, tokenize_split
    from gcnn.evaluation.perplexity import check_vocabulary

    files = find_split_files(resolve_corpus(data))
    kwargs = {
        "block_size": options.eval_block_size,
        "batch_size": options.eval_batch_size,
        "device": next(model.parameters()).device,
    }
    results, curve = {}, []
    for split in dict.fromkeys([*splits, *(["test"] if contexts else [])]):
        if split not in files:
            raise GcnnError(f"corpus {data} has no {split} split to evaluate")
        tokens = tokenize_split(tokenizer, files[split])
        check_vocabulary(tokens, files[split], "of this run")
        if split in splits:
            r = evaluate_perplexity(model, tokenizer, tokens.tokens, **kwargs)
            results[split] = {
                "ppl": r.perplexity,
                "loss": r.loss,
                "tokens": r.tokens,
                "seconds": r.seconds,
            }
        if split == "test" and contexts:
            subset = tokens.tokens[:context_tokens] if context_tokens else tokens.tokens
            for context in contexts:
                r = evaluate_perplexity(model, tokenizer, subset, context=context, **kwargs)
                curve.append(
                    {
                        "context": context,
                        "history": context + 1,
                        "ppl": r.perplexity,
                        "seconds": r.seconds,
                    }
                )
    return results, curve


# --- records -----------------------------------------------------------------------------------


def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def load_records(root: Path, study: str | None = None) -> list[dict]:
    """Every record under root (or root/study), sorted by path."""
    base = root / study if study else root
    records = []
    for path in sorted(base.rglob("*.json")) if base.is_dir() else []:
        with contextlib.suppress(ValueError, OSError):
            record = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(record, dict) and record.get("format") == FORMAT:
                records.append(record)
    return records


def to_json(data: dict) -> str:
    """One line per key, and per item of a list of points: small diffs, readable in review."""

    def value(v) -> str:
        if isinstance(v, list) and v and isinstance(v[0], dict | list):
            return "[\n  " + ",\n  ".join(json.dumps(item) for item in v) + "\n ]"
        return json.dumps(v)

    return "{\n" + ",\n".join(f" {json.dumps(k)}: {value(v)}" for k, v in data.items()) + "\n}\n"


def write_json(path: Path, data: dict) -> None:
    from gcnn.data import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as f:
        f.write(to_json(data))


class Runner:
    """Runs what is not recorded yet. With plan=True it only collects what it would run."""

    def __init__(self, options: Options, plan: bool = False):
        self.options = options
        self.plan = plan
        self.pending: dict[tuple[str, str], Run] = {}  # (study, run id) -> run, in order
        self.done: dict[tuple[str, str], Run] = {}
        self.total = 0  # runs to make in all (from the plan), for the progress line
        self.made = 0
        self._machine: dict | None = None

    @property
    def machine(self) -> dict:
        if self._machine is None:
            self._machine = machine()
        return self._machine

    def record_path(self, run: Run) -> Path:
        return self.options.records / run.study / f"{run.run_id}.json"

    def existing(self, run: Run) -> dict | None:
        path = self.record_path(run)
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            raise GcnnError(f"record {path} is not valid JSON; delete it to redo the run") from None
        diff = spec_diff(record.get("spec") or {}, run.spec())
        if diff:
            raise GcnnError(
                f"record {path} was made with other settings than this study asks for "
                f"({diff[:300]}); keep it by choosing another --records directory, or delete it "
                "to redo the run"
            )
        return record

    def run(self, runs: list[Run]) -> list[dict]:
        """The records of `runs`: existing ones as they are, missing ones made (unless planning)."""
        records = []
        for run in runs:
            record = self.existing(run)
            if record is None and not self.plan:
                self.made += 1
                step = f"[{self.made}/{self.total}] " if self.total else ""
                command = shlex.join(self.command(run))
                print(f"\n=== {step}{run.study} {run.run_id}: {command}", flush=True)
                record = self.execute(run)
                write_json(self.record_path(run), record)
                print(
                    f"=== wrote {self.record_path(run)} ({record['wall_s'] / 60:.1f} min)",
                    flush=True,
                )
            if record is None:
                self.pending.setdefault((run.study, run.run_id), run)
            else:
                self.done.setdefault((run.study, run.run_id), run)
                records.append(record)
        return records

    def run_dir(self, run: Run) -> Path:
        return self.options.runs / run.study / run.run_id

    def command(self, run: Run) -> list[str]:
        if not run.is_training:
            return ["python", run.script, *run.args]
        return ["python", "train.py", *self.train_argv(run)]

    def train_argv(self, run: Run) -> list[str]:
        out = self.run_dir(run)
        return [*run.args, "--seed", str(run.seed), "--out", str(out), "--no-progress"]

    def execute(self, run: Run) -> dict:
        start, load = time.perf_counter(), _loadavg()
        base = {
            "format": FORMAT,
            "version": 1,
            "study": run.study,
            "run_id": run.run_id,
            "variant": run.variant,
            "label": run.label or run.variant,
            "seed": run.seed,
            "info": run.info,
            "spec": run.spec(),
            "command": shlex.join(self.command(run)),
            "machine": self.machine,
            "started": now(),
        }
        record = self.execute_training(run) if run.is_training else self.execute_command(run)
        record = {**base, **record, "finished": now(), "load_average": [load, _loadavg()]}
        record["wall_s"] = round(time.perf_counter() - start, 2)
        return record

    def execute_command(self, run: Run) -> dict:
        t0 = time.perf_counter()
        rc, out, err = launch(run.script, run.args, self.options, capture=True)
        if rc != 0:
            raise GcnnError(
                f"{run.study}/{run.run_id}: {run.script} failed (exit {rc}): {_last_line(err)}"
            )
        result = {"command_s": round(time.perf_counter() - t0, 2), "stdout": out}
        with contextlib.suppress(ValueError):
            result["json"] = json.loads(out)
        return result

    def execute_training(self, run: Run) -> dict:
        from gcnn.checkpoint import load_model
        from gcnn.data import prepare_corpus

        out = self.run_dir(run)
        argv = self.train_argv(run)
        resumed = (out / "checkpoint_last.pt").exists()
        if resumed:
            argv.append("--resume")  # an interrupted run continues where it stopped
        t0 = time.perf_counter()
        rc, _, err = launch("train.py", argv, self.options)
        process_s = time.perf_counter() - t0
        status = "ok"
        if rc in (130, 143):
            raise Interrupted
        if rc == 2 and "diverged" in err:
            status = "diverged"  # a result (e.g. NAG without clipping), not a failure
        elif rc != 0:
            raise GcnnError(
                f"{run.study}/{run.run_id}: train.py failed (exit {rc}): {_last_line(err)}; "
                f"command: {shlex.join(self.command(run))}"
            )
        rows = read_metrics(out / "metrics.jsonl")
        best = out / "checkpoint_best.pt"
        device = self.options.eval_device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        checkpoint = best if best.exists() else out / "checkpoint_last.pt"
        if checkpoint.exists():
            model, tokenizer, ckpt = load_model(checkpoint, device=device)
            config = ckpt["train_config"]
        elif status == "diverged":
            # diverged before its first checkpoint (NAG without clipping can, within a few
            # updates): still a result; the model is rebuilt from the flags for its size and FLOPs
            model, config = model_from_flags(self.train_argv(run))
        else:
            raise GcnnError(f"{run.study}/{run.run_id}: train.py left no checkpoint in {out}")
        corpus = prepare_corpus(
            config["data"],
            tokenizer=config["tokenizer"],
            vocab_size=config["vocab_size"],
            splits=("train",),
        )
        flops = flops_per_token(model, config, corpus.splits["train"])
        curve = validation_curve(rows, flops["train"])
        last = rows[-1] if rows else {}
        record = {
            "status": status,
            "resumed": resumed,
            "budget": {k: config.get(k) for k in ("max_updates", "max_minutes", "max_epochs")},
            "done": {
                "updates": last.get("step", 0),
                "tokens": last.get("tokens", 0),
                "epochs": last.get("epoch"),
                "train_s": curve[-1]["train_s"] if curve else None,
                "trainer_wall_s": last.get("wall_s"),
                "process_s": round(process_s, 2),  # `time python train.py`: start-up included
            },
            "config": config,
            "model": {
                "name": model.config.name,
                "family": model.family,
                "params": model.num_parameters(),
                "receptive_field": model.receptive_field,
                "config": model.config_dict(),
            },
            "flops_per_token": flops,
            "curve": curve,
            "train_curve": [
                [r["step"], r["train_loss"]] for r in rows if r.get("train_loss") is not None
            ],
            "best_valid_ppl_in_training": min((p["valid_ppl"] for p in curve), default=None),
        }
        t0 = time.perf_counter()
        if status == "ok":
            results, context_curve = exact_perplexity(
                model,
                tokenizer,
                config["data"],
                run.splits,
                run.contexts,
                run.context_tokens,
                self.options,
            )
            record["eval"] = results
            if run.contexts:
                record["context_curve"] = context_curve
                record["context_tokens"] = run.context_tokens
        record["eval_s"] = round(time.perf_counter() - t0, 2)
        if not self.options.keep_runs:
            shutil.rmtree(out, ignore_errors=True)
        return record

    # -- estimates ------------------------------------------------------------------------------

    def estimate(self, runs: list[Run], known: list[dict]) -> tuple[float, str]:
        """Seconds for `runs`, from records of this machine where there are any."""
        total, sources = 0.0, set()
        for run in runs:
            seconds, source = estimate_run(run, known)
            total += seconds
            sources.add(source)
        return total, ", ".join(sorted(sources))


def estimate_run(run: Run, known: list[dict]) -> tuple[float, str]:
    same = [
        r["wall_s"]
        for r in known
        if r.get("study") == run.study and r.get("variant") == run.variant and not r.get("resumed")
    ]
    if same:
        return float(np.median(same)), "records of the same variant"
    if not run.is_training:
        return FALLBACK_COMMAND_S, "a guess"
    config = train_config(run.args)
    family = model_family(config.model)
    tokens = None
    if config.max_updates is not None:
        tokens = config.max_updates * config.tokens_per_batch
    peers = [
        r
        for r in known
        if r.get("model", {}).get("family") == family and r.get("done", {}).get("train_s")
    ]
    peers = [r for r in peers if r["config"].get("data") == config.data] or peers
    if peers:
        rate = float(np.median([r["done"]["train_s"] / max(1, r["done"]["tokens"]) for r in peers]))
        # a resumed run's wall_s covers only its last process, so it says nothing of the overhead
        whole = [r for r in peers if not r.get("resumed")]
        overhead = (
            max(0.0, float(np.median([r["wall_s"] - r["done"]["train_s"] for r in whole])))
            if whole
            else FALLBACK_EVAL_S[family]
        )
        source = f"{family} records"
    else:
        rate, overhead, source = FALLBACK_RATE[family], FALLBACK_EVAL_S[family], "built-in rates"
    seconds = math.inf if tokens is None else tokens * rate
    if config.max_minutes is not None:
        seconds = min(seconds, 60 * config.max_minutes)
    if math.isinf(seconds):  # epochs only: assume WikiText-2's 2.09M training tokens per epoch
        seconds = (config.max_epochs or 1) * 2_088_628 * rate
    return seconds + overhead, source


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None
