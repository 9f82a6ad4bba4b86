"""gcnn.allocator: glibc told to keep large blocks, and left alone where it is not glibc's or the
user has set MALLOC_* themselves."""

from __future__ import annotations

import platform

import pytest

from gcnn import allocator


class FakeLibc:
    def __init__(self, answer=1):
        self.calls, self.answer = [], answer

        def mallopt(param, value):
            self.calls.append((param, value))
            return self.answer

        self.mallopt = mallopt


@pytest.fixture
def glibc(monkeypatch):
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    monkeypatch.setattr(platform, "libc_ver", lambda: ("glibc", "2.35"))
    for name in allocator.ENV:
        monkeypatch.delenv(name, raising=False)
    libc = FakeLibc()
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: libc)
    return libc


def test_sets_the_three_thresholds_on_glibc(glibc):
    assert "kept in the heap" in allocator.keep_large_blocks()
    assert dict(glibc.calls) == {
        allocator.M_MMAP_THRESHOLD: 32 * 2**20,  # glibc's maximum on 64-bit: no larger is taken
        allocator.M_TOP_PAD: allocator.TOP_PAD,
        allocator.M_TRIM_THRESHOLD: allocator.TRIM_THRESHOLD,
    }


def test_leaves_a_users_settings_and_other_libcs_alone(glibc, monkeypatch):
    monkeypatch.setenv("MALLOC_TOP_PAD_", "0")
    assert "MALLOC_* set" in allocator.keep_large_blocks() and not glibc.calls
    monkeypatch.delenv("MALLOC_TOP_PAD_")
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    assert "not glibc" in allocator.keep_large_blocks() and not glibc.calls


def test_says_so_when_mallopt_refuses(glibc):
    glibc.answer = 0
    assert "refused" in allocator.keep_large_blocks()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="needs glibc")
def test_the_real_mallopt_takes_them():
    assert "kept in the heap" in allocator.keep_large_blocks()
