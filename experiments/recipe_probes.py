"""How the default run's recipe was chosen (issue 21): probes at the slowest CPU's budget.

    python experiments/recipe_probes.py speed [SHAPE..] [--speed-record NAME] [--rounds N]  # quiet
    python experiments/recipe_probes.py run [NAME..]  # the probes, 2 at a time, 1 thread each
    python experiments/recipe_probes.py record        # -> experiments/records/recipe/probes.json

The default run trains for 9 minutes, so what it reaches depends on the tokens a CPU gets through
in them. The slowest CPU met so far (2 cores of an AMX Xeon) made 940 updates of 4,096 tokens:
3.85M tokens of gcnn-small. A probe gives a candidate recipe the tokens it would get on that
CPU (3.85M x its model's tokens/s over gcnn-small's, measured here by `speed`), as --max-updates,
so it is deterministic and can run beside another probe: only the budget was set by a clock. The
Zen 5 EPYC, the fastest, made 2,269 updates: `fast` probes give the chosen recipe that budget to
check that a faster machine is not worse off. Compared by the best exact validation perplexity
(the whole split, at each epoch's end and the last update).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from recipe_table import (
    BUDGETS,
    FAST_TOKENS,
    GOAL,
    PROBES,
    SEED_CLAIMS,
    SHAPES,
    SLOW_TOKENS,
)

from gcnn.errors import ArgumentParser, GcnnError, run_cli
from gcnn.machine import LoadMeter, cpu_name, reported_load

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "recipe-probes"
RECORD = ROOT / "experiments" / "records" / "recipe" / "probes.json"


def probe(name: str) -> tuple:
    """PROBES[name] with "slow" resolved: the updates of its tokens that the slow CPU's 9 minutes
    give its shape. The ratio to gcnn-small is speed-2.json's; a shape measured later (speed-3)
    is chained through the default's shape (8x128), which each record measured in the same run,
    so that one run's noise in gcnn-small's timing does not move every budget of that round."""
    shape, tokens, lr, dropout, updates = PROBES[name][:5]
    if updates != "slow":
        return shape, tokens, lr, dropout, updates
    base = speed_ratios("speed-2")
    if shape not in base:  # measured in the third round: through 8x128, which both measured
        later = speed_ratios("speed-3")
        if shape not in later:
            raise GcnnError(f"no speed record has {shape}: run `speed 8x128 {shape}` first")
        base = {shape: base["8x128"] * later[shape] / later["8x128"]}
    return shape, tokens, lr, dropout, round(SLOW_TOKENS * base[shape] / tokens)


def speed_ratios(record: str) -> dict:
    """A speed record's tokens/s ratios to gcnn-small (records/recipe/NAME.json)."""
    path = RECORD.parent / f"{record}.json"
    if not path.exists():
        raise GcnnError(f"{path} is missing: run `speed SHAPE.. --speed-record {record}` first")
    return json.loads(path.read_text())["ratio"]


def flags(name: str) -> list[str]:
    """The probe's whole recipe as flags: AdamW's weight decay 0.01 (the recipe's until the
    third round) and dropout from the first epoch unless the probe sets its own, so a later
    default does not change a probe."""
    shape, tokens, lr, dropout, updates = probe(name)
    other = PROBES[name][5] if len(PROBES[name]) > 5 else []
    if "--weight-decay" not in other:
        other = [*other, "--weight-decay", "0.01"]
    if "--dropout-from-epoch" not in other:  # every probe before late dropout was made
        other = [*other, "--dropout-from-epoch", "0"]
    return [
        "--model", "gcnn-small", *SHAPES[shape], "--tokens-per-batch", str(tokens),
        "--lr", f"{lr:g}", "--dropout", f"{dropout:g}", "--max-updates", str(updates), *other,
        "--precision", "bf16", "--no-progress", "--out", str(RUNS / name),
    ]  # fmt: skip


def train(args: list[str], threads: int | None = None) -> subprocess.Popen:
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    return subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=env)


