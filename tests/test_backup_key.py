"""``backup_assets.core.backup_key.file_sha256``: a process reads an unchanged backup once for its hash,
and never answers with the digest of bytes the file no longer holds."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from backup_assets.cli import main
from backup_assets.core import backup_key
from backup_assets.core.backup_key import file_sha256, forget_digests, partition_key, partition_key_for_file
from backup_assets.demo.synthetic import generate_rows, write_export


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


def test_a_forgotten_digest_is_read_again_as_a_fresh_process_would(tmp_path, reads):
    path = settled(tmp_path / "nightly.tar", b"backup bytes")
    file_sha256(path)
    forget_digests()
    assert file_sha256(path) == hashlib.sha256(b"backup bytes").hexdigest()
    assert reads == ["nightly.tar", "nightly.tar"]


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


def test_the_cli_reads_a_settled_backup_once_for_its_key_and_the_runs_check(pg_dsn, tmp_path, reads, monkeypatch):
    """``backup-assets import`` names the import after the backup's key, hashed while Dagster is imported;
    the run's ``backup_file`` step checks the key against the same, remembered, digest."""
    monkeypatch.chdir(tmp_path)  # an ephemeral instance: no home in the working directory
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    src = tmp_path / "nightly.json"
    write_export(src, generate_rows(orgs=1, users=2, members_per_org=1, seed=3))
    time.sleep(0.1)
    run = CliRunner().invoke(
        main, ["import", "global", str(src), "--dsn", pg_dsn, "--create-schema", "--no-prompt", "--silent"]
    )
    assert run.exit_code == 0, run.output
    assert reads == ["nightly.json"]
    with psycopg.connect(pg_dsn) as conn:
        [(import_id,)] = conn.execute("SELECT import_id FROM backup_assets.import").fetchall()
    key = partition_key("nightly.json", hashlib.sha256(src.read_bytes()).hexdigest())
    assert import_id.startswith(f"{key}-") and len(import_id) == len(key) + 9
