"""``backup_assets.core.backup_key.file_sha256``: a process reads an unchanged backup once for its hash,
and never answers with the digest of bytes the file no longer holds."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from backup_assets.core import backup_key
from backup_assets.core.backup_key import file_sha256, partition_key, partition_key_for_file


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """Names of the files whose bytes were read for a digest (the real read runs; calls are counted)."""
    calls: list[str] = []
    real = backup_key._read_digest

    def counting(f, chunk):
        calls.append(Path(f.name).name)
        return real(f, chunk)

    monkeypatch.setattr(backup_key, "_read_digest", counting)
    monkeypatch.setattr(backup_key, "SETTLED_SECONDS", 0.05)
    return calls


def settled(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    time.sleep(0.1)  # older than SETTLED_SECONDS, as the fixture sets it
    return path


def test_an_unchanged_file_is_read_once_for_its_key_and_each_later_hash(tmp_path, reads):
    path = settled(tmp_path / "nightly.tar", b"backup bytes" * 1000)
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert partition_key_for_file(path) == partition_key("nightly.tar", expected)
    assert file_sha256(path) == file_sha256(str(path)) == expected
    assert reads == ["nightly.tar"]


def test_a_rewrite_of_the_same_size_and_mtime_is_read_again(tmp_path, reads):
    path = settled(tmp_path / "a.json", b"[1]")
    mtime = path.stat().st_mtime_ns
    assert file_sha256(path) == hashlib.sha256(b"[1]").hexdigest()
    with open(path, "r+b") as f:  # in place: same inode, same size, the mtime put back
        f.write(b"[2]")
    os.utime(path, ns=(mtime, mtime))
    assert file_sha256(path) == hashlib.sha256(b"[2]").hexdigest()  # the status-change time moved
    assert file_sha256(path) == hashlib.sha256(b"[2]").hexdigest()  # changed a moment ago: read again
    assert reads == ["a.json"] * 3


def test_a_file_that_grows_while_it_is_read_is_read_again_whole(tmp_path, reads, monkeypatch):
    path = settled(tmp_path / "growing.tar", b"x" * 100)

    def appending(f, chunk):
        reads.append(Path(f.name).name)
        digest = hashlib.sha256(f.read()).hexdigest()
        if len(reads) == 1:
            with open(path, "ab") as out:
                out.write(b"y")
        return digest

    monkeypatch.setattr(backup_key, "_read_digest", appending)
    file_sha256(path)
    time.sleep(0.1)
    assert file_sha256(path) == hashlib.sha256(b"x" * 100 + b"y").hexdigest()
    assert reads == ["growing.tar"] * 2
