"""The wipe of a global import: as Sentry's does, it replaces the instance (the manifest's relocatable
tables emptied, their id sequences restarted) before any row is loaded."""

from __future__ import annotations

import psycopg
from psycopg import sql

from .errors import TargetError
from .manifest import Manifest
from .query import one_row
from .schema import INTERNAL_SCHEMA, TableInfo, find_table


def replace_existing_data(conn: psycopg.Connection, manifest: Manifest, *, confirmed: bool) -> list[str]:
    """A global import replaces the instance, as Sentry's does: empty every relocatable table of the
    manifest that exists in the target (reverse dependency order) and restart their id sequences at 1.

    Does nothing when those tables are all empty; raises :class:`TargetError` when they hold data and
    ``confirmed`` is false. Other tables (not in the manifest, not relocatable, this project's own
    schema) are never touched: a foreign key from such a table into a table holding data makes the
    replace fail instead of cascading. Runs in the caller's transaction; returns the tables emptied.
    """
    tables: list[TableInfo] = []
    for model in reversed(manifest.relocatable()):
        info = find_table(conn, manifest[model].table_name)
        if info is not None and info.schema != INTERNAL_SCHEMA and all(t.ident != info.ident for t in tables):
            tables.append(info)
    holding = [
        t.name for t in tables if one_row(conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(t.ident)))[0]
    ]
    if not holding:
        return []
    if not confirmed:
        shown = ", ".join(holding[:5]) + (f" and {len(holding) - 5} more" if len(holding) > 5 else "")
        raise TargetError(
            f"the target database already holds data ({shown}); a global import replaces every "
            "relocatable table: confirm it (CLI: --no-prompt or answer the prompt; Dagster: "
            "replace_existing in the run config), or import into an empty database"
        )
    try:
        with conn.transaction():
            conn.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(t.ident for t in tables)))
    except psycopg.errors.FeatureNotSupported:  # another table references one of them: delete row by row
        for t in tables:
            try:
                with conn.transaction():
                    conn.execute(sql.SQL("DELETE FROM {}").format(t.ident))
            except psycopg.errors.ForeignKeyViolation as e:
                raise TargetError(
                    f"cannot empty {t.name} for the global import: rows of a table outside the "
                    f"manifest still refer to it ({e.diag.message_detail or e}); nothing was "
                    "deleted"
                ) from None
    for t in tables:
        if t.sequence_ident is not None:
            conn.execute("SELECT setval(%s::regclass, 1, false)", (t.sequence,))
    return holding
