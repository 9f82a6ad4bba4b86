"""The runner behind experiments/run.py: what a run is, executing it, its record, resuming.

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

import contextlib
import json
import os
import re
import shlex
import shutil
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from launch import Interrupted, last_line, launch
from measure import (
    exact_perplexity,
    flops_per_token,
    model_from_flags,
    read_metrics,
    train_config,
    validation_curve,
)
from records import (
    FORMAT,
    RECORDS,
    RUNS,
    LoadSampler,
    git_state,
    machine,
    now,
    relative_paths,
    write_json,
)

from gcnn.devices import resolve_device
from gcnn.errors import GcnnError

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

    @property
    def timed(self) -> bool:
        """Whether a clock can end it (--max-minutes, given or the recipe's): such a run must
        have the machine to itself, or its budget buys another machine's worth of updates."""
        if self.info.get("timed"):
            return True
        if not self.is_training:
            return False
        return train_config([*self.args, "--seed", str(self.seed or 1)]).max_minutes is not None

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
    For training the resolved config decides, not the flags that spelled it: a flag that
    states a default is the same run. Settings that the record does not know (added to train.py
    since) are not counted; a model setting left to the preset counts as the preset's value."""
    diffs = []
    training = isinstance(recorded.get("config"), dict) and isinstance(wanted.get("config"), dict)
    for key in sorted(set(recorded) | set(wanted)):
        old, new = recorded.get(key), wanted.get(key)
        if key == "args" and training:
            continue
        if key == "config" and training:
            old, new = with_preset_values(old), with_preset_values(new)
            diffs += [
                f"{k}: recorded {old[k]!r}, now {new[k]!r}"
                for k in old
                if k in new and old[k] != new[k]
            ]
        elif old != new:
            diffs.append(f"{key}: recorded {old!r}, now {new!r}")
    return "; ".join(diffs)


def with_preset_values(config: dict) -> dict:
    """The config with the model settings it left at None (the preset's) filled in."""
    from gcnn.models import PRESETS

    preset = PRESETS.get(config.get("model"), {})
    filled = dict(config)
    for name in ("dropout", "gating", "weight_norm"):
        if filled.get(name) is None and name in preset:
            filled[name] = preset[name]
    return filled


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
    jobs: int = 1  # runs of one stage (a sweep, a study's seeds) launched at once


# --- running ------------------------------------------------------------------------------------


class Runner:
    """Runs what is not recorded yet. With plan=True it only collects what it would run."""

    def __init__(self, options: Options, plan: bool = False):
        self.options = options
        self.plan = plan
        self.pending: dict[tuple[str, str], Run] = {}  # (study, run id) -> run, in order
        self.done: dict[tuple[str, str], Run] = {}
        self.total = 0  # runs to make in all (from the plan), for the progress line
        self.made = 0
        self.jobs_now = 1  # runs being made at once (see run)
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

    def run(self, runs: list[Run], jobs: int | None = None) -> list[dict]:
        """The records of `runs`: existing ones as they are, missing ones made (unless planning),
        up to `jobs` (default: options.jobs) of them at once."""
        records: dict[int, dict] = {}
        missing = []
        for i, run in enumerate(runs):
            record = self.existing(run)
            if record is not None:
                records[i] = record
            elif self.plan:
                self.pending.setdefault((run.study, run.run_id), run)
            else:
                missing.append((i, run))
        jobs = 1 if self.options.in_process else max(1, jobs or self.options.jobs)
        timed = [(i, run) for i, run in missing if run.timed]  # alone, one after another
        untimed = [(i, run) for i, run in missing if not run.timed]
        self.jobs_now = 1
        records.update((i, self.make(run)) for i, run in timed)
        jobs = min(jobs, max(1, len(untimed)))  # a lone run (a sweep's next step): all cores
        self.jobs_now = jobs
        if jobs == 1:
            records.update((i, self.make(run)) for i, run in untimed)
        else:
            records.update(self.make_in_parallel(untimed, jobs))
        for i, run in enumerate(runs):
            if i in records:
                self.done.setdefault((run.study, run.run_id), run)
        return [records[i] for i in sorted(records)]

    def make(self, run: Run) -> dict:
        """Execute one run and write its record."""
        self.made += 1
        step = f"[{self.made}/{self.total}] " if self.total else ""
        command = shlex.join(self.command(run))
        print(f"\n=== {step}{run.study} {run.run_id}: {command}", flush=True)
        record = relative_paths(self.execute(run))
        write_json(self.record_path(run), record)
        print(f"=== wrote {self.record_path(run)} ({record['wall_s'] / 60:.1f} min)", flush=True)
        return record

    def make_in_parallel(self, missing: list[tuple[int, Run]], jobs: int) -> dict[int, dict]:
        """Several runs at once (subprocesses, each with its share of the cores); the first
        failure or Ctrl-C stops the rest from starting, the running ones finish or save."""
        done = {}
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(self.make, run): i for i, run in missing}
            try:
                for future in as_completed(futures):
                    done[futures[future]] = future.result()
            except (Exception, KeyboardInterrupt) as e:
                for future in futures:
                    future.cancel()
                if isinstance(e, KeyboardInterrupt):
                    raise Interrupted from None
                raise
        return done

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
        start = time.perf_counter()
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
            "machine": {**self.machine, **({"threads": self.threads} if self.threads else {})},
            "git": git_state(),
            "started": now(),
        }
        with LoadSampler() as load:
            if run.is_training:
                record = self.execute_training(run)
            else:
                record = self.execute_command(run)
        summary = load.summary()
        record = {**base, **record, "finished": now(), "load": summary}
        record["load_average"] = [summary["start"], summary["end"]]  # as older records have it
        record["wall_s"] = round(time.perf_counter() - start, 2)
        return record

    @property
    def threads(self) -> int | None:
        """Threads per launched run: N runs at once share the cores (unless OMP_NUM_THREADS
        says otherwise); one at a time, a run has them all."""
        if self.jobs_now <= 1 or os.environ.get("OMP_NUM_THREADS"):
            return None
        return max(1, (os.cpu_count() or 1) // self.jobs_now)

    def execute_command(self, run: Run) -> dict:
        o, t0 = self.options, time.perf_counter()
        rc, out, err = launch(
            run.script, run.args, o.in_process, o.launch, capture=True, threads=self.threads
        )
        if rc != 0:
            raise GcnnError(
                f"{run.study}/{run.run_id}: {run.script} failed (exit {rc}): {last_line(err)}"
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
        o = self.options
        rc, _, err = launch(
            "train.py",
            argv,
            o.in_process,
            o.launch,
            threads=self.threads,
            prefix=run.run_id if self.jobs_now > 1 else "",
        )
        process_s = time.perf_counter() - t0
        status = "ok"
        if rc in (130, 143):
            raise Interrupted
        if rc == 2 and "diverged" in err:
            status = "diverged"  # a result (e.g. NAG without clipping), not a failure
            update = re.search(r"after update (\d+)", err)
            cause = last_line(err).removeprefix("error: ").split("; ")[0]  # not the advice
            diverged = {"update": int(update.group(1)) if update else None, "cause": cause}
        elif rc != 0:
            raise GcnnError(
                f"{run.study}/{run.run_id}: train.py failed (exit {rc}): {last_line(err)}; "
                f"command: {shlex.join(self.command(run))}"
            )
        rows = read_metrics(out / "metrics.jsonl")
        best = out / "checkpoint_best.pt"
        device = resolve_device(self.options.eval_device, "--eval-device")
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
        if status == "diverged":
            record["diverged"] = diverged
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
