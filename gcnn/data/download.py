"""Fetching WikiText: mirrors tried in turn, streamed with a progress bar, MD5-checked, and
extracted atomically, so a partial or corrupt download is never taken for a corpus.

The bytes go to `<root>/<archive>.part` and are renamed to `<archive>` only after the MD5
matches; the split files are extracted into a hidden temporary directory that is renamed to
`<root>/<name>` as a whole. A corpus directory therefore either has all three splits or does
not exist.

A transfer cut short keeps its .part file, and the next try continues it with an HTTP Range
request; the MD5 of the whole file still decides, and a continued file that fails it is
deleted and fetched again from zero. A .part that cannot be written (full disk, read-only) is
deleted, and the one-line error says so; a full disk while extracting keeps the verified archive.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from gcnn.data.corpus import SPLITS, data_root, find_split_files
from gcnn.errors import GcnnError, WriteError, writing

# Official archives (MD5 from the release) and the public mirrors that still serve them.
# The original S3 bucket answers 403 today; it stays last in case it comes back.
ARCHIVES = {
    "wikitext-2": {
        "file": "wikitext-2-v1.zip",
        "md5": "542ccefacc6c27f945fb54453812b3cd",
        "urls": [
            "https://wikitext.smerity.com/wikitext-2-v1.zip",
            "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-v1.zip",
        ],
    },
    "wikitext-103": {
        "file": "wikitext-103-v1.zip",
        "md5": "9ddaacaf6af0710eda8c456decff7832",
        "urls": [
            "https://wikitext.smerity.com/wikitext-103-v1.zip",
            "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-103-v1.zip",
        ],
    },
}
# The smerity.com mirror rejects some default client user agents (PAPER.md).
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) gcnn/0.1"
CHUNK = 1 << 20


def file_md5(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def _fetch(url: str, dest: Path, timeout: float, progress: bool) -> bool:
    """Stream `url` into `dest`, continuing a partial `dest` where the server allows (HTTP Range).

    Returns whether an existing partial file was continued. A transfer cut short raises
    OSError/HTTPException and leaves what arrived in `dest`, for the next call to continue; a
    failed local write (full disk, read-only) raises WriteError. Nothing here trusts `dest`:
    the caller checks the MD5 of the whole file.
    """
    have = dest.stat().st_size if dest.is_file() else 0
    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=timeout
        )
    except urllib.error.HTTPError as err:
        if err.code != 416 or not have:
            raise
        # 416 Range Not Satisfiable: the partial file is as long as the archive, or longer (a
        # leftover of something else): start over rather than guess.
        dest.unlink()
        return _fetch(url, dest, timeout, progress)
    with response:
        # Continue only if the server sends exactly the missing bytes; a plain 200 (no Range
        # support, file:// URLs) is the whole file again.
        content_range = response.headers.get("Content-Range") or ""
        resumed = have > 0 and content_range.startswith(f"bytes {have}-")
        if not resumed:
            have = 0
        length = response.headers.get("Content-Length")
        expected = have + int(length) if length and length.isdigit() else None
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(
                total=expected, initial=have, unit="B", unit_scale=True, desc=dest.name,
                file=sys.stderr,
            )  # fmt: skip
        received = have
        with writing(dest, "download"):
            out = open(dest, "ab" if resumed else "wb")  # noqa: SIM115 (closed below)
        try:
            while block := response.read(CHUNK):  # a network failure raises here
                with writing(dest, "download"):
                    out.write(block)
                received += len(block)
                if bar is not None:
                    bar.update(len(block))
            if expected is not None and received != expected:
                raise http.client.IncompleteRead(b"", expected - received)
            with writing(dest, "download"):
                out.flush()
                os.fsync(out.fileno())
        finally:
            if bar is not None:
                bar.close()
            with writing(dest, "download"):
                out.close()  # keeps what arrived: the next try continues from there
    return resumed


def _describe(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return f"cannot connect ({err.reason})"
    if isinstance(err, http.client.IncompleteRead):
        return f"transfer cut short ({err.expected} bytes missing)"
    return f"{type(err).__name__}: {err}"


def _extract(archive: Path, target: Path) -> None:
    """Extract the wiki.{train,valid,test}.tokens members into `target`, all or nothing."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            members = {Path(m).name: m for m in zf.namelist() if not m.endswith("/")}
            for split in SPLITS:
                name = f"wiki.{split}.tokens"
                if name not in members:
                    raise GcnnError(f"{archive} has no {name}; is it a WikiText archive?")
                with writing(target, "corpus"):
                    with zf.open(members[name]) as src, open(tmp / name, "wb") as dst:
                        shutil.copyfileobj(src, dst, CHUNK)
                        dst.flush()
                        os.fsync(dst.fileno())
        if target.exists():
            target.rmdir()  # only an empty leftover directory; checked by the caller
        os.replace(tmp, target)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as err:
        archive.unlink(missing_ok=True)
        raise GcnnError(
            f"{archive} is not a valid zip archive ({err}); download it again"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download_corpus(
    name: str,
    root: str | os.PathLike | None = None,
    urls: list[str] | None = None,
    md5: str | None = None,
    progress: bool = True,
    timeout: float = 30.0,
) -> Path:
    """Download and extract `name` into `<root>/<name>` (root: $GCNN_DATA or ./data).

    urls: mirrors to try in order (default: the known public mirrors; file:// URLs work for an
    archive you already have). md5: the expected checksum (default: the official archive's).
    Returns the corpus directory; an already complete one is returned untouched.
    """
    if name not in ARCHIVES:
        raise GcnnError(f"unknown corpus {name!r}; choose {' or '.join(ARCHIVES)}")
    spec = ARCHIVES[name]
    root = Path(root) if root is not None else data_root()
    target = root / name
    if target.is_dir():
        present = find_split_files(target)
        if all(s in present for s in SPLITS):
            return target
        if any(target.iterdir()):
            raise GcnnError(
                f"{target} exists but lacks some splits; move it away and download again"
            )
    expected = (md5 or spec["md5"]).lower()
    urls = list(urls or spec["urls"])
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise GcnnError(f"cannot create {root} ({err.strerror}); pass --root DIR") from None
    archive = root / spec["file"]
    if not (archive.is_file() and file_md5(archive) == expected):
        _download(archive, urls, expected, timeout, progress)
    try:
        _extract(archive, target)
    except WriteError as err:
        raise GcnnError(
            f"{err}; the verified archive {archive} is kept: a re-run extracts it without "
            "downloading again",
            err.exit_code,
        ) from None
    archive.unlink(missing_ok=True)  # the extracted splits are all we need
    return target


def _download(archive: Path, urls: list[str], expected: str, timeout: float, progress: bool):
    """Fetch `archive` from the first mirror that delivers the right MD5, via `<archive>.part`.

    A transfer cut short leaves the .part file for the next mirror or the next run to continue
    (HTTP Range); a .part that turns out wrong, or a continued one whose MD5 fails, is never
    trusted: it is deleted and the download starts from zero. A .part that cannot be written
    (full disk, read-only) is deleted too, giving the space back.
    """
    part = archive.with_name(archive.name + ".part")
    failures = []
    for url in urls:
        try:
            resumed = _fetch(url, part, timeout, progress)
            got = file_md5(part)
            if got != expected and resumed:  # the kept beginning was not this archive's
                part.unlink()
                _fetch(url, part, timeout, progress)
                got = file_md5(part)
        except WriteError as err:
            part.unlink(missing_ok=True)
            raise GcnnError(f"{err}; the partial download was removed", err.exit_code) from None
        except (OSError, http.client.HTTPException, ValueError) as err:
            failures.append(f"{url}: {_describe(err)}")
            continue
        if got == expected:
            os.replace(part, archive)
            return
        part.unlink()
        failures.append(f"{url}: MD5 {got} != expected {expected}")
    kept = ""
    if part.is_file() and part.stat().st_size > 0:
        kept = (
            f"; the {part.stat().st_size:,} bytes received are kept in {part}, a re-run "
            "continues from there"
        )
    raise GcnnError(
        f"could not download {archive.name} ({'; '.join(failures)}){kept}; check the network, "
        f"or fetch it yourself and pass --url file:///path/to/{archive.name}"
    )
