"""Model configurations: one dataclass per family, validated on construction.

A config holds plain types only (ints, floats, strings, lists, dicts), so that `config_dict()`
goes into a checkpoint loadable with ``torch.load(weights_only=True)`` and back through
`model_from_config`. Every check raises `GcnnError` naming the bad value.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from gcnn.errors import GcnnError

# Gated: the convolution has 2c output channels and one half modulates the other.
GATED = ("glu", "gtu", "bilinear")
# Ungated: one convolution of c' channels followed by a pointwise function (or nothing).
UNGATED = ("relu", "tanh", "linear")
GATINGS = GATED + UNGATED


def _check_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise GcnnError(f"model option {name}={value!r} must be an integer >= {minimum}")
    return value


def _check_dropout(name: str, value) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not 0.0 <= value < 1.0:
        raise GcnnError(f"model option {name}={value!r} must be a number in [0, 1)")
    return float(value)


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise GcnnError(f"model option {name}={value!r} must be true or false")
    return value


def _check_cutoffs(value, vocab_size: int) -> list[int]:
    """Strictly increasing positive ids; the ones at or beyond the vocabulary are dropped."""
    if not isinstance(value, list | tuple):
        raise GcnnError(f"model option cutoffs={value!r} must be a list of increasing word ids")
    for c in value:
        _check_int("cutoffs", c)
    if any(b <= a for a, b in zip(value, value[1:], strict=False)):
        raise GcnnError(f"model option cutoffs={list(value)!r} must be strictly increasing")
    return [int(c) for c in value if c < vocab_size]


def _check_blocks(value) -> list[dict]:
    """Normalise ``[{"layers": [[k, c], ...], "repeat": n}, ...]`` (repeat defaults to 1)."""
    how = 'give blocks as [{"layers": [[kernel, channels], ...], "repeat": n}, ...]'
    if not isinstance(value, list | tuple) or not value:
        raise GcnnError(f"model option blocks={value!r} is empty or not a list; {how}")
    blocks = []
    for block in value:
        if not isinstance(block, dict) or set(block) - {"layers", "repeat"}:
            raise GcnnError(f"model option blocks: bad block {block!r}; {how}")
        layers = block.get("layers")
        if not isinstance(layers, list | tuple) or not layers:
            raise GcnnError(f"model option blocks: block {block!r} has no layers; {how}")
        checked = []
        for layer in layers:
            if not isinstance(layer, list | tuple) or len(layer) != 2:
                raise GcnnError(f"model option blocks: layer {layer!r} is not [kernel, channels]")
            checked.append(
                [
                    _check_int("blocks kernel size", layer[0]),
                    _check_int("blocks channels", layer[1]),
                ]
            )
        repeat = _check_int("blocks repeat", block.get("repeat", 1))
        blocks.append({"layers": checked, "repeat": repeat})
    return blocks


@dataclass
class GCNNConfig:
    """A gated convolutional language model (see gcnn.models.gcnn.GatedConvLM)."""

    vocab_size: int
    embed_dim: int = 280
    blocks: list = field(default_factory=lambda: [{"layers": [[4, 900]], "repeat": 8}])
    cutoffs: list = field(default_factory=lambda: [2000, 10000, 50000])
    dropout: float = 0.2  # on the embeddings and on the input of every convolution
    softmax_dropout: float = 0.0  # inside the adaptive-softmax tails (fairseq's default: 0)
    tail_factor: int = 4  # tail i projects d -> d / tail_factor**(i+1)
    gating: str = "glu"
    # Ungated variants (relu, tanh, linear) have half the convolution weights of a gated layer of
    # the same width; with match_params every width is scaled by sqrt(2) to make up for it.
    match_params: bool = True
    weight_norm: bool = True
    # adaptive-softmax input size; None: the last block's width (embed_dim if tie_embeddings)
    softmax_dim: int | None = None
    # Input word vectors read from the adaptive softmax's weights (AdaptiveSoftmax.embed): not in
    # the paper; the softmax's input must be embed_dim wide (a projection is added if need be).
    tie_embeddings: bool = False
    name: str = "custom"
    family: str = "gcnn"

    def __post_init__(self):
        _check_int("vocab_size", self.vocab_size, minimum=2)
        _check_int("embed_dim", self.embed_dim)
        self.blocks = _check_blocks(self.blocks)
        self.cutoffs = _check_cutoffs(self.cutoffs, self.vocab_size)
        self.dropout = _check_dropout("dropout", self.dropout)
        self.softmax_dropout = _check_dropout("softmax_dropout", self.softmax_dropout)
        _check_int("tail_factor", self.tail_factor)
        if self.gating not in GATINGS:
            raise GcnnError(
                f"model option gating={self.gating!r} is unknown; "
                f"choose one of {', '.join(GATINGS)}"
            )
        _check_bool("match_params", self.match_params)
        _check_bool("weight_norm", self.weight_norm)
        _check_bool("tie_embeddings", self.tie_embeddings)
        if self.softmax_dim is not None:
            _check_int("softmax_dim", self.softmax_dim)

    @property
    def width_scale(self) -> float:
        return math.sqrt(2.0) if self.gating in UNGATED and self.match_params else 1.0

    def layers(self) -> list[list[tuple[int, int]]]:
        """Each residual block as a list of (kernel, channels): repeats expanded, widths scaled."""
        out = []
        for block in self.blocks:
            layers = [(k, max(1, round(c * self.width_scale))) for k, c in block["layers"]]
            out.extend([list(layers) for _ in range(block["repeat"])])
        return out


@dataclass
class LSTMConfig:
    """An LSTM language model (see gcnn.models.lstm.LSTMLM)."""

    vocab_size: int
    embed_dim: int = 1024
    hidden_size: int = 1024
    num_layers: int = 1
    proj_size: int = 0  # nn.LSTM's projection of each layer's output (LSTMP); 0: none
    cutoffs: list = field(default_factory=lambda: [2000, 10000, 50000])
    dropout: float = 0.2  # embeddings, between layers, and the LSTM output
    softmax_dropout: float = 0.0
    tail_factor: int = 4
    # None: the LSTM's output size (proj_size or hidden_size; embed_dim if tie_embeddings)
    softmax_dim: int | None = None
    tie_embeddings: bool = False  # as GCNNConfig's
    name: str = "custom"
    family: str = "lstm"

    def __post_init__(self):
        _check_int("vocab_size", self.vocab_size, minimum=2)
        _check_int("embed_dim", self.embed_dim)
        _check_int("hidden_size", self.hidden_size)
        _check_int("num_layers", self.num_layers)
        _check_int("proj_size", self.proj_size, minimum=0)
        if self.proj_size >= self.hidden_size:
            raise GcnnError(
                f"model option proj_size={self.proj_size} must be smaller than "
                f"hidden_size={self.hidden_size} (or 0 for no projection)"
            )
        self.cutoffs = _check_cutoffs(self.cutoffs, self.vocab_size)
        self.dropout = _check_dropout("dropout", self.dropout)
        self.softmax_dropout = _check_dropout("softmax_dropout", self.softmax_dropout)
        _check_int("tail_factor", self.tail_factor)
        if self.softmax_dim is not None:
            _check_int("softmax_dim", self.softmax_dim)
        _check_bool("tie_embeddings", self.tie_embeddings)


CONFIGS = {"gcnn": GCNNConfig, "lstm": LSTMConfig}


def softmax_input(config: GCNNConfig | LSTMConfig, out: int) -> int:
    """The adaptive softmax's input size for a network whose output is `out` wide: softmax_dim,
    else the embeddings' width when they are tied to the softmax, else `out` (no projection)."""
    if config.softmax_dim:
        return config.softmax_dim
    return config.embed_dim if config.tie_embeddings else out


def make_config(config: dict) -> GCNNConfig | LSTMConfig:
    """Build and validate a family's config from a plain dict (which must name its family)."""
    family = config.get("family")
    if family not in CONFIGS:
        raise GcnnError(f"model config family={family!r} is unknown; expected 'gcnn' or 'lstm'")
    cls = CONFIGS[family]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise GcnnError(
            f"unknown {family} model option(s) {', '.join(unknown)}; "
            f"known options: {', '.join(sorted(known - {'family', 'vocab_size'}))}"
        )
    if "vocab_size" not in config:
        raise GcnnError("model config lacks vocab_size")
    return cls(**config)
