"""The restore drill schedule: picks the newest backup, restores it into the standby with global replace,
and fails visibly when a check fails. Real instance, real PostgreSQL, generated backups."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from backup_assets.assets import build_restore_graph
from backup_assets.core.manifest import Manifest
from backup_assets.demo.synthetic import count_rows, generate_rows, write_export
from backup_assets.partitions import backups_partitions, partition_key_for_file
from backup_assets.resources.backup_source import BackupSourceResource
from backup_assets.resources.decryptor import DecryptorResource
from backup_assets.resources.postgres import PostgresTargetResource
from backup_assets.resources.settings import ImportSettingsResource
from backup_assets.resources.staging import StagingResource
from backup_assets.run import BACKUP_TAG, TARGET_TAG, failure_message
from backup_assets.schedules import (
    CRON_ENV,
    DEFAULT_CRON,
    DRILL_JOB_NAME,
    DRILL_TAG,
    STANDBY_DSN_ENV,
    build_restore_drill_schedule,
    drill_job,
)
from tests.instances import instance_for_test

MODELS = ("sentry.organization", "sentry.user", "sentry.organizationmember")
SMALL = dict(orgs=2, users=3, members_per_org=2)


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return Manifest.builtin().restrict(MODELS)


@pytest.fixture
def instance():
    with instance_for_test() as inst:
        yield inst


def backup(
    folder: Path,
    name: str,
    mtime: int,
    *,
    seed: int = 0,
    drop_model: str | None = None,
    models: tuple[str, ...] = MODELS,
) -> Path:
    """A generated export of ``models`` (those of the test manifest: a drill is strict, refusing rows of
    models its manifest does not know); ``drop_model`` leaves that model's rows out (their children dangle)."""
    rows = (r for r in generate_rows(**SMALL, seed=seed) if r["model"] != drop_model and r["model"] in models)
    path = folder / name
    write_export(path, rows)
    os.utime(path, ns=(mtime * 10**9,) * 2)
    return path


def drill_defs(folder: Path, manifest: Manifest) -> dg.Definitions:
    return dg.Definitions(
        assets=build_restore_graph(manifest),
        jobs=[drill_job()],
        schedules=[build_restore_drill_schedule()],
        resources={
            "target": PostgresTargetResource(),
            "backup_source": BackupSourceResource(folder=str(folder)),
            "decryptor": DecryptorResource(),
            "staging": StagingResource(),
            "import_settings": ImportSettingsResource(),
        },
    )


def tick(defs: dg.Definitions, instance: dg.DagsterInstance, folder: Path) -> dg.RunRequest | dg.SkipReason:
    schedule = defs.resolve_schedule_def("restore_drill_schedule")
    ctx = dg.build_schedule_context(
        instance=instance, resources={"backup_source": BackupSourceResource(folder=str(folder))}
    )
    return schedule(ctx)


