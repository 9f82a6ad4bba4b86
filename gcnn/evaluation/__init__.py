"""Evaluation: exact perplexity (optionally with a continuous cache), sentence scoring, sampling
and the GCNN-vs-LSTM latency table.

The library API behind the `gcnn-evaluate` subcommands. Names resolve lazily (as in `gcnn`), so
that `gcnn.evaluation.cli` starts fast and each subcommand imports only what it needs.
"""

from __future__ import annotations

from gcnn.lazy import lazy_getattr

_EXPORTS = {
    "PerplexityResult": "gcnn.evaluation.perplexity",
    "corpus_nll": "gcnn.evaluation.perplexity",
    "exact_stream": "gcnn.evaluation.perplexity",
    "evaluate_perplexity": "gcnn.evaluation.perplexity",
    "tokenize_split": "gcnn.evaluation.perplexity",
    "CacheConfig": "gcnn.evaluation.continuous_cache",
    "ContinuousCache": "gcnn.evaluation.continuous_cache",
    "cache_next_word_log_probs": "gcnn.evaluation.cache_evaluation",
    "evaluate_with_cache": "gcnn.evaluation.cache_evaluation",
    "tune_cache": "gcnn.evaluation.cache_evaluation",
    "SentenceScore": "gcnn.evaluation.scoring",
    "score_lines": "gcnn.evaluation.scoring",
    "score_token_ids": "gcnn.evaluation.scoring",
    "SamplingConfig": "gcnn.evaluation.sampling",
    "sample": "gcnn.evaluation.sampling",
    "LatencyConfig": "gcnn.evaluation.latency",
    "LatencyResult": "gcnn.evaluation.latency",
    "prepare_for_inference": "gcnn.evaluation.inference",
    "run_latency": "gcnn.evaluation.latency",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr("gcnn.evaluation", _EXPORTS, globals())
