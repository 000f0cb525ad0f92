"""Round-trip verification against a real PostgreSQL: restore, re-export what the import wrote, compare."""

from __future__ import annotations

import psycopg
import pytest

from backup_assets.core import keys
from backup_assets.core.decryptors import PemDecryptor, PemEncryptor
from backup_assets.core.errors import TargetError
from backup_assets.core.manifest import Manifest
from backup_assets.core.restore import run_restore
from backup_assets.core.roundtrip import canonical_datetimes, relocatable_rows, reset_fields, verify_round_trip
from backup_assets.core.settings import ImportSettings
from backup_assets.core.source import encrypt_export, open_backup
from backup_assets.demo import synthetic

BUILTIN = Manifest.builtin()


def restore(dsn, path, decryptor=None, **settings):
    settings.setdefault("create_schema", True)
    backup = open_backup(path, decryptor)
    return backup, run_restore(dsn, backup, BUILTIN, ImportSettings(**settings))


def test_global_restore_into_an_empty_database_round_trips_exactly(pg_dsn, tmp_path):
    path = tmp_path / "src.json"
    # odd rows included: members whose inviter is not exported, datetimes without milliseconds
    synthetic.write_export(path, synthetic.generate_rows(orgs=3, users=6, seed=11), indent=2)
    backup, result = restore(pg_dsn, path)
    assert verify_round_trip(pg_dsn, backup, BUILTIN, result.import_id) == []


def test_round_trip_of_an_encrypted_backup(pg_dsn, tmp_path):
    private, public = keys.generate_key_pair()
    synthetic.write_export(tmp_path / "src.json", synthetic.generate_rows(orgs=1, users=3, seed=2))
    encrypt_export(tmp_path / "src.json", tmp_path / "src.tar", PemEncryptor(public))
    backup, result = restore(pg_dsn, tmp_path / "src.tar", PemDecryptor(private))
    assert verify_round_trip(pg_dsn, backup, BUILTIN, result.import_id) == []


def test_dropped_rows_and_unknown_models_are_not_expected_back(pg_dsn, tmp_path):
    rows = list(synthetic.generate_rows(orgs=1, users=2, seed=3))
    project = next(r for r in rows if r["model"] == "sentry.project")
    project["fields"]["organization"] = 999  # its parent is not in the export: dropped
    rows.insert(0, {"model": "sites.site", "pk": 1, "fields": {"domain": "example.com"}})
    synthetic.write_export(tmp_path / "src.json", rows)
    backup, result = restore(pg_dsn, tmp_path / "src.json")
    assert result.loads["sentry.project"].rows_dropped >= 1
    assert verify_round_trip(pg_dsn, backup, BUILTIN, result.import_id) == []


def test_changes_after_the_import_are_found(pg_dsn, tmp_path):
    synthetic.write_export(tmp_path / "src.json", synthetic.generate_rows(orgs=2, users=3, seed=4))
    backup, result = restore(pg_dsn, tmp_path / "src.json")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE sentry_organization SET name = 'Renamed' WHERE slug = 'acme'")
    changed = verify_round_trip(pg_dsn, backup, BUILTIN, result.import_id)
    assert [(f.kind.name, f.on.model) for f in changed] == [("UnequalJSON", "sentry.organization")]
    assert "Renamed" in changed[0].reason
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM sentry_environmentproject WHERE id = (SELECT max(id) FROM sentry_environmentproject)")
    missing = verify_round_trip(pg_dsn, backup, BUILTIN, result.import_id)
    assert ("UnequalCounts", "sentry.environmentproject") in [(f.kind.name, f.on.model) for f in missing]


def test_only_the_import_s_rows_are_compared(pg_dsn, tmp_path):
    synthetic.write_export(tmp_path / "a.json", synthetic.generate_rows(orgs=1, users=2, seed=5))
    org = next(r for r in synthetic.generate_rows(orgs=1) if r["model"] == "sentry.organization")
    org["fields"].update(slug="other", name="Other")
    synthetic.write_export(tmp_path / "b.json", [org])
    backup, result = restore(pg_dsn, tmp_path / "a.json", scope="organizations")
    _, other = restore(pg_dsn, tmp_path / "b.json", scope="organizations")
    assert verify_round_trip(pg_dsn, backup, BUILTIN, result.import_id) == []
    assert verify_round_trip(pg_dsn, open_backup(tmp_path / "b.json"), BUILTIN, other.import_id) == []


def test_unknown_import_is_an_error(pg_dsn, tmp_path):
    synthetic.write_export(tmp_path / "src.json", synthetic.generate_rows(orgs=1, users=1))
    with pytest.raises(TargetError, match="no import was ever recorded"):
        verify_round_trip(pg_dsn, open_backup(tmp_path / "src.json"), BUILTIN, "nope")
    restore(pg_dsn, tmp_path / "src.json")
    with pytest.raises(TargetError, match="import nope is not recorded"):
        verify_round_trip(pg_dsn, open_backup(tmp_path / "src.json"), BUILTIN, "nope")


def test_helpers():
    rows = [
        {"model": "sites.site", "pk": 1, "fields": {}},
        {"model": "Sentry.Option", "pk": 1, "fields": {}},
        {"model": "sentry.organization", "pk": 1, "fields": {}},
        "not a row",
    ]
    assert list(relocatable_rows(rows, BUILTIN, "config")) == rows[1:2] + rows[3:]
    dated = [
        {
            "model": "m",
            "pk": 1,
            "fields": {
                "a": "2023-06-22T00:00:00Z",
                "b": "2023-06-22T02:00:00.1234+02:00",
                "c": "2023-06-22",
                "d": "x 2023-06-22T00:00:00Z",
                "e": 5,
            },
        }
    ]
    assert list(canonical_datetimes(dated))[0]["fields"] == {
        "a": "2023-06-22T00:00:00.000Z",
        "b": "2023-06-22T00:00:00.123Z",
        "c": "2023-06-22",
        "d": "x 2023-06-22T00:00:00Z",
        "e": 5,
    }
    assert {"is_staff", "is_superuser", "password"} <= reset_fields(BUILTIN, ImportSettings(scope="organizations"))[
        "sentry.user"
    ]
    assert "sentry.user" not in reset_fields(BUILTIN, ImportSettings())
