"""One JSON record of a finished default run: python experiments/summarize_default_run.py RECORD_DIR

Reads RECORD_DIR/default-metrics.jsonl, default-test.json, default-train.txt and lscpu.txt (as
cpu_kind_check.sh writes them) and writes RECORD_DIR/default-run.json: updates, epochs, training
seconds, the validation perplexity after each validation and the best, the test perplexity, the
median logged training speed (tokens/s), the machine and the commit the run was made from.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path

from gcnn.errors import ArgumentParser, GcnnError, run_cli
from gcnn.training.run_dir import write_text_atomic


def summarize(directory: Path) -> dict:
    try:
        rows = [json.loads(line) for line in (directory / "default-metrics.jsonl").open()]
        test = json.loads((directory / "default-test.json").read_text())
        lscpu = (directory / "lscpu.txt").read_text().splitlines()
    except (OSError, ValueError) as err:
        raise GcnnError(f"{directory}: not a cpu_kind_check.sh record ({err})") from None
    valid = [r for r in rows if r.get("valid_loss") is not None]
    if not valid:
        raise GcnnError(f"{directory}/default-metrics.jsonl has no validation row")
    best = min(valid, key=lambda r: r["valid_loss"])
    last = rows[-1]
    model = next(
        (line.split(":", 1)[1].strip() for line in lscpu if line.startswith("Model name")), ""
    )
    # cpu_kind_check.sh --emulate: the instruction-set cap the run was made under
    emulating = next(
        (line[len("emulating ") :] for line in lscpu if line.startswith("emulating ")), None
    )
    return {
        "command": run_command(directory),
        "cpu": model,
        **({"emulating": emulating} if emulating else {}),
        "commit": run_commit(directory),
        "updates": last["step"],
        "epochs": last["epoch"],
        "train_s": last["wall_s"],
        "valid_ppl": [
            {"step": r["step"], "ppl": round(math.exp(r["valid_loss"]), 2)} for r in valid
        ],
        "best_valid_ppl": round(math.exp(best["valid_loss"]), 2),
        "best_step": best["step"],
        "test_ppl": round(test["perplexity"], 2),
        # the training speed the run logged, its median over the log's intervals: what a change
        # to the step did across a whole run (a benchmark times one fixed batch)
        "tokens_per_s_median": median_speed(rows),
    }


def median_speed(rows: list[dict]) -> int | None:
    speeds = [r["tokens_per_s"] for r in rows if r.get("tokens_per_s")]
    return round(statistics.median(speeds)) if speeds else None


def header(directory: Path) -> str:
    """default-train.txt's first line, "$ COMMAND  (DATE, COMMIT)" (cpu_kind_check.sh's
    header()); "" where there is none."""
    try:
        with (directory / "default-train.txt").open() as f:
            return f.readline()
    except OSError:
        return ""


def run_command(directory: Path) -> str:
    """The training command default-train.txt's header names, without the environment caps
    (recorded as "emulating"), --no-progress and the run directory: "python train.py" for the
    default itself, "python train.py --seed 2" for another seed of it."""
    found = re.match(r"\$ (?:\S+=\S+ )*(python train\.py.*?)\s+\(\S+, \S+\)\s*$", header(directory))
    if not found:
        return "python train.py"
    return re.sub(r" --out \S+| --no-progress", "", found.group(1))


def run_commit(directory: Path) -> str | None:
    """The commit the default run was made from: default-train.txt's header line ("$ COMMAND
    (DATE, COMMIT)"). Not lscpu.txt's: a later `cpu_kind_check.sh --no-default` rewrites that
    with its own commit, while the default run's files stay. A record from before the header
    keeps the commit its default-run.json was written with (at the time of the run), if any."""
    if found := re.match(r"\$ .*\(\S+, (\S+)\)\s*$", header(directory)):
        return found.group(1)
    try:
        return json.loads((directory / "default-run.json").read_text()).get("commit")
    except (OSError, ValueError, AttributeError):
        return None


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("record_dir", type=Path, help="a cpu_kind_check.sh record directory")
    directory = p.parse_args(argv).record_dir
    record = summarize(directory)
    text = json.dumps(record, indent=1) + "\n"
    write_text_atomic(directory / "default-run.json", text, "default-run record")
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
