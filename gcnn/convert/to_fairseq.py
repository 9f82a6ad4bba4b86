"""A checkpoint of this project -> fairseq's `model.pt` + `dict.txt` (fconv_lm, same function).

fairseq's own loader (`checkpoint_utils.load_model_ensemble`, `fairseq-eval-lm`) rebuilds the
model from `cfg["model"]` and loads the weights strictly. Everything written is plain data (dicts,
strings, numbers, tensors), so fairseq reads it even under torch's weights-only default.

Two things fairseq's fconv_lm cannot say directly are built from the layers it has:

- Its vocabulary starts with `<s> <pad> </s> <unk>`. A vocabulary trained here has `<eos>` and
  `<unk>` among its words and no `<s>`/`<pad>`: they move to ids 2 and 3 and two new rows come
  first. fairseq's head has no bias, so the new rows could not be kept at probability 0 by
  weights alone: one extra 1x1 layer at the end of the stack adds a constant feature, and the
  new rows' head weights on it give them a logit of -10,000 (probability 0 in float32).
- This project's optional `fc_out` (a linear map before the softmax) is that same extra layer's
  residual projection, scaled by √2 to undo the block's √½ (its convolution is zero).

Both only need eos and unk to be in the adaptive softmax's head (they always are in practice:
both are frequent); anything else fconv_lm cannot express (ungated or non-GLU gating, LSTMs) is
refused in one line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from gcnn.checkpoint import load_model
from gcnn.data import atomic_write
from gcnn.data.cache import torch_save
from gcnn.errors import GcnnError, writing
from gcnn.signals import deferred as signals_deferred

from . import weights
from .dictionary import dictionary_text, fairseq_symbols

SUPPRESSED_LOGIT = -1.0e4  # exp(-1e4) is 0 in float32: a row that must never be predicted
GATE_OPEN = 30.0  # sigmoid(30) == 1.0 in float32: the extra layer's gates pass their input as is
TOKENS_PER_SAMPLE = 1024  # fairseq-eval-lm's block (the task setting stored in cfg)


@dataclass
class Exported:
    model_path: Path
    dict_path: Path
    decoder_layers: str
    vocab_size: int
    extra_layer: bool  # the constant-feature layer was added (see the module docstring)


def to_fairseq(ckpt_path: str | Path, out_dir: str | Path) -> Exported:
    """Write `out_dir/model.pt` and `out_dir/dict.txt` for fairseq's fconv_lm."""
    model, tokenizer, ckpt = load_model(ckpt_path)
    config = model.config_dict()
    name = str(ckpt_path)
    if config.get("family") != "gcnn":
        raise GcnnError(f"{name} is an {config.get('family')} model; fairseq's fconv_lm is a GCNN")
    if config["gating"] != "glu":
        raise GcnnError(
            f"{name} gates with {config['gating']}; fairseq's fconv_lm has GLU only, so it "
            "cannot hold this model"
        )
    if config.get("tie_embeddings"):
        raise GcnnError(
            f"{name} ties its embeddings to the adaptive softmax; this export writes fairseq's "
            "fconv_lm with untied ones"
        )
    words = [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)]
    symbols, source = fairseq_symbols(words, tokenizer.eos_id, tokenizer.unk_id)
    cutoffs = list(model.softmax.cutoffs)
    shift = len(symbols) - len(words)  # 2 new rows (<s>, <pad>) in front, or 0
    if shift and cutoffs and max(tokenizer.eos_id, tokenizer.unk_id) >= cutoffs[0]:
        raise GcnnError(
            f"{name}: <eos> or <unk> is outside the adaptive softmax's head (ids >= "
            f"{cutoffs[0]}); fairseq keeps them at ids 2 and 3, in the head"
        )
    text = dictionary_text(symbols)  # refuses words fairseq reserves, before anything is written
    extra = bool(shift) or model.fc_out is not None
    state, layers, width = _decoder_state(model, extra)
    softmax_cutoffs = [c + shift for c in cutoffs]
    state.update(_softmax_state(model, source, softmax_cutoffs, width, extra))
    state["decoder.version"] = torch.tensor([2.0])
    expression = layer_expression(layers)
    out_dir = Path(out_dir)
    cfg = _cfg(config, expression, softmax_cutoffs or [len(symbols)], out_dir)
    fairseq_ckpt = {
        "args": None,
        "cfg": cfg,
        "model": {k: v.to(torch.float32).contiguous() for k, v in state.items()},
        "criterion": None,
        "optimizer_history": [
            {
                "criterion_name": "AdaptiveLoss",
                "optimizer_name": "NAG",
                "lr_scheduler_state": {"best": None},
                "num_updates": int(ckpt.get("step") or 0),
            }
        ],
        "task_state": {},
        "extra_state": {"train_iterator": {"epoch": 1}},
        "last_optimizer_state": None,
    }
    model_path, dict_path = out_dir / "model.pt", out_dir / "dict.txt"
    with writing(out_dir, "fairseq model directory"), signals_deferred():
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(dict_path, "w") as f:
            f.write(text)
        with atomic_write(model_path, "wb") as f:
            torch_save(fairseq_ckpt, f)
    return Exported(model_path, dict_path, expression, len(symbols), extra)


