"""Faults injected into real restores: a real Dagster instance, a real PostgreSQL, the asset graph of a
small manifest with one big model (``tests/fault_helpers.py``). Each test ends with exact counts, no
duplicates, no orphans (or a clear error with nothing committed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from backup_assets.core.postgres import EmbeddedPostgres, ensure_database
from backup_assets.partitions import backups_partitions, partition_key_for_file
from backup_assets.run import failure_message
from tests.fault_helpers import (
    active_query,
    assert_exact,
    materialize,
    set_job_env,
    spawn_run,
    step_events,
    table_counts,
    wait_for,
    write_backup,
)
from tests.instances import instance_for_test

BIG_ITEMS = 200_000
MODELS_STEP = "sentry_models"
PARSE_STEP = "sentry_backup__parsed_export"


@pytest.fixture(scope="module")
def own_server():
    """A PostgreSQL server of this module alone: it is restarted, crashed and given a full tablespace.

    Its data lives in a folder of its own under the system temp dir, not under pytest's: pytest makes
    its base folder private (mode 0700) at the start of every session, and the server runs as another
    user, who would then lose the way to its data directory when any other session starts."""
    root = Path(tempfile.mkdtemp(prefix="ba-faults-pg-"))
    server = EmbeddedPostgres(root / "data", durable=False)
    yield server.start()
    server.destroy()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def _server_up(own_server):
    """Each test starts with the module's server running, whatever the previous test did to it."""
    own_server.start()


@pytest.fixture(scope="module")
def big_backup(tmp_path_factory) -> tuple[Path, dict[str, int], str]:
    """One organization-scoped export with 200,000 rows in one model: long enough to be caught mid-load."""
    folder = tmp_path_factory.mktemp("big")
    path = folder / "big.json"
    expected = write_backup(path, orgs=3, items=BIG_ITEMS, tags=50, notes=5)
    return path, expected, partition_key_for_file(path)


@pytest.fixture
def instance():
    with instance_for_test() as inst:
        yield inst


def _partition(instance: dg.DagsterInstance, key: str) -> str:
    instance.add_dynamic_partitions(backups_partitions.name, [key])
    return key


def _in_thread(fn) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised by the test through the box
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def _joined(t: threading.Thread, box: dict, timeout: float = 240) -> dg.ExecuteInProcessResult:
    t.join(timeout)
    assert not t.is_alive(), "the run did not finish"
    if "error" in box:
        raise box["error"]
    return box["result"]


def test_postgres_restarted_mid_load_is_retried_to_exact_counts(own_server, big_backup, instance):
    """PostgreSQL restarted (pg_ctl restart) in the middle of a 200,000-row model load."""
    path, expected, key = big_backup
    ensure_database(own_server.dsn("postgres"), "restarted")
    dsn = own_server.dsn("restarted")
    _partition(instance, key)
    t, box = _in_thread(
        lambda: materialize(instance, key, dsn, path.parent, retry_policy=dg.RetryPolicy(max_retries=5, delay=1))
    )
    wait_for(
        lambda: active_query(own_server.dsn("postgres"), "restarted", "%INSERT INTO%faults_item%"),
        180,
        "the INSERT into faults_item",
    )
    own_server.restart()
    result = _joined(t, box)
    assert result.success, failure_message(result)
    # the load of faults.item was cut: retried inside the models' step, or (its retries spent while the
    # server was down) by the step's RetryPolicy
    assert _retry_messages(instance) or MODELS_STEP in step_events(result, "STEP_UP_FOR_RETRY")
    assert_exact(dsn, expected, key)
    assert all(e.passed for e in result.get_asset_check_evaluations())


