"""`python train.py` / `gcnn-train`: flags and TOML in, a trained run directory out.

    python train.py                                   # gcnn-8-small on WikiText-2, 9 minutes
    python train.py --config experiments/wt103_gcnn14.toml --out runs/gcnn14
    python train.py --out runs/gcnn14 --resume        # continue after a crash or Ctrl-C
    torchrun --nproc_per_node 4 train.py --config experiments/wt103_gcnn14.toml

Exit status: 0 when training finished, 2 for a user error or a failed write (one line on
stderr), 75 when a full disk stopped training (checkpoint_last intact: free space, --resume),
128 + signal number (130 Ctrl-C, 143 SIGTERM) when a signal stopped training after saving
checkpoint_last.
"""

from __future__ import annotations

import sys
from pathlib import Path

from gcnn.errors import GcnnError, run_cli
from gcnn.training.config import TrainConfig, compose, parse_flags


def configure(argv: list[str] | None) -> tuple[TrainConfig, dict | None]:
    """The run's config and, with --resume and an existing checkpoint, that checkpoint.

    On resume the checkpoint's saved config is the base, so `--out RUN_DIR --resume` alone
    continues the run as it was; a TOML file and flags still override it (e.g. --max-updates).
    """
    from gcnn.checkpoint import load_checkpoint
    from gcnn.models.bounds import check_weights
    from gcnn.training.recipe import resolve

    config_file, flags = parse_flags(argv)
    config = compose(flags, config_file)
    if not config.resume:
        return config, None
    last = Path(resolve(config).out) / "checkpoint_last.pt"
    if not last.exists():
        if (last.parent / "checkpoint_best.pt").exists():
            raise GcnnError(
                f"--resume: {last.parent} has checkpoint_best.pt but no checkpoint_last.pt; "
                "copy checkpoint_best.pt to checkpoint_last.pt to resume from it"
            )
        print(f"--resume: no checkpoint in {last.parent} yet, starting a new run", flush=True)
        return config, None
    ckpt = load_checkpoint(last)  # GcnnError if corrupt: nothing is written before this
    check_weights(ckpt["model_config"], ckpt["model"], f"checkpoint {last}")  # on meta: cheap
    try:
        base = TrainConfig.from_dict(ckpt.get("train_config", {}), source=f"{last} train_config")
    except GcnnError as err:
        raise GcnnError(f"--resume: {err}") from None
    return compose(flags, config_file, base=base), ckpt


def _main(argv: list[str] | None) -> int:
    from gcnn.training.session import train

    config, ckpt = configure(argv)
    summary = train(config, resume_ckpt=ckpt)
    return summary["exit_code"]


def main(argv: list[str] | None = None) -> int:
    """Console-script entry: returns the exit status (errors already printed on one line)."""
    return run_cli(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
