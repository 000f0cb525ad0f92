"""Imports that run at the same time into one database: the PostgreSQL advisory locks that make them end
as if they had run one after the other.

Three things are serialised, everything else runs in parallel:

* A model's collision checks and its insert, per target table (:func:`lock_table`, in the load's
  transaction): a second import sees the first one's rows and renames its own (``slug-xxxx``), as it
  would had it run later.
* Create mode's DDL and a global import's wipe, against every load of every import: the database-wide
  lock (:func:`lock_database`), taken *shared* by each load's transaction and *exclusive* by a
  ``prepare`` that creates or alters tables or empties them.
* A whole global import, against every other import: the import lock (:func:`hold_imports`), held on a
  session of its own by the process that drives the import (the CLI, ``run_restore``) or by each step of
  a Dagster run: exclusive for a global import, shared for the others. A Dagster run's steps may be
  separate processes, so the lock cannot span the run; the marker does: a global import's wipe writes
  it (:func:`mark_global`, in the wipe's transaction) and its last step clears it (:func:`end_global`).
  While it stands, every other import is refused (:class:`GlobalImportUnfinished`, naming the import,
  its run and what to do); the global import's own steps and re-executions go on.

Lock keys are derived from constant names and the table's catalog name, never from export text. A wait
is bounded by the target's ``lock_timeout``; when it fires, :class:`LockWaitTimeout` says which lock it
was and which import holds it (each import's live sessions are recorded in ``backup_assets.session``).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from .errors import TargetError
from .query import one_row
from .state import GLOBAL_IMPORT, IMPORT, SESSION


class LockWaitTimeout(TargetError):
    """A lock another import holds was not granted within the target's ``lock_timeout``."""

    def __init__(self, message: str, holders: list[str]) -> None:
        super().__init__(message)
        self.holders = holders


class GlobalImportUnfinished(TargetError):
    """A global import emptied the database and has not ended: no other import may start meanwhile."""

    def __init__(self, import_id: str, run_id: str | None, began_at: datetime) -> None:
        run = f"Dagster run {run_id}, " if run_id else ""
        again = f"re-execute run {run_id} from failure, or " if run_id else ""
        super().__init__(
            f"global import {import_id} ({run}began {began_at:%Y-%m-%d %H:%M:%S %Z}) has emptied this database "
            "and not finished, so no other import may run until it ends (if it failed, the database holds a partial "
            f"restore): finish it ({again}run that import again with the same import id: --import-id {import_id}), "
            f"or undo what it loaded with `backup-assets rollback {import_id}`, or replace it with a new global "
            "import; then run this import again"
        )
        self.import_id, self.run_id, self.began_at = import_id, run_id, began_at


def lock_key(name: str) -> int:
    """The signed 64-bit advisory-lock key of ``name`` (stable across processes and versions)."""
    return int.from_bytes(hashlib.sha256(f"backup-assets:{name}".encode()).digest()[:8], "big", signed=True)


DATABASE = lock_key("database")  #: shared by every load, exclusive for DDL and a global wipe (per transaction)
IMPORTS = lock_key("imports")  #: shared by every import, exclusive for a global one (per session)


def table_key(schema: str, table: str) -> int:
    return lock_key(f"table:{schema}.{table}")


def register_session(conn: psycopg.Connection, import_id: str) -> None:
    """Record that this session works for ``import_id``, so that a lock it holds can be put to its import;
    the rows of sessions that have ended go (the table holds about one row per live session)."""
    conn.execute(
        sql.SQL(
            "DELETE FROM {s} WHERE pid IN (SELECT pid FROM {s} s WHERE NOT EXISTS (SELECT FROM pg_stat_activity a "
            "WHERE a.pid = s.pid AND (a.backend_start = s.backend_start OR a.backend_start IS NULL)) "
            "FOR UPDATE SKIP LOCKED)"
        ).format(s=SESSION)
    )  # IS NULL: another role's session, not ours to judge
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (pid, backend_start, import_id) SELECT pid, backend_start, %s FROM pg_stat_activity "
            "WHERE pid = pg_backend_pid() ON CONFLICT (pid) DO UPDATE SET backend_start = EXCLUDED.backend_start, "
            "import_id = EXCLUDED.import_id"
        ).format(SESSION),
        (import_id,),
    )


def lock_database(conn: psycopg.Connection, *, exclusive: bool) -> None:
    """Take the database-wide lock until the end of the current transaction."""
    _acquire(
        conn,
        DATABASE,
        exclusive=exclusive,
        xact=True,
        what="the database-wide import lock (create mode's DDL or a global import's wipe)",
    )


def lock_table(conn: psycopg.Connection, schema: str, table: str) -> None:
    """Take ``schema.table``'s load lock until the end of the current transaction."""
    _acquire(conn, table_key(schema, table), exclusive=True, xact=True, what=f"the load lock of table {schema}.{table}")


def lock_imports(conn: psycopg.Connection, *, exclusive: bool) -> None:
    """Take the import lock for the rest of the session (it goes with the connection): ``exclusive`` for a
    global import (it waits for the imports running, and the later ones wait for it), shared otherwise."""
    _acquire(conn, IMPORTS, exclusive=exclusive, xact=False, what="the import lock (a global import runs alone)")


#: import id -> [the connection holding its import lock, how many blocks of this process share it]
_held: dict[str, list[Any]] = {}
_held_guard = threading.Lock()


