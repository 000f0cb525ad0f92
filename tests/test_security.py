"""Security review as tests: after real Dagster runs of an encrypted generated backup (successful, wrong key,
tampered token), the private key, the data key, the target DSN's password and a known plaintext marker appear
nowhere but the target tables -- not in Dagster's event log or run storage (decompressed: job snapshots are zlib
blobs), the staging area, exception messages, or any file under the temp dirs -- and decrypted data never stays
on disk. The scanner's positive controls prove it sees through zlib, gzip and base64 and would have caught a
DSN given to Dagster as config. ``test_security_paths.py`` runs the same scan over the CLI, sensor, Component
and drill paths.
"""

from __future__ import annotations

import base64
import gzip
import io
import os
import secrets
import sqlite3
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from click.testing import CliRunner
from dagster._serdes import serialize_value

from backup_assets.cli import main
from backup_assets.core import keys
from backup_assets.core.decryptors import LocalFileDecryptor, PemDecryptor, PemEncryptor
from backup_assets.core.manifest import Manifest
from backup_assets.core.postgres import ensure_database, redacted_dsn
from backup_assets.core.settings import ImportSettings
from backup_assets.core.source import encrypt_export
from backup_assets.core.tarball import read_tarball
from backup_assets.demo.synthetic import generate_rows, write_export
from backup_assets.resources.postgres import PostgresTargetResource, target_resource
from backup_assets.run import failure_message, materialize_restore
from tests.instances import instance_for_test
from tests.secret_scan import scan_tree, secret_forms, sqlite_tables

MARKER = "zz-known-plaintext-4e9f2a61"  #: planted as a username: the known plaintext
SETTINGS = ImportSettings(create_schema=True)


def closure(manifest: Manifest, model: str) -> Manifest:
    todo, keep = [model], set()
    while todo:
        m = todo.pop()
        if m not in keep:
            keep.add(m)
            todo.extend(manifest[m].dependencies)
    return manifest.restrict(keep)


MANIFEST = closure(Manifest.builtin(), "sentry.organizationmember")


def planted_rows():
    for row in generate_rows(pk_offset=1000):
        if row["model"] == "sentry.user" and row["pk"] == 1001:
            row["fields"].update(username=MARKER, name=MARKER)
        yield row


def leaks(haystack: bytes, needles: dict[str, bytes]) -> list[str]:
    return [name for name, needle in needles.items() if needle in haystack]


@dataclass
class World:
    root: Path
    tmpdir: Path
    backup: Path
    key_file: Path
    other_key_file: Path
    private_pem: bytes
    other_pem: bytes
    data_key: bytes
    instance: dg.DagsterInstance
    target: str
    password: str  #: carried by ``target`` (the server trusts loopback, so any password connects)

    def needles(self, *, plaintext: bool = True) -> dict[str, bytes]:
        out = {
            **secret_forms(self.private_pem, self.data_key),
            **{
                f"other {k}": v
                for k, v in secret_forms(self.other_pem, self.data_key).items()
                if k.startswith("private")
            },
        }
        out["target DSN password"] = self.password.encode()
        if plaintext:
            out["known plaintext"] = MARKER.encode()
        return out

    def event_log(self, run_id: str) -> bytes:
        run = self.instance.get_run_by_id(run_id)
        texts = [serialize_value(e) for e in self.instance.all_logs(run_id)] + [serialize_value(run)]
        return "\n".join(texts).encode()

    def internal_state(self) -> bytes:
        """Every row of the project's own schema in the target, as JSON text."""
        with psycopg.connect(self.target) as conn:
            tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'backup_assets'")]
            assert not [t for t in tables if t.startswith("stage")], f"staging tables left: {tables}"
            return b"\n".join(
                str(r[0]).encode()
                for t in tables
                for r in conn.execute(f'SELECT row_to_json(t) FROM backup_assets."{t}" t')
            )

    def assert_nothing_leaked(self, run_id: str, *, plaintext_in_target: bool) -> None:
        needles = self.needles()
        log = self.event_log(run_id)
        assert b"sentry_backup__data_key" in log  # the scan reads the run's events...
        assert leaks(log, needles) == [], "in Dagster's event log or run record"
        assert {"snapshots", "runs", "event_logs"} <= sqlite_tables(self.root)  # ...the instance's SQLite tables
        assert scan_tree(self.root, needles, skip=frozenset({self.key_file, self.other_key_file})) == []
        assert leaks(self.internal_state(), needles) == [], "in schema backup_assets of the target"
        users = MANIFEST["sentry.user"].table_name
        with psycopg.connect(self.target) as conn:
            found = (
                conn.execute("SELECT to_regclass(%s) IS NOT NULL", (users,)).fetchone()[0]
                and conn.execute(f'SELECT count(*) FROM "{users}" WHERE username = %s', (MARKER,)).fetchone()[0]
            )
        assert bool(found) == plaintext_in_target  # the plaintext is where it belongs, or nowhere


