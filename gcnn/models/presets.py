"""The paper's architectures (Dauphin et al. 2017, Table 1) as data, plus three CPU-scale presets.

A GCNN is described by `blocks`: a list of residual blocks, each ``{"layers": [[kernel, channels],
...], "repeat": n}``. The layers of one entry form one residual block (a bottleneck block is
``[[1, c], [k, c], [1, out]]``); ``repeat`` stacks n copies of it. The first block takes its input
from a linear projection of the word embeddings, so every block, the first one included, is
residual. Receptive field = 1 + sum of (kernel - 1) over every convolution.

Cutoffs are the adaptive-softmax cluster boundaries (word ids sorted by frequency); the ones at or
beyond the vocabulary size are dropped when a model is built, so a WikiText-103 preset also builds
for WikiText-2. Dropout is not stated in the paper: 0.2 follows fairseq's WikiText-103 recipe, 0.1
for Google Billion Word (GBW) is our choice. gcnn-small and lstm-small use 0.2: gcnn-small's
9-minute run on a fast CPU (4 epochs of WikiText-2) reached test perplexity 131.8 with it, and
lstm-small, 11 epochs in the same 9 minutes, did not overfit at 0.2 either. gcnn-8-small, the
no-argument default since it reaches test perplexity 140 in 9 minutes on slower CPUs too, is
GCNN-8's depth and kernel (receptive field 25) at 128 channels: at about 1.8x gcnn-small's tokens
per second, 9 minutes are 3 or more epochs on every CPU met so far, and it uses 0.1
(docs/training.md, "The default recipe"). Its softmax's tails are twice and four times as wide as
the other presets' (64 and 32 dimensions for the words ranked 2,000-10,000 and beyond; 6.9M
parameters instead of 6.0M): at 4-5% less speed (measured on an EPYC Zen 4) they learn more
in its 9 minutes (the same section).
"""

from __future__ import annotations


def _block(layers: list[list[int]], repeat: int = 1) -> dict:
    return {"layers": [list(layer) for layer in layers], "repeat": repeat}


# Google Billion Word's cutoffs as the paper gives them (GCNN-9, GCNN-8B and the LSTM-2048).
_GBW_CUTOFFS = [4000, 40000, 200000]

PRESETS: dict[str, dict] = {
    # --- CPU scale: trains on WikiText-2 (33k words) on two cores in minutes -----------------
    "gcnn-small": {
        "family": "gcnn",
        "embed_dim": 128,
        "blocks": [_block([[4, 256]], 6)],
        "cutoffs": [2000, 10000],
        "dropout": 0.2,
    },
    "gcnn-8-small": {
        "family": "gcnn",
        "embed_dim": 128,
        "blocks": [_block([[4, 128]], 8)],
        "cutoffs": [2000, 10000],
        "tail_factor": 2,  # tails 64 and 32 wide, not 32 and 8: see the module's docstring
        "dropout": 0.1,
    },
    "lstm-small": {
        "family": "lstm",
        "embed_dim": 200,
        "hidden_size": 256,
        "num_layers": 1,
        "cutoffs": [2000, 10000],
        "dropout": 0.2,
    },
    # --- WikiText-103 ----------------------------------------------------------------------
    "gcnn-8": {
        "family": "gcnn",
        "embed_dim": 280,
        "blocks": [_block([[4, 900]], 1), _block([[4, 900]], 7)],
        "cutoffs": [2000, 10000, 50000],
        "dropout": 0.2,
    },
    "gcnn-14": {
        "family": "gcnn",
        "embed_dim": 280,
        "blocks": [
            _block([[6, 850]], 3),
            _block([[1, 850]], 1),
            _block([[5, 850]], 4),
            _block([[1, 850]], 1),
            _block([[4, 850]], 3),
            _block([[4, 1024]], 1),
            _block([[4, 2048]], 1),
        ],
        "cutoffs": [10000, 20000, 200000],
        "dropout": 0.2,
    },
    # The paper's WikiText-103 baseline (Grave et al.): one LSTM layer of 1024 units. Its embedding
    # size is not stated; we use 1024 like the hidden size. Cutoffs as GCNN-8's.
    "lstm-1024": {
        "family": "lstm",
        "embed_dim": 1024,
        "hidden_size": 1024,
        "num_layers": 1,
        "cutoffs": [2000, 10000, 50000],
        "dropout": 0.2,
    },
    # --- Google Billion Word ---------------------------------------------------------------
    "gcnn-9": {
        "family": "gcnn",
        "embed_dim": 128,
        "blocks": [_block([[4, 807]], 1), _block([[4, 807], [4, 807]], 4)],
        "cutoffs": _GBW_CUTOFFS,
        "dropout": 0.1,
    },
    "gcnn-8b": {
        "family": "gcnn",
        "embed_dim": 128,
        "blocks": [
            _block([[1, 512]], 1),
            _block([[1, 128], [5, 128], [1, 512]], 3),
            _block([[1, 256], [5, 256], [1, 512]], 3),
            _block([[1, 1024], [1, 1024], [1, 2048]], 1),
        ],
        "cutoffs": _GBW_CUTOFFS,
        "dropout": 0.1,
    },
    # The paper's table prints [4,1268]x1, [4,1268; 4,1268]x12, i.e. 25 layers, which contradicts
    # the name: every other plain GCNN is named after its number of layers (8, 9, 14). We follow
    # fairseq and read it as 13 single-layer residual blocks [4,1268]x13 (see docs/models.md).
    "gcnn-13": {
        "family": "gcnn",
        "embed_dim": 128,
        "blocks": [_block([[4, 1268]], 13)],
        "cutoffs": [10000, 40000, 200000],
        "dropout": 0.1,
    },
    "gcnn-14b": {
        "family": "gcnn",
        "embed_dim": 128,
        "blocks": [
            _block([[5, 512]], 1),
            _block([[1, 128], [5, 128], [1, 512]], 3),
            _block([[1, 512], [5, 512], [1, 1024]], 3),
            _block([[1, 1024], [5, 1024], [1, 2048]], 6),
            _block([[1, 1024], [5, 1024], [1, 4096]], 1),
        ],
        "cutoffs": [10000, 40000, 200000],
        "dropout": 0.1,
    },
    # The paper's GBW and latency baseline (Table 4): Jozefowicz et al.'s LSTM-2048-512, one layer
    # of 2048 units whose output is projected to 512, with 512-dim embeddings.
    "lstm-2048": {
        "family": "lstm",
        "embed_dim": 512,
        "hidden_size": 2048,
        "num_layers": 1,
        "proj_size": 512,
        "cutoffs": _GBW_CUTOFFS,
        "dropout": 0.1,
    },
}

# What each preset is for, and the paper's test perplexity (None: not a paper model).
PRESET_NOTES: dict[str, tuple[str, float | None]] = {
    "gcnn-small": ("WikiText-2, CPU", None),
    "gcnn-8-small": ("WikiText-2, CPU: the default", None),
    "lstm-small": ("WikiText-2, CPU", None),
    "gcnn-8": ("WikiText-103", 44.9),
    "gcnn-14": ("WikiText-103", 37.2),
    "lstm-1024": ("WikiText-103", 48.7),
    "gcnn-9": ("GBW", None),
    "gcnn-8b": ("GBW", None),
    "gcnn-13": ("GBW", 38.1),
    "gcnn-14b": ("GBW", 31.9),
    "lstm-2048": ("GBW", 43.9),
}
