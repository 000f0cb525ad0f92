"""Create mode's unique and foreign-key constraints, built once a table's rows are in.

A table that create mode makes for a model with many rows (``restore.DEFER_CONSTRAINTS_AT``) gets its
constraints after the model's rows are inserted, in the same transaction as the rows, as ``pg_restore``
does: PostgreSQL then builds each unique index once over the loaded rows and validates each foreign key
with one join, instead of maintaining the index and firing a foreign-key trigger for every inserted row.
The constraints wait in ``backup_assets.pending_constraint`` until that load; a table of few rows or none
is created with its constraints.

A violation fails the model's load like any other (a duplicate value is a :class:`UniqueViolationError`
naming the field and value), and the load's rollback puts the pending constraints back.
"""

from __future__ import annotations

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from .errors import TargetError
from .schema import Constraint
from .state import PENDING_CONSTRAINT


def defer(conn: psycopg.Connection, schema: str, table: str, constraints: list[Constraint]) -> None:
    """Record ``constraints`` of ``schema.table`` for :func:`apply_pending` (inside the caller's transaction)."""
    for c in constraints:
        where_column, where_value = c.where if c.where else (None, None)
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (table_schema, table_name, kind, columns, ref_table, where_column, "
                "where_value) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
            ).format(PENDING_CONSTRAINT),
            (
                schema,
                table,
                c.kind,
                list(c.columns),
                c.ref_table,
                where_column,
                Jsonb(where_value) if where_column else None,
            ),
        )


def apply_pending(conn: psycopg.Connection, schema: str, table: str) -> list[Constraint]:
    """Add the constraints waiting for ``schema.table`` (none: a cheap no-op); returns them. Runs inside
    the caller's transaction, so a violation leaves them waiting."""
    rows = conn.execute(
        sql.SQL(
            "DELETE FROM {} WHERE table_schema = %s AND table_name = %s "
            "RETURNING kind, columns, ref_table, where_column, where_value"
        ).format(PENDING_CONSTRAINT),
        (schema, table),
    ).fetchall()
    # uniques first: a duplicate is the likelier fault, and its message names the values
    pending = sorted(
        (
            Constraint(kind, tuple(columns), ref, (where_column, where_value) if where_column else None)
            for kind, columns, ref, where_column, where_value in rows
        ),
        key=lambda c: (c.kind != "u", c.columns),
    )
    parents = sorted({c.ref_table for c in pending if c.kind == "f" and c.ref_table not in (table, None)})
    if parents:  # a foreign key locks its parent table: take them all, in one order for every load, or two
        try:  # loads adding keys to the same parents at once could each wait for the other
            conn.execute(
                sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(
                    sql.SQL(", ").join(sql.Identifier(schema, p) for p in parents)
                )
            )
        except psycopg.errors.UndefinedTable:
            raise TargetError(
                f"table {schema}.{table}: a foreign key references one of {', '.join(parents)}, which no longer exists"
            ) from None
    for c in pending:  # names are PostgreSQL's own: <table>_<columns>_key|fkey|idx
        conn.execute(c.ddl(sql.Identifier(schema, table), schema))
    return pending
