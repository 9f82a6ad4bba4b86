"""Models: the gated convolutional LM, its LSTM baseline and the adaptive softmax.

model = build_model("gcnn-14", vocab_size=267735, dropout=0.1)
model = model_from_config(model.config_dict())      # the same architecture again
"""

from __future__ import annotations

import copy

from gcnn.data import IGNORE_INDEX
from gcnn.errors import GcnnError
from gcnn.models.adaptive_softmax import AdaptiveSoftmax
from gcnn.models.base import LanguageModel
from gcnn.models.bounds import building_on_meta, check_fits, check_structure, meta_model
from gcnn.models.config import GATINGS, GCNNConfig, LSTMConfig, make_config
from gcnn.models.gcnn import GatedConvLM
from gcnn.models.lstm import LSTMLM
from gcnn.models.presets import PRESETS

__all__ = [
    "GATINGS",
    "IGNORE_INDEX",
    "LSTMLM",
    "PRESETS",
    "AdaptiveSoftmax",
    "GCNNConfig",
    "GatedConvLM",
    "LSTMConfig",
    "LanguageModel",
    "build_model",
    "model_from_config",
]


def model_from_config(config: dict) -> LanguageModel:
    """Rebuild a model from `model.config_dict()` (weights are not part of the config)."""
    if not isinstance(config, dict):
        raise GcnnError(f"model config must be a dict, got {type(config).__name__}")
    cfg = make_config(copy.deepcopy(config))
    # Bounded before anything is allocated: its depth always, its parameters against memory
    # unless it is being built on the meta device (shapes only, e.g. to count parameters).
    if building_on_meta():
        check_structure(cfg)
    else:
        check_fits(meta_model(cfg))
    return GatedConvLM(cfg) if cfg.family == "gcnn" else LSTMLM(cfg)


def build_model(name: str, vocab_size: int, /, **overrides) -> LanguageModel:
    """The preset `name` (see PRESETS) for a vocabulary of `vocab_size`, with options overridden."""
    if name not in PRESETS:
        raise GcnnError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    config = copy.deepcopy(PRESETS[name])
    for key in ("family", "name", "vocab_size"):
        if key in overrides:
            raise GcnnError(f"model option {key!r} cannot be overridden; pick another preset")
    config.update(copy.deepcopy(overrides))
    config.update(name=name, vocab_size=vocab_size)
    return model_from_config(config)
