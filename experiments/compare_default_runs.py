"""Did a change move the default run? Paired over seeds, from default-run.json records:

    python experiments/compare_default_runs.py --before DIR [DIR ...] --after DIR [DIR ...]
        [--json FILE]

Each --before record is paired with the --after record in the same position (the same seed and
machine, before and after the change). For updates and the median logged speed it prints the
after/before ratio, for test perplexity the difference before - after, each as a mean with
experiments/stats.py's 95% t interval over the pairs, and whether the interval excludes no
change. `--json FILE` writes the same as a record.
"""

from __future__ import annotations

import json
from pathlib import Path

from stats import interval

from gcnn.errors import ArgumentParser, GcnnError, run_cli
from gcnn.training.run_dir import write_text_atomic

# (field of default-run.json, how a pair is compared, what "no change" is)
MEASURES = (
    ("updates", "ratio", 1.0),
    ("tokens_per_s_median", "ratio", 1.0),
    ("test_ppl", "difference", 0.0),
)


def load(directory: Path) -> dict:
    try:
        return json.loads((directory / "default-run.json").read_text())
    except (OSError, ValueError) as err:
        raise GcnnError(f"{directory}: no default-run.json ({err})") from None


def compare(before: list[dict], after: list[dict]) -> dict:
    if len(before) != len(after) or not before:
        raise GcnnError(f"{len(before)} runs before and {len(after)} after: pair them one to one")
    result = {}
    for name, how, none in MEASURES:
        pairs = [(b.get(name), a.get(name)) for b, a in zip(before, after, strict=True)]
        if any(b is None or a is None for b, a in pairs):
            continue  # a record from before the field existed
        values = [a / b if how == "ratio" else b - a for b, a in pairs]
        i = interval(values)
        result[name] = {
            "how": "after / before" if how == "ratio" else "before - after",
            "pairs": [list(p) for p in pairs],
            "mean": i.mean,
            "low": i.low,
            "high": i.high,
            "separated": not i.low <= none <= i.high,
        }
    return result


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", type=Path, nargs="+", required=True)
    p.add_argument("--after", type=Path, nargs="+", required=True)
    p.add_argument("--json", type=Path, help="write the comparison here")
    args = p.parse_args(argv)
    result = compare([load(d) for d in args.before], [load(d) for d in args.after])
    for name, r in result.items():
        verdict = "holds" if r["separated"] else "not separated"
        print(
            f"{name} ({r['how']}, {len(r['pairs'])} pairs): {r['mean']:.3f} "
            f"[{r['low']:.3f}, {r['high']:.3f}], {verdict}"
        )
    if args.json:
        record = {
            "before": [str(d) for d in args.before],
            "after": [str(d) for d in args.after],
            **result,
        }
        write_text_atomic(args.json, json.dumps(record, indent=1) + "\n", "comparison record")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
