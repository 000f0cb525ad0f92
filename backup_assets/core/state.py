"""The project's own state in the target database (schema ``backup_assets``): the imports, the pk maps,
the load records, the rows overwritten (for rollback), the constraints create mode builds after the
rows, and which import each session works for. :func:`ensure_state` creates it, or brings an older
one up to date.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from .query import one_row
from .schema import INTERNAL_SCHEMA

_STATE_DDL = [
    f"CREATE SCHEMA IF NOT EXISTS {INTERNAL_SCHEMA}",
    f"""CREATE TABLE IF NOT EXISTS {INTERNAL_SCHEMA}.import (
        import_id text PRIMARY KEY,
        created_at timestamptz NOT NULL DEFAULT now(),
        settings jsonb NOT NULL,
        models jsonb,                 -- the plan: model -> table, in dependency order
        stage jsonb,                  -- the StageResult of the last staging
        prepared_at timestamptz,
        finished_at timestamptz)""",
    # the pk maps: one integer scope per (import, model), so that the map's key is (scope, old_pk), 12 bytes, not
    # the import id's and the model's text (a load writes one index entry per row: the key's width is its cost)
    f"""CREATE TABLE IF NOT EXISTS {INTERNAL_SCHEMA}.pk_scope (
        scope serial PRIMARY KEY,
        import_id text COLLATE "C" NOT NULL,   -- "C": keys compared byte-wise, whatever the database's locale
        model text COLLATE "C" NOT NULL,
        UNIQUE (import_id, model))""",
    f"""CREATE TABLE IF NOT EXISTS {INTERNAL_SCHEMA}.pk_map_row (
        scope integer NOT NULL,       -- pk_scope.scope (no foreign key: it would be checked for every row)
        old_pk bigint NOT NULL,
        new_pk bigint,                -- NULL when the row was not imported (kind D or F)
        kind "char" NOT NULL,         -- I inserted, E existing (merged), O overwritten, D dropped, F filtered
        PRIMARY KEY (scope, old_pk))""",
    f"""CREATE TABLE IF NOT EXISTS {INTERNAL_SCHEMA}.load_record (
        import_id text NOT NULL,
        model text NOT NULL,
        result jsonb NOT NULL,
        loaded_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (import_id, model))""",
    f"""CREATE TABLE IF NOT EXISTS {INTERNAL_SCHEMA}.overwritten (
        import_id text NOT NULL,
        model text NOT NULL,
        id bigint NOT NULL,
        previous jsonb NOT NULL,      -- the row as it was before the import overwrote it
        PRIMARY KEY (import_id, model, id))""",
    # create mode builds a table's unique and foreign-key constraints after its rows are in (as pg_restore
    # does: one index build and one validating join instead of a check per inserted row)
    f"""CREATE TABLE IF NOT EXISTS {INTERNAL_SCHEMA}.pending_constraint (
        table_schema text NOT NULL,
        table_name text NOT NULL,
        kind "char" NOT NULL,         -- u: UNIQUE (columns), f: FOREIGN KEY (columns) REFERENCES ref_table (id)
        columns text[] NOT NULL,
        ref_table text,
        where_column text,            -- a unique only where where_column = where_value (a partial index)
        where_value jsonb,
        PRIMARY KEY (table_schema, table_name, kind, columns))""",
    # which import each session works for, so that a lock wait can name the import holding the lock
    f"""CREATE TABLE IF NOT EXISTS {INTERNAL_SCHEMA}.session (
        pid integer PRIMARY KEY,
        backend_start timestamptz,    -- with pid, tells this session from an older one with the same pid
        import_id text NOT NULL)""",
    # the global import that has emptied the database and not ended: every other import is refused meanwhile
    f"""CREATE TABLE IF NOT EXISTS {INTERNAL_SCHEMA}.global_import (
        singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
        import_id text NOT NULL,
        run_id text,                  -- the Dagster run that drives it (the latest), if any
        began_at timestamptz NOT NULL DEFAULT now())""",
]

#: The pk maps as one relation (import_id, model, old_pk, new_pk, kind), for reading; loads write pk_map_row.
_PK_MAP_VIEW = f"""CREATE OR REPLACE VIEW {INTERNAL_SCHEMA}.pk_map AS
    SELECT s.import_id, s.model, r.old_pk, r.new_pk, r.kind
    FROM {INTERNAL_SCHEMA}.pk_map_row r JOIN {INTERNAL_SCHEMA}.pk_scope s ON s.scope = r.scope"""

#: The tables :func:`ensure_state` creates, for SQL composed with :mod:`psycopg.sql`.
IMPORT = sql.Identifier(INTERNAL_SCHEMA, "import")
PK_MAP = sql.Identifier(INTERNAL_SCHEMA, "pk_map")  #: the view
PK_MAP_ROW = sql.Identifier(INTERNAL_SCHEMA, "pk_map_row")
PK_SCOPE = sql.Identifier(INTERNAL_SCHEMA, "pk_scope")
LOAD_RECORD = sql.Identifier(INTERNAL_SCHEMA, "load_record")
OVERWRITTEN = sql.Identifier(INTERNAL_SCHEMA, "overwritten")
PENDING_CONSTRAINT = sql.Identifier(INTERNAL_SCHEMA, "pending_constraint")
SESSION = sql.Identifier(INTERNAL_SCHEMA, "session")
GLOBAL_IMPORT = sql.Identifier(INTERNAL_SCHEMA, "global_import")

_LOCK_SCHEMA = 0x6261636B  # advisory lock key serialising creation of the internal schema


def ensure_state(conn: psycopg.Connection) -> None:
    """Create the project's own schema (pk maps, load records, staging) if missing, or bring an older one up to
    date (a pk map table keyed by text, from before pk_scope). Safe under concurrency."""
    current = one_row(
        conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL",
            (
                f"{INTERNAL_SCHEMA}.pending_constraint",
                f"{INTERNAL_SCHEMA}.pk_map_row",
                f"{INTERNAL_SCHEMA}.global_import",
            ),
        )
    )[0]
    if current:
        return
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_SCHEMA,))
        old_table = conn.execute(
            "SELECT relkind = 'r' FROM pg_class WHERE oid = to_regclass(%s)", (f"{INTERNAL_SCHEMA}.pk_map",)
        ).fetchone()
        if old_table and old_table[0]:
            conn.execute(f"ALTER TABLE {INTERNAL_SCHEMA}.pk_map RENAME TO pk_map_by_text")
        for ddl in _STATE_DDL:
            conn.execute(ddl)
        if old_table and old_table[0]:
            conn.execute(
                f"INSERT INTO {INTERNAL_SCHEMA}.pk_scope (import_id, model) SELECT DISTINCT import_id, model "
                f"FROM {INTERNAL_SCHEMA}.pk_map_by_text ON CONFLICT DO NOTHING"
            )
            conn.execute(
                f"INSERT INTO {INTERNAL_SCHEMA}.pk_map_row (scope, old_pk, new_pk, kind) "
                f"SELECT s.scope, o.old_pk, o.new_pk, o.kind FROM {INTERNAL_SCHEMA}.pk_map_by_text o "
                f"JOIN {INTERNAL_SCHEMA}.pk_scope s ON s.import_id = o.import_id AND s.model = o.model"
            )
            conn.execute(f"DROP TABLE {INTERNAL_SCHEMA}.pk_map_by_text")
        conn.execute(_PK_MAP_VIEW)


def pk_scope(conn: psycopg.Connection, import_id: str, model: str, *, create: bool = False) -> int | None:
    """The integer naming ``model``'s pk map in import ``import_id`` (created in the caller's transaction when
    ``create``); None when the model has no pk map in this import."""
    row = conn.execute(
        sql.SQL("SELECT scope FROM {} WHERE import_id = %s AND model = %s").format(PK_SCOPE), (import_id, model)
    ).fetchone()
    if row is None and create:
        row = conn.execute(
            sql.SQL(
                "INSERT INTO {} (import_id, model) VALUES (%s, %s) ON CONFLICT (import_id, model) "
                "DO UPDATE SET model = EXCLUDED.model RETURNING scope"
            ).format(PK_SCOPE),
            (import_id, model),
        ).fetchone()
    return row[0] if row else None


def lock_import(conn: psycopg.Connection, import_id: str) -> None:
    """Take the import's advisory lock until the end of the current transaction: staging, preparing and
    rolling back one import are serialised by it."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"backup-assets:{import_id}",))