@pytest.fixture(scope="module")
def world(tmp_path_factory, pg_server):
    root = tmp_path_factory.mktemp("security")
    tmpdir = root / "tmp"
    tmpdir.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TMPDIR", str(tmpdir))
        mp.setattr(tempfile, "tempdir", str(tmpdir))
        private_pem, public_pem = keys.generate_key_pair()
        other_pem, _ = keys.generate_key_pair()
        (root / "key.pem").write_bytes(private_pem)
        (root / "other.pem").write_bytes(other_pem)
        plain = io.BytesIO()
        write_export(plain, planted_rows())
        assert MARKER.encode() in plain.getvalue()
        plain.seek(0)
        backup = root / "backups" / "nightly.tar"
        backup.parent.mkdir()
        encrypt_export(plain, backup, PemEncryptor(public_pem))  # the plaintext never touches the disk
        del plain
        wrapped = read_tarball(backup).data_key
        data_key = keys.unwrap_data_key(keys.load_private_key(private_pem), wrapped)
        name = f"security_{os.getpid()}"
        ensure_database(pg_server.dsn("postgres"), name)
        (root / "dagster_home").mkdir()
        password = f"pw{secrets.token_hex(12)}"
        target = pg_server.dsn(name).replace("postgres@", f"postgres:{password}@", 1)
        with instance_for_test(temp_dir=str(root / "dagster_home")) as instance:
            yield World(
                root,
                tmpdir,
                backup,
                root / "key.pem",
                root / "other.pem",
                private_pem,
                other_pem,
                data_key,
                instance,
                target,
                password,
            )
    with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_the_scanner_finds_what_it_looks_for(world: World) -> None:
    """Positive control: each needle is found where it is, so an empty scan means something."""
    needles = world.needles()
    for name, needle in needles.items():
        assert leaks(b"..." + needle + b"...", needles)[:1] != [] and name in leaks(needle, needles)
    assert leaks(world.private_pem, needles)  # the key file is excluded from the scan, not invisible to it
    assert leaks(world.backup.read_bytes(), needles) == []  # the tarball holds neither key nor plaintext


def raw_leaks(root: Path, needles: dict[str, bytes]) -> list[str]:
    """The scan as it was before: the raw bytes of every file, nothing decompressed."""
    return [f"{name} in {p.name}" for p in root.rglob("*") if p.is_file() for name in leaks(p.read_bytes(), needles)]


