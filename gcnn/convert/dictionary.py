"""fairseq vocabularies <-> this project's word lists, id for id.

fairseq numbers a vocabulary as `Dictionary.load(dict.txt)` does: the specials `<s> <pad> </s>
<unk>` take ids 0-3, then every line of dict.txt (`word count`) in file order, and fairseq's
preprocessing pads the total to a multiple of 8 with `madeupword0000`, `madeupword0001`, ... (so a
model's output layer can be larger than 4 + the lines of dict.txt; the padding is often in
dict.txt itself). wav2letter ships the same vocabulary as one token per line with the specials
written out first (`<fairseq_style>`, `<pad>`, `</s>`, `<unk>`). Either way the ids are the
model's row numbers, which is what the adaptive softmax's cutoffs count in.

This project's word tokenizer ends every line with `<eos>`: fairseq's `</s>` (id 2) is renamed
to it, so `encode` appends id 2 as fairseq's binarizer does. Id 0 (`<s>`, in the oldest fairseq
`<Lua heritage>`) and id 1 (`<pad>`) are never predicted; they keep their rows.
"""

from __future__ import annotations

from pathlib import Path

from gcnn.data.tokenizer import EOS, UNK
from gcnn.errors import GcnnError

from .fairseq_layout import MAX_VOCAB

FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
WAV2LETTER_HEADER = "<fairseq_style>"
PAD_MULTIPLE = 8
MAX_DICT_BYTES = 1 << 30  # GBW's dict.txt is ~10 MB


def read_dictionary(path: str | Path, model_rows: int) -> list[str]:
    """The vocabulary of a `model_rows`-row fairseq model, id for id, `</s>` written as <eos>."""
    path = Path(path)
    if not path.is_file():
        raise GcnnError(f"dictionary {path} does not exist; pass the model's dict.txt (or .vocab)")
    if path.stat().st_size > MAX_DICT_BYTES:
        raise GcnnError(f"dictionary {path} is over {MAX_DICT_BYTES >> 20} MiB; refusing it")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise GcnnError(f"dictionary {path} is not UTF-8 text; pass the model's dict.txt") from None
    lines = [line for line in text.split("\n") if line.strip()]
    if len(lines) > MAX_VOCAB:
        raise GcnnError(f"dictionary {path} has over {MAX_VOCAB:,} entries; refusing it")
    if lines and lines[0].split()[0] == WAV2LETTER_HEADER:
        # wav2letter's .vocab: every id written out, one token per line, no counts
        symbols = [line.split()[0] for line in lines]
        if symbols[1:4] != list(FAIRSEQ_SPECIALS[1:]):
            raise GcnnError(
                f"{path} starts like a wav2letter vocabulary but its lines 2-4 are not "
                f"{' '.join(FAIRSEQ_SPECIALS[1:])}"
            )
        symbols[0] = FAIRSEQ_SPECIALS[0]
    else:
        symbols = list(FAIRSEQ_SPECIALS) + [_entry(line, n, path) for n, line in enumerate(lines)]
    if len(symbols) < model_rows:
        missing = model_rows - len(symbols)
        if model_rows % PAD_MULTIPLE or missing >= PAD_MULTIPLE:
            raise GcnnError(
                f"{path} gives {len(symbols):,} ids (with fairseq's 4 specials) but the model "
                f"has {model_rows:,} rows; is it this model's dictionary?"
            )
        symbols += [f"madeupword{i:04d}" for i in range(missing)]
    elif len(symbols) > model_rows:
        raise GcnnError(
            f"{path} gives {len(symbols):,} ids (with fairseq's 4 specials) but the model has "
            f"only {model_rows:,} rows; is it this model's dictionary?"
        )
    return _as_gcnn_words(symbols, path)


def _entry(line: str, number: int, path: Path) -> str:
    """The word of one dict.txt line, `word count [#fairseq:overwrite]` (fairseq's format)."""
    parts = line.rstrip().rsplit(" ", 1)
    if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
        if parts[-1] == "#fairseq:overwrite":
            raise GcnnError(
                f"{path} line {number + 1}: '#fairseq:overwrite' entries (which give a word a "
                "second id) are not supported"
            )
        raise GcnnError(
            f"{path} line {number + 1} is not 'word count' (fairseq's dict.txt format): "
            f"{line[:60]!r}"
        )
    return parts[0]


def _as_gcnn_words(symbols: list[str], path: Path) -> list[str]:
    """Rename fairseq's `</s>` to this project's <eos>, refusing names that would collide."""
    if symbols[2] != "</s>" or symbols[3] != UNK:
        raise GcnnError(f"{path}: ids 2 and 3 must be </s> and {UNK} (fairseq's layout)")
    seen: dict[str, int] = {}
    for i, word in enumerate(symbols):
        if word in seen:  # fairseq's Dictionary refuses these too
            raise GcnnError(
                f"{path}: {word!r} appears twice (ids {seen[word]} and {i}); a vocabulary "
                "needs distinct entries"
            )
        seen[word] = i
    if EOS in seen:
        raise GcnnError(
            f"{path} has {EOS!r} as an ordinary word (id {seen[EOS]}); gcnn writes fairseq's "
            "</s> as <eos>, so the two would collide"
        )
    return [EOS if i == 2 else word for i, word in enumerate(symbols)]


def fairseq_symbols(words: list[str], eos_id: int, unk_id: int) -> tuple[list[str], list[int]]:
    """(fairseq's symbols, for each of them the id of the same entry here, -1 if none).

    A vocabulary converted from fairseq keeps its ids. Any other gets fairseq's four specials in
    front: `</s>` and `<unk>` are this vocabulary's <eos> and <unk>, `<s>` and `<pad>` are new
    (-1: never predicted), and the rest follow in this project's order.
    """
    if eos_id == 2 and unk_id == 3 and words[1] == "<pad>":
        symbols = list(words)
        symbols[0], symbols[2] = FAIRSEQ_SPECIALS[0], FAIRSEQ_SPECIALS[2]
        return symbols, list(range(len(words)))
    rest = [i for i in range(len(words)) if i not in (eos_id, unk_id)]
    symbols = list(FAIRSEQ_SPECIALS) + [words[i] for i in rest]
    return symbols, [-1, -1, eos_id, unk_id] + rest


def dictionary_text(symbols: list[str]) -> str:
    """fairseq's dict.txt of `symbols`: every one after the 4 specials, with descending counts."""
    clash = sorted({s for s in symbols[4:] if s in FAIRSEQ_SPECIALS})
    if clash:
        raise GcnnError(
            f"the vocabulary contains {', '.join(clash)} as an ordinary word, which fairseq "
            "reserves; it cannot be written as a fairseq dict.txt"
        )
    bad = [s for s in symbols[4:] if not s or any(c.isspace() for c in s)]
    if bad:
        raise GcnnError(f"vocabulary entry {bad[0]!r} is empty or holds white space")
    n = len(symbols)
    # counts only order the file for fairseq's tools; the ids are the line order
    return "".join(f"{s} {n - i}\n" for i, s in enumerate(symbols[4:], start=4))