@pytest.fixture
def small_tablespace(own_server):
    """A 3 MB tmpfs as the default tablespace of a new database of the module's server."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = Path(tempfile.mkdtemp(prefix="ba-full-disk-"))
    mount.chmod(0o755)  # the server runs as another user: it must reach the tablespace
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=755", "tmpfs", str(mount)]).returncode:
        mount.rmdir()
        pytest.skip("cannot mount a tmpfs here")
    admin = own_server.dsn("postgres")
    try:
        location = mount / "ts"
        location.mkdir()
        subprocess.run(["chown", "pgserver", str(location)], check=True)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE TABLESPACE small_disk LOCATION '{location}'")
            conn.execute("CREATE DATABASE full_disk")
            conn.execute("ALTER DATABASE full_disk SET default_tablespace = small_disk")
        yield own_server.dsn("full_disk")
    finally:
        try:
            _drop_full_disk(admin)
        except psycopg.OperationalError:
            # the server went down over the full tablespace (seen once in CI, at DROP DATABASE): start it
            # again while the tablespace is still mounted, then clean up, so later tests find it running
            own_server.start()
            _drop_full_disk(admin)
        subprocess.run(["umount", str(mount)], check=True)
        mount.rmdir()


def _drop_full_disk(admin: str) -> None:
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS full_disk WITH (FORCE)")
        conn.execute("DROP TABLESPACE IF EXISTS small_disk")


def test_staging_disk_full_fails_clearly_with_nothing_committed(small_tablespace, big_backup, instance):
    """The staging area's disk full (a 3 MB tmpfs tablespace) while parsing a 200,000-row export."""
    path, _expected, key = big_backup
    _partition(instance, key)
    result = materialize(instance, key, small_tablespace, path.parent)
    assert not result.success
    message = failure_message(result)
    assert message.startswith(PARSE_STEP + ": parse: the target database ran out of disk space"), message
    assert "No space left on device" in message and "nothing of this step was committed" in message
    assert step_events(result, "STEP_UP_FOR_RETRY") == []
    assert result.get_asset_materialization_events() == [] or all(
        e.asset_key.path[0] == "sentry_backup" for e in result.get_asset_materialization_events()
    )
    with psycopg.connect(small_tablespace) as conn:
        assert conn.execute("SELECT count(*) FROM backup_assets.import").fetchone()[0] == 0
        assert (
            conn.execute(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'backup_assets' AND tablename LIKE 'stage\\_%'"
            ).fetchone()[0]
            == 0
        )
        used = conn.execute("SELECT pg_tablespace_size('small_disk')").fetchone()[0]
    assert used < 1_000_000, f"{used} bytes left in the tablespace: the staged rows were not removed"
    assert table_counts(small_tablespace) == {}


def test_two_runs_of_the_same_import_at_once_write_nothing_twice(tmp_path, pg_dsn, monkeypatch):
    """Two runs of the same import (partition) at the same time, each in its own process."""
    home, folder = tmp_path / "dagster_home", tmp_path / "backups"
    home.mkdir()
    folder.mkdir()
    set_job_env(monkeypatch, pg_dsn, folder, home)
    expected = write_backup(folder / "twice.json", orgs=4, items=30_000, tags=400, notes=20)
    with instance_for_test(temp_dir=str(home)) as instance:
        key = _partition(instance, partition_key_for_file(folder / "twice.json"))
        runs = [spawn_run(key) for _ in range(2)]
        assert [p.wait(240) for p in runs] == [0, 0]
        assert [r.status for r in instance.get_runs()] == [dg.DagsterRunStatus.SUCCESS] * 2
        assert_exact(pg_dsn, expected, key)
        # each model was written by exactly one of the two runs; the other found its load record
        for model in expected:
            records = instance.fetch_materializations(dg.AssetKey(model.split(".")), limit=10).records
            assert len(records) == 2, model
            assert sorted(r.asset_materialization.metadata["already_loaded"].value for r in records) == [False, True], (
                model
            )


