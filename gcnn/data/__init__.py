"""gcnn.data: corpora on disk -> tokenizers -> cached int32 token streams -> exact batches.

See docs/design.md ("gcnn.data") for the contract and docs/data.md for the user guide.
"""

from gcnn.data.batches import IGNORE_INDEX, BlockBatcher, SentenceBatcher, StreamBatcher
from gcnn.data.cache import atomic_write
from gcnn.data.corpus import KNOWN_CORPORA, SPLITS, find_split_files, read_chunks, resolve_corpus
from gcnn.data.download import download_corpus
from gcnn.data.prepare import Corpus, prepare_corpus
from gcnn.data.tokenizer import (
    SentencePieceTokenizer,
    Tokenizer,
    WordTokenizer,
    tokenizer_from_state,
)

__all__ = [
    "IGNORE_INDEX",
    "KNOWN_CORPORA",
    "SPLITS",
    "BlockBatcher",
    "Corpus",
    "SentenceBatcher",
    "SentencePieceTokenizer",
    "StreamBatcher",
    "Tokenizer",
    "WordTokenizer",
    "atomic_write",
    "download_corpus",
    "find_split_files",
    "prepare_corpus",
    "read_chunks",
    "resolve_corpus",
    "tokenizer_from_state",
]
