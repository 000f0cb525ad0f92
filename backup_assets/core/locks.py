"""Imports that run at the same time into one database: the PostgreSQL advisory locks that make them end
as if they had run one after the other.

Three things are serialised, everything else runs in parallel:

* A model's collision checks and its insert, per target table (:func:`lock_table`, in the load's
  transaction): a second import sees the first one's rows and renames its own (``slug-xxxx``), as it
  would had it run later.
* Create mode's DDL and a global import's wipe, against every load of every import: the database-wide
  lock (:func:`lock_database`), taken *shared* by each load's transaction and *exclusive* by a
  ``prepare`` that creates or alters tables or empties them.
* A whole global import, against every other import: the import lock, held for the import's duration
  on a dedicated session by the process that drives it (:func:`lock_imports`): exclusive for a global
  import, shared for the others. Dagster runs whose steps are separate processes are held by the
  per-transaction locks above only (``dagster.yaml`` runs one restore per target at a time).

Lock keys are derived from constant names and the table's catalog name, never from export text. A wait
is bounded by the target's ``lock_timeout``; when it fires, :class:`LockWaitTimeout` says which lock it
was and which import holds it (each import's sessions are recorded in ``backup_assets.session``).
"""
from __future__ import annotations

import hashlib

import psycopg
from psycopg import sql

from .errors import TargetError
from .state import SESSION


class LockWaitTimeout(TargetError):
    """A lock another import holds was not granted within the target's ``lock_timeout``."""

    def __init__(self, message: str, holders: list[str]) -> None:
        super().__init__(message)
        self.holders = holders


def lock_key(name: str) -> int:
    """The signed 64-bit advisory-lock key of ``name`` (stable across processes and versions)."""
    return int.from_bytes(hashlib.sha256(f"backup-assets:{name}".encode()).digest()[:8], "big", signed=True)


DATABASE = lock_key("database")   #: shared by every load, exclusive for DDL and a global wipe (per transaction)
IMPORTS = lock_key("imports")     #: shared by every import, exclusive for a global one (per session)


def table_key(schema: str, table: str) -> int:
    return lock_key(f"table:{schema}.{table}")


def register_session(conn: psycopg.Connection, import_id: str) -> None:
    """Record that this session works for ``import_id``, so that a lock it holds can be put to its import."""
    conn.execute(sql.SQL(
        "INSERT INTO {} (pid, backend_start, import_id) SELECT pid, backend_start, %s FROM pg_stat_activity "
        "WHERE pid = pg_backend_pid() ON CONFLICT (pid) DO UPDATE SET backend_start = EXCLUDED.backend_start, "
        "import_id = EXCLUDED.import_id").format(SESSION), (import_id,))


def lock_database(conn: psycopg.Connection, *, exclusive: bool) -> None:
    """Take the database-wide lock until the end of the current transaction."""
    _acquire(conn, DATABASE, exclusive=exclusive, xact=True,
             what="the database-wide import lock (create mode's DDL or a global import's wipe)")


def lock_table(conn: psycopg.Connection, schema: str, table: str) -> None:
    """Take ``schema.table``'s load lock until the end of the current transaction."""
    _acquire(conn, table_key(schema, table), exclusive=True, xact=True, what=f"the load lock of table {schema}.{table}")


def lock_imports(conn: psycopg.Connection, *, exclusive: bool) -> None:
    """Take the import lock for the rest of the session (it goes with the connection): ``exclusive`` for a
    global import (it waits for the imports running, and the later ones wait for it), shared otherwise."""
    _acquire(conn, IMPORTS, exclusive=exclusive, xact=False, what="the import lock (a global import runs alone)")


def _acquire(conn: psycopg.Connection, key: int, *, exclusive: bool, xact: bool, what: str) -> None:
    fn = "pg_advisory{}_lock{}".format("_xact" if xact else "", "" if exclusive else "_shared")
    failed = False
    try:
        with conn.transaction():  # a savepoint inside the caller's transaction: it survives the timeout
            conn.execute(sql.SQL("SELECT {}(%s)").format(sql.Identifier(fn)), (key,))
    except psycopg.errors.LockNotAvailable:
        failed = True
    if failed:  # raised outside the handler: the timeout is the news, not a transient error to retry
        raise _timeout(conn, key, what)


def _timeout(conn: psycopg.Connection, key: int, what: str) -> LockWaitTimeout:
    timeout = conn.execute("SELECT current_setting('lock_timeout')").fetchone()[0]
    holders = holders_of(conn, key)
    by = ", ".join(holders) if holders else "a session that has since released it"
    return LockWaitTimeout(f"waited longer than the target's lock_timeout ({timeout}) for {what}, held by {by}; "
                           "nothing of this step was written: retry when it is done, or raise lock_timeout", holders)


def holders_of(conn: psycopg.Connection, key: int) -> list[str]:
    """Who holds the advisory lock ``key`` in this database: ``import <id> (pid N)`` per session."""
    rows = conn.execute(sql.SQL(
        "SELECT DISTINCT l.pid, s.import_id FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "LEFT JOIN {} s ON s.pid = l.pid AND s.backend_start = a.backend_start "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND l.pid <> pg_backend_pid() "
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND l.classid::bigint = %s AND l.objid::bigint = %s ORDER BY l.pid").format(SESSION),
        ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF)).fetchall()
    return [f"import {import_id} (pid {pid})" if import_id else f"pid {pid} (not an import)" for pid, import_id in rows]