def test_the_scanner_sees_through_zlib_gzip_and_base64(tmp_path: Path) -> None:
    """Positive control: a secret planted in a compressed SQLite value, a base64-wrapped one and a gzip file is
    found, with the wrapping named; the raw-bytes scan misses every one of them."""
    secret = f"planted-{secrets.token_hex(8)}".encode()
    needles = {"planted": secret}
    blob = b'{"config": {"dsn": "postgresql://u:' + secret + b'@h/db"}}' + os.urandom(64).hex().encode()
    db = tmp_path / "runs.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE snapshots (id INTEGER, snapshot_body BLOB, note TEXT)")
        conn.execute("INSERT INTO snapshots VALUES (1, ?, ?)", (zlib.compress(blob), "plain"))
        conn.execute(
            "INSERT INTO snapshots VALUES (2, ?, ?)",
            (b"x", '{"body": "' + base64.b64encode(zlib.compress(blob)).decode() + '"}'),
        )
        conn.execute(
            "INSERT INTO snapshots VALUES (3, NULL, ?)",  # glued to other letters: misaligned
            ("key" + base64.urlsafe_b64encode(gzip.compress(blob)).decode(),),
        )
    conn.close()
    (tmp_path / "compute.log.gz").write_bytes(gzip.compress(blob))
    found = scan_tree(tmp_path, needles)
    assert "planted in runs.db snapshots.snapshot_body row 0 [zlib]" in found
    assert "planted in runs.db snapshots.note row 1 [base64/zlib]" in found
    assert "planted in runs.db snapshots.note row 2 [base64/gzip]" in found
    assert "planted in compute.log.gz [gzip]" in found
    assert raw_leaks(tmp_path, needles) == []  # what the old scan saw


@dg.asset
def _needs_target(target: PostgresTargetResource) -> int:
    return len(target.dsn or "")


def test_the_scanner_catches_a_dsn_given_as_config_and_the_run_target_carries_none(tmp_path: Path) -> None:
    """Positive control: the target built the old way (``PostgresTargetResource(dsn=...)``, what the CLI did)
    puts the password into the zlib-compressed job snapshot, where the scan finds it and the raw scan did not;
    :func:`target_resource` (what in-process runs use now) leaves only ``user@host:port/db``."""
    password = f"pw{secrets.token_hex(12)}"
    dsn = f"postgresql://restorer:{password}@127.0.0.1:5999/sentry"
    needles = {"DSN password": password.encode()}
    for name, resource in (("old", PostgresTargetResource(dsn=dsn)), ("new", target_resource(dsn))):
        (tmp_path / name).mkdir()
        with instance_for_test(temp_dir=str(tmp_path / name)) as instance:
            result = dg.materialize([_needs_target], instance=instance, resources={"target": resource})
            assert result.success and result.output_for_node("_needs_target") == len(dsn)
    found = scan_tree(tmp_path / "old", needles)
    assert any(
        f.startswith("DSN password in history/runs.db snapshots.snapshot_body") and f.endswith("[zlib]") for f in found
    ), found
    assert raw_leaks(tmp_path / "old", needles) == []  # the leak the scan of raw bytes could not see
    assert scan_tree(tmp_path / "new", needles) == []
    assert scan_tree(tmp_path / "new", {"redacted target": b"restorer@127.0.0.1:5999/sentry"})


def _run(world: World, backup: Path, decryptor) -> dg.ExecuteInProcessResult:
    return materialize_restore(
        backup, world.target, SETTINGS, manifest=MANIFEST, decryptor=decryptor, instance=world.instance
    )


def test_a_wrong_key_run_leaks_nothing(world: World) -> None:
    result = _run(world, world.backup, LocalFileDecryptor(world.other_key_file))
    assert not result.success
    message = failure_message(result) or ""
    assert "key.pub does not match the private key" in message
    assert leaks(message.encode(), world.needles()) == []
    world.assert_nothing_leaked(result.run_id, plaintext_in_target=False)


def test_a_tampered_token_run_leaks_nothing(world: World) -> None:
    tampered = world.backup.with_name("tampered.tar")
    data = bytearray(world.backup.read_bytes())
    contents = read_tarball(world.backup)
    at = contents.export_offset + contents.export_size - 10  # inside the MAC's base64
    data[at] = ord("A") if data[at] != ord("A") else ord("B")
    tampered.write_bytes(data)
    # the key held by an environment-like secret this time
    result = _run(world, tampered, PemDecryptor(world.private_pem, source="the private key in $SECRET"))
    assert not result.success
    message = failure_message(result) or ""
    assert "HMAC verification failed" in message
    assert leaks(message.encode(), world.needles()) == []
    world.assert_nothing_leaked(result.run_id, plaintext_in_target=False)
    tampered.unlink()


