"""Dagster's sqlite event log with its database connections kept open: the instance storage
``dagster.yaml`` ships.

Dagster's own ``SqliteEventLogStorage`` opens a new SQLAlchemy engine, and so a new sqlite connection,
for every read and write: sqlite then reads the file's schema again, and SQLAlchemy compiles every
statement again (its statement cache lives in the engine). A restore run writes one event per planned
asset and check, per materialization and per check result, several statements each, so with the models'
95 assets and 380 checks that cost is most of a run. This subclass keeps one engine per database file
(the cross-run index, and the last few runs' files) for the life of the process, remembers which tables
and columns exist, and for a second which dynamic partitions exist. Each event is written in one
transaction per file (its run's, and the index's for an asset or check event), and so are the events
Dagster writes as a batch (a run's planned materializations and checks, one per asset and check it will
run), where Dagster's storage commits each statement group of each event: each commit is a flush to disk,
slow while the restore keeps the disk busy. This takes ``DAGSTER_EVENT_BATCH_SIZE``, which Dagster reads
to batch them, unless the environment sets it. Everything else is Dagster's: the files, their schema, the
locking (``_db_lock``, sqlite's busy timeout), the durability (sqlite's defaults) and the watchers that
stream a run's events to the UI.

:func:`ephemeral_instance` does the same for the in-memory instance of a command-line restore that
records nowhere.

Use it in ``dagster.yaml`` (``base_dir`` defaults to ``$DAGSTER_HOME/storage``, where Dagster's default
storage keeps the same files, so an existing home keeps its history)::

    event_log_storage:
      module: backup_assets.event_log
      class: KeptOpenSqliteEventLogStorage
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as db
from dagster import DagsterInstance
from dagster._config import Field, StringSource
from dagster._core.events.log import EventLogEntry
from dagster._core.instance import InstanceType
from dagster._core.launcher.sync_in_memory_run_launcher import SyncInMemoryRunLauncher
from dagster._core.run_coordinator import DefaultRunCoordinator
from dagster._core.storage.event_log.in_memory import InMemoryEventLogStorage
from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage
from dagster._core.storage.event_log.sqlite.sqlite_event_log import INDEX_SHARD_NAME, SqliteEventLogStorage
from dagster._core.storage.noop_compute_log_manager import NoOpComputeLogManager
from dagster._core.storage.root import TemporaryLocalArtifactStorage
from dagster._core.storage.runs import InMemoryRunStorage
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._serdes import ConfigurableClassData
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool

#: Events Dagster hands the storage at once when it batches them (the planned events of up to this many
#: assets and checks are one transaction).
EVENT_BATCH_SIZE = 1000
#: Run files whose engine stays open besides the index's (a run writes its own file and the index).
OPEN_RUN_FILES = 8
#: Seconds a dynamic partition found to exist is taken to exist without asking the database again.
PARTITION_SEEN_SECONDS = 1.0


def default_base_dir() -> str:
    """Where Dagster's default storage keeps its event log: ``$DAGSTER_HOME/storage``."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        raise ValueError("KeptOpenSqliteEventLogStorage: set base_dir, or DAGSTER_HOME")
    return os.path.join(home, "storage")


