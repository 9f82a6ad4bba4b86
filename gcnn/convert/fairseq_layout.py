"""fairseq fconv_lm settings -> this project's GCNN blocks, read safely and bounded.

fairseq describes the decoder by a Python expression, `--decoder-layers`, e.g.

    [(850, 6)] * 3 + [(850, 1)] + [(128, 1, 0), (128, 5, 0), (512, 1, 3)] * 3

and passes it to `eval`. Here it is never evaluated: `parse_layer_list` walks its syntax tree and
accepts list and tuple displays, integer and boolean literals, `+` of lists and `*` of a list by
an integer, checking every size before a list is repeated. Each layer is (channels, kernel,
residual): `residual` = r > 0 adds the output from r layers back (r = 1: a one-layer residual
block), 0 adds none. This project's residual blocks are exactly the runs "r - 1 layers with
residual 0, then one with residual r", so every other pattern is refused, naming the layer.
"""

from __future__ import annotations

import argparse
import ast
from dataclasses import dataclass, field

from gcnn.errors import GcnnError

# Bounds on every size read from a checkpoint, checked before anything is allocated: generous
# for the published models (GBW: 793,471 words, widths up to 4,096, 42 layers, kernels <= 6).
MAX_VOCAB = 10_000_000
MAX_WIDTH = 65_536
MAX_KERNEL = 1_024
MAX_LAYERS = 1_024
MAX_EXPRESSION = 10_000  # characters of a --decoder-layers string
MAX_CLUSTERS = 64

FCONV_ARCHS = ("fconv_lm", "fconv_lm_dauphin_wikitext103", "fconv_lm_dauphin_gbw")

# fairseq's named architectures fill in what a checkpoint's args leave out (fconv_lm.py).
_WT103_LAYERS = (
    "[(850, 6)] * 3 + [(850, 1)] * 1 + [(850, 5)] * 4 + [(850, 1)] * 1 + [(850, 4)] * 3"
    " + [(1024, 4)] * 1 + [(2048, 4)] * 1"
)
_GBW_LAYERS = (
    "[(512, 5)] + [(128, 1, 0), (128, 5, 0), (512, 1, 3)] * 3"
    " + [(512, 1, 0), (512, 5, 0), (1024, 1, 3)] * 3"
    " + [(1024, 1, 0), (1024, 5, 0), (2048, 1, 3)] * 6"
    " + [(1024, 1, 0), (1024, 5, 0), (4096, 1, 3)]"
)
ARCH_DEFAULTS = {
    "fconv_lm_dauphin_wikitext103": {
        "decoder_embed_dim": 280,
        "decoder_layers": _WT103_LAYERS,
        "adaptive_softmax_cutoff": "10000,20000,200000",
    },
    "fconv_lm_dauphin_gbw": {
        "decoder_embed_dim": 128,
        "decoder_layers": _GBW_LAYERS,
        "adaptive_softmax_cutoff": "10000,50000,200000",
    },
}
BASE_DEFAULTS = {
    "dropout": 0.1,
    "decoder_embed_dim": 128,
    "decoder_layers": "[(1268, 4)] * 13",
    "decoder_attention": "False",
    "adaptive_softmax_cutoff": None,
    "adaptive_softmax_dropout": 0.0,
}


@dataclass
class FconvSettings:
    """What an fconv_lm checkpoint says about its model (its `args`, or `cfg["model"]`)."""

    arch: str
    decoder_layers: str
    decoder_embed_dim: int
    decoder_attention: str
    adaptive_softmax_cutoff: str | None
    adaptive_softmax_dropout: float
    dropout: float
    criterion: str | None
    generation: str  # "args" (2017-2019 checkpoints) or "cfg" (fairseq >= 0.10)


@dataclass
class ConvLayer:
    channels: int
    kernel: int
    residual: int  # add the output from this many layers back; 0: no residual


