"""The event log ``dagster.yaml`` ships (``backup_assets.event_log``): Dagster's sqlite files, written
through connections kept open, and its batches in one transaction."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.events import DagsterEvent, DagsterEventType
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.in_memory import InMemoryEventLogStorage
from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

from backup_assets import event_log
from backup_assets.event_log import (
    OPEN_RUN_FILES,
    KeptOpenInMemoryEventLogStorage,
    KeptOpenSqliteEventLogStorage,
    ephemeral_instance,
)

REPO = Path(__file__).resolve().parent.parent


@dg.asset
def upstream() -> int:
    return 1


@dg.asset(check_specs=[dg.AssetCheckSpec("positive", asset="downstream")])
def downstream(upstream: int):
    yield dg.Output(upstream + 1)
    yield dg.AssetCheckResult(check_name="positive", passed=True)


def _home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    (home / "dagster.yaml").write_text(
        yaml.safe_dump({"telemetry": config["telemetry"], "event_log_storage": config["event_log_storage"]})
    )
    return home


def test_the_shipped_dagster_yaml_names_this_storage(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(_home(tmp_path)))
    with dg.DagsterInstance.get() as instance:
        assert type(instance.event_log_storage) is KeptOpenSqliteEventLogStorage
        assert Path(instance.event_log_storage._base_dir) == tmp_path / "home" / "storage"


def test_a_run_written_through_it_reads_back_in_dagsters_own_storage(tmp_path, monkeypatch):
    """Same files, same schema: Dagster's default storage, in another process, reads what this one wrote."""
    home = _home(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        result = dg.materialize([upstream, downstream], instance=instance)
        assert result.success
        written = [e.dagster_event_type for e in instance.all_logs(result.run_id) if e.is_dagster_event]
    reader = textwrap.dedent(f"""
        import json
        from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
        import dagster as dg
        storage = SqliteEventLogStorage({str(home / "storage")!r})
        logs = storage.get_logs_for_run({result.run_id!r})
        record = storage.get_latest_materialization_events([dg.AssetKey('downstream')])[dg.AssetKey('downstream')]
        checks = storage.get_asset_check_execution_history(dg.AssetCheckKey(dg.AssetKey('downstream'), 'positive'), 10)
        print(json.dumps({{"types": [e.dagster_event_type.value for e in logs if e.is_dagster_event],
                          "materialized_by": record.run_id, "checks": [c.status.value for c in checks]}}))
    """)
    out = subprocess.run([sys.executable, "-c", reader], capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout)
    assert seen["types"] == [t.value for t in written]
    assert DagsterEventType.ASSET_MATERIALIZATION_PLANNED.value in seen["types"]
    assert seen["materialized_by"] == result.run_id
    assert seen["checks"] == ["SUCCEEDED"]


def _planned(run_id: str, name: str) -> EventLogEntry:
    from dagster._core.events import AssetMaterializationPlannedData

    event = DagsterEvent.build_asset_materialization_planned_event(
        "job", "step", AssetMaterializationPlannedData(dg.AssetKey(name), partition=None)
    )
    return EventLogEntry(
        error_info=None,
        level="debug",
        user_message="",
        run_id=run_id,
        timestamp=1.0,
        dagster_event=event,
        job_name="job",
        step_key="step",
    )


class _FailsOnThird(KeptOpenSqliteEventLogStorage):
    """A disk that fails on the third event of a batch (fault injection, the files are real)."""

    def store_event(self, event: EventLogEntry) -> None:
        if self._batch is not None and len(self._batch_events) == 2:
            raise OSError("disk full")
        if self._batch is not None:
            self._batch_events.append(event)
        super().store_event(event)

    def store_event_batch(self, events):
        self._batch_events: list[EventLogEntry] = []
        super().store_event_batch(events)


def test_a_batch_is_written_whole_or_not_at_all(tmp_path):
    storage = KeptOpenSqliteEventLogStorage(str(tmp_path / "ok"))
    storage.store_event_batch([_planned("r1", f"a{i}") for i in range(5)])
    assert len(storage.get_logs_for_run("r1")) == 5
    assert storage.get_asset_records([dg.AssetKey("a4")])

    failing = _FailsOnThird(str(tmp_path / "failing"))
    with pytest.raises(OSError, match="disk full"):
        failing.store_event_batch([_planned("r2", f"b{i}") for i in range(5)])
    assert failing.get_logs_for_run("r2") == []
    assert not failing.get_asset_records([dg.AssetKey("b0")])
    failing.store_event(_planned("r2", "after"))  # the storage is usable after the failed batch
    assert len(SqliteEventLogStorage(str(tmp_path / "failing")).get_logs_for_run("r2")) == 1


class _IndexFails(KeptOpenSqliteEventLogStorage):
    """A disk that fails while the index records an asset event (fault injection, the files are real)."""

    def _store_asset_event(self, conn, event, event_id):
        raise OSError("disk full")


def test_an_event_is_written_whole_or_not_at_all(tmp_path):
    """The run's file and the index take an event together: an index that fails leaves no half event."""
    failing = _IndexFails(str(tmp_path))
    with pytest.raises(OSError, match="disk full"):
        failing.store_event(_planned("r1", "a"))
    assert failing.get_logs_for_run("r1") == []
    assert SqliteEventLogStorage(str(tmp_path)).get_logs_for_run("r1") == []


def test_open_files_are_bounded_and_closed_ones_reopen(tmp_path):
    storage = KeptOpenSqliteEventLogStorage(str(tmp_path))
    runs = [f"run{i}" for i in range(OPEN_RUN_FILES + 5)]
    for run in runs:
        storage.store_event(_planned(run, run))
    assert len(storage._engines) <= OPEN_RUN_FILES + 1  # the runs' files and the index
    assert all(len(storage.get_logs_for_run(run)) == 1 for run in runs)
    storage.dispose()
    assert not storage._engines


def test_base_dir_defaults_to_the_homes_storage_folder_and_needs_a_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    assert Path(KeptOpenSqliteEventLogStorage()._base_dir) == tmp_path / "storage"
    monkeypatch.delenv("DAGSTER_HOME")
    with pytest.raises(ValueError, match="DAGSTER_HOME"):
        KeptOpenSqliteEventLogStorage()


def test_the_ephemeral_instance_runs_in_memory_and_leaves_nothing_behind():
    with ephemeral_instance() as instance:
        assert type(instance.event_log_storage) is KeptOpenInMemoryEventLogStorage
        artifacts = Path(instance.root_directory)
        result = dg.materialize([upstream, downstream], instance=instance)
        assert result.success
        record = instance.get_latest_materialization_event(dg.AssetKey("downstream"))
        assert record is not None and record.run_id == result.run_id
        [check] = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey("downstream"), "positive"), 10
        )
        assert check.status.value == "SUCCEEDED"
        assert not list(artifacts.rglob("*.db"))  # events are in memory, not in files
    assert not artifacts.exists()