class RecentPartitionsMixin(SqlEventLogStorage):
    """Remembers, for :data:`PARTITION_SEEN_SECONDS`, the dynamic partitions found to exist. A run checks
    its partition key once per output it writes (twice per model and check of a restore run: ~470
    queries of the same row); a partition deleted in this process is forgotten at once, one deleted by
    another process within that second."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._seen: dict[tuple[str, str], float] = {}  # (definition, key) -> taken to exist until
        super().__init__(*args, **kwargs)

    def has_dynamic_partition(self, partitions_def_name: str, partition_key: str) -> bool:
        key = (partitions_def_name, partition_key)
        if self._seen.get(key, 0.0) > time.monotonic():
            return True
        found = super().has_dynamic_partition(partitions_def_name, partition_key)
        if found:
            self._seen[key] = time.monotonic() + PARTITION_SEEN_SECONDS
        return found

    def delete_dynamic_partition(self, partitions_def_name: str, partition_key: str) -> None:
        self._seen.pop((partitions_def_name, partition_key), None)
        super().delete_dynamic_partition(partitions_def_name, partition_key)


class KnownSchemaMixin(SqlEventLogStorage):
    """Remembers the tables and the asset-key columns found to exist: a table or column once there stays
    (Dagster's migrations only add). Dagster asks before each asset check event, each dynamic partition
    lookup and each asset status read (~1,000 times a restore run), and each answer is a catalog query."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._tables: set[str] = set()
        self._asset_key_cols: set[str] = set()
        super().__init__(*args, **kwargs)

    def has_table(self, table_name: str) -> bool:
        if table_name not in self._tables and super().has_table(table_name):  # type: ignore[safe-super]
            self._tables.add(table_name)
        return table_name in self._tables

    def has_asset_key_col(self, column_name: str) -> bool:
        if column_name not in self._asset_key_cols and super().has_asset_key_col(column_name):
            self._asset_key_cols.add(column_name)
        return column_name in self._asset_key_cols


class KeptOpenSqliteEventLogStorage(KnownSchemaMixin, RecentPartitionsMixin, SqliteEventLogStorage):
    """``SqliteEventLogStorage`` that keeps one connection per database file open (see the module doc)."""

    def __init__(self, base_dir: str | None = None, inst_data: ConfigurableClassData | None = None) -> None:
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._engines_pid = os.getpid()
        self._batch: dict[str, Connection] | None = None  # the open transactions of a batch, per file
        self._batch_thread: int | None = None
        os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", str(EVENT_BATCH_SIZE))
        super().__init__(base_dir or default_base_dir(), inst_data=inst_data)

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {"base_dir": Field(StringSource, is_required=False)}

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> KeptOpenSqliteEventLogStorage:
        return cls(inst_data=inst_data, **config_value)

    def _engine(self, shard: str) -> Engine:
        """The shard's engine, opened once per process; the least recently used run files are closed."""
        if self._engines_pid != os.getpid():  # a forked child never uses its parent's connections
            self._engines, self._engines_pid = OrderedDict(), os.getpid()
        engine = self._engines.get(shard)
        if engine is None:
            engine = db.create_engine(
                self.conn_string_for_shard(shard),
                poolclass=StaticPool,
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
            )
            self._engines[shard] = engine
            self._close_old_run_files()
        self._engines.move_to_end(shard)
        return engine

    def _close_old_run_files(self) -> None:
        runs = [s for s in self._engines if s != INDEX_SHARD_NAME]
        for shard in runs[: max(0, len(runs) - OPEN_RUN_FILES)]:
            self._engines.pop(shard).dispose()

    def _forget(self, shard: str) -> None:
        engine = self._engines.pop(shard, None)
        if engine is not None:
            engine.dispose()

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        if self._in_batch():
            yield self._batch_connection(shard)  # committed when the batch ends
            return
        with self._db_lock, self._open(shard) as conn, conn.begin():  # one user at a time, as in Dagster's
            yield conn

    def _open(self, shard: str) -> Connection:
        engine = self._engine(shard)
        if shard not in self._initialized_dbs:
            self._initdb(engine)
            self._initialized_dbs.add(shard)
        return engine.connect()

    def _batch_connection(self, shard: str) -> Connection:
        assert self._batch is not None
        conn = self._batch.get(shard)
        if conn is None:
            conn = self._batch[shard] = self._open(shard)
            conn.begin()
        return conn

    def store_event(self, event: EventLogEntry) -> None:
        """Store ``event`` as Dagster's storage does, in one transaction per file (the run's, and the
        index's for an asset or check event), where Dagster's commits each statement group: one commit,
        one flush to disk, per file and event."""
        if self._in_batch():
            super().store_event(event)
        else:
            self.store_event_batch([event])

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        """Store ``events`` as Dagster's storage does, in one transaction per file: all or none."""
        with self._db_lock:
            self._batch, self._batch_thread = {}, threading.get_ident()
            try:
                for event in events:
                    self.store_event(event)
                self._end_batch(commit=True)
            finally:
                self._end_batch(commit=False)

    def _in_batch(self) -> bool:
        return self._batch is not None and self._batch_thread == threading.get_ident()

    def _end_batch(self, *, commit: bool) -> None:
        batch, self._batch, self._batch_thread = self._batch or {}, None, None
        for conn in batch.values():
            if commit:
                conn.commit()
            else:
                conn.rollback()
            conn.close()

    def wipe(self) -> None:
        with self._db_lock:
            for shard in list(self._engines):
                self._forget(shard)
        super().wipe()

    def dispose(self) -> None:
        with self._db_lock:
            for shard in list(self._engines):
                self._forget(shard)
        super().dispose()


class KeptOpenInMemoryEventLogStorage(KnownSchemaMixin, RecentPartitionsMixin, InMemoryEventLogStorage):
    """Dagster's in-memory event log (an ephemeral instance's) through the one connection it already
    holds to keep the database alive, where Dagster's opens another per statement."""

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        with self._db_lock, self._held_conn.begin():
            yield self._held_conn


def ephemeral_instance() -> DagsterInstance:
    """``DagsterInstance.ephemeral()`` with :class:`KeptOpenInMemoryEventLogStorage`: nothing on disk
    but an empty temporary folder for artifacts, removed when the instance is disposed."""
    return DagsterInstance(
        instance_type=InstanceType.EPHEMERAL,
        local_artifact_storage=TemporaryLocalArtifactStorage(),
        run_storage=InMemoryRunStorage(),
        event_storage=KeptOpenInMemoryEventLogStorage(),
        compute_log_manager=NoOpComputeLogManager(),
        run_coordinator=DefaultRunCoordinator(),
        run_launcher=SyncInMemoryRunLauncher(),
    )
