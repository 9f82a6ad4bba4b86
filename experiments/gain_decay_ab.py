"""Does AdamW's weight decay on the weight-norm gains matter? An A/B on the default recipe.

    python experiments/gain_decay_ab.py decay-gains    runs/ab-decay-gains
    python experiments/gain_decay_ab.py no-decay-gains runs/ab-no-decay-gains
    python evaluate.py perplexity runs/ab-decay-gains/checkpoint_best.pt --split test   # each

The trainer leaves the gains g of w = g·v/‖v‖ out of weight decay (gcnn.training.optim
.decay_groups: decaying g shrinks the layer's real weights, while decaying the scale-free v only
changes its step size). Until issue 12 they were decayed with every other tensor of two or more
dimensions; `decay-gains` restores that rule for one run. Both arms train the default gcnn-small
for a fixed 800 updates (the same on every machine), otherwise identically.
"""

import sys

from gcnn.training import optim
from gcnn.training.cli import main


def decay_every_matrix(model, weight_decay: float) -> list[dict]:
    """The old rule: every parameter of dim >= 2, gains (shaped (out, 1, 1)) included."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("decay-gains", "no-decay-gains"):
        usage = "usage: python experiments/gain_decay_ab.py decay-gains|no-decay-gains OUT_DIR"
        print(usage, file=sys.stderr)
        sys.exit(2)
    if sys.argv[1] == "decay-gains":
        optim.decay_groups = decay_every_matrix
    args = ["--out", sys.argv[2], "--max-updates", "800", "--max-minutes", "600", "--no-progress"]
    sys.exit(main(args))