def test_a_successful_run_leaks_nothing_outside_the_target_tables(world: World) -> None:
    result = _run(world, world.backup, LocalFileDecryptor(world.key_file))
    assert result.success, failure_message(result)
    world.assert_nothing_leaked(result.run_id, plaintext_in_target=True)
    assert sorted(p.name for p in world.backup.parent.iterdir()) == ["nightly.tar"]
    assert [p for p in world.tmpdir.rglob("*") if p.is_file()] == []


# --------------------------------------------------------------------------------------------- backup decrypt


@pytest.fixture
def decrypt_case(world: World, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(world.tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", str(world.tmpdir))
    out = tmp_path / "out"
    out.mkdir()
    return out


@pytest.mark.parametrize("where", ["MAC", "ciphertext", "last block"])
def test_backup_decrypt_with_a_bad_mac_leaves_no_plaintext_anywhere(
    world: World, decrypt_case: Path, where: str
) -> None:
    contents = read_tarball(world.backup)
    end = contents.export_offset + contents.export_size
    at = {"MAC": end - 5, "ciphertext": contents.export_offset + contents.export_size // 2, "last block": end - 60}
    data = bytearray(world.backup.read_bytes())
    data[at[where]] = ord("A") if data[at[where]] != ord("A") else ord("B")
    src = decrypt_case / "bad.tar"
    src.write_bytes(data)
    dest = decrypt_case / "export.json"
    result = CliRunner().invoke(
        main, ["backup", "decrypt", str(dest), "--src", str(src), "--decrypt-with", str(world.key_file)]
    )
    assert result.exit_code == 1 and "HMAC verification failed" in result.output, result.output
    assert leaks(result.output.encode(), world.needles()) == []
    assert sorted(p.name for p in decrypt_case.iterdir()) == ["bad.tar"]  # no DEST, no temp file beside it
    assert [p for p in world.tmpdir.rglob("*") if p.is_file()] == []


def test_backup_decrypt_success_writes_only_dest_private_to_its_owner(world: World, decrypt_case: Path) -> None:
    dest = decrypt_case / "export.json"
    result = CliRunner().invoke(
        main, ["backup", "decrypt", str(dest), "--src", str(world.backup), "--decrypt-with", str(world.key_file)]
    )
    assert result.exit_code == 0, result.output
    assert MARKER.encode() in dest.read_bytes()
    assert dest.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in decrypt_case.iterdir()] == ["export.json"]
    assert leaks(result.output.encode(), world.needles()) == []
    assert [p for p in world.tmpdir.rglob("*") if p.is_file()] == []
    dest.unlink()


@pytest.mark.parametrize(
    "dsn, shown",
    [
        ("postgresql://restorer:s3cr3t-pw@db.internal:6432/sentry", "restorer@db.internal:6432/sentry"),
        (
            "postgresql://restorer@db.internal/sentry?password=s3cr3t-pw&sslpassword=s3cr3t-pw",
            "restorer@db.internal:5432/sentry",
        ),
        (
            "host=db.internal port=6432 dbname=sentry user=restorer password=s3cr3t-pw",
            "restorer@db.internal:6432/sentry",
        ),
        ("dbname=sentry password='s3cr3t-pw'", "localhost:5432/sentry"),
        ("postgresql://restorer:s3cr3t-pw@[::1", "<unreadable DSN>"),
        (None, "embedded"),
    ],
)
def test_a_dsn_is_shown_without_its_password(dsn: str | None, shown: str) -> None:
    assert redacted_dsn(dsn) == shown
    description = target_resource(dsn).description or "" if dsn else ""
    assert "s3cr3t" not in description and (not dsn or shown in description)
