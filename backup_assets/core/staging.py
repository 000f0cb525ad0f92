"""The staging area: the export's rows, split per model, inside the target PostgreSQL.

Why inside the target database: the decrypted rows are going there anyway, so staging them there adds
no new place where plaintext rests (it is protected as the target is); every worker that can load a
model into the target can read its staged rows (one machine, or Dagster's Kubernetes/Celery workers);
and a per-model load is then set-based SQL over the staged rows, with constant client memory.

Each import gets its own table ``backup_assets.stage_<hash of the import id>``; ``drop`` removes it
(and with it every staged byte) when the restore finishes or fails. The table is UNLOGGED by default:
staged rows are a cache of the backup file (a model's load re-stages them when they are missing), so
they need not be written twice through the WAL.
"""

from __future__ import annotations

import hashlib

import psycopg
from psycopg import sql

from .query import one_row
from .schema import INTERNAL_SCHEMA


def staging_table_name(import_id: str) -> str:
    return "stage_" + hashlib.sha256(import_id.encode()).hexdigest()[:24]


def staging_ident(import_id: str) -> sql.Identifier:
    return sql.Identifier(INTERNAL_SCHEMA, staging_table_name(import_id))


def staging_exists(conn: psycopg.Connection, import_id: str) -> bool:
    return one_row(
        conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{INTERNAL_SCHEMA}.{staging_table_name(import_id)}",))
    )[0]


def create_staging(conn: psycopg.Connection, import_id: str, unlogged: bool = True) -> sql.Identifier:
    """(Re)create the import's staging table, empty. Runs inside the caller's transaction."""
    ident = staging_ident(import_id)
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident))
    # model names compared byte-wise ("C"), whatever the database's locale: cheaper index builds and joins
    conn.execute(
        sql.SQL(
            'CREATE {} TABLE {} (model text COLLATE "C" NOT NULL, pk bigint NOT NULL, '
            "row_index bigint NOT NULL, fields jsonb NOT NULL)"
        ).format(sql.SQL("UNLOGGED" if unlogged else ""), ident)
    )
    return ident


def index_staging(conn: psycopg.Connection, import_id: str) -> None:
    """The staging's unique index on (model, pk): the loads' joins use it, and it refuses a pk twice in a model."""
    name = staging_table_name(import_id)
    conn.execute(
        sql.SQL("CREATE UNIQUE INDEX {} ON {} (model, pk)").format(
            sql.Identifier(name + "_key"), staging_ident(import_id)
        )
    )


def analyze_staging(conn: psycopg.Connection, import_id: str) -> None:
    """Planner statistics of the staged rows (how many per model), for the loads' joins."""
    conn.execute(sql.SQL("ANALYZE {}").format(staging_ident(import_id)))


def drop_staging(conn: psycopg.Connection, import_id: str) -> None:
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(staging_ident(import_id)))