@dataclass
class FconvLayout:
    """fairseq's flat layer list grouped into this project's residual blocks."""

    layers: list[ConvLayer]
    blocks: list[list[int]] = field(default_factory=list)  # fairseq layer indices per block

    def gcnn_blocks(self) -> list[dict]:
        """`GCNNConfig.blocks`: equal consecutive blocks folded into one entry with a repeat."""
        out: list[dict] = []
        for block in self.blocks:
            layers = [[self.layers[i].kernel, self.layers[i].channels] for i in block]
            if out and out[-1]["layers"] == layers:
                out[-1]["repeat"] += 1
            else:
                out.append({"layers": layers, "repeat": 1})
        return out


def settings_from_checkpoint(ckpt: dict, name: str) -> FconvSettings:
    """The model settings of either checkpoint generation, with fairseq's defaults filled in."""
    args = ckpt.get("args")
    cfg = ckpt.get("cfg")
    criterion = None
    if args is not None:
        source, generation = args, "args"
    elif isinstance(cfg, dict) and cfg.get("model") is not None:
        source, generation = cfg["model"], "cfg"
        crit = cfg.get("criterion")
        if isinstance(crit, dict):
            criterion = crit.get("_name")
        elif isinstance(crit, argparse.Namespace):
            criterion = getattr(crit, "_name", None) or getattr(crit, "criterion", None)
    else:
        raise GcnnError(f"{name} has neither 'args' nor 'cfg' model settings; is it fairseq's?")
    if isinstance(source, argparse.Namespace):
        values = dict(vars(source))
    elif isinstance(source, dict):
        values = dict(source)
    else:
        raise GcnnError(
            f"{name}: its model settings are a {type(source).__name__}, not plain data; "
            "re-save the checkpoint with fairseq >= 0.12"
        )
    arch = values.get("arch") or values.get("_name")
    if arch not in FCONV_ARCHS:
        raise GcnnError(
            f"{name} is a fairseq {arch!r} model; only gated convolutional LMs "
            f"({', '.join(FCONV_ARCHS)}) convert"
        )
    merged = {**BASE_DEFAULTS, **ARCH_DEFAULTS.get(arch, {})}
    merged.update({k: v for k, v in values.items() if k in merged and v is not None})
    criterion = values.get("criterion", criterion)
    return FconvSettings(
        arch=arch,
        decoder_layers=_text("decoder_layers", merged["decoder_layers"], name),
        decoder_embed_dim=_bounded("decoder_embed_dim", merged["decoder_embed_dim"], MAX_WIDTH),
        decoder_attention=str(merged["decoder_attention"]),
        adaptive_softmax_cutoff=(
            None
            if merged["adaptive_softmax_cutoff"] is None
            else str(merged["adaptive_softmax_cutoff"])
        ),
        adaptive_softmax_dropout=float(merged["adaptive_softmax_dropout"] or 0.0),
        dropout=float(merged["dropout"] or 0.0),
        criterion=criterion if isinstance(criterion, str) else None,
        generation=generation,
    )


def _text(key: str, value, name: str) -> str:
    if not isinstance(value, str):
        raise GcnnError(f"{name}: setting {key}={value!r} is not a string")
    return value


