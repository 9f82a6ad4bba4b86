"""The training configuration: one typed dataclass, filled from defaults < TOML file < flags.

Every field can be set in a TOML file (``--config FILE.toml``, flat keys named like the fields,
model overrides in a ``[model_args]`` table) and most by a flag of the same name (``--lr 0.5``).
Fields left at ``None`` are resolved once the model is known (`resolve`): the optimizer follows
the preset (the paper's NAG recipe for the paper's models, AdamW for the small presets), the
context follows the model's receptive field. The resolved config is saved as RUN_DIR/config.toml,
which is itself a valid ``--config`` file.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gcnn.errors import ArgumentParser, GcnnError

OPTIMIZERS = ("nag", "adamw")
PRECISIONS = ("auto", "fp32", "bf16")
DATASETS = ("wikitext-2", "wikitext-103")


@dataclass
class TrainConfig:
    # data
    data: str = "wikitext-2"  # "wikitext-2", "wikitext-103" or a directory of split files
    tokenizer: str = "word"  # "word" or "sentencepiece"
    vocab_size: int | None = None  # sentencepiece vocabulary size
    # model: a preset from gcnn.models.PRESETS plus overrides
    model: str = "gcnn-8-small"  # the no-argument default (gcnn.training.recipe.SMALL_RECIPES)
    dropout: float | None = None
    gating: str | None = None
    weight_norm: bool | None = None
    model_args: dict = field(default_factory=dict)  # any other preset key, e.g. {"embed_dim": 64}
    # batches
    block_size: int = 256  # scored tokens per row
    context: int | None = None  # unscored prefix; None: receptive_field - 1 (GCNN), 0 (LSTM)
    # scored tokens per update, over all processes and accum steps; None: the recipe's (4096, or
    # the small preset's own: gcnn.training.recipe.SMALL_RECIPES)
    tokens_per_batch: int | None = None
    grad_accum: int = 1
    # optimisation
    optimizer: str | None = None  # None: "nag" for the paper presets, "adamw" for small ones
    lr: float | None = None  # None: the small preset's own, else 1.0 (nag), 1e-2 (adamw)
    momentum: float = 0.99  # nag only
    weight_decay: float | None = None  # None: 5e-6 (nag), 0.01 on matrices (adamw)
    clip_norm: float | None = None  # None: 0.1 (nag), 1.0 (adamw); 0 disables clipping
    # late dropout: train without dropout for this many epochs, then at the model's rates (its
    # initialisation is the rates' either way); None: the recipe's (0 unless SMALL_RECIPES says)
    dropout_from_epoch: int | None = None
    lr_shrink: float = 0.5  # nag: factor applied when validation loss stops improving
    min_lr: float = 1e-5  # nag: stop once the lr falls below; adamw: floor of the cosine
    warmup_updates: int = 50  # adamw: linear warm-up
    # stopping, whichever comes first; none at all: the recipe's (gcnn.training.recipe.resolve):
    # 9 minutes of training for the small presets, 35 epochs for the paper's
    max_epochs: int | None = None
    max_updates: int | None = None
    max_minutes: float | None = None
    # devices and speed
    precision: str = "auto"  # "auto": the faster of fp32/bf16 here, measured (gcnn.precision)
    compile: bool = False
    device: str = "auto"  # "auto", "cpu", "cuda" or "cuda:N"
    seed: int = 1
    # bookkeeping
    out: str | None = None  # run directory; None: runs/<model>-<dataset>
    valid_every: int = 0  # updates between validations; 0: at the end of every epoch
    valid_tokens: int | None = None  # score only the first N validation tokens (None: all)
    log_every: int = 50  # updates between metrics.jsonl lines
    save_every: int = 0  # updates between checkpoint_last saves (besides validations); 0: off
    max_bad_updates: int = 5  # stop after this many non-finite losses in a row
    resume: bool = False
    progress: bool = True
    tensorboard: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> TrainConfig:
        return apply_values(cls(), values, source)

    def validate(self) -> TrainConfig:
        """Check ranges and choices; GcnnError names the field, its flag and the bad value."""

        def bad(name: str, why: str) -> GcnnError:
            flag = "--" + name.replace("_", "-")
            return GcnnError(f"{flag} (config key {name}) = {getattr(self, name)!r}: {why}")

        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"choose one of {', '.join(OPTIMIZERS)}")
        if self.precision not in PRECISIONS:
            raise bad("precision", f"choose one of {', '.join(PRECISIONS)}")
        if self.tokenizer not in ("word", "sentencepiece"):
            raise bad("tokenizer", "choose word or sentencepiece")
        if self.device != "auto" and self.device != "cpu" and not _is_cuda_device(self.device):
            raise bad("device", "choose auto, cpu, cuda or cuda:N")
        for name in ("block_size", "grad_accum", "log_every", "max_bad_updates"):
            if getattr(self, name) < 1:
                raise bad(name, "must be at least 1")
        for name in ("tokens_per_batch", "max_epochs", "max_updates", "vocab_size", "valid_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise bad(name, "must be at least 1")
        for name in ("valid_every", "save_every", "warmup_updates", "dropout_from_epoch"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise bad(name, "must be 0 or more")
        if self.context is not None and self.context < 0:
            raise bad("context", "must be 0 or more")
        for name in ("lr", "max_minutes"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise bad(name, "must be a positive number")
        for name in ("weight_decay", "clip_norm", "min_lr"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise bad(name, "must be 0 or a positive number")
        if not 0 <= self.momentum < 1:
            raise bad("momentum", "must be in [0, 1)")
        if not 0 < self.lr_shrink < 1:
            raise bad("lr_shrink", "must be in (0, 1)")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise bad("dropout", "must be in [0, 1)")
        return self


def _is_cuda_device(name: str) -> bool:
    return name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit())


_HINTS = typing.get_type_hints(TrainConfig)


def _coerce(name: str, value: Any, source: str) -> Any:
    """Check one value against the field's annotation (TOML gives ints, floats, bools, strs)."""
    hint = _HINTS[name]
    allowed = typing.get_args(hint) or (hint,)
    if value is None and type(None) in allowed:
        return None
    for kind in allowed:
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if kind is str and isinstance(value, str):
            return value
        if kind is dict and isinstance(value, dict):
            return dict(value)
    wanted = " or ".join(getattr(k, "__name__", str(k)) for k in allowed if k is not type(None))
    raise GcnnError(f"{source}: {name} = {value!r} should be {wanted}")


