"""Real fairseq for the conversion tests: import it, build its fconv_lm models, save their files.

The reference is fairseq's own code (fairseq-fixed 0.12.3.1, whose fconv files are upstream's),
never a re-implementation of its layout: models come from its option parser, task and model
registry, current-generation checkpoints from its Trainer, log-probabilities from its decoder and
`get_normalized_probs`. Only the 2017-2019 checkpoint layout is assembled here, as fairseq's
`save_state` of that time did (args Namespace, optimizer history, meter objects in extra_state,
torch's legacy file format), with fairseq's own `FConvDecoder.upgrade_state_dict` putting the
convolutions' weight norm on dim 0 as those old models had it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch

from gcnn.convert import fairseq_import


def import_fairseq():
    """fairseq's modules (gcnn.convert.fairseq_import), or pytest.skip when it is not installed."""
    fairseq = fairseq_import.import_fairseq(
        "fairseq.checkpoint_utils",
        "fairseq.options",
        "fairseq.tasks",
        "fairseq.dataclass.utils",
        "fairseq.trainer",
    )
    if fairseq is None:
        pytest.skip("fairseq is not installed (CI: pip install fairseq-fixed==0.12.3.1)")
    return fairseq


def write_dict(directory: Path, words: list[str], pad_to_8: bool = True) -> Path:
    """dict.txt as fairseq-preprocess writes it (counts descending, madeupword padding)."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = [f"{w} {1000 - i}" for i, w in enumerate(words)]
    if pad_to_8:
        i = 0
        while (4 + len(lines)) % 8:
            lines.append(f"madeupword{i:04d} 0")
            i += 1
    path = directory / "dict.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def fairseq_args(data: Path, layers: str, embed_dim: int, cutoffs: str | None):
    """An fconv_lm's args exactly as `fairseq-train` parses them."""
    from fairseq import options

    argv = [str(data), "--task", "language_modeling", "--arch", "fconv_lm", "--cpu"]
    argv += ["--decoder-embed-dim", str(embed_dim), "--decoder-layers", layers]
    argv += ["--optimizer", "nag", "--lr", "0.5", "--max-tokens", "256"]
    argv += ["--tokens-per-sample", "64", "--ddp-backend", "legacy_ddp", "--dropout", "0.1"]
    if cutoffs:
        argv += ["--criterion", "adaptive_loss", "--adaptive-softmax-cutoff", cutoffs]
    else:
        argv += ["--criterion", "cross_entropy"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return options.parse_args_and_arch(options.get_training_parser(), argv)


def build_fconv(args, seed: int = 0):
    """(cfg, task, model) from fairseq's registry, with every weight random (gains too)."""
    from fairseq import tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = task.build_model(cfg.model)
    randomize_(model, seed)
    return cfg, task, model.eval()


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Weights with no structure to hide behind: gains g in 0.5..1.5 (not ‖v‖), biases nonzero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight_g"):
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def old_weight_norm_(model, seed: int) -> None:
    """fairseq's own upgrade path for checkpoints before decoder.version 2: weight norm on dim 0."""
    model.decoder.upgrade_state_dict({})
    randomize_(model, seed)


def save_current_generation(cfg, task, model, path: Path) -> None:
    """What `fairseq-train` writes today: fairseq's Trainer.save_checkpoint, meters included."""
    from fairseq.logging import metrics
    from fairseq.trainer import Trainer

    criterion = task.build_criterion(cfg.criterion)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(cfg, task, model, criterion)
        with metrics.aggregate("train"):
            metrics.log_scalar("loss", 5.25)
            metrics.log_speed("wps", 1000.0)
            metrics.log_start_time("wall", priority=790, round=0)
        trainer.consolidate_optimizer()
        trainer.save_checkpoint(str(path), {"train_iterator": {"epoch": 3}, "val_loss": 5.0})


def _old_meters_module() -> types.ModuleType:
    """`fairseq.meters` as it was until fairseq 0.9 (gone since): meter classes with plain state."""
    module = types.ModuleType("fairseq.meters")

    class AverageMeter:
        def __init__(self):
            self.val, self.avg, self.sum, self.count = 5.1, 5.3, 530.0, 100

    class TimeMeter:
        def __init__(self):
            self.init, self.start, self.n = 0, 1.5e9, 12345

    class StopwatchMeter:
        def __init__(self):
            self.sum, self.n, self.start_time = 12.5, 100, None

    for cls in (AverageMeter, TimeMeter, StopwatchMeter):
        cls.__module__ = "fairseq.meters"
        cls.__qualname__ = cls.__name__
        setattr(module, cls.__name__, cls)
    return module


def save_old_generation(args, model, path: Path, legacy_format: bool = True, **changes) -> None:
    """A 2017-2019 checkpoint: `args` a Namespace, meters in extra_state, no `cfg`.

    `changes`: version (decoder.version: None, the default, leaves it out as the first
    fairseq-py did; old models are version 1 either way), linearized (a
    stale `_linearized_weight` cache saved with a convolution), half (fp16 weights, as
    `--fp16` training saved them), tail1 (adaptive-softmax tails as tail.i.1, the layout
    wav2letter's loader renames).
    """
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state.pop("decoder.version", None)
    if changes.get("version") is not None:
        state["decoder.version"] = torch.tensor([float(changes["version"])])
    if changes.get("linearized"):
        w = state["decoder.convolutions.0.weight_v"]
        state["decoder.convolutions.0._linearized_weight"] = w.reshape(w.size(-1), -1)
    if changes.get("tail1"):
        for key in [k for k in state if ".tail." in k and k.endswith(".2.weight")]:
            state[key[: -len("2.weight")] + "1.weight"] = state.pop(key)
    if changes.get("half"):
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    module = _old_meters_module()
    meters = {
        "train_loss": module.AverageMeter(),
        "wps": module.TimeMeter(),
        "wall": module.StopwatchMeter(),
    }
    ckpt = {
        "args": args,
        "model": state,
        "optimizer_history": [
            {
                "criterion_name": "AdaptiveLoss",
                "optimizer_name": "FairseqNAG",
                "lr_scheduler_state": {"best": 5.0},
                "num_updates": 1000,
            }
        ],
        "last_optimizer_state": {"state": {}, "param_groups": [{"lr": 0.5, "momentum": 0.99}]},
        "extra_state": {"epoch": 3, "batch_offset": 0, "val_loss": 5.0, "train_meters": meters},
    }
    sys.modules["fairseq.meters"] = module  # pickle looks classes up by module name
    try:
        torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy_format)
    finally:
        del sys.modules["fairseq.meters"]


@contextlib.contextmanager
def trusting_torch_load():
    """fairseq's loader calls torch.load without weights_only; under torch >= 2.6 that refuses the
    argparse.Namespace in every fairseq checkpoint (fairseq issue 5610). The documented switch
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD restores the old default for that call only: used here on
    files these tests wrote themselves, never by gcnn."""
    before = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = before


def load_with_fairseq(path: Path, data: Path):
    """fairseq's own loader (checkpoint_utils.load_model_ensemble) -> the model in eval mode."""
    from fairseq import checkpoint_utils

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models, _ = checkpoint_utils.load_model_ensemble([str(path)], {"data": str(data)})
    return models[0].eval()


@torch.no_grad()
def fairseq_log_probs(model, tokens: torch.Tensor) -> torch.Tensor:
    """(B, T, V) next-token log-probabilities from fairseq's decoder and normaliser, fp32."""
    out = model(tokens)
    return model.get_normalized_probs(out, log_probs=True).float()
