"""Kept for old commands: `python experiments/ablation.py gating|norm ...` is now
`python experiments/run.py gating|norm ...` (several seeds, records, resume, results page).

    python experiments/ablation.py gating --max-updates 300   # = run.py gating --max-updates 300
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402

if __name__ == "__main__":
    print("note: ablation.py is now experiments/run.py; running it with the same arguments",
          file=sys.stderr)  # fmt: skip
    raise SystemExit(run.run_cli(run.main))
