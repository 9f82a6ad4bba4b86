"""Downloading against a real HTTP server on 127.0.0.1 (never anything else)."""

from __future__ import annotations

import errno
import hashlib
import http.server
import io
import socket
import threading
import zipfile
from pathlib import Path

import pytest
from test_faults import failing_open

from gcnn.data import prepare_corpus
from gcnn.data.__main__ import main
from gcnn.data.download import download_corpus
from gcnn.errors import GcnnError, run_cli

SPLITS_TEXT = {
    "train": " = Title = \n \n the cat sat on the mat . \n",
    "valid": " the cat . \n",
    "test": " the mat . \n \n",
}


def make_zip(texts: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("wikitext-2/", "")
        for split, text in texts.items():
            zf.writestr(f"wikitext-2/wiki.{split}.tokens", text)
    return buffer.getvalue()


GOOD = make_zip(SPLITS_TEXT)
OTHER = make_zip({**SPLITS_TEXT, "test": " something else \n"})
GOOD_MD5 = hashlib.md5(GOOD).hexdigest()


class Handler(http.server.BaseHTTPRequestHandler):
    ranges: list[str | None] = []  # the Range header of every request to /flaky, /ranged

    def do_GET(self):
        if self.path in ("/flaky.zip", "/ranged.zip"):  # both honour Range
            Handler.ranges.append(self.headers.get("Range"))
            self.send_ranged(die=self.path == "/flaky.zip")
            return
        if self.path == "/wikitext-2-v1.zip":
            body, length = GOOD, len(GOOD)
        elif self.path == "/other.zip":
            body, length = OTHER, len(OTHER)
        elif self.path == "/dies.zip":  # promises the whole archive, sends half, hangs up
            body, length = GOOD[: len(GOOD) // 2], len(GOOD)
        elif self.path == "/notzip":
            body = b"this is not a zip file"
            length = len(body)
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def send_ranged(self, die: bool):
        start = int(self.headers.get("Range", "bytes=0-")[len("bytes=") :].rstrip("-"))
        if start >= len(GOOD):
            self.send_error(416)
            return
        if start == 0:  # flaky: promise everything, send half, hang up
            self.send_response(200)
            self.send_header("Content-Length", str(len(GOOD)))
            self.end_headers()
            self.wfile.write(GOOD[: len(GOOD) // 2] if die else GOOD)
        else:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(GOOD) - 1}/{len(GOOD)}")
            self.send_header("Content-Length", str(len(GOOD) - start))
            self.end_headers()
            self.wfile.write(GOOD[start:])
        self.close_connection = True

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch, tmp_path):
    # A proxy from the environment must not take loopback requests elsewhere.
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.delenv("GCNN_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/wikitext-2-v1.zip"  # nothing listens there any more


def assert_nothing_left(root: Path):
    """No corpus directory, no archive, no .part file: nothing that looks complete."""
    leftovers = sorted(p.name for p in root.iterdir()) if root.exists() else []
    assert leftovers == [], leftovers


def get(root, *urls, md5=GOOD_MD5):
    return download_corpus("wikitext-2", root=root, urls=list(urls), md5=md5, progress=False)


def test_download_verifies_and_extracts(server, tmp_path):
    root = tmp_path / "data"
    path = get(root, f"{server}/wikitext-2-v1.zip")
    assert path == root / "wikitext-2"
    for split, text in SPLITS_TEXT.items():
        assert (path / f"wiki.{split}.tokens").read_text() == text
    assert sorted(p.name for p in root.iterdir()) == ["wikitext-2"]  # archive and .part gone
    corpus = prepare_corpus(path)
    assert corpus.stats["train"]["tokens"] == 13 and corpus.stats["test"]["lines"] == 2
    # A complete corpus is not fetched again (this URL would fail).
    assert get(root, closed_port_url()) == path


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    root = tmp_path / "data"
    with pytest.raises(GcnnError, match="MD5") as info:
        get(root, f"{server}/other.zip")
    assert "other.zip" in str(info.value) and "--url" in str(info.value)
    assert_nothing_left(root)


def test_server_dying_mid_transfer_keeps_only_a_part_file(server, tmp_path):
    root = tmp_path / "data"
    with pytest.raises(GcnnError, match="dies.zip: transfer cut short") as info:
        get(root, f"{server}/dies.zip")
    part = root / "wikitext-2-v1.zip.part"
    assert f"kept in {part}, a re-run continues" in str(info.value)
    # nothing extracted, no archive: only the unverified .part, which holds what arrived
    assert sorted(p.name for p in root.iterdir()) == [part.name]
    assert part.read_bytes() == GOOD[: len(GOOD) // 2]


def test_a_rerun_resumes_a_cut_transfer_with_range(server, tmp_path):
    root = tmp_path / "data"
    Handler.ranges.clear()
    with pytest.raises(GcnnError, match="transfer cut short"):
        get(root, f"{server}/flaky.zip")
    path = get(root, f"{server}/flaky.zip")  # the re-run asks for the missing half only
    assert Handler.ranges == [None, f"bytes={len(GOOD) // 2}-"]
    for split, text in SPLITS_TEXT.items():
        assert (path / f"wiki.{split}.tokens").read_text() == text
    assert sorted(p.name for p in root.iterdir()) == ["wikitext-2"]


def test_a_leftover_part_file_is_not_trusted(server, tmp_path):
    """A .part of something else: continued with Range, its MD5 fails, so it is fetched again
    from zero; a server without Range support just sends the whole file again."""
    Handler.ranges.clear()
    for url in (f"{server}/ranged.zip", f"{server}/wikitext-2-v1.zip"):
        root = tmp_path / url.rsplit("/", 1)[1]
        root.mkdir()
        (root / "wikitext-2-v1.zip.part").write_bytes(b"garbage from another download")
        path = get(root, url)
        assert (path / "wiki.test.tokens").read_text() == SPLITS_TEXT["test"]
        assert sorted(p.name for p in root.iterdir()) == ["wikitext-2"]
    assert Handler.ranges == ["bytes=29-", None]  # continued, failed the MD5, restarted
    # A .part as long as the archive but wrong: the server answers 416, the download restarts.
    root = tmp_path / "long"
    root.mkdir()
    (root / "wikitext-2-v1.zip.part").write_bytes(b"x" * len(GOOD))
    assert (get(root, f"{server}/ranged.zip") / "wiki.valid.tokens").exists()


def test_falls_back_to_the_next_mirror(server, tmp_path):
    root = tmp_path / "data"
    urls = [closed_port_url(), f"{server}/missing.zip", f"{server}/dies.zip"]
    path = get(root, *urls, f"{server}/wikitext-2-v1.zip")
    assert (path / "wiki.valid.tokens").read_text() == SPLITS_TEXT["valid"]


def test_no_network_is_a_one_line_error(tmp_path, capsys):
    root = tmp_path / "data"
    argv = ["download", "wikitext-2", "--root", str(root), "--url", closed_port_url()]
    assert run_cli(lambda: main(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: could not download wikitext-2-v1.zip") and "cannot connect" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert_nothing_left(root)


def test_an_archive_that_is_not_a_zip(server, tmp_path):
    root = tmp_path / "data"
    bad_md5 = hashlib.md5(b"this is not a zip file").hexdigest()
    with pytest.raises(GcnnError, match="not a valid zip"):
        get(root, f"{server}/notzip", md5=bad_md5)
    assert_nothing_left(root)


def test_named_corpus_downloads_on_first_use(server, tmp_path, monkeypatch):
    import gcnn.data.download as download_module

    monkeypatch.setenv("GCNN_DATA", str(tmp_path / "data"))
    monkeypatch.setitem(
        download_module.ARCHIVES,
        "wikitext-2",
        {**download_module.ARCHIVES["wikitext-2"], "urls": [f"{server}/wikitext-2-v1.zip"]},
    )
    monkeypatch.setattr(download_module, "USER_AGENT", "test")
    with pytest.raises(GcnnError, match="MD5"):  # the official checksum guards the default
        prepare_corpus("wikitext-2", download=True)
    download_module.ARCHIVES["wikitext-2"]["md5"] = GOOD_MD5
    corpus = prepare_corpus("wikitext-2", download=True)
    assert corpus.directory == tmp_path / "data" / "wikitext-2"


def test_full_disk_while_downloading_removes_the_part_file(server, tmp_path, monkeypatch, capsys):
    import gcnn.data.download as download_module

    root = tmp_path / "data"
    monkeypatch.setattr(download_module, "CHUNK", 64)  # several writes: a real partial file
    full_disk = failing_open(errno.ENOSPC, room=200)
    monkeypatch.setattr(download_module, "open", full_disk, raising=False)
    argv = ["download", "wikitext-2", "--root", str(root), "--md5", GOOD_MD5]
    assert run_cli(lambda: main([*argv, "--url", f"{server}/wikitext-2-v1.zip"])) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # after the progress bar
    part = root / "wikitext-2-v1.zip.part"
    assert err == (
        f"error: cannot write download {part}: no space left on device; free some space or "
        "choose a directory on another disk; the partial download was removed"
    )
    assert_nothing_left(root)


def test_full_disk_while_extracting_keeps_the_verified_archive(server, tmp_path, monkeypatch):
    import gcnn.data.download as download_module

    root = tmp_path / "data"
    full_disk = failing_open(errno.ENOSPC, lambda name: name.startswith("wiki."))
    monkeypatch.setattr(download_module, "open", full_disk, raising=False)
    with pytest.raises(GcnnError) as info:
        get(root, f"{server}/wikitext-2-v1.zip")
    archive = root / "wikitext-2-v1.zip"
    assert str(info.value) == (
        f"cannot write corpus {root / 'wikitext-2'}: no space left on device; free some space or "
        f"choose a directory on another disk; the verified archive {archive} is kept: a re-run "
        "extracts it without downloading again"
    )
    assert sorted(p.name for p in root.iterdir()) == [archive.name]  # no half corpus
    monkeypatch.undo()
    path = get(root, closed_port_url())  # no network needed any more
    assert (path / "wiki.train.tokens").read_text() == SPLITS_TEXT["train"]
