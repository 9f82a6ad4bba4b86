"""Finding a corpus on disk and reading its text fast, with errors a user can act on.

A corpus is a directory holding `wiki.{train,valid,test}.tokens` (the WikiText release) or
`{train,valid,test}.txt`, each optionally compressed (.xz, .gz, .bz2) and read without unpacking
to disk. Text is read in large chunks cut at line ends, because per-line Python loops are the
bottleneck on a 540 MB corpus; the tokenizers then work on whole chunks with str.split().
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

from gcnn.errors import GcnnError

SPLITS = ("train", "valid", "test")
KNOWN_CORPORA = ("wikitext-2", "wikitext-103")
COMPRESSIONS = {"": open, ".xz": lzma.open, ".gz": gzip.open, ".bz2": bz2.open}
CHUNK_BYTES = 1 << 22  # 4 MiB: amortises per-call overhead; small enough to stay in cache


def data_root() -> Path:
    """Where named corpora live: $GCNN_DATA, else ./data (the default download directory)."""
    return Path(os.environ.get("GCNN_DATA") or "data")


def resolve_corpus(name_or_dir: str | os.PathLike) -> Path:
    """'wikitext-2' / 'wikitext-103' -> $GCNN_DATA/<name> (else ./data/<name>); else a directory.

    Finding only: fetching a missing named corpus is `prepare_corpus(..., download=True)`'s job.
    """
    name = str(name_or_dir)
    if name in KNOWN_CORPORA:  # a local directory of that name: pass it as ./wikitext-2
        path = data_root() / name
        if not path.is_dir():
            raise GcnnError(
                f"corpus {name} not found at {path}; run `python -m gcnn.data download {name}` "
                "or set GCNN_DATA to a directory holding it"
            )
        return path
    path = Path(name).expanduser()
    if not path.is_dir():
        hint = f"; known names: {', '.join(KNOWN_CORPORA)}" if not path.exists() else ""
        raise GcnnError(f"corpus directory {path} does not exist or is not a directory{hint}")
    return path


def find_split_files(directory: str | os.PathLike) -> dict[str, Path]:
    """{split: file} for the splits in `directory`: wiki.X.tokens or X.txt, maybe compressed."""
    directory = Path(directory)
    if not directory.is_dir():
        raise GcnnError(f"corpus directory {directory} does not exist or is not a directory")
    found: dict[str, Path] = {}
    for split in SPLITS:
        candidates = [
            directory / (stem + ext)
            for stem in (f"wiki.{split}.tokens", f"{split}.txt")
            for ext in COMPRESSIONS
        ]
        present = [p for p in candidates if p.is_file()]
        if len(present) > 1:
            names = ", ".join(p.name for p in present)
            raise GcnnError(
                f"{directory} has several files for split {split!r} ({names}); keep one"
            )
        if present:
            found[split] = present[0]
    return found


def open_binary(path: Path):
    """A binary stream of the decompressed file (chosen by suffix)."""
    opener = COMPRESSIONS.get(path.suffix if path.suffix in (".xz", ".gz", ".bz2") else "")
    try:
        return opener(path, "rb")
    except OSError as err:
        raise GcnnError(f"cannot open {path}: {err.strerror or err}") from None


def read_chunks(
    path: str | os.PathLike,
    chunk_bytes: int | None = None,
    progress=None,
    start: int = 0,
    end: int | None = None,
    cut_long_lines: bool = False,
):
    """Yield the file's text in chunks that each end at a line break (see `stream_chunks`).

    Concatenating the chunks gives the whole file (or, for a plain file, the bytes
    [start, end), which should begin at a line start), decoded as strict UTF-8, with a line
    break added after a last line that lacks one. `progress` (a tqdm bar or None) is advanced by
    decompressed bytes. Errors name the file and what to do: bytes that are not UTF-8 (with the
    line and byte offset), a truncated or corrupt archive.
    """
    path = Path(path)
    try:
        with open_binary(path) as f:
            if start:
                f.seek(start)
            yield from stream_chunks(f, path, chunk_bytes, progress, start, end, cut_long_lines)
    except (EOFError, lzma.LZMAError, gzip.BadGzipFile, zlib.error, OSError) as err:
        if isinstance(err, OSError) and not isinstance(err, gzip.BadGzipFile) and err.errno:
            raise GcnnError(f"cannot read {path}: {err.strerror}") from None
        raise GcnnError(
            f"{path} is truncated or corrupt ({err}); download or decompress it again"
        ) from None


def stream_chunks(
    f,
    name: str | os.PathLike,
    chunk_bytes: int | None = None,
    progress=None,
    start: int = 0,
    end: int | None = None,
    cut_long_lines: bool = False,
):
    """The text of a binary stream `f` (a file, standard input) in chunks ending at line breaks.

    A line longer than a chunk is gathered piece by piece (joined once, not copied again at
    every read). With `cut_long_lines` it is not gathered at all: it is yielded in chunks cut
    after a space or tab, so memory stays bounded by the chunk size whatever the line's length;
    such a chunk ends without a line break (the line goes on in the next one). That keeps the
    words of whitespace tokenization (gcnn.data.tokenizer.split_words), not those of a subword
    model, so only word-level readers ask for it. `name` is for error messages.
    """
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    offset, pending, size = start, [], 0  # pending: the unfinished line's pieces (bytes)
    lines = 0 if start == 0 else None  # line numbers are only known when reading from the top
    remaining = float("inf") if end is None else end - start

    def emit(data: bytes) -> str:
        nonlocal offset, lines
        text = _decode(data, name, offset, lines)
        offset += len(data)
        if lines is not None:
            lines += data.count(b"\n")
        return text

    while True:
        block = f.read(int(min(chunk_bytes, remaining)))
        remaining -= len(block)
        if progress is not None:
            progress.update(len(block))
        if not block:
            break
        cut = block.rfind(b"\n") + 1
        if cut == 0:  # no line ends here
            pending.append(block)
            size += len(block)
            if cut_long_lines and size >= chunk_bytes:
                data = b"".join(pending)
                space = max(data.rfind(b" "), data.rfind(b"\t")) + 1
                if space > 0:  # a word longer than a chunk stays whole
                    pending, size = [data[space:]], len(data) - space
                    yield emit(data[:space])
            continue
        yield emit(b"".join([*pending, block[:cut]]))
        pending, size = [block[cut:]], len(block) - cut
    rest = b"".join(pending)
    if rest:
        yield emit(rest) + "\n"  # a last line without a line break is still a line


def line_aligned_ranges(path: Path, parts: int) -> list[tuple[int, int]]:
    """Cut a plain file into `parts` byte ranges that each start at a line start."""
    size = path.stat().st_size
    cuts = [0]
    with open(path, "rb") as f:
        for k in range(1, parts):
            f.seek(max(size * k // parts, cuts[-1]))
            f.readline()  # finish the line we landed in
            cuts.append(min(f.tell(), size))
    cuts.append(size)
    return [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]


def _decode(data: bytes, path, offset: int, lines_before: int | None) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        where = f"byte offset {offset + err.start}"
        if lines_before is not None:
            line = lines_before + data.count(b"\n", 0, err.start) + 1
            where = f"line {line}, {where}"
        bad = data[err.start : err.start + 4]
        raise GcnnError(
            f"{path} is not UTF-8 ({where}: {bad!r}); re-encode the text as UTF-8, e.g. with iconv"
        ) from None


def iter_lines(path: str | os.PathLike) -> Iterator[str]:
    """The file's lines without their line breaks (for sentencepiece and small inputs)."""
    yield from _lines(read_chunks(path))


def iter_stream_lines(f, name: str) -> Iterator[str]:
    """The lines of a binary stream (standard input), read and decoded as a file's are."""
    try:
        yield from _lines(stream_chunks(f, name))
    except OSError as err:
        raise GcnnError(f"cannot read {name}: {err.strerror or err}") from None


def _lines(chunks) -> Iterator[str]:
    for chunk in chunks:
        lines = chunk.split("\n")
        if lines[-1] == "":
            lines.pop()
        yield from lines
