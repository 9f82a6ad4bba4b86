"""Fetching WikiText: mirrors tried in turn, streamed with a progress bar, MD5-checked, and
extracted atomically, so a partial or corrupt download is never taken for a corpus.

The bytes go to `<root>/<archive>.part` and are renamed to `<archive>` only after the MD5
matches; the split files are extracted into a hidden temporary directory that is renamed to
`<root>/<name>` as a whole. A corpus directory therefore either has all three splits or does
not exist.
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
from gcnn.errors import GcnnError

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


def _fetch(url: str, dest: Path, timeout: float, progress: bool) -> None:
    """Stream `url` into `dest`; raise OSError/HTTPException if the transfer is cut short."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(dest, "wb") as out:
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=expected, unit="B", unit_scale=True, desc=dest.name, file=sys.stderr)
        received = 0
        try:
            while block := response.read(CHUNK):
                out.write(block)
                received += len(block)
                if bar is not None:
                    bar.update(len(block))
        finally:
            if bar is not None:
                bar.close()
        if expected is not None and received != expected:
            raise http.client.IncompleteRead(b"", expected - received)
        out.flush()
        os.fsync(out.fileno())


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
        part = archive.with_name(archive.name + ".part")
        failures = []
        for url in urls:
            try:
                _fetch(url, part, timeout, progress)
            except (OSError, http.client.HTTPException, ValueError) as err:
                failures.append(f"{url}: {_describe(err)}")
                continue
            got = file_md5(part)
            if got == expected:
                os.replace(part, archive)
                break
            failures.append(f"{url}: MD5 {got} != expected {expected}")
        else:
            part.unlink(missing_ok=True)
            raise GcnnError(
                f"could not download {spec['file']} ({'; '.join(failures)}); check the network, "
                f"or fetch it yourself and pass --url file:///path/to/{spec['file']}"
            )
    _extract(archive, target)
    archive.unlink(missing_ok=True)  # the extracted splits are all we need
    return target