def _bounded(what: str, value, limit: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= limit:
        raise GcnnError(f"{what}={value!r} is out of range (expected {minimum}..{limit})")
    return value


# --- the layer expression, without eval ---------------------------------------------------------


def parse_layer_list(expr: str, what: str = "decoder_layers"):
    """The value of a fairseq list expression (literals, list +, list * int), never eval'd."""
    if len(expr) > MAX_EXPRESSION:
        raise GcnnError(f"{what} is {len(expr):,} characters long; refusing to parse it")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise GcnnError(f"{what}={expr!r} is not a list expression") from None
    try:
        return _value(tree.body, what)
    except RecursionError:
        raise GcnnError(f"{what} is nested too deeply") from None


def _value(node, what: str):
    if isinstance(node, ast.Constant) and isinstance(node.value, bool | int):
        return node.value
    if isinstance(node, ast.List | ast.Tuple):
        items = [_value(e, what) for e in node.elts]
        if len(items) > MAX_LAYERS:
            raise GcnnError(f"{what} lists more than {MAX_LAYERS} items")
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _value(node.left, what), _value(node.right, what)
        if not (isinstance(left, list) and isinstance(right, list)):
            raise GcnnError(f"{what}: '+' joins two lists here, got {ast.unparse(node)!r}")
        if len(left) + len(right) > MAX_LAYERS:
            raise GcnnError(f"{what} has more than {MAX_LAYERS} layers")
        return left + right
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        left, right = _value(node.left, what), _value(node.right, what)
        items, times = (left, right) if isinstance(left, list) else (right, left)
        if not isinstance(items, list) or isinstance(times, bool) or not isinstance(times, int):
            raise GcnnError(f"{what}: '*' repeats a list an integer number of times")
        if times < 0 or len(items) * times > MAX_LAYERS:  # checked before repeating
            raise GcnnError(f"{what} has more than {MAX_LAYERS} layers")
        return items * times
    source = ast.unparse(node)[:60]
    raise GcnnError(f"{what}: {source!r} is not a literal list, tuple or number; not evaluated")


def parse_layers(expr: str) -> list[ConvLayer]:
    """fairseq's `--decoder-layers` as ConvLayers (a missing residual means 1, as in fairseq)."""
    value = parse_layer_list(expr)
    if not isinstance(value, list) or not value:
        raise GcnnError(f"decoder_layers={expr!r} is not a non-empty list of layers")
    layers = []
    for i, spec in enumerate(value):
        if not isinstance(spec, tuple | list) or len(spec) not in (2, 3):
            raise GcnnError(f"decoder layer {i} {spec!r} is not (channels, kernel[, residual])")
        channels = _bounded(f"decoder layer {i} channels", spec[0], MAX_WIDTH)
        kernel = _bounded(f"decoder layer {i} kernel", spec[1], MAX_KERNEL)
        residual = (
            _bounded(f"decoder layer {i} residual", spec[2], MAX_LAYERS, 0) if len(spec) == 3 else 1
        )
        layers.append(ConvLayer(channels, kernel, residual))
    return layers


def group_blocks(layers: list[ConvLayer]) -> FconvLayout:
    """Group fairseq layers into residual blocks; GcnnError naming a layer gcnn cannot express."""
    layout = FconvLayout(layers)
    pending: list[int] = []
    for i, layer in enumerate(layers):
        pending.append(i)
        if layer.residual == 0:
            continue
        if layer.residual != len(pending):
            spec = (layer.channels, layer.kernel, layer.residual)
            why = (
                "across another residual connection"
                if layer.residual > len(pending)
                else f"but the {len(pending) - 1} layers before it have no residual"
            )
            raise GcnnError(
                f"decoder layer {i} {spec} takes its residual from {layer.residual} layers back "
                f"({why}); gcnn's residual blocks (r - 1 layers without a residual, then one "
                "with residual r) cannot express it"
            )
        layout.blocks.append(pending)
        pending = []
    if pending:
        raise GcnnError(
            f"decoder layers {pending[0]}..{pending[-1]} end the stack without a residual "
            "connection; gcnn's blocks are all residual, so this layout cannot be converted"
        )
    return layout


def parse_cutoffs(text: str | None) -> list[int] | None:
    """fairseq's comma-separated `--adaptive-softmax-cutoff` ('10000,20000,200000')."""
    if text is None or text.strip() in ("", "None"):
        return None
    value = parse_layer_list(text if text.strip().startswith("[") else f"[{text}]", "cutoffs")
    if not isinstance(value, list) or not all(
        isinstance(c, int) and not isinstance(c, bool) for c in value
    ):
        raise GcnnError(f"adaptive_softmax_cutoff={text!r} is not a list of integers")
    if len(value) > MAX_CLUSTERS:
        raise GcnnError(f"adaptive_softmax_cutoff has more than {MAX_CLUSTERS} cutoffs")
    return [_bounded("adaptive_softmax_cutoff", c, MAX_VOCAB) for c in value]


def attention_used(text: str) -> bool:
    """fairseq's `--decoder-attention` ('False', 'True' or a list of booleans)."""
    value = parse_layer_list(text, "decoder_attention")
    if isinstance(value, list):
        return any(bool(v) for v in value)
    return bool(value)
