"""The round-trip verification asset and the rollback job, against a real instance and a real PostgreSQL."""

from __future__ import annotations

import dagster as dg
import psycopg
import pytest

from backup_assets.assets import build_restore_graph
from backup_assets.core.manifest import Manifest
from backup_assets.core.settings import ImportSettings
from backup_assets.definitions import build_definitions, default_resources
from backup_assets.demo.synthetic import generate_rows, write_export
from backup_assets.partitions import backups_partitions
from backup_assets.resources.backup_source import BackupSourceResource
from backup_assets.resources.decryptor import DecryptorResource
from backup_assets.resources.postgres import PostgresTargetResource
from backup_assets.resources.settings import ImportSettingsResource
from backup_assets.resources.staging import StagingResource
from backup_assets.run import materialize_restore
from backup_assets.translator import RESTORE_COMPLETE_KEY
from backup_assets.verification import build_rollback_job, build_round_trip_asset, build_round_trip_check
from tests.instances import instance_for_test

MANIFEST = Manifest.builtin()
KEY = "verify-me-0123abcd"


@pytest.fixture
def restored(tmp_path, pg_dsn):
    """A generated plain backup restored (global, create mode) as partition KEY of a test instance."""
    path = tmp_path / "verify-me.json"
    write_export(path, generate_rows(pk_offset=500))
    with instance_for_test() as instance:
        result = materialize_restore(
            path, pg_dsn, ImportSettings(create_schema=True), manifest=MANIFEST, import_id=KEY, instance=instance
        )
        assert result.success
        yield instance, path


def verify(instance, path, dsn) -> dg.ExecuteInProcessResult:
    resources = {
        "backup_source": BackupSourceResource(folder=str(path.parent), glob=path.name, pinned={KEY: str(path)}),
        "decryptor": DecryptorResource(),
        "target": PostgresTargetResource(dsn=dsn),
    }
    return dg.materialize(
        [build_round_trip_asset(MANIFEST, backups_partitions)],
        instance=instance,
        partition_key=KEY,
        resources=resources,
    )


def test_a_clean_restore_round_trips_with_no_findings_and_a_change_is_found(restored, pg_dsn):
    instance, path = restored
    result = verify(instance, path, pg_dsn)
    [check] = result.get_asset_check_evaluations()
    [mat] = result.get_asset_materialization_events()
    assert mat.materialization.metadata["findings"].value == 0
    assert check.passed and check.check_name == "round_trip_clean"

    with psycopg.connect(pg_dsn) as conn:  # someone edits a restored row
        conn.execute(
            "UPDATE sentry_project SET name = name || ' (edited)' WHERE id = (SELECT min(id) FROM sentry_project)"
        )
    result = verify(instance, path, pg_dsn)
    [check] = result.get_asset_check_evaluations()
    [mat] = result.get_asset_materialization_events()
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert mat.materialization.metadata["findings"].value == 1
    assert mat.materialization.metadata["findings_by_kind"].value == {"UnequalJSON": 1}
    [finding] = mat.materialization.metadata["first_findings"].value
    assert finding["on"]["model"] == "sentry.project" and "(edited)" in finding["reason"]


def test_the_rollback_job_removes_the_import_and_twice_is_harmless(restored, pg_dsn):
    job = build_rollback_job(MANIFEST)
    with psycopg.connect(pg_dsn) as conn:
        before = conn.execute("SELECT count(*) FROM sentry_organization").fetchone()[0]
    assert before > 0
    for _ in range(2):
        result = job.execute_in_process(
            run_config={"ops": {"rollback_import": {"config": {"import_id": KEY}}}},
            resources={"target": PostgresTargetResource(dsn=pg_dsn)},
        )
        assert result.success
    with psycopg.connect(pg_dsn) as conn:
        for table in ("sentry_organization", "sentry_project", "auth_user", "sentry_projectkey"):
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM backup_assets.pk_map WHERE import_id = %s", (KEY,)).fetchone()[0] == 0


def verify_with_check(instance, path, dsn) -> dg.ExecuteInProcessResult:
    """``restore_complete`` again (it only sums up what the restore did) and, after it, the opt-in check."""
    resources = {
        "backup_source": BackupSourceResource(folder=str(path.parent), glob=path.name, pinned={KEY: str(path)}),
        "decryptor": DecryptorResource(),
        "target": PostgresTargetResource(dsn=dsn),
        "import_settings": ImportSettingsResource(create_schema=True),
        "staging": StagingResource(),
    }
    return dg.materialize(
        [*build_restore_graph(MANIFEST), build_round_trip_check(MANIFEST)],
        instance=instance,
        partition_key=KEY,
        resources=resources,
        selection=dg.AssetSelection.assets(RESTORE_COMPLETE_KEY),
    )


def test_the_opt_in_round_trip_check_of_the_restore_passes_then_fails_on_a_change(restored, pg_dsn):
    instance, path = restored
    checks = verify_with_check(instance, path, pg_dsn).get_asset_check_evaluations()
    [check] = [c for c in checks if c.check_name == "round_trip"]
    assert check.passed and check.check_name == "round_trip" and check.asset_key == RESTORE_COMPLETE_KEY
    assert check.metadata["findings"].value == 0
    with psycopg.connect(pg_dsn) as conn:
        conn.execute(
            "UPDATE sentry_project SET name = name || ' (edited)' WHERE id = (SELECT min(id) FROM sentry_project)"
        )
    checks = verify_with_check(instance, path, pg_dsn).get_asset_check_evaluations()
    [check] = [c for c in checks if c.check_name == "round_trip"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert check.metadata["findings_by_kind"].value == {"UnequalJSON": 1}


def test_the_round_trip_check_is_in_the_restore_job_only_when_asked_for():
    def ops(defs: dg.Definitions, job: str) -> set[str]:
        return {name for name in defs.get_repository_def().get_job(job).graph.node_dict if "round_trip" in name}

    default = build_definitions(MANIFEST, resources=default_resources())
    assert ops(default, "restore_backup_job") == set()
    assert ops(default, "restore_drill_job") == {"sentry_backup__round_trip"}  # the drill proves by default
    opted = build_definitions(MANIFEST, resources=default_resources(), round_trip_check=True)
    assert ops(opted, "restore_backup_job") == {"sentry_backup__restore_complete_round_trip"}
    assert ops(opted, "restore_drill_job") == {"sentry_backup__round_trip"}  # not twice
