"""A model config's sizes checked before the model is built: layers, parameters, memory.

A config comes from a flag, a TOML file or a checkpoint, and any of them can claim a vocabulary
of 10^12 words or a block repeated 10^7 times. `meta_model` builds the model on PyTorch's meta
device (shapes without storage) once its depth is bounded, so its exact parameter count and its
tensors' shapes are known for the price of its Python objects; `check_fits` refuses a model
whose parameters cannot fit in memory, `check_weights` a checkpoint whose tensors are not the
ones its config describes, and `activation_bytes` gives a lower bound of what a token costs
while training or scoring, for the callers that know the batch shape.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from gcnn.errors import GcnnError
from gcnn.memory import gb, require_memory
from gcnn.models.config import GATED, GCNNConfig, LSTMConfig, softmax_input

# The paper's deepest model (GCNN-14B) has 40 convolutions; 25 times that is no model anyone
# trains here, and each layer costs its Python objects even on the meta device.
MAX_LAYERS = 1000
# A model of more parameters than this cannot exist on any machine (4 PB in fp32); refused
# before the meta build, whose int64 shape arithmetic could overflow on such sizes.
MAX_PARAMETERS = 1 << 50
ACTIVATION_BYTES = 2  # a lower bound: bf16 activations (fp32 ones take twice as much)


def layer_count(cfg: GCNNConfig | LSTMConfig) -> int:
    if isinstance(cfg, LSTMConfig):
        return cfg.num_layers
    return sum(len(block["layers"]) * block["repeat"] for block in cfg.blocks)


def rough_parameters(cfg: GCNNConfig | LSTMConfig) -> int:
    """The largest terms of the parameter count in Python integers (no overflow): the
    embedding, every weight matrix and the softmax's head and tails."""
    v, e = cfg.vocab_size, cfg.embed_dim
    if isinstance(cfg, LSTMConfig):
        h, out = cfg.hidden_size, cfg.proj_size or cfg.hidden_size
        body = 4 * h * (e + out) + (cfg.num_layers - 1) * 4 * h * (out + out)
    else:
        layers = cfg.layers()
        width, body = layers[0][0][1], e * layers[0][0][1]
        for block in layers:
            for kernel, channels in block:
                body += kernel * width * channels * (2 if cfg.gating in GATED else 1)
                width = channels
        out = width
    d = softmax_input(cfg, out)
    first_tail = d * (d // cfg.tail_factor) if cfg.cutoffs else 0
    table = 0 if cfg.tie_embeddings else v * e  # tied: the softmax's weights are the table
    return table + body + d * v + first_tail


def check_structure(cfg: GCNNConfig | LSTMConfig) -> None:
    """Refuse a config too deep or too large to be built even on the meta device."""
    layers = layer_count(cfg)
    if layers > MAX_LAYERS:
        raise GcnnError(
            f"model config: {layers:,} layers, more than the {MAX_LAYERS:,} gcnn builds (the "
            "paper's deepest model has 40); lower the blocks' repeat or num_layers"
        )
    rough = rough_parameters(cfg)
    if rough > MAX_PARAMETERS:
        raise GcnnError(
            f"model config: about {rough:.2g} parameters ({gb(4 * rough)} in fp32), more than any "
            "machine holds; lower its sizes (vocab_size, embed_dim, channels, kernel, "
            "softmax_dim, hidden_size)"
        )


def meta_model(cfg: GCNNConfig | LSTMConfig):
    """The model of `cfg` on the meta device: shapes, no storage (after `check_structure`)."""
    from gcnn.models.gcnn import GatedConvLM
    from gcnn.models.lstm import LSTMLM

    check_structure(cfg)
    try:
        with torch.device("meta"):
            return GatedConvLM(cfg) if cfg.family == "gcnn" else LSTMLM(cfg)
    except (RuntimeError, ValueError, OverflowError) as err:  # sizes torch cannot represent
        raise GcnnError(f"model config cannot be built: {str(err).splitlines()[0]}") from None


def building_on_meta() -> bool:
    """Whether new tensors go to the meta device (`with torch.device("meta"):`)."""
    return torch.empty(0).device.type == "meta"


def parameter_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def largest_tensor(model: nn.Module) -> str:
    name, t = max(model.state_dict().items(), key=lambda item: item[1].numel())
    return f"{name} {' x '.join(f'{n:,}' for n in t.shape)}"


def check_fits(meta: nn.Module, device="cpu", copies: int = 1, what: str = "the model") -> None:
    """Refuse a model whose parameters alone cannot fit in memory (`copies` of them: training
    adds gradients and optimizer state)."""
    require_memory(
        copies * parameter_bytes(meta),
        f"{what} ({sum(p.numel() for p in meta.parameters()):,} parameters; the largest "
        f"tensor is {largest_tensor(meta)})",
        "lower its sizes (vocab_size, embed_dim, channels, kernel, softmax_dim)",
        device,
    )


def check_weights(config: dict, state: dict, where: str) -> None:
    """GcnnError unless `state` (a checkpoint's tensors) has exactly the keys and shapes of the
    model `config` describes; decided on the meta device, before anything is allocated."""
    from gcnn.models.config import make_config

    if not isinstance(config, dict) or not isinstance(state, dict):
        raise GcnnError(f"{where}: its model config or weights are not dicts; it is corrupt")
    try:
        meta = meta_model(make_config(dict(config)))
    except GcnnError as err:
        raise GcnnError(f"{where}: {err}") from None
    want = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    for key in sorted(want.keys() | have.keys()):
        if want.get(key) != have.get(key):
            if key not in have:
                why = f"{key} is missing"
            elif key not in want:
                why = f"{key} is not part of that model"
            else:
                why = f"{key} is {_shape(have[key])} in the file, {_shape(want[key])} by its config"
            raise GcnnError(
                f"{where}: weights do not match its model config ({why}); the file was "
                "assembled wrongly, use another checkpoint"
            )


def _shape(shape: tuple) -> str:
    return "(" + ", ".join(f"{n:,}" for n in shape) + ")"


def activation_bytes(model: nn.Module, training: bool) -> tuple[int, int]:
    """(bytes per fed token, bytes per scored token), lower bounds.

    Fed tokens pass the network: training keeps every layer's input and output for the backward
    pass, scoring holds about two layers' at a time. Scored tokens also pass the softmax's head,
    whose logits and log-probabilities are fp32 (tails are left out: a lower bound)."""
    widths = []
    softmax = set(model.softmax.modules())
    for module in model.modules():
        if module in softmax:
            continue
        if isinstance(module, nn.Embedding):
            widths.append(module.embedding_dim)
        elif isinstance(module, nn.Linear):
            widths.append(module.in_features + module.out_features)
        elif isinstance(module, nn.Conv1d):
            widths.append(module.in_channels + module.out_channels)
        elif isinstance(module, nn.LSTM):
            out, gates = module.proj_size or module.hidden_size, 6 * module.hidden_size
            widths.append(module.input_size + gates + out)
            widths += [out + gates + out] * (module.num_layers - 1)
    per_fed = (sum(widths) if training else 2 * max(widths, default=0)) * ACTIVATION_BYTES
    per_scored = 2 * 4 * model.softmax.head.out_features
    return per_fed, per_scored


def batch_bytes(model: nn.Module, fed: int, scored: int, training: bool) -> int:
    """A lower bound of the activations of one batch of `fed` tokens, `scored` of them scored."""
    per_fed, per_scored = activation_bytes(model, training)
    return fed * per_fed + scored * per_scored


def tokens_that_fit(model: nn.Module, budget: float, training: bool) -> int:
    """How many tokens (all fed and scored) fit in `budget` bytes of activations."""
    per_fed, per_scored = activation_bytes(model, training)
    return max(0, math.floor(budget / max(per_fed + per_scored, 1)))