def layer_expression(layers: list[tuple[int, int, int]]) -> str:
    """fairseq's `--decoder-layers` for (channels, kernel, residual) layers, repeats folded."""
    blocks: list[list[tuple[int, int, int]]] = []
    run: list[tuple[int, int, int]] = []
    for layer in layers:  # a block: layers with residual 0, closed by one with a residual
        run.append(layer)
        if layer[2]:
            blocks.append(run)
            run = []
    groups: list[list] = []  # [block, times]
    for block in blocks:
        if groups and groups[-1][0] == block:
            groups[-1][1] += 1
        else:
            groups.append([block, 1])
    parts = []
    for block, times in groups:
        items = ", ".join(f"({c}, {k})" if r == 1 else f"({c}, {k}, {r})" for c, k, r in block)
        parts.append(f"[{items}]" + (f" * {times}" if times > 1 else ""))
    return " + ".join(parts)


def _wn_pair(module: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(g, v) of a layer here, weight-normalised or not (then split as g = ‖w‖, v = w)."""
    if hasattr(module, "parametrizations"):
        p = module.parametrizations.weight
        return p.original0.detach().double(), p.original1.detach().double()
    return weights.split(module.weight.detach(), 0)


def _decoder_state(model, extra: bool) -> tuple[dict, list[tuple[int, int, int]], int]:
    """fairseq's decoder tensors up to the softmax, its layer list, and the softmax's width."""
    state = {"decoder.embed_tokens.weight": None}  # filled by _softmax_state (rows reordered)
    g, v = _wn_pair(model.fc_in)
    state.update(_linear("decoder.fc1", g, v, model.fc_in.bias))
    layers: list[tuple[int, int, int]] = []
    for block in model.blocks:
        n = len(block.convs)
        for j, conv in enumerate(block.convs):
            i = len(layers)
            g, v = _wn_pair(conv)
            prefix = f"decoder.convolutions.{i}"
            state[f"{prefix}.weight_g"] = g.reshape(1, 1, -1)
            state[f"{prefix}.weight_v"] = weights.conv_to_tbc(v)
            state[f"{prefix}.bias"] = conv.bias.detach().double()
            kernel, channels = conv.kernel_size[0], conv.out_channels // 2
            layers.append((channels, kernel, n if j == n - 1 else 0))
        if block.proj is not None:
            g, v = _wn_pair(block.proj)
            last = len(layers) - 1
            state.update(
                _linear(f"decoder.projections.{last}", g.reshape(-1, 1), v[..., 0], block.proj.bias)
            )
    width = layers[-1][0]
    if not extra:
        return state, layers, width
    # the extra 1x1 layer: out = (glu(0·x + bias) + P x) · √½ with P = √2 · (fc_out or identity)
    if model.fc_out is not None:
        g, v = _wn_pair(model.fc_out)
        g, bias = g * math.sqrt(2.0), model.fc_out.bias.detach().double() * math.sqrt(2.0)
    else:
        v = torch.eye(width, dtype=torch.float64)
        g, bias = torch.full((width, 1), math.sqrt(2.0), dtype=torch.float64), torch.zeros(width)
    size = v.size(0)
    new = size + 1 if size + 1 != width else size + 2  # a width change, so P is a projection
    pad = new - size
    unit = torch.zeros(pad, width, dtype=torch.float64)
    unit[:, 0] = 1.0
    i = len(layers)
    state.update(
        _linear(
            f"decoder.projections.{i}",
            torch.cat([g, torch.zeros(pad, 1, dtype=g.dtype)]),
            torch.cat([v, unit]),
            torch.cat([bias.double(), torch.zeros(pad, dtype=torch.float64)]),
        )
    )
    prefix = f"decoder.convolutions.{i}"
    state[f"{prefix}.weight_g"] = torch.zeros(1, 1, 2 * new, dtype=torch.float64)
    state[f"{prefix}.weight_v"] = torch.ones(1, width, 2 * new, dtype=torch.float64)
    glu_in = torch.zeros(new, dtype=torch.float64)
    glu_in[size] = math.sqrt(2.0)  # feature `size` is √2 · 1 · √½ = 1
    state[f"{prefix}.bias"] = torch.cat([glu_in, torch.full((new,), GATE_OPEN)])
    layers.append((new, 1, 1))
    return state, layers, new


def _linear(prefix: str, g, v, bias) -> dict:
    return {
        f"{prefix}.weight_g": g,
        f"{prefix}.weight_v": v,
        f"{prefix}.bias": bias.detach().double() if bias is not None else torch.zeros(v.size(0)),
    }


def _softmax_state(model, source: list[int], cutoffs: list[int], width: int, extra: bool) -> dict:
    """Embeddings and adaptive softmax in fairseq's id order (new rows: zero, never predicted)."""
    softmax = model.softmax
    size = softmax.in_features
    rows = torch.tensor(source)
    known = rows >= 0
    embed = model.embed.weight.detach().double()
    out_embed = torch.zeros(len(source), embed.size(1), dtype=torch.float64)
    out_embed[known] = embed[rows[known]]
    state = {"decoder.embed_tokens.weight": out_embed}
    head = softmax.head.weight.detach().double()  # (shortlist + clusters, size)
    shortlist = softmax.shortlist
    first = cutoffs[0] if cutoffs else len(source)
    new_head = torch.zeros(first + len(softmax.tails), width, dtype=torch.float64)
    head_ids = rows[:first]
    new_head[:first, :size][head_ids >= 0] = head[head_ids[head_ids >= 0]]
    if extra:
        new_head[:first, size][head_ids < 0] = SUPPRESSED_LOGIT  # times the feature fixed at 1
    new_head[first:, :size] = head[shortlist:]
    state["decoder.adaptive_softmax.head.weight"] = new_head
    state["decoder.adaptive_softmax.version"] = torch.tensor([1])
    for i, tail in enumerate(softmax.tails):
        proj, out_proj = tail[0].weight.detach().double(), tail[2].weight.detach().double()
        dim = int(width // 4.0 ** (i + 1))  # fairseq's tail width, fixed by its input width
        if dim < proj.size(0):
            raise GcnnError(
                f"adaptive-softmax tail {i} has {proj.size(0)} dimensions, more than fairseq's "
                f"{width} // 4^{i + 1} = {dim}; fconv_lm cannot hold it"
            )
        new_proj = torch.zeros(dim, width, dtype=torch.float64)
        new_proj[: proj.size(0), :size] = proj
        new_out = torch.zeros(out_proj.size(0), dim, dtype=torch.float64)
        new_out[:, : proj.size(0)] = out_proj
        state[f"decoder.adaptive_softmax.tail.{i}.0.weight"] = new_proj
        state[f"decoder.adaptive_softmax.tail.{i}.2.weight"] = new_out
    return state


def _cfg(config: dict, expression: str, cutoffs: list[int], out_dir: Path) -> dict:
    """fairseq's `cfg` as plain dicts: what `load_model_ensemble` and `fairseq-eval-lm` read."""
    model = {
        "_name": "fconv_lm",
        "arch": "fconv_lm",
        "dropout": config["dropout"],
        "decoder_embed_dim": config["embed_dim"],
        "decoder_layers": expression,
        "decoder_attention": "False",
        "adaptive_softmax_cutoff": ",".join(map(str, cutoffs)),
        "adaptive_softmax_dropout": config["softmax_dropout"],
        "criterion": "adaptive_loss",
        "tokens_per_sample": TOKENS_PER_SAMPLE,
        "max_target_positions": TOKENS_PER_SAMPLE,
    }
    task = {
        "_name": "language_modeling",
        "data": str(out_dir.resolve()),
        "sample_break_mode": "none",
        "tokens_per_sample": TOKENS_PER_SAMPLE,
    }
    criterion = {"_name": "adaptive_loss", "sentence_avg": False, "ddp_backend": "legacy_ddp"}
    return {"model": model, "task": task, "criterion": criterion}
