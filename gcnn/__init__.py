"""gcnn: Language Modeling with Gated Convolutional Networks (Dauphin et al. 2017) in PyTorch.

The public API, one import away::

    import gcnn
    corpus = gcnn.prepare_corpus("wikitext-2")
    model = gcnn.build_model("gcnn-small", corpus.tokenizer.vocab_size)

Names are resolved lazily so that `import gcnn` stays cheap for command-line tools.
"""

from __future__ import annotations

from gcnn.lazy import lazy_getattr

__version__ = "0.1.0"

_EXPORTS = {
    # data
    "IGNORE_INDEX": "gcnn.data",
    "prepare_corpus": "gcnn.data",
    "resolve_corpus": "gcnn.data",
    "Corpus": "gcnn.data",
    "BlockBatcher": "gcnn.data",
    "StreamBatcher": "gcnn.data",
    "SentenceBatcher": "gcnn.data",
    # models
    "PRESETS": "gcnn.models",
    "build_model": "gcnn.models",
    "model_from_config": "gcnn.models",
    "AdaptiveSoftmax": "gcnn.models",
    # checkpoints
    "model_checkpoint": "gcnn.checkpoint",
    "save_checkpoint": "gcnn.checkpoint",
    "load_checkpoint": "gcnn.checkpoint",
    "load_model": "gcnn.checkpoint",
    # errors
    "GcnnError": "gcnn.errors",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr("gcnn", _EXPORTS, globals())