def speed(shapes: list[str], rounds: int = 1) -> dict:
    """Tokens/s of gcnn-small and each shape at 2,048 tokens per update, both cores: each shape
    trains 120 updates, one after the other; with rounds > 1 the shapes take turns that many
    times and each keeps its median, so that a slow minute of the machine does not fall on one
    shape alone (on the EPYC Zen 4 the default's shape read 15,663-20,823 tokens/s across runs
    within 15 minutes: records/recipe/speed-4-earlier/ and speed-4.json)."""
    samples: dict[str, list[int]] = {s: [] for s in dict.fromkeys(["gcnn-small", *shapes])}
    meter = LoadMeter().start()
    with reported_load():
        for _ in range(rounds):
            for shape in samples:
                run = RUNS / f"speed-{shape}"
                shutil.rmtree(run, ignore_errors=True)
                args = ["--model", "gcnn-small", *SHAPES[shape], "--max-updates", "120",
                        "--log-every", "20", "--valid-tokens", "1000", "--tokens-per-batch",
                        "2048", "--precision", "bf16", "--no-progress",
                        "--out", str(run)]  # fmt: skip
                if train(args).wait() != 0:
                    raise GcnnError(f"the speed run of {shape} failed")
                # The run's checkpoint (100 MB for gcnn-small) is written back to disk by the
                # kernel after the process exits, beside the next shape's timing unless flushed
                # here (in one run the shape after gcnn-small was the slowest of every round;
                # the runs after this sync were no less noisy, so that was not all of it).
                os.sync()
                rows = [json.loads(line) for line in (run / "metrics.jsonl").open()]
                rates = [r["tokens_per_s"] for r in rows if r.get("tokens_per_s")][1:]  # warm
                samples[shape].append(round(sum(rates) / len(rates)))
                print(f"{shape}: {samples[shape][-1]:,} tokens/s", flush=True)
    out = {shape: sorted(v)[len(v) // 2] for shape, v in samples.items()}
    base = out["gcnn-small"]
    return {
        "cpu": cpu_name(),
        "rounds": rounds,
        "samples": samples,
        "tokens_per_s": out,
        "ratio": {k: round(v / base, 2) for k, v in out.items()},
        "load": meter.stop().to_json(),
    }


def run(names: list[str]) -> None:
    """Two probes at a time, one thread each (deterministic: only updates count)."""
    todo = [n for n in names if not ((s := summary(n)) and s["finished"])]
    for i in range(0, len(todo), 2):
        procs = [train(flags(n), threads=1) for n in todo[i : i + 2]]
        if any(p.wait() != 0 for p in procs):
            raise GcnnError(f"a probe of {todo[i : i + 2]} failed; see its run directory")


def summary(name: str) -> dict | None:
    run = RUNS / name
    if not (run / "metrics.jsonl").exists():
        return None
    rows = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    config = tomllib.loads((run / "config.toml").read_text())
    valid = [(r["step"], round(r["valid_ppl"], 2)) for r in rows if r.get("valid_ppl")]
    test = test_ppl(run)
    shape, tokens, lr, dropout, updates = probe(name)
    return {
        "command": " ".join(["python", "train.py", *flags(name)]).replace(str(ROOT) + "/", ""),
        "shape": shape,
        "tokens_per_batch": tokens, "lr": lr, "dropout": dropout, "updates": updates,
        "tokens": rows[-1]["tokens"],
        "finished": rows[-1]["step"] == config["max_updates"],
        "valid_ppl": valid,
        "best_valid_ppl": min(p for _, p in valid) if valid else None,
        "test_ppl": test,  # of checkpoint_best.pt (exact, the whole split)
    }  # fmt: skip


def test_ppl(run: Path) -> float | None:
    """The best checkpoint's exact test perplexity (evaluate.py, once: kept in test.json)."""
    cached, checkpoint = run / "test.json", run / "checkpoint_best.pt"
    if not cached.exists() and checkpoint.exists():
        command = [sys.executable, "evaluate.py", "perplexity", str(checkpoint), "--split", "test"]
        out = subprocess.run([*command, "--json"], cwd=ROOT, capture_output=True, text=True)
        if out.returncode != 0:
            raise GcnnError(f"evaluating {checkpoint} failed: {out.stderr.strip()[-300:]}")
        cached.write_text(out.stdout.strip().splitlines()[-1] + "\n")
    return round(json.loads(cached.read_text())["perplexity"], 2) if cached.exists() else None


def seed_verdicts(probes: dict) -> dict:
    """Each SEED_CLAIMS verdict on test and best validation perplexity, the seeds both sides ran
    paired (seed 1 is the probe without a suffix), by experiments/stats.py's rule."""
    from stats import Arm, verdict

    out = {}
    for better, worse in SEED_CLAIMS:
        for metric in ("test_ppl", "best_valid_ppl"):
            arms = []
            for name in (better, worse):
                runs = {1: name, **{seed: f"{name}-s{seed}" for seed in range(2, 6)}}
                values = {seed: probes[n][metric] for seed, n in runs.items() if n in probes}
                arms.append(Arm(f"{name} ({metric})", values))
            out[f"{better} < {worse}, {metric}"] = verdict(*arms)
    return out


def budget_curve(probes: dict) -> dict:
    """The default's test perplexity against its updates (mean and 95% interval over the seeds
    run), and the updates from which the mean meets GOAL (log-perplexity linear in the updates
    between the two budgets around it)."""
    from stats import interval

    rows = []
    for updates, name in sorted(BUDGETS.items()):
        runs = [name, *(f"{name}-s{seed}" for seed in range(2, 6))]
        tests = [probes[n]["test_ppl"] for n in runs if n in probes and probes[n]["test_ppl"]]
        if tests:
            i = interval(tests)
            low, high = (round(v, 2) if math.isfinite(v) else None for v in (i.low, i.high))
            rows.append({"updates": updates, "seeds": len(tests), "test_ppl": tests,
                         "mean": round(i.mean, 2), "low": low, "high": high})  # fmt: skip
    meets = rows[0]["updates"] if rows and rows[0]["mean"] <= GOAL else None
    for a, b in itertools.pairwise(rows):  # the budgets around the goal: log-ppl linear between
        if a["mean"] > GOAL >= b["mean"]:
            t = math.log(a["mean"] / GOAL) / math.log(a["mean"] / b["mean"])
            meets = round(a["updates"] + t * (b["updates"] - a["updates"]))
            break
    return {"goal": GOAL, "rows": rows, "meets_goal_from_updates": meets}


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["speed", "run", "record"])
    p.add_argument("names", nargs="*", help=f"probes to run (default: all): {', '.join(PROBES)}; "
                   f"or, for speed, shapes (default: all): {', '.join(SHAPES)}")  # fmt: skip
    p.add_argument("--speed-record", default="speed", help="speed: records/recipe/NAME.json")
    p.add_argument("--rounds", type=int, default=1, help="speed: turns per shape (median kept)")
    a = p.parse_args(argv)
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    if a.what == "speed":
        unknown = set(a.names) - set(SHAPES)
        if unknown:
            raise GcnnError(f"unknown shape(s) {sorted(unknown)}; choose from {', '.join(SHAPES)}")
        if not 1 <= a.rounds <= 20:
            raise GcnnError(f"--rounds {a.rounds}: choose 1 to 20")
        result = speed(a.names or list(SHAPES), a.rounds)
        (RECORD.parent / f"{a.speed_record}.json").write_text(json.dumps(result, indent=1) + "\n")
    elif a.what == "run":
        unknown = set(a.names) - set(PROBES)
        if unknown:
            raise GcnnError(f"unknown probe(s) {sorted(unknown)}; choose from {', '.join(PROBES)}")
        run(a.names or list(PROBES))
    else:
        # a probe whose run directory is gone (another machine, a clean checkout) keeps its entry
        kept = json.loads(RECORD.read_text())["probes"] if RECORD.exists() else {}
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip()  # fmt: skip
        record = {
            "what": __doc__.strip().splitlines()[0],
            "cpu": cpu_name(),
            "threads": "1 per probe, 2 probes at a time",
            "ran_from": "0f052a4 (P1-P4) onwards; each probe's flags state its whole recipe",
            "commit": commit,
            "slow_tokens": SLOW_TOKENS,
            "fast_tokens": FAST_TOKENS,
            "probes": {n: s for n in PROBES if (s := summary(n) or kept.get(n))},
        }
        record["seeds"] = seed_verdicts(record["probes"])
        record["budget_curve"] = budget_curve(record["probes"])
        RECORD.write_text(json.dumps(record, indent=1) + "\n")
        for n, s in record["probes"].items():
            print(f"{n}: {s['shape']}, {s['tokens_per_batch']} tokens, lr {s['lr']:g}, "
                  f"dropout {s['dropout']:g}: best valid {s['best_valid_ppl']}, "
                  f"test {s['test_ppl']}")  # fmt: skip
        for line in record["seeds"].values():
            print(line)
        curve = record["budget_curve"]
        for r in curve["rows"]:
            print(f"the default at {r['updates']:,} updates: test {r['mean']} [{r['low']}, "
                  f"{r['high']}] over {r['seeds']} seed(s)")  # fmt: skip
        print(f"it meets test {GOAL:g} from about {curve['meets_goal_from_updates']} updates")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
