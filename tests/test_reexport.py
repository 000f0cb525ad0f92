"""The round trip's re-export in a child process: the same rows and errors as in-process, and no child left."""

from __future__ import annotations

import psutil
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from backup_assets.core.errors import ConfigurationError, TargetError
from backup_assets.core.manifest import Manifest
from backup_assets.core.reexport import FRAME_ROWS, ReexportRequest, reexport_rows
from backup_assets.core.restore import run_restore
from backup_assets.core.roundtrip import reexported, verify_round_trip
from backup_assets.core.settings import ImportSettings
from backup_assets.core.source import open_backup
from backup_assets.demo import synthetic

BUILTIN = Manifest.builtin()


@pytest.fixture
def restored(pg_dsn, tmp_path):
    path = tmp_path / "src.json"
    synthetic.write_export(path, synthetic.generate_rows(orgs=3, users=6, seed=21, scale=10))
    backup = open_backup(path)
    return backup, run_restore(pg_dsn, backup, BUILTIN, ImportSettings(create_schema=True)).import_id


def test_the_child_yields_the_rows_of_the_in_process_re_export(pg_dsn, restored):
    _, import_id = restored
    reset = {"sentry.user": frozenset({"is_staff"})}
    request = ReexportRequest(pg_dsn, BUILTIN, "global", import_id, reset)
    rows = list(reexport_rows(request))
    assert len(rows) > 2 * FRAME_ROWS  # several frames
    assert rows == list(reexported(request))
    assert all("is_staff" not in r["fields"] for r in rows if r["model"] == "sentry.user")


def test_an_error_in_the_child_is_raised_as_in_process(pg_dsn, restored):
    _, import_id = restored
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE sentry_project ADD COLUMN weight numeric DEFAULT 'NaN'")
    request = ReexportRequest(pg_dsn, BUILTIN, "global", import_id, {})
    with pytest.raises(TargetError) as in_process:
        list(reexported(request))
    with pytest.raises(TargetError) as child:
        list(reexport_rows(request))
    assert "sentry.project pk" in str(child.value) and "'weight'" in str(child.value)
    assert str(child.value) == str(in_process.value)
    bad = ReexportRequest(make_conninfo(pg_dsn, port=1), BUILTIN, "global", import_id, {})
    with pytest.raises(ConfigurationError, match="cannot connect to the target database"):
        list(reexport_rows(bad))


def test_closing_the_rows_early_ends_the_child(pg_dsn, restored):
    """Other tests of the session may leave helpers of their own running (a resource tracker, say): only
    the child this re-export starts counts."""
    _, import_id = restored
    before = {p.pid for p in psutil.Process().children()}
    rows = reexport_rows(ReexportRequest(pg_dsn, BUILTIN, "global", import_id, {}))
    next(rows)
    [child] = [p for p in psutil.Process().children() if p.pid not in before]
    rows.close()
    assert child.pid not in {p.pid for p in psutil.Process().children()}  # ended and reaped


def test_findings_do_not_depend_on_where_the_re_export_runs(pg_dsn, restored):
    backup, import_id = restored
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE sentry_project SET name = 'Renamed' WHERE id = (SELECT min(id) FROM sentry_project)")
        conn.execute("DELETE FROM sentry_projectkey WHERE id = (SELECT max(id) FROM sentry_projectkey)")
    here = verify_round_trip(pg_dsn, backup, BUILTIN, import_id, separate_process=False)
    there = verify_round_trip(pg_dsn, backup, BUILTIN, import_id)
    assert [(f.kind.name, f.on.model) for f in there] == [("UnequalCounts", "sentry.projectkey")]
    assert there == here