def test_lock_timeout_names_the_model_and_is_retried_until_the_lock_is_released(tmp_path, pg_server, pg_dsn, instance):
    """The target's lock_timeout hit while another session holds a lock on the model's table."""
    path = tmp_path / "locked.json"
    expected = write_backup(path, orgs=2, items=2_000, tags=10, notes=3)
    key = _partition(instance, partition_key_for_file(path))
    stages = dg.AssetSelection.assets(dg.AssetKey(["sentry", "organization"])).upstream()
    first = materialize(instance, key, pg_dsn, tmp_path, selection=stages)  # stages + organization; tables created
    assert first.success, failure_message(first)
    dbname = pg_dsn.rsplit("/", 1)[1]
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE \"{dbname}\" SET lock_timeout = '200ms'")
    holder = psycopg.connect(pg_dsn)
    try:
        holder.execute("LOCK TABLE faults_item IN ACCESS EXCLUSIVE MODE")
        t, box = _in_thread(
            lambda: materialize(instance, key, pg_dsn, tmp_path, retry_policy=dg.RetryPolicy(max_retries=6, delay=0.4))
        )
        # release once the load has been refused at least twice
        wait_for(lambda: len(_retry_messages(instance)) >= 2, 120, "two retries of the locked load", every=0.1)
    finally:
        holder.rollback()
        holder.close()
    result = _joined(t, box)
    assert result.success, failure_message(result)
    retried = _retry_messages(instance)
    assert retried and all(
        m.startswith("faults.item: transient database error, loaded again in 0.4s (retry ")
        and "LockNotAvailable: canceling statement due to lock timeout" in m
        for m in retried
    ), retried
    assert step_events(result, "STEP_UP_FOR_RETRY") == []  # retried per model, inside the step
    assert _materialized_attempt(result, "faults/item") == len(retried) + 1
    assert_exact(pg_dsn, expected, key)


def _retry_messages(instance: dg.DagsterInstance) -> list[str]:
    """The models' step's log lines of every retry of the item's load, over all runs."""
    return [
        e.message
        for run in instance.get_runs()
        for e in instance.all_logs(run.run_id)
        if e.message and e.message.startswith("faults.item: transient database error, loaded again")
    ]


def _materialized_attempt(result: dg.ExecuteInProcessResult, key: str) -> int:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == key]
    return event.materialization.metadata["attempt"].value


def test_a_server_crash_that_empties_the_unlogged_staging_restages_and_completes(own_server, tmp_path, instance):
    """PostgreSQL crashed (immediate stop) after the parse stage: the UNLOGGED staging comes back empty."""
    path = tmp_path / "crash.json"
    expected = write_backup(path, orgs=2, items=5_000, tags=20, notes=4)
    key = _partition(instance, partition_key_for_file(path))
    ensure_database(own_server.dsn("postgres"), "crashed")
    dsn = own_server.dsn("crashed")
    stages = dg.AssetSelection.assets(dg.AssetKey(["sentry", "organization"])).upstream()
    first = materialize(instance, key, dsn, tmp_path, selection=stages)
    assert first.success, failure_message(first)
    with psycopg.connect(dsn, autocommit=True) as conn:
        # This test server runs with synchronous_commit=off (durable=False): a crash could lose the last
        # commits, which a durable server never does. Flush them, so the crash loses only what a real
        # one loses: the UNLOGGED staging rows.
        conn.execute("CHECKPOINT")
    own_server.stop("immediate")
    dsn = own_server.start().dsn("crashed")  # the port may change
    with psycopg.connect(dsn) as conn:  # the table survived the crash, its rows did not
        assert (
            conn.execute(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'backup_assets' AND tablename LIKE 'stage\\_%'"
            ).fetchone()[0]
            == 1
        )
    rest = materialize(instance, key, dsn, tmp_path, selection=dg.AssetSelection.all() - stages)
    assert rest.success, failure_message(rest)
    restaged = [
        e.asset_key.to_user_string()
        for e in rest.get_asset_materialization_events()
        if e.materialization.metadata.get("restaged") and e.materialization.metadata["restaged"].value
    ]
    # one model found the rows gone and staged them again, once for the step; the others reuse them (the
    # first to look is item or note: the two load at once, as neither depends on the other)
    assert len(restaged) == 1 and restaged[0] in ("faults/item", "faults/note"), restaged
    assert_exact(dsn, expected, key)
