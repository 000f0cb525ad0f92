"""The malformed-backup corpus (tests/corpus.py) restored for real: each case fails with the project's error type,
a message naming the problem, nothing committed to the target and nothing left on disk."""

from __future__ import annotations

import base64
import json
import os
import re
import tarfile
import tempfile
import tracemalloc
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from backup_assets.cli import main
from backup_assets.core.decryptors import LocalFileDecryptor
from backup_assets.core.errors import BackupAssetsError, DecryptionError, ExportParseError
from backup_assets.core.postgres import ensure_database
from backup_assets.core.restore import Restore, run_restore
from backup_assets.core.settings import ImportSettings
from backup_assets.core.source import open_backup
from tests import corpus
from tests.corpus import MANIFEST, MARKER, Case, KeySet, Parts
from tests.crypto_helpers import tar_of

KEYS = KeySet.generate()
CASES = (
    corpus.tarball_cases(KEYS)
    + corpus.token_cases(KEYS)
    + corpus.key_cases(KEYS)
    + corpus.json_cases(KEYS, encrypted=False)
    + corpus.json_cases(KEYS, encrypted=True)
)
SETTINGS = ImportSettings(create_schema=True)


@pytest.fixture(scope="module")
def target(pg_server):
    """One database for the whole module: since no case may commit anything, every case finds it empty."""
    name = f"hostile_{os.getpid()}"
    ensure_database(pg_server.dsn("postgres"), name)
    yield pg_server.dsn(name)
    with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """TMPDIR (and Python's cached temp dir) pointed at an empty folder that must still be empty afterwards."""
    folder = tmp_path / "tmpdir"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    yield folder
    left = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
    assert left == [], f"temporary files left behind: {left[:20]}"


def committed(dsn: str) -> dict[str, object]:
    """What a restore may have left in the target: user tables, staging tables, import records."""
    with psycopg.connect(dsn) as conn:
        out: dict[str, object] = {
            "tables": [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")],
            "staging": [
                r[0]
                for r in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'backup_assets' AND tablename LIKE 'stage%'"
                )
            ],
        }
        for table in ("import", "pk_map", "load_record", "overwritten"):
            if conn.execute("SELECT to_regclass(%s)", (f"backup_assets.{table}",)).fetchone()[0]:
                out[table] = conn.execute(f"SELECT count(*) FROM backup_assets.{table}").fetchone()[0]
    return out


NOTHING = {"tables": [], "staging": []}


def assert_nothing_committed(dsn: str) -> None:
    left = committed(dsn)
    assert {k: v for k, v in left.items() if v} == {}, left


def restore_case(case: Case, dsn: str, folder: Path) -> BackupAssetsError:
    """Restore ``case`` from ``folder`` and return the error it raised, after the common assertions."""
    path, key = case.write(folder), case.key_file(folder)
    before = sorted(os.listdir(folder))
    with pytest.raises(BackupAssetsError) as e:
        run_restore(dsn, open_backup(path, LocalFileDecryptor(key) if key else None), MANIFEST, SETTINGS)
    assert isinstance(e.value, case.error), f"{type(e.value).__name__}: {e.value}"
    assert re.search(case.match, str(e.value), re.S), str(e.value)
    assert sorted(os.listdir(folder)) == before, "files left beside the backup"
    assert_nothing_committed(dsn)
    return e.value


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_corpus_fails_cleanly(case: Case, target: str, tmp_path: Path, private_tmp: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    error = restore_case(case, target, folder)
    message = str(error)
    assert len(message) < 2000
    for line in KEYS.private.decode().splitlines()[1:-1]:
        assert line not in message


def test_the_corpus_base_is_valid_so_each_case_differs_by_its_defect(pg_dsn, tmp_path, private_tmp) -> None:
    """The positive control: the backup every case is derived from restores, marker included."""
    path = tmp_path / "good.tar"
    path.write_bytes(Parts.encrypt(corpus.export_bytes(), KEYS).tar())
    (tmp_path / "key.pem").write_bytes(KEYS.private)
    result = run_restore(pg_dsn, open_backup(path, LocalFileDecryptor(tmp_path / "key.pem")), MANIFEST, SETTINGS)
    assert result.stage.rows == len(corpus.valid_rows())
    assert {m: r.rows_written for m, r in result.loads.items()} == {
        "c.user": 2,
        "c.org": 2,
        "c.project": 8,
        "c.member": 2,
    }
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM c_user WHERE username = %s", (MARKER,)).fetchone()[0] == 1
    assert committed(pg_dsn)["staging"] == []


def test_cutting_only_the_tar_padding_is_harmless(pg_dsn, tmp_path) -> None:
    """Bytes after the first end-of-archive block are padding: a copy that lost them still restores."""
    good = Parts.encrypt(corpus.export_bytes(), KEYS).tar()
    _name, offset, size = corpus._member_offsets(good)[-1]
    path = tmp_path / "b.tar"
    path.write_bytes(good[: offset + size + (-size % tarfile.BLOCKSIZE) + tarfile.BLOCKSIZE])
    (tmp_path / "key.pem").write_bytes(KEYS.private)
    result = run_restore(pg_dsn, open_backup(path, LocalFileDecryptor(tmp_path / "key.pem")), MANIFEST, SETTINGS)
    assert result.stage.rows == len(corpus.valid_rows())


CLI_CASES = [
    c
    for c in CASES
    if c.name
    in {
        "tar cut at byte 1024",
        "symlink export.json",
        "gzip-compressed tarball",
        "the other private key",
        "FK is a string (natural key) (encrypted)",
    }
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.name for c in CLI_CASES])
def test_the_cli_reports_one_line_and_commits_nothing(
    case: Case, target: str, tmp_path: Path, private_tmp: Path, monkeypatch
) -> None:
    # an instance of our own: Dagster's ephemeral one keeps an empty temporary folder until it is disposed of
    (tmp_path / "dagster_home").mkdir()
    (tmp_path / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    folder = tmp_path / "in"
    folder.mkdir()
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(corpus.MANIFEST_JSON))
    path, key = case.write(folder), case.key_file(folder)
    args = [
        "import",
        "global",
        str(path),
        "--dsn",
        target,
        "--no-prompt",
        "--create-schema",
        "--manifest",
        str(manifest),
        "--silent",
    ] + (["--decrypt-with", str(key)] if key else [])
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and result.output.strip().count("\n") == 0, result.output
    assert re.search(case.match, result.output), result.output
    assert_nothing_committed(target)
    assert sorted(os.listdir(folder)) == sorted(p.name for p in (path, key) if p)


