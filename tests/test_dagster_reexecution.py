"""Runs that die, and runs spread over processes: re-execution from failure after a SIGKILL at several
points, re-staging when an import's staging is gone, and the multiprocess executor giving exactly the
in-process result. A real Dagster instance (persistent, on disk: shared with subprocesses), a real
PostgreSQL (the session's server), the graph of the small faults manifest (``tests/fault_helpers.py``)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from backup_assets.core.restore import Restore
from backup_assets.partitions import backups_partitions, partition_key_for_file
from backup_assets.resources.settings import ImportSettingsResource
from backup_assets.run import failure_message
from backup_assets.translator import RESTORE_COMPLETE_KEY
from tests.fault_helpers import (
    active_query,
    assert_exact,
    fingerprints,
    manifest,
    materialize,
    restore_job,
    restore_job_multiprocess,
    set_job_env,
    spawn_run,
    wait_for,
    write_backup,
)
from tests.instances import instance_for_test

NOTE = dg.AssetKey(["faults", "note"])
ITEM = dg.AssetKey(["faults", "item"])


@pytest.fixture
def home(tmp_path) -> Path:
    path = tmp_path / "dagster_home"
    path.mkdir()
    return path


@pytest.fixture
def instance(home):
    with instance_for_test(temp_dir=str(home)) as inst:
        yield inst


@pytest.fixture
def job_env(monkeypatch, pg_dsn, tmp_path, home):
    """The environment the module-level job factory reads (in this process and in subprocesses)."""
    folder = tmp_path / "backups"
    folder.mkdir()
    set_job_env(monkeypatch, pg_dsn, folder, home)
    return folder


def _backup(folder: Path, instance: dg.DagsterInstance, items: int) -> tuple[dict[str, int], str]:
    path = folder / "nightly.json"
    expected = write_backup(path, orgs=3, items=items, tags=300, notes=7)
    key = partition_key_for_file(path)
    instance.add_dynamic_partitions(backups_partitions.name, [key])
    return expected, key


def _materialized(result, key: dg.AssetKey) -> dict:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == key]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_a_model_of_a_cleaned_up_import_stages_the_backup_again(job_env, pg_dsn, instance):
    """A subset run of a model whose import's staging was dropped (failed run cleaned, then finished)."""
    expected, key = _backup(job_env, instance, items=500)
    rest = dg.AssetSelection.all() - dg.AssetSelection.assets(NOTE, RESTORE_COMPLETE_KEY)
    first = materialize(instance, key, pg_dsn, job_env, selection=rest)
    assert first.success, failure_message(first)
    restore = Restore(pg_dsn, manifest(), key, ImportSettingsResource(create_schema=True).to_settings())
    restore.discard_staging()  # what a cleaned-up failure leaves: loads recorded, no staged rows
    assert not restore.is_staged()

    note = materialize(instance, key, pg_dsn, job_env, selection=[NOTE])
    assert note.success, failure_message(note)
    md = _materialized(note, NOTE)
    assert md["restaged"] is True and md["rows_written"] == expected["faults.note"]
    assert restore.is_staged()  # kept until restore_complete

    done = materialize(instance, key, pg_dsn, job_env, selection=[RESTORE_COMPLETE_KEY])
    assert done.success, failure_message(done)
    assert_exact(pg_dsn, expected, key)

    # the partition is finished and its staging dropped: a backfill of loaded models re-stages nothing
    again = materialize(instance, key, pg_dsn, job_env, selection=[ITEM, NOTE])
    assert again.success, failure_message(again)
    assert {(_materialized(again, k)["restaged"], _materialized(again, k)["already_loaded"]) for k in (ITEM, NOTE)} == {
        (False, True)
    }
    assert not restore.is_staged()
    assert_exact(pg_dsn, expected, key)


def _item_insert(dbname: str, admin: str):
    return lambda: active_query(admin, dbname, "%INSERT INTO%faults_item%")


def _parsing(dbname: str, admin: str):
    return lambda: active_query(admin, dbname, "COPY%stage\\_%")


def _org_committed(dbname: str, admin: str):
    def check() -> bool:
        with psycopg.connect(admin.rsplit("/", 1)[0] + "/" + dbname, autocommit=True) as conn:
            if not conn.execute("SELECT to_regclass('backup_assets.load_record')").fetchone()[0]:
                return False
            return bool(
                conn.execute("SELECT 1 FROM backup_assets.load_record WHERE model = 'sentry.organization'").fetchone()
            )

    return check


@pytest.mark.parametrize(
    "moment,items",
    [
        ("during parse", 150_000),
        ("in the middle of a model load", 150_000),
        ("between models (a model committed, the next not)", 60_000),
    ],
)
def test_a_run_killed_is_re_executed_from_failure_to_exact_counts(
    moment, items, job_env, pg_server, pg_dsn, instance, home
):
    """The run process SIGKILLed (during parse, in a model load, between models), then re-executed from failure."""
    expected, key = _backup(job_env, instance, items=items)
    dbname, admin = pg_dsn.rsplit("/", 1)[1], pg_server.dsn("postgres")
    moment_reached = {"during parse": _parsing, "in the middle of a model load": _item_insert}.get(
        moment, _org_committed
    )(dbname, admin)
    child = spawn_run(key)
    try:
        wait_for(moment_reached, 180, moment)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    [run] = instance.get_runs()
    assert run.status == dg.DagsterRunStatus.STARTED  # nobody told the instance: the process just vanished
    instance.report_run_failed(run)

    # execute_job does not carry the parent's partition tag over: it is given again
    result = dg.execute_job(
        dg.reconstructable(restore_job),
        instance,
        tags={"dagster/partition": key},
        reexecution_options=dg.ReexecutionOptions.from_failure(run.run_id, instance),
    )
    assert result.success
    assert_exact(pg_dsn, expected, key)
    item = _materialized(result, ITEM)
    assert item["rows_written"] == expected["faults.item"] and item["already_loaded"] is False
    assert all(e.passed for e in result.get_asset_check_evaluations())
    if moment != "during parse":
        assert "sentry_backup__parsed_export" not in {e.step_key for e in result.all_events if e.step_key}


def test_the_multiprocess_executor_gives_exactly_the_in_process_result(job_env, pg_server, pg_dsn, instance):
    """Every step in its own process: the same rows per table as one in-process run."""
    expected, key = _backup(job_env, instance, items=3_000)
    result = dg.execute_job(dg.reconstructable(restore_job_multiprocess), instance, tags={"dagster/partition": key})
    assert result.success
    pids = {e.pid for e in result.all_events if e.step_key and e.event_type_value == "STEP_START"}
    assert len(pids) == 6 and os.getpid() not in pids  # 5 stages + the models' step, a process each
    assert_exact(pg_dsn, expected, key)

    other = pg_dsn + "_inproc"
    from backup_assets.core.postgres import ensure_database

    ensure_database(admin := pg_server.dsn("postgres"), other.rsplit("/", 1)[1])
    try:
        inproc = materialize(instance, key, other, job_env)
        assert inproc.success, failure_message(inproc)
        assert fingerprints(pg_dsn) == fingerprints(other)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{other.rsplit("/", 1)[1]}" WITH (FORCE)')