@contextmanager
def hold_imports(
    connect: Callable[[], psycopg.Connection], import_id: str, run_id: str | None, *, exclusive: bool
) -> Iterator[psycopg.Connection | None]:
    """Hold the import lock for the block on a connection of its own (``connect()``, yielded), then admit
    the import (:func:`admit`). Blocks of one import nest in a process (the CLI holds it around its
    in-process run, whose steps hold it too): the inner ones share the outer one's session (None yielded)."""
    with _held_guard:
        shared = _held.get(import_id)
        if shared is not None:
            shared[1] += 1
    opened = shared is None
    if shared is None:
        shared = [_lock_and_admit(connect(), import_id, run_id, exclusive), 1]
        with _held_guard:  # unless another thread got there first: then each keeps its own
            _held.setdefault(import_id, shared)
    try:
        yield shared[0] if opened else None
    finally:
        with _held_guard:
            shared[1] -= 1
            last = shared[1] == 0
            if last and _held.get(import_id) is shared:
                del _held[import_id]
        if last:
            shared[0].close()


def _lock_and_admit(
    conn: psycopg.Connection, import_id: str, run_id: str | None, exclusive: bool
) -> psycopg.Connection:
    try:
        lock_imports(conn, exclusive=exclusive)
        admit(conn, import_id, run_id, exclusive=exclusive)
    except BaseException:
        conn.close()
        raise
    return conn


def admit(conn: psycopg.Connection, import_id: str, run_id: str | None, *, exclusive: bool) -> None:
    """Let ``import_id`` run, the import lock held: refused while another global import's marker stands,
    unless it is a global import itself (``exclusive``): it replaces the whole database, so it takes the
    unfinished one's place (that one is not running: this lock is exclusive). A global import that a
    rollback or a later global import ended after its wipe cannot be resumed. The marker of the import
    itself names ``run_id`` from now on (the run to re-execute, should this one fail)."""
    marker = global_import(conn)
    if marker is not None and marker[0] != import_id and not exclusive:
        raise GlobalImportUnfinished(*marker)
    if marker is not None and marker[0] == import_id:
        if run_id and marker[1] != run_id:
            conn.execute(sql.SQL("UPDATE {} SET run_id = %s").format(GLOBAL_IMPORT), (run_id,))
        return
    if (
        exclusive
        and one_row(
            conn.execute(
                sql.SQL(
                    "SELECT EXISTS (SELECT FROM {} WHERE import_id = %s AND prepared_at IS NOT NULL AND finished_at IS NULL "
                    "AND (settings ->> 'scope') = 'global')"
                ).format(IMPORT),
                (import_id,),
            )
        )[0]
    ):
        raise TargetError(
            f"global import {import_id} was ended after it emptied the database (rolled back, or "
            "replaced by a later global import), so it cannot be resumed: start a new global import "
            "(a new import id)"
        )


def mark_global(conn: psycopg.Connection, import_id: str, run_id: str | None) -> None:
    """Record, in the caller's transaction (the wipe's), that global import ``import_id`` runs: in place of
    an unfinished global import's marker, which :func:`admit` let this one replace."""
    conn.execute(
        sql.SQL(
            "INSERT INTO {t} AS g (import_id, run_id) VALUES (%s, %s) ON CONFLICT (singleton) DO UPDATE "
            "SET run_id = EXCLUDED.run_id, import_id = EXCLUDED.import_id, began_at = CASE WHEN g.import_id = "
            "EXCLUDED.import_id THEN g.began_at ELSE now() END"
        ).format(t=GLOBAL_IMPORT),
        (import_id, run_id),
    )


def global_import(conn: psycopg.Connection) -> tuple[str, str | None, datetime] | None:
    """The marker of the global import that has emptied the database and not ended: (import id, run id,
    began at), or None."""
    return conn.execute(sql.SQL("SELECT import_id, run_id, began_at FROM {}").format(GLOBAL_IMPORT)).fetchone()


def end_global(conn: psycopg.Connection, import_id: str) -> None:
    """Clear ``import_id``'s marker, if it has one (it finished, or was rolled back): other imports may run."""
    conn.execute(sql.SQL("DELETE FROM {} WHERE import_id = %s").format(GLOBAL_IMPORT), (import_id,))


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
    timeout = one_row(conn.execute("SELECT current_setting('lock_timeout')"))[0]
    holders = holders_of(conn, key)
    by = ", ".join(holders) if holders else "a session that has since released it"
    return LockWaitTimeout(
        f"waited longer than the target's lock_timeout ({timeout}) for {what}, held by {by}; "
        "nothing of this step was written: retry when it is done, or raise lock_timeout",
        holders,
    )


def holders_of(conn: psycopg.Connection, key: int) -> list[str]:
    """Who holds the advisory lock ``key`` in this database: ``import <id> (pid N)`` per session."""
    rows = conn.execute(
        sql.SQL(
            "SELECT DISTINCT l.pid, s.import_id FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "LEFT JOIN {} s ON s.pid = l.pid AND s.backend_start = a.backend_start "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND l.pid <> pg_backend_pid() "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.classid::bigint = %s AND l.objid::bigint = %s ORDER BY l.pid"
        ).format(SESSION),
        ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF),
    ).fetchall()
    return [f"import {import_id} (pid {pid})" if import_id else f"pid {pid} (not an import)" for pid, import_id in rows]
