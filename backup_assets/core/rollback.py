"""Undo an import: remove what it inserted, put back what it overwrote, leave merged rows alone.

Everything needed is in the target's ``backup_assets`` schema: the import's primary-key maps say which
rows it inserted (kind I) into which model, ``overwritten`` holds the previous values of the rows it
overwrote in place (kind O), and the import's plan names each model's table. The rollback runs in one
transaction, children before parents (reverse dependency order), so it is all or nothing; it works
for a partial import (only the models that committed have maps) and a second run finds nothing to do.

    from backup_assets.core.rollback import rollback
    result = rollback(dsn, import_id, Manifest.builtin())
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from . import locks
from .errors import ConfigurationError, TargetError
from .manifest import Manifest
from .schema import INTERNAL_SCHEMA, find_table
from .settings import check_import_id
from .staging import drop_staging
from .state import IMPORT, LOAD_RECORD, OVERWRITTEN, PK_MAP, PK_MAP_ROW, PK_SCOPE, ensure_state, lock_import

ROLLBACK = sql.Identifier(INTERNAL_SCHEMA, "rollback")

_DDL = sql.SQL(
    "CREATE TABLE IF NOT EXISTS {} (import_id text PRIMARY KEY, rolled_back_at timestamptz NOT NULL "
    "DEFAULT now(), result jsonb NOT NULL)"
).format(ROLLBACK)


@dataclass
class RollbackResult:
    import_id: str
    deleted: dict[str, int] = field(default_factory=dict)  #: model -> rows removed (inserted by the import)
    restored: dict[str, int] = field(default_factory=dict)  #: model -> rows put back to their previous values
    already_rolled_back: bool = False  #: nothing was left to undo

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def rollback(dsn: str, import_id: str, manifest: Manifest | None = None) -> RollbackResult:
    """Undo import ``import_id`` in the database at ``dsn`` (see the module docstring).

    ``manifest`` gives the dependency order and tables (default: the built-in manifest); models it does
    not know are taken from the import's recorded plan. Raises :class:`TargetError` for an unknown
    import, for an import whose data a later global import replaced, or when rows outside the import
    still refer to rows it inserted.
    """
    check_import_id(import_id)
    try:
        conn = psycopg.connect(dsn, autocommit=True, application_name="backup-assets rollback")
    except psycopg.OperationalError as e:
        raise ConfigurationError(f"cannot connect to the target database: {str(e).strip()}") from None
    with conn:
        ensure_state(conn)
        with conn.transaction():
            lock_import(conn, import_id)
            locks.lock_database(conn, exclusive=True)  # no import's load runs meanwhile (see .locks)
            conn.execute(_DDL)
            locks.end_global(conn, import_id)  # a global import rolled back ends: other imports may run
            return _rollback(conn, import_id, manifest)


def _rollback(conn: psycopg.Connection, import_id: str, manifest: Manifest | None) -> RollbackResult:
    row = conn.execute(
        sql.SQL("SELECT models, prepared_at FROM {} WHERE import_id = %s").format(IMPORT), (import_id,)
    ).fetchone()
    done = conn.execute(sql.SQL("SELECT result FROM {} WHERE import_id = %s").format(ROLLBACK), (import_id,)).fetchone()
    if row is None and done is None:
        raise TargetError(f"no import {import_id!r} in this database (nothing to roll back)")
    result = RollbackResult(import_id)
    models = _models(conn, import_id, (row[0] if row else None) or {}, manifest)
    if row is not None and models:
        _refuse_if_replaced(conn, import_id, row[1])
    for model, table_name in models:
        _undo_model(conn, import_id, model, table_name, result)
    conn.execute(
        sql.SQL("DELETE FROM {} WHERE scope IN (SELECT scope FROM {} WHERE import_id = %s)").format(
            PK_MAP_ROW, PK_SCOPE
        ),
        (import_id,),
    )
    for state in (PK_SCOPE, LOAD_RECORD, OVERWRITTEN):
        conn.execute(sql.SQL("DELETE FROM {} WHERE import_id = %s").format(state), (import_id,))
    drop_staging(conn, import_id)
    if done is not None and not models:
        result.already_rolled_back = True
        return result
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (import_id, result) VALUES (%s, %s) ON CONFLICT (import_id) "
            "DO UPDATE SET rolled_back_at = now(), result = EXCLUDED.result"
        ).format(ROLLBACK),
        (import_id, Jsonb(result.to_json())),
    )
    return result


def _models(
    conn: psycopg.Connection, import_id: str, plan: dict[str, str], manifest: Manifest | None
) -> list[tuple[str, str]]:
    """(model, table) of every model the import touched, children first."""
    touched = {
        r[0]
        for r in conn.execute(
            sql.SQL(
                "SELECT DISTINCT model FROM {} WHERE import_id = %s AND kind IN ('I', 'O') UNION "
                "SELECT DISTINCT model FROM {} WHERE import_id = %s"
            ).format(PK_MAP, OVERWRITTEN),
            (import_id, import_id),
        )
    }
    manifest = manifest or Manifest.builtin()
    order = [m for m in manifest.sorted_models() if m in touched]
    order += [m for m in plan if m in touched and m not in order]
    missing = touched - set(order)
    if missing:
        raise TargetError(
            f"import {import_id}: models {', '.join(sorted(missing))} are in neither the manifest nor "
            "the import's plan; pass the manifest the import used (--manifest)"
        )
    tables = {m: (manifest[m].table_name if m in manifest else plan[m]) for m in order}
    return [(m, tables[m]) for m in reversed(order)]


def _refuse_if_replaced(conn: psycopg.Connection, import_id: str, prepared_at: object) -> None:
    later = (
        conn.execute(
            sql.SQL(
                "SELECT import_id FROM {} WHERE import_id <> %s AND settings ->> 'scope' = 'global' "
                "AND (settings ->> 'replace_existing')::boolean AND prepared_at > %s ORDER BY prepared_at LIMIT 1"
            ).format(IMPORT),
            (import_id, prepared_at),
        ).fetchone()
        if prepared_at is not None
        else None
    )
    if later:
        raise TargetError(
            f"import {import_id} cannot be rolled back: global import {later[0]} replaced the data "
            "afterwards (its ids may now belong to other rows)"
        )


def _undo_model(conn: psycopg.Connection, import_id: str, model: str, table_name: str, result: RollbackResult) -> None:
    table = find_table(conn, table_name)
    if table is None:
        return  # the table is gone, and with it the rows
    try:
        with conn.transaction():
            n = conn.execute(
                sql.SQL(
                    "DELETE FROM {t} t USING {m} m WHERE m.import_id = %s AND m.model = %s "
                    "AND m.kind = 'I' AND t.id = m.new_pk"
                ).format(t=table.ident, m=PK_MAP),
                (import_id, model),
            ).rowcount
    except psycopg.errors.ForeignKeyViolation as e:
        raise TargetError(
            f"{model}: rows this import inserted into {table_name} are still referenced by rows it did "
            f"not insert ({e.diag.message_detail or e}); nothing was rolled back"
        ) from None
    if n:
        result.deleted[model] = n
    cols = [c for c in table.columns if c != "id"]
    if not cols:
        return
    names = sql.SQL(", ").join(map(sql.Identifier, cols))
    restored = conn.execute(
        sql.SQL(
            "UPDATE {t} t SET ({names}) = (SELECT {prev} FROM jsonb_populate_record(NULL::{t}, o.previous) r) "
            "FROM {o} o WHERE o.import_id = %s AND o.model = %s AND t.id = o.id"
        ).format(
            t=table.ident,
            names=names,
            o=OVERWRITTEN,
            prev=sql.SQL(", ").join(sql.SQL("r.{}").format(sql.Identifier(c)) for c in cols),
        ),
        (import_id, model),
    ).rowcount
    if restored:
        result.restored[model] = restored
