"""The paper's ablations at CPU scale: gating (Fig. 3), weight norm and clipping (Fig. 6).

Trains one run per variant with train.py (same data, seed, updates and batches), then prints a
markdown table of the best validation perplexity of each. The paper's figures are for
WikiText-103 / GBW after days on GPUs; this is the same comparison on WikiText-2 in minutes:

    python experiments/ablation.py gating --max-updates 300
    python experiments/ablation.py norm --max-updates 300 --model gcnn-small

Runs go to runs/ablation-<study>-<variant>/ (an existing run is resumed, not overwritten);
extra arguments after `--` go to every train.py call.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# variant name -> train.py flags; the first is the reference
STUDIES = {
    "gating": {g: ["--gating", g] for g in ("glu", "gtu", "relu", "tanh", "linear", "bilinear")},
    "norm": {
        "weight norm + clipping": [],
        "no weight norm": ["--no-weight-norm"],
        "no clipping": ["--clip-norm", "0"],
    },
}


def best_valid_ppl(run_dir: Path) -> tuple[float, int]:
    best, step = float("inf"), -1
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("valid_ppl") is not None and row["valid_ppl"] < best:
            best, step = row["valid_ppl"], row["step"]
    return best, step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", choices=sorted(STUDIES))
    parser.add_argument("--model", default="gcnn-small")
    parser.add_argument("--max-updates", type=int, default=300)
    parser.add_argument("--runs", default="runs", help="parent directory of the run directories")
    parser.add_argument("extra", nargs="*", help="more train.py flags (after --)")
    args = parser.parse_args()

    rows = []
    for variant, flags in STUDIES[args.study].items():
        slug = variant.replace(" + ", "-").replace(" ", "-")
        out = Path(args.runs) / f"ablation-{args.study}-{args.model}-{slug}"
        cmd = [sys.executable, str(ROOT / "train.py"), "--model", args.model, "--out", str(out)]
        cmd += ["--max-updates", str(args.max_updates), "--no-progress"]
        cmd += flags + args.extra
        if (out / "checkpoint_last.pt").exists():
            cmd.append("--resume")
        print("$", " ".join(cmd), flush=True)
        if subprocess.run(cmd).returncode != 0:
            print(f"{variant}: train.py failed; see above", file=sys.stderr)
            return 1
        rows.append((variant, *best_valid_ppl(out)))

    print(f"\n{args.study} ablation, {args.model}, {args.max_updates} updates, WikiText-2 valid:\n")
    print("| variant | best valid ppl | at update |")
    print("|---|---:|---:|")
    for variant, ppl, step in rows:
        print(f"| {variant} | {ppl:.1f} | {step} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
