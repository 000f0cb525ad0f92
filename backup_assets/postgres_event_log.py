"""dagster-postgres's event log through connections it keeps: the storage for a Dagster instance whose
events live in PostgreSQL (the block ``dagster.yaml`` ships commented out).

``PostgresEventLogStorage`` opens a new database connection for every statement (SQLAlchemy's
``NullPool``), so that an idle instance holds none. A restore run writes ~860 events with the full
manifest and reads as many times, and each new connection is a server process started and authenticated:
most of a run's cost. This subclass keeps one connection (more while several threads write at once,
closed when they are done), as the webserver's ``optimize_for_webserver`` does, and remembers what
:mod:`backup_assets.event_log`'s storage does: the tables and columns that exist (a catalog query each
time Dagster asks, ~1,000 times a run) and, for a second, the dynamic partitions. A connection unused for
:data:`IDLE_CHECK_SECONDS` is checked with a round trip before its next use, so that a restarted server
or an idle timeout costs a reconnect, not a failed run. Everything else is dagster-postgres's: the
tables, their migrations, the batch writes, the polling watcher that streams a run's events to the UI.

Use it in ``dagster.yaml`` beside dagster-postgres's run and schedule storages::

    event_log_storage:
      module: backup_assets.postgres_event_log
      class: PooledPostgresEventLogStorage
      config:
        postgres_db: ...   # as under ``storage: postgres:``
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any

from dagster._serdes import ConfigurableClassData
from dagster_postgres.event_log import PostgresEventLogStorage
from dagster_postgres.utils import create_pg_engine, get_token_provider_from_config, pg_url_from_config
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DisconnectionError

from backup_assets.event_log import KnownSchemaMixin, RecentPartitionsMixin

#: Connections opened beyond the kept one while several threads write at once (closed when returned).
OVERFLOW_CONNECTIONS = 8
#: Seconds after which the kept connection is replaced.
RECYCLE_SECONDS = 3600
#: Seconds a connection may sit unused before its next use is preceded by a round trip that checks it.
IDLE_CHECK_SECONDS = 10.0


def _note_checkin(dbapi_connection: Any, record: Any) -> None:
    record.info["returned_at"] = time.monotonic()


def _check_if_idle(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """Check a connection that sat unused (a restarted server or an idle timeout may have cut it); a
    dead one makes the pool open another."""
    returned_at = record.info.get("returned_at")
    if returned_at is None or time.monotonic() - returned_at < IDLE_CHECK_SECONDS:
        return
    try:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as e:
        raise DisconnectionError(f"the kept connection to Dagster's database is gone: {e}") from e


class PooledPostgresEventLogStorage(KnownSchemaMixin, RecentPartitionsMixin, PostgresEventLogStorage):
    """``PostgresEventLogStorage`` that keeps its connection open (see the module doc)."""

    def __init__(
        self,
        postgres_url: str,
        should_autocreate_tables: bool = True,
        inst_data: ConfigurableClassData | None = None,
        token_provider: Any = None,
    ) -> None:
        self._engine_pid = os.getpid()  # dagster-postgres creates its tables (if missing) on its engine
        super().__init__(postgres_url, should_autocreate_tables, inst_data, token_provider)
        self._pooled(close=True)

    def _pooled(self, *, close: bool) -> None:
        """Replace the engine with one that keeps a connection, for this process (``close``: close the
        old engine's connections, which a forked child must leave to its parent)."""
        self._engine.dispose(close=close)
        self._engine = create_pg_engine(
            self.postgres_url,
            self._token_provider,
            isolation_level="AUTOCOMMIT",
            pool_size=1,
            max_overflow=OVERFLOW_CONNECTIONS,
            pool_recycle=RECYCLE_SECONDS,
        )
        event.listen(self._engine, "checkin", _note_checkin)
        event.listen(self._engine, "checkout", _check_if_idle)
        self._engine_pid = os.getpid()

    def _connect(self) -> AbstractContextManager[Connection]:
        if self._engine_pid != os.getpid():  # a forked child never uses its parent's connections
            self._pooled(close=False)
        return super()._connect()

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> PooledPostgresEventLogStorage:
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
        )

    def dispose(self) -> None:
        super().dispose()
        self._engine.dispose()