def test_all_families_are_in_the_corpus() -> None:
    names = " | ".join(c.name for c in CASES)
    for family in (
        "tar cut",
        "token cut",
        "(version)",
        "(timestamp)",
        "(IV)",
        "(first ciphertext block)",
        "(last (padding) block)",
        "(MAC)",
        "other private key",
        "key.pub swapped",
        "extra member",
        "duplicate",
        "symlink",
        "directory",
        "8 GiB",
        "gzip-compressed tarball",
        "export.json is gzip",
        "not a PEM",
        "random bytes",
        "invalid UTF-8",
        "a JSON object",
        "a row that is",
        "pk is a string",
        "levels of [",
        "duplicate pk",
        "FK is a list",
        "FK is a string",
    ):
        assert family in names, family
    assert len(CASES) > 150


# --------------------------------------------------------------------------------------------- beyond the corpus


def test_huge_strings_restore_with_bounded_memory(pg_dsn, tmp_path, private_tmp) -> None:
    """A 24 MiB value is restored; a 4 MiB field name and a 4 MiB model name are skipped and reported. Python's
    memory peaks at a small multiple of the largest value: the rest of the export streams."""
    big, name = 24 << 20, 4 << 20
    rows = corpus.valid_rows() + [
        corpus.row("c.project", 999, organization=10, name="huge", notes="v" * big),
        corpus.row("c.project", 998, organization=10, name="long field", **{"f" * name: 1}),
        corpus.row("m" * name, 1, x=1),
    ]
    path = tmp_path / "huge.json"
    path.write_bytes(corpus.export_bytes(rows))
    del rows
    tracemalloc.start()
    try:
        result = run_restore(pg_dsn, open_backup(path), MANIFEST, SETTINGS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * big, f"peak {peak / 2**20:.0f} MiB for a {big >> 20} MiB value"
    assert result.loads["c.project"].rows_written == 10
    assert result.stage.unknown_models == {f"<unusual model name of {name} characters>": 1}
    assert len(result.loads["c.project"].skipped_fields) == 1
    assert len(result.loads["c.project"].skipped_fields[0]) < 1000  # reported, not echoed
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT length(notes) FROM c_project WHERE name = 'huge'").fetchone()[0] == big


def test_nesting_up_to_the_limit_is_restored_exactly(pg_dsn, tmp_path) -> None:
    deep: object = "bottom"
    for i in range(500):
        deep = [deep] if i % 2 else {"k": deep}
    rows = corpus.valid_rows() + [corpus.row("c.project", 999, organization=10, name="deep", options=deep)]
    path = tmp_path / "deep.json"
    path.write_bytes(json.dumps(rows).encode())
    run_restore(pg_dsn, open_backup(path), MANIFEST, SETTINGS)
    with psycopg.connect(pg_dsn) as conn:
        stored = conn.execute("SELECT options FROM c_project WHERE name = 'deep'").fetchone()[0]
    assert stored == deep


def test_a_tarball_rewritten_during_the_restore_commits_nothing(target, tmp_path, private_tmp) -> None:
    """The token is decrypted and authenticated in one pass; the file changes while rows stream into staging: the
    MAC of what was decrypted does not verify, the error comes at the end of the stream and the rows roll back."""
    plain = corpus.export_bytes(
        corpus.valid_rows()
        + [corpus.row("c.project", 900 + i, organization=10, name=f"bulk {i}", text="x" * 1000) for i in range(1500)]
    )
    plain += b" " * (-len(plain) % 16)  # a whole padding block: the unpadder holds it back until the end
    parts = Parts.encrypt(plain, KEYS)
    assert len(parts.token) > 2 << 20  # pass 2 reads it in several 1 MiB chunks
    path = tmp_path / "b.tar"
    path.write_bytes(parts.tar())
    (tmp_path / "key.pem").write_bytes(KEYS.private)
    offset = corpus._member_offsets(path.read_bytes())[0][1]
    raw = bytearray(base64.urlsafe_b64decode(parts.token))
    raw[-40] ^= 1  # inside the last ciphertext block (the padding block)
    tampered = base64.urlsafe_b64encode(bytes(raw))
    backup = open_backup(path, LocalFileDecryptor(tmp_path / "key.pem"))
    rewritten = []

    def rewrite_once(_bytes: int, _rows: int) -> None:
        if not rewritten:
            with open(path, "r+b") as f:
                f.seek(offset)
                f.write(tampered)
            rewritten.append(True)

    with pytest.raises(DecryptionError, match="HMAC verification failed"):
        run_restore(target, backup, MANIFEST, SETTINGS, progress=rewrite_once)
    assert rewritten
    assert_nothing_committed(target)


def _garbled(token: bytes, fernet_key: bytes) -> bytes:
    """What ``token`` decrypts to, its MAC ignored (what a one-pass reader releases before EOF)."""
    raw = base64.urlsafe_b64decode(token)
    key = base64.urlsafe_b64decode(fernet_key)[16:]
    padded = Cipher(algorithms.AES(key), modes.CBC(raw[9:25])).decryptor().update(raw[25:-32])
    return padded[: -padded[-1]]


def test_a_tampered_block_that_breaks_the_json_is_reported_as_a_bad_mac(target, tmp_path, private_tmp) -> None:
    """The restore's staging decrypts in one pass: a ciphertext byte flipped in the middle garbles a block of JSON,
    which the parser rejects before the MAC is checked at EOF; the user still gets the DecryptionError, the
    stream having been authenticated to its end, and nothing is staged."""
    plain = corpus.export_bytes(
        corpus.valid_rows()
        + [  # ~3 MB: the parse stages a MB or more before the garble
            corpus.row("c.project", 900 + i, organization=10, name=f"bulk {i}", text="x" * 100) for i in range(12_000)
        ]
    )
    parts = Parts.encrypt(plain, KEYS)
    raw = bytearray(base64.urlsafe_b64decode(parts.token))
    raw[len(raw) // 2] ^= 0x20  # a byte of the middle ciphertext block: its plaintext becomes 16 random bytes
    token = base64.urlsafe_b64encode(bytes(raw))
    garbled = _garbled(token, parts.fernet_key)
    assert len(garbled) == len(plain) and garbled != plain
    with pytest.raises(ValueError):
        json.loads(garbled)  # the plaintext is malformed JSON: the parser would say so
    path = tmp_path / "b.tar"
    path.write_bytes(tar_of([("export.json", token), ("data.key", parts.data_key), ("key.pub", parts.key_pub)]))
    (tmp_path / "key.pem").write_bytes(KEYS.private)
    backup = open_backup(path, LocalFileDecryptor(tmp_path / "key.pem"))
    parsed = []
    restore = Restore(target, MANIFEST, "tampered-mid-token", SETTINGS)
    with pytest.raises(DecryptionError, match="HMAC verification failed") as e:
        restore.stage(backup, progress=lambda done, rows: parsed.append(rows))
    assert parsed and e.value.__cause__ is None and e.value.__suppress_context__  # rows parsed: one pass
    assert not restore.is_staged()
    assert_nothing_committed(target)
    with pytest.raises(DecryptionError, match="HMAC verification failed"):
        run_restore(target, backup, MANIFEST, SETTINGS)
    assert_nothing_committed(target)


def test_a_lone_surrogate_escape_is_rejected_not_altered(target, tmp_path) -> None:
    text = corpus.export_bytes().replace(b'"acme"', b'"ac\\ud800me"')
    restore_case(Case("lone surrogate", text, ExportParseError, "surrogate|UTF"), target, tmp_path)
