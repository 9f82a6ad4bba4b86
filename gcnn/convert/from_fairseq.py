"""A fairseq fconv_lm checkpoint and its dictionary -> an ordinary checkpoint of this project.

The model computes fairseq's function exactly (same log-probability for every token, to float
rounding): fairseq's flat layer list becomes this project's residual blocks (fairseq_layout), and
each fairseq tensor lands on the parameter that plays its role:

    decoder.embed_tokens.weight                     embed.weight
    decoder.fc1.{weight_g, weight_v, bias}          fc_in (weight norm per output unit)
    decoder.convolutions.i.*  (kernel, in, 2c)      blocks.b.convs.j (2c, in, kernel)
    decoder.projections.i.*   (only where the width changes: layer i closes block b)
                                                    blocks.b.proj (a 1x1 convolution)
    decoder.adaptive_softmax.head / tail.i.{0,2}    softmax.head / tails.i.{0,2}

fairseq models trained without an adaptive softmax end in fc2 (to decoder_embed_dim) and fc3 (to
the vocabulary, with a bias). This project's output layer has no bias, so fc_out gets one extra
output fixed at 1 (gain 0, bias 1) and the head's extra column holds fc3's bias: the same logits.

Sizes come from the tensors and are checked against the checkpoint's own settings and against a
model built on the meta device (no memory) before anything is allocated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gcnn.checkpoint import model_checkpoint, save_checkpoint
from gcnn.data import WordTokenizer
from gcnn.errors import GcnnError
from gcnn.models import model_from_config

from . import weights
from .dictionary import read_dictionary
from .fairseq_layout import (
    MAX_CLUSTERS,
    MAX_VOCAB,
    MAX_WIDTH,
    FconvLayout,
    FconvSettings,
    attention_used,
    group_blocks,
    parse_cutoffs,
    parse_layers,
    settings_from_checkpoint,
)
from .fairseq_pickle import read_fairseq_checkpoint

TAIL_FACTOR = 4  # fairseq's AdaptiveSoftmax factor; FConvDecoder does not change it


@dataclass
class Converted:
    model: torch.nn.Module
    tokenizer: WordTokenizer
    settings: FconvSettings
    notes: list[str] = field(default_factory=list)  # what was adapted, for the user


class _Source:
    """The checkpoint's decoder tensors; every one must be used (a stray one is refused)."""

    def __init__(self, state: dict, name: str):
        if not isinstance(state, dict) or not state:
            raise GcnnError(f"{name} has no model weights ('model' is empty or not a dict)")
        self.name = name
        self.tensors: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            if not isinstance(key, str) or not isinstance(value, torch.Tensor):
                raise GcnnError(f"{name}: model entry {key!r} is not a named tensor")
            if not key.startswith("decoder."):
                raise GcnnError(f"{name}: model entry {key!r} is not part of a decoder-only LM")
            self.tensors[key[len("decoder.") :]] = value
        self.used: set[str] = set()

    def has(self, key: str) -> bool:
        return key in self.tensors

    def take(self, key: str) -> torch.Tensor:
        if key not in self.tensors:
            raise GcnnError(f"{self.name} lacks decoder.{key}; the checkpoint is incomplete")
        self.used.add(key)
        # float32 as the model holds it (fp16 files widened); no copy of a float32 tensor, which
        # matters for a 229M-parameter model (weight-norm arithmetic is done in float64 apart)
        return self.tensors[key].detach().to(torch.float32)

    def weight_norm(self, prefix: str, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(g, v) of a weight-normalised layer; a plain `weight` is split into them."""
        if self.has(f"{prefix}.weight_g"):
            return self.take(f"{prefix}.weight_g"), self.take(f"{prefix}.weight_v")
        return weights.split(self.take(f"{prefix}.weight"), dim)

    def unused(self) -> list[str]:
        return sorted(set(self.tensors) - self.used)


def from_fairseq(model_path: str | Path, dict_path: str | Path) -> Converted:
    """Read a fairseq fconv_lm checkpoint safely and rebuild it as this project's model."""
    model_path = Path(model_path)
    name = str(model_path)
    ckpt = read_fairseq_checkpoint(model_path)
    settings = settings_from_checkpoint(ckpt, name)
    if attention_used(settings.decoder_attention):
        raise GcnnError(f"{name} uses decoder attention; fconv_lm language models have none")
    layout = group_blocks(parse_layers(settings.decoder_layers))
    src = _Source(ckpt.get("model"), name)
    notes: list[str] = []
    stray = [k for k in src.tensors if k.endswith("_linearized_weight")]
    src.used.update(stray)  # fairseq drops these caches on load too
    if stray:
        notes.append(f"dropped {len(stray)} cached _linearized_weight tensors (as fairseq does)")
    if any(v.dtype in (torch.float16, torch.bfloat16) for v in src.tensors.values()):
        notes.append("16-bit weights widened to float32")
    for key in src.tensors:
        if key.startswith(("attention.", "embed_positions.")):
            raise GcnnError(
                f"{name} has decoder.{key}: attention or positional embeddings, which "
                "fconv_lm language models do not use"
            )

    vocab, embed_dim = _shape2(src, "embed_tokens.weight")
    if not 4 < vocab <= MAX_VOCAB or not 0 < embed_dim <= MAX_WIDTH:
        raise GcnnError(f"{name}: embedding of {vocab:,} x {embed_dim:,} is out of range")
    if embed_dim != settings.decoder_embed_dim:
        raise GcnnError(
            f"{name}: its embeddings have {embed_dim} dimensions but its settings say "
            f"decoder_embed_dim={settings.decoder_embed_dim}"
        )
    width = layout.layers[-1].channels
    config = {
        "family": "gcnn",
        "name": f"fairseq-{settings.arch}",
        "vocab_size": vocab,
        "embed_dim": embed_dim,
        "blocks": layout.gcnn_blocks(),
        "dropout": settings.dropout,
        "softmax_dropout": settings.adaptive_softmax_dropout,
        "tail_factor": TAIL_FACTOR,
        "gating": "glu",
    }
    if src.has("adaptive_softmax.head.weight"):
        config["cutoffs"] = _cutoffs(src, settings, vocab, width)
    elif src.has("fc3.weight_v") or src.has("fc3.weight"):
        out_dim = _shape2(src, "fc2.weight_v" if src.has("fc2.weight_v") else "fc2.weight")[0]
        if out_dim + 1 == width:
            raise GcnnError(
                f"{name}: fc2 maps {width} to {out_dim} dimensions, which leaves no room for "
                "the bias column this conversion needs; not supported"
            )
        config.update(cutoffs=[], softmax_dim=out_dim + 1)
        notes.append("full softmax (fc2, fc3): fc3's bias became an extra always-1 feature")
    else:
        raise GcnnError(f"{name} has neither an adaptive softmax nor fc2/fc3 output layers")

    with torch.device("meta"):  # the architecture, checked before any memory is allocated
        shapes = {k: tuple(v.shape) for k, v in model_from_config(config).state_dict().items()}
    state = _map_weights(src, layout, config, notes)
    for key, shape in shapes.items():
        got = tuple(state[key].shape) if key in state else None
        if got != shape:
            raise GcnnError(
                f"{name}: {key} would be {got} from the file but {shape} from its settings "
                f"(decoder_layers={settings.decoder_layers!r}); the checkpoint is inconsistent"
            )
    left = src.unused()
    if left:
        raise GcnnError(f"{name} has decoder.{left[0]}, which an fconv_lm does not use")

    words = read_dictionary(dict_path, vocab)
    pads = sum(w.startswith("madeupword") for w in words)
    if pads:
        notes.append(f"vocabulary padded by fairseq to a multiple of 8 ({pads} madeupwords)")
    model = model_from_config(config)
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    model.eval()
    return Converted(model, WordTokenizer(words), settings, notes)


def convert_file(model_path, dict_path, out_path) -> Converted:
    """`from_fairseq`, then an ordinary checkpoint at `out_path` (weights-only loadable)."""
    converted = from_fairseq(model_path, dict_path)
    s = converted.settings
    origin = {
        "format": "fairseq",
        "file": Path(model_path).name,
        "dictionary": Path(dict_path).name,
        "arch": s.arch,
        "checkpoint_generation": s.generation,
        "decoder_layers": s.decoder_layers,
        "criterion": s.criterion or "",
    }
    ckpt = model_checkpoint(converted.model, converted.tokenizer, converted_from=origin)
    save_checkpoint(out_path, ckpt)
    return converted


def _shape2(src: _Source, key: str) -> tuple[int, int]:
    if not src.has(key) or src.tensors[key].dim() != 2:
        raise GcnnError(f"{src.name}: decoder.{key} is missing or not a matrix")
    rows, cols = src.tensors[key].shape
    return int(rows), int(cols)


def _cutoffs(src: _Source, settings: FconvSettings, vocab: int, width: int) -> list[int]:
    """The adaptive softmax's cutoffs, from its tensors' shapes, checked against the settings."""
    if not src.has("adaptive_softmax.version"):
        # fairseq 0.6 read such files with a head offset by one (one logit shared by the last
        # head word and the first cluster); fairseq >= 0.7 refuses them, and so does this.
        raise GcnnError(
            f"{src.name} lacks decoder.adaptive_softmax.version: its adaptive softmax predates "
            "fairseq 0.7 (a head offset by one), which fairseq no longer loads either"
        )
    src.take("adaptive_softmax.version")
    tails = 0
    while src.has(f"adaptive_softmax.tail.{tails}.0.weight"):
        tails += 1
        if tails > MAX_CLUSTERS:
            raise GcnnError(f"{src.name}: more than {MAX_CLUSTERS} adaptive-softmax clusters")
    head_rows, head_in = _shape2(src, "adaptive_softmax.head.weight")
    if head_in != width:
        raise GcnnError(
            f"{src.name}: the softmax reads {head_in} dimensions, the last layer gives {width}"
        )
    cutoffs = [head_rows - tails]
    for i in range(tails):
        proj_out = _shape2(src, f"adaptive_softmax.tail.{i}.0.weight")[0]
        if proj_out != max(1, width // TAIL_FACTOR ** (i + 1)):
            raise GcnnError(
                f"{src.name}: adaptive-softmax tail {i} projects to {proj_out} dimensions, not "
                f"{width} // 4^{i + 1}; this layout is not fairseq's fconv_lm"
            )
        cutoffs.append(cutoffs[-1] + _shape2(src, _tail_out(src, i))[0])
    if cutoffs[-1] != vocab or cutoffs[0] < 1:
        raise GcnnError(
            f"{src.name}: the adaptive softmax covers {cutoffs[-1]:,} words but the "
            f"embeddings {vocab:,}; the checkpoint is inconsistent"
        )
    stated = parse_cutoffs(settings.adaptive_softmax_cutoff)
    if stated is not None and [c for c in stated if c < vocab] != cutoffs[:-1]:
        raise GcnnError(
            f"{src.name}: its settings say adaptive_softmax_cutoff="
            f"{settings.adaptive_softmax_cutoff} but its softmax splits at "
            f"{','.join(map(str, cutoffs[:-1]))}"
        )
    return cutoffs[:-1]


def _tail_out(src: _Source, i: int) -> str:
    """tail.i.2 (Linear, Dropout, Linear); wav2letter-era files store it as tail.i.1."""
    key = f"adaptive_softmax.tail.{i}.2.weight"
    old = f"adaptive_softmax.tail.{i}.1.weight"
    return old if not src.has(key) and src.has(old) else key


def _map_weights(src: _Source, layout: FconvLayout, config: dict, notes: list[str]) -> dict:
    """This project's state dict from the fairseq tensors."""
    wn = "parametrizations.weight"
    out = {"embed.weight": src.take("embed_tokens.weight")}
    g, v = src.weight_norm("fc1", 0)
    out.update(
        {f"fc_in.{wn}.original0": g, f"fc_in.{wn}.original1": v, "fc_in.bias": src.take("fc1.bias")}
    )
    version = src.take("version").flatten()[0].item() if src.has("version") else 1
    if version < 2:
        notes.append(
            "weight norm per kernel position (decoder.version < 2) refolded per output channel"
        )
    for b, block in enumerate(layout.blocks):
        for j, i in enumerate(block):
            prefix = f"blocks.{b}.convs.{j}"
            conv = f"convolutions.{i}"
            if version < 2 and src.has(f"{conv}.weight_g"):
                w = weights.fold(src.take(f"{conv}.weight_g"), src.take(f"{conv}.weight_v"), 0)
                g, v = weights.split(weights.tbc_to_conv(w), 0)
            else:
                g, v = src.weight_norm(conv, 2)
                g, v = g.reshape(-1, 1, 1), weights.tbc_to_conv(v)
            out.update({f"{prefix}.{wn}.original0": g, f"{prefix}.{wn}.original1": v})
            out[f"{prefix}.bias"] = src.take(f"{conv}.bias")
        last = block[-1]
        if src.has(f"projections.{last}.weight_g") or src.has(f"projections.{last}.weight"):
            g, v = src.weight_norm(f"projections.{last}", 0)
            out[f"blocks.{b}.proj.{wn}.original0"] = g.reshape(-1, 1, 1)
            out[f"blocks.{b}.proj.{wn}.original1"] = v.unsqueeze(2)
            out[f"blocks.{b}.proj.bias"] = src.take(f"projections.{last}.bias")
    if config.get("softmax_dim"):
        _full_softmax(src, out)
    else:
        out["softmax.head.weight"] = src.take("adaptive_softmax.head.weight")
        for i in range(len(config["cutoffs"])):
            out[f"softmax.tails.{i}.0.weight"] = src.take(f"adaptive_softmax.tail.{i}.0.weight")
            key = _tail_out(src, i)
            if key.endswith(".1.weight"):
                notes.append(f"adaptive-softmax tail {i} read from tail.{i}.1 (older layout)")
            out[f"softmax.tails.{i}.2.weight"] = src.take(key)
    return out


def _full_softmax(src: _Source, out: dict) -> None:
    """fc2 -> fc_out with one extra always-1 output; fc3 (with its bias) -> the softmax head."""
    wn = "parametrizations.weight"
    g2, v2 = src.weight_norm("fc2", 0)
    b2 = src.take("fc2.bias")
    unit = torch.zeros(1, v2.size(1), dtype=v2.dtype)
    unit[0, 0] = 1.0
    out[f"fc_out.{wn}.original0"] = torch.cat([g2, torch.zeros(1, 1, dtype=g2.dtype)])
    out[f"fc_out.{wn}.original1"] = torch.cat([v2, unit])  # gain 0: the row's weight is 0
    out["fc_out.bias"] = torch.cat([b2, torch.ones(1, dtype=b2.dtype)])
    g3, v3 = src.weight_norm("fc3", 0)
    out["softmax.head.weight"] = torch.cat(
        [weights.fold(g3, v3, 0), src.take("fc3.bias")[:, None]], 1
    )


def describe(converted: Converted) -> str:
    """One paragraph for the CLI: what was converted."""
    model, s = converted.model, converted.settings
    params = sum(p.numel() for p in model.parameters())
    blocks = ", ".join(
        f"[{'; '.join(f'{k},{c}' for k, c in b['layers'])}]x{b['repeat']}"
        for b in model.config.blocks
    )
    text = (
        f"fairseq {s.arch} ({s.generation} checkpoint): {params / 1e6:.1f}M parameters, "
        f"vocabulary {model.config.vocab_size:,}, embeddings {model.config.embed_dim}, blocks "
        f"{blocks}, cutoffs {model.config.cutoffs or 'none'}, receptive field "
        f"{model.receptive_field}"
    )
    return re.sub(r"\s+", " ", text) + ("".join(f"\n  {n}" for n in converted.notes) or "")