def apply_values(config: TrainConfig, values: dict, source: str) -> TrainConfig:
    """A copy of `config` with `values` (checked against the field types) applied on top."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    updates = {}
    for name, value in values.items():
        if name not in known:
            raise GcnnError(f"{source}: unknown setting {name!r}; see `python train.py --help`")
        updates[name] = _coerce(name, value, source)
    if "model_args" in updates:  # merge, so a flag can add one override to the file's table
        updates["model_args"] = {**config.model_args, **updates["model_args"]}
    return dataclasses.replace(config, **updates)


def load_toml(path: str | Path) -> dict:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise GcnnError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise GcnnError(f"config file {path} is not valid TOML: {err}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise GcnnError(f"cannot read config file {path}: {err}") from None


def to_toml(config: TrainConfig) -> str:
    """TOML text for `config` that `load_toml` + `TrainConfig.from_dict` read back unchanged."""
    lines = ["# gcnn training configuration (resolved): python train.py --config THIS_FILE"]
    tables = []
    for name, value in config.to_dict().items():
        if value is None or name == "resume":  # TOML has no null; None is the default
            continue
        if isinstance(value, dict):
            tables.append((name, value))
        else:
            lines.append(f"{name} = {_toml_value(value)}")
    for name, table in tables:
        lines.append(f"\n[{name}]")
        lines.extend(f"{_toml_key(key)} = {_toml_value(value)}" for key, value in table.items())
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise GcnnError(f"cannot write {value!r} to TOML")


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else _toml_value(str(key))


# --- command-line flags ---------------------------------------------------------------------------


def _model_arg(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:  # a TOML value: 3, 0.5, true, [4, 8], "glu"; anything else is taken as a string
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip(), value


def build_parser(prog: str = "train.py") -> argparse.ArgumentParser:
    S = argparse.SUPPRESS  # absent flags stay absent, so they do not override the TOML file
    p = ArgumentParser(
        prog=prog,
        description="Train a gated convolutional (or LSTM) language model. Settings compose: "
        "defaults < --config FILE.toml < flags. Resolved settings go to RUN_DIR/config.toml.",
        epilog="exit status: 0 done; 2 a user error or a failed write; 75 the disk filled up "
        "during training (checkpoint_last.pt is intact: free space and --resume); 128+N "
        "stopped by signal N after saving (130 Ctrl-C, 143 SIGTERM).",
        argument_default=S,
    )
    g = p.add_argument_group("data")
    data = g.add_mutually_exclusive_group()
    data.add_argument(
        "--dataset", dest="data", choices=DATASETS, help="corpus (default wikitext-2)"
    )
    data.add_argument("--data", dest="data", metavar="DIR", help="directory of split files")
    g.add_argument("--tokenizer", choices=("word", "sentencepiece"))
    g.add_argument("--vocab-size", type=int, help="sentencepiece vocabulary size")
    g = p.add_argument_group("model")
    g.add_argument("--model", metavar="PRESET", help="preset (python -m gcnn.models lists them)")
    g.add_argument("--dropout", type=float)
    g.add_argument("--gating", help="glu, gtu, relu, tanh, linear or bilinear (presets use glu)")
    g.add_argument("--weight-norm", action=argparse.BooleanOptionalAction)
    g.add_argument(
        "--model-arg",
        dest="model_args",
        type=_model_arg,
        action="append",
        metavar="KEY=VALUE",
        help="any other preset override, e.g. --model-arg embed_dim=64 (repeatable)",
    )
    g = p.add_argument_group("batches")
    g.add_argument("--block-size", type=int, help="scored tokens per row (default 256)")
    g.add_argument("--context", type=int, help="unscored prefix (default receptive field - 1)")
    g.add_argument("--tokens-per-batch", type=int, help="scored tokens per update (global)")
    g.add_argument("--grad-accum", type=int, help="micro-batches per update")
    g = p.add_argument_group("optimisation")
    g.add_argument("--optimizer", choices=OPTIMIZERS)
    g.add_argument("--lr", type=float)
    g.add_argument("--momentum", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--clip-norm", type=float, help="0 disables clipping")
    g.add_argument("--lr-shrink", type=float)
    g.add_argument("--min-lr", type=float)
    g.add_argument("--warmup-updates", type=int)
    g.add_argument(
        "--dropout-from-epoch",
        type=int,
        metavar="E",
        help="late dropout: none in the first E epochs, then the model's (default: the recipe's)",
    )
    g = p.add_argument_group("stopping")
    g.add_argument("--max-epochs", type=int)
    g.add_argument("--max-updates", type=int)
    g.add_argument("--max-minutes", type=float)
    g = p.add_argument_group("speed")
    g.add_argument("--precision", choices=PRECISIONS, help="auto: whichever of fp32/bf16 is faster")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction)
    g.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--seed", type=int)
    g = p.add_argument_group("run")
    g.add_argument("--out", metavar="RUN_DIR", help="run directory (default runs/MODEL-DATASET)")
    g.add_argument("--config", dest="config_file", metavar="FILE.toml")
    g.add_argument("--resume", action=argparse.BooleanOptionalAction)
    g.add_argument("--valid-every", type=int, help="updates between validations (0: per epoch)")
    g.add_argument("--valid-tokens", type=int, help="validate on the first N tokens only")
    g.add_argument("--log-every", type=int)
    g.add_argument("--save-every", type=int, help="updates between checkpoint_last saves")
    g.add_argument("--max-bad-updates", type=int)
    g.add_argument("--progress", action=argparse.BooleanOptionalAction)
    g.add_argument("--tensorboard", action=argparse.BooleanOptionalAction)
    return p


def parse_flags(argv: list[str] | None, prog: str = "train.py") -> tuple[str | None, dict]:
    """(--config path or None, {field: value} for the flags actually given)."""
    values = vars(build_parser(prog).parse_args(argv))
    config_file = values.pop("config_file", None)
    if "model_args" in values:
        values["model_args"] = dict(values["model_args"])
    return config_file, values


def compose(
    flags: dict, config_file: str | None = None, base: TrainConfig | None = None
) -> TrainConfig:
    """defaults (or `base`, e.g. a resumed run's config) < TOML file < flags."""
    config = base if base is not None else TrainConfig()
    if config_file is not None:
        config = apply_values(config, load_toml(config_file), f"config file {config_file}")
    return apply_values(config, flags, "command line").validate()
