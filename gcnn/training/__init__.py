"""Training: `TrainConfig` (dataclass, TOML + flags), the loop (`train`), and train.py's CLI."""

from __future__ import annotations

from gcnn.training.config import TrainConfig, compose, load_toml, to_toml
from gcnn.training.session import train
from gcnn.training.trainer import Trainer

__all__ = ["TrainConfig", "Trainer", "compose", "load_toml", "to_toml", "train"]
