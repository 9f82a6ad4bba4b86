"""One JSON record of a finished default run: python experiments/summarize_default_run.py RECORD_DIR

Reads RECORD_DIR/default-metrics.jsonl, default-test.json and lscpu.txt (as cpu_kind_check.sh
writes them) and writes RECORD_DIR/default-run.json: updates, epochs, training seconds, the
validation perplexity after each validation and the best, the test perplexity, the machine.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from gcnn.errors import GcnnError, run_cli


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
    return {
        "command": "python train.py",
        "cpu": model,
        "commit": lscpu[1] if len(lscpu) > 1 else None,
        "updates": last["step"],
        "epochs": last["epoch"],
        "train_s": last["wall_s"],
        "valid_ppl": [
            {"step": r["step"], "ppl": round(math.exp(r["valid_loss"]), 2)} for r in valid
        ],
        "best_valid_ppl": round(math.exp(best["valid_loss"]), 2),
        "best_step": best["step"],
        "test_ppl": round(test["perplexity"], 2),
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise GcnnError("usage: python experiments/summarize_default_run.py RECORD_DIR")
    directory = Path(args[0])
    record = summarize(directory)
    (directory / "default-run.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