def drill(defs: dg.Definitions, instance: dg.DagsterInstance, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
    """Run the drill job as the daemon would launch the schedule's request."""
    return defs.resolve_job_def(DRILL_JOB_NAME).execute_in_process(
        run_config=request.run_config,
        partition_key=request.partition_key,
        instance=instance,
        tags=request.tags,
        raise_on_error=False,
    )


def count(dsn: str, table: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]


def test_the_schedule_picks_the_newest_backup_and_adds_its_partition(tmp_path, instance, manifest, monkeypatch):
    monkeypatch.setenv(STANDBY_DSN_ENV, "host=standby.internal port=6432 dbname=sentry_standby password=secret")
    defs = drill_defs(tmp_path, manifest)
    skip = tick(defs, instance, tmp_path)
    assert isinstance(skip, dg.SkipReason) and "no backup" in skip.skip_message

    backup(tmp_path, "monday.json", 1_700_000_000, seed=1)
    newest = backup(tmp_path, "wednesday.json", 1_700_200_000, seed=3)
    backup(tmp_path, "tuesday.json", 1_700_100_000, seed=2)  # written last, but older by mtime
    request = tick(defs, instance, tmp_path)
    key = partition_key_for_file(newest)
    assert isinstance(request, dg.RunRequest)
    assert request.partition_key == key and request.run_key == f"drill:{key}"
    assert instance.get_dynamic_partitions(backups_partitions.name) == [key]
    assert request.tags == {
        DRILL_TAG: "true",
        BACKUP_TAG: "wednesday.json",
        TARGET_TAG: "standby.internal:6432/sentry_standby",
    }
    resources = request.run_config["resources"]
    assert resources["target"] == {"config": {"dsn": {"env": STANDBY_DSN_ENV}}}  # the DSN itself never in config
    assert resources["import_settings"]["config"] == {
        "scope": "global",
        "replace_existing": True,
        "create_schema": True,
        "strict": True,
    }
    assert request.run_config["ops"] == {"sentry_backup__restore_complete": {"config": {"fail_on_dropped_rows": True}}}
    assert "secret" not in repr(request.run_config)


def test_the_schedule_is_off_by_default_and_its_cron_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(CRON_ENV, raising=False)
    default = build_restore_drill_schedule()
    assert default.cron_schedule == DEFAULT_CRON and default.default_status == dg.DefaultScheduleStatus.STOPPED
    monkeypatch.setenv(CRON_ENV, "30 5 * * 1")
    assert build_restore_drill_schedule().cron_schedule == "30 5 * * 1"
    assert build_restore_drill_schedule("0 1 * * *").cron_schedule == "0 1 * * *"

    from backup_assets.definitions import defs

    assert defs.resolve_schedule_def("restore_drill_schedule").job_name == DRILL_JOB_NAME


def test_a_drill_replaces_the_standby_with_the_newest_backup_and_passes(
    tmp_path, instance, manifest, pg_dsn, monkeypatch
):
    monkeypatch.setenv(STANDBY_DSN_ENV, pg_dsn)
    defs = drill_defs(tmp_path, manifest)
    backup(tmp_path, "old.json", 1_700_000_000, seed=1)
    first = drill(defs, instance, tick(defs, instance, tmp_path))
    assert first.success, failure_message(first)

    backup(tmp_path, "new.json", 1_700_100_000, seed=2)
    second = drill(defs, instance, tick(defs, instance, tmp_path))
    assert second.success, failure_message(second)
    # global replace: the standby holds exactly the newest backup, not both
    expected = count_rows(**SMALL, seed=2)
    for model in MODELS:
        assert count(pg_dsn, manifest[model].table_name) == expected[model], model
    evaluations = second.get_asset_check_evaluations()
    assert len(evaluations) == 4 * len(MODELS) + 1 and all(e.passed for e in evaluations)  # + parsed_export's


def test_a_drill_over_a_broken_backup_fails_the_run_naming_the_failed_checks(
    tmp_path, instance, manifest, pg_dsn, monkeypatch
):
    monkeypatch.setenv(STANDBY_DSN_ENV, pg_dsn)
    defs = drill_defs(tmp_path, manifest)
    backup(tmp_path, "broken.json", 1_700_000_000, drop_model="sentry.organization")  # members lose their org
    result = drill(defs, instance, tick(defs, instance, tmp_path))
    assert not result.success
    failed = [
        (e.asset_key.to_user_string(), e.check_name)
        for e in result.get_asset_check_evaluations()
        if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR
    ]
    assert ("sentry/organizationmember", "no_rows_dropped") in failed
    message = failure_message(result)
    assert message.startswith("sentry_backup__restore_complete:")
    assert "sentry.organizationmember" in message and "no_rows_dropped" in message
    assert count(pg_dsn, "sentry_organizationmember") == 0


def test_a_drill_over_a_backup_with_models_the_manifest_lacks_fails_before_writing(
    tmp_path, instance, manifest, pg_dsn, monkeypatch
):
    monkeypatch.setenv(STANDBY_DSN_ENV, pg_dsn)
    defs = drill_defs(tmp_path, manifest)
    backup(tmp_path, "wider.json", 1_700_000_000, models=(*MODELS, "sentry.team"))
    result = drill(defs, instance, tick(defs, instance, tmp_path))
    assert not result.success
    message = failure_message(result)
    assert message.startswith("sentry_backup__parsed_export:")
    assert f"sentry.team ({count_rows(**SMALL)['sentry.team']} rows)" in message
    with psycopg.connect(pg_dsn) as conn:  # nothing was written
        assert conn.execute("SELECT to_regclass('public.sentry_organization')").fetchone()[0] is None


def test_a_drill_made_lenient_still_fails_at_the_end_naming_the_unknown_models(
    tmp_path, instance, manifest, pg_dsn, monkeypatch
):
    monkeypatch.setenv(STANDBY_DSN_ENV, pg_dsn)
    defs = drill_defs(tmp_path, manifest)
    backup(tmp_path, "wider.json", 1_700_000_000, models=(*MODELS, "sentry.team"))
    request = tick(defs, instance, tmp_path)
    request.run_config["resources"]["import_settings"]["config"]["strict"] = False  # skip them, then judge
    result = drill(defs, instance, request)
    assert not result.success
    message = failure_message(result)
    assert message.startswith("sentry_backup__restore_complete:")
    assert "no_unknown_models: sentry.team" in message
    assert count(pg_dsn, "sentry_organization") == count_rows(**SMALL)["sentry.organization"]  # the rest loaded