def test_a_partition_found_is_remembered_briefly_and_a_deletion_here_forgotten_at_once(tmp_path, monkeypatch):
    """A run asks whether its partition exists once per output; the answer is remembered for
    PARTITION_SEEN_SECONDS, so another process's deletion is seen once that has passed."""
    here = KeptOpenSqliteEventLogStorage(str(tmp_path))
    other = KeptOpenSqliteEventLogStorage(str(tmp_path))  # another process's storage of the same home
    check_partition_memory(here, other, monkeypatch)


def check_partition_memory(here: SqlEventLogStorage, other: SqlEventLogStorage, monkeypatch) -> None:
    """``here`` remembers the partitions it found for PARTITION_SEEN_SECONDS (``other``: another process's
    storage of the same events)."""
    assert not here.has_dynamic_partition("backups", "b1")
    here.add_dynamic_partitions("backups", ["b1", "b2"])
    assert here.has_dynamic_partition("backups", "b1")  # not remembered as missing

    here.delete_dynamic_partition("backups", "b1")
    assert not here.has_dynamic_partition("backups", "b1")  # deleted here: known at once

    assert here.has_dynamic_partition("backups", "b2")
    other.delete_dynamic_partition("backups", "b2")
    assert here.has_dynamic_partition("backups", "b2")  # remembered for the moment
    later = event_log.time.monotonic() + event_log.PARTITION_SEEN_SECONDS
    monkeypatch.setattr(event_log.time, "monotonic", lambda: later)
    assert not here.has_dynamic_partition("backups", "b2")  # asked again once that has passed

    assert not here.has_dynamic_partition("backups", "b3")
    other.add_dynamic_partitions("backups", ["b3"])
    assert here.has_dynamic_partition("backups", "b3")  # a missing one is never remembered


def test_tables_and_columns_found_are_remembered_and_missing_ones_asked_again(tmp_path, monkeypatch):
    check_schema_memory(KeptOpenSqliteEventLogStorage(str(tmp_path)), SqliteEventLogStorage, monkeypatch)
    in_memory = KeptOpenInMemoryEventLogStorage()
    check_schema_memory(in_memory, InMemoryEventLogStorage, monkeypatch)
    in_memory.dispose()


def check_schema_memory(storage: SqlEventLogStorage, dagsters: type, monkeypatch) -> None:
    """``storage`` asks ``dagsters`` (Dagster's own class) once for a table or an asset-key column that
    exists, and every time for one that does not (a migration may add it)."""
    asked: list[str] = []
    for name in ("has_table", "has_asset_key_col"):
        real = getattr(dagsters, name)
        monkeypatch.setattr(dagsters, name, lambda self, arg, _real=real: asked.append(arg) or _real(self, arg))
    assert [storage.has_table("event_logs") for _ in range(3)] == [True] * 3
    assert [storage.has_table("no_such_table") for _ in range(2)] == [False] * 2
    assert [storage.has_asset_key_col("last_materialization_timestamp") for _ in range(3)] == [True] * 3
    assert [storage.has_asset_key_col("no_such_column") for _ in range(2)] == [False] * 2
    assert asked == ["event_logs", *["no_such_table"] * 2, "last_materialization_timestamp", *["no_such_column"] * 2]
