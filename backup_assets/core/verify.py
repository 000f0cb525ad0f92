"""Checks of one model's load, run against the target database after the load committed.

* ``counts_reconcile`` — rows read = written + merged + dropped, and the table really holds the rows the
  pk map says this import inserted or overwrote.
* ``no_dangling_fk`` — no foreign key of a row this import wrote points at a row that does not exist.
* ``sequence_past_max`` — the table's id sequence will hand out ids above max(id).
* ``no_rows_dropped`` — every row was imported; a warning when the only drops are the ones a filter or
  the scope asked for, an error otherwise (Sentry drops such rows silently; we do not).
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from .manifest import Manifest, ModelSpec
from .pk_kind import PkKind
from .query import one_row
from .results import CheckOutcome, LoadResult
from .schema import TableInfo, find_table
from .state import PK_MAP_ROW, pk_scope

CHECKS = ("counts_reconcile", "no_dangling_fk", "sequence_past_max", "no_rows_dropped")


def verify_model(
    conn: psycopg.Connection, import_id: str, spec: ModelSpec, manifest: Manifest, result: LoadResult
) -> list[CheckOutcome]:
    if result.rows_read == 0:
        return [CheckOutcome(name, True, "nothing staged for this model") for name in CHECKS]
    table = find_table(conn, spec.table_name)
    scope = pk_scope(conn, import_id, spec.name)
    kinds: dict[str, int] = dict(
        conn.execute(
            sql.SQL("SELECT kind::text, count(*) FROM {} WHERE scope = %s GROUP BY kind").format(PK_MAP_ROW), (scope,)
        ).fetchall()
    )
    in_table, dangling = _written_rows(conn, spec, manifest, table, scope) if table is not None else (0, {})
    return [
        _counts_reconcile(spec, result, kinds, in_table),
        _no_dangling_fk(dangling),
        _sequence_past_max(conn, table),
        _no_rows_dropped(result),
    ]


def _written_rows(
    conn: psycopg.Connection, spec: ModelSpec, manifest: Manifest, table: TableInfo, scope: int | None
) -> tuple[int, dict[str, int]]:
    """One pass over the rows this import wrote: how many the table holds, and per foreign key field how
    many point at no row of the parent's table."""
    checked: list[str] = []
    counts: list[sql.Composable] = [sql.SQL("count(*)")]
    joins: list[sql.Composable] = []
    for fk in spec.foreign_keys:
        parent = manifest.models.get(fk.model)
        parent_table = find_table(conn, parent.table_name) if parent else None
        if fk.column not in table.columns or parent_table is None:
            continue
        p, col = sql.Identifier(f"p{len(checked)}"), sql.Identifier(fk.column)
        checked.append(fk.field)
        counts.append(sql.SQL("count(*) FILTER (WHERE t.{col} IS NOT NULL AND {p}.id IS NULL)").format(col=col, p=p))
        joins.append(
            sql.SQL("LEFT JOIN {parent} {p} ON {p}.id = t.{col}").format(parent=parent_table.ident, p=p, col=col)
        )
    in_table, *missing = one_row(
        conn.execute(
            sql.SQL(
                "SELECT {counts} FROM {t} t JOIN {m} m ON m.new_pk = t.id AND m.scope = {scope} "
                "AND m.kind IN ('I', 'O') {joins}"
            ).format(
                counts=sql.SQL(", ").join(counts),
                t=table.ident,
                m=PK_MAP_ROW,
                scope=sql.Literal(scope),
                joins=sql.SQL(" ").join(joins),
            )
        )
    )
    return in_table, {f: n for f, n in zip(checked, missing) if n}


def _counts_reconcile(spec: ModelSpec, result: LoadResult, kinds: dict[str, int], in_table: int) -> CheckOutcome:
    written = kinds.get(PkKind.INSERTED, 0) + kinds.get(PkKind.OVERWRITTEN, 0)
    dropped = kinds.get(PkKind.DROPPED, 0) + kinds.get(PkKind.FILTERED, 0)
    ok = (
        result.rows_read == result.rows_written + result.rows_merged + result.rows_dropped
        and written == result.rows_written
        and kinds.get(PkKind.EXISTING, 0) == result.rows_merged
        and dropped == result.rows_dropped
        and in_table == written
    )
    return CheckOutcome(
        "counts_reconcile",
        ok,
        f"read {result.rows_read} = written {result.rows_written} + merged {result.rows_merged} + "
        f"dropped {result.rows_dropped}; {in_table} of the written rows are in {spec.table_name}",
        metadata={
            "rows_read": result.rows_read,
            "rows_written": result.rows_written,
            "rows_merged": result.rows_merged,
            "rows_dropped": result.rows_dropped,
            "rows_in_table": in_table,
            "pk_map_written": written,
        },
    )


def _no_dangling_fk(dangling: dict[str, int]) -> CheckOutcome:
    return CheckOutcome(
        "no_dangling_fk",
        not dangling,
        "every foreign key of the imported rows points at an existing row"
        if not dangling
        else "dangling foreign keys: " + ", ".join(f"{f} ({n} rows)" for f, n in dangling.items()),
        metadata={"dangling": dangling},
    )


def _sequence_past_max(conn: psycopg.Connection, table: TableInfo | None) -> CheckOutcome:
    if table is None or table.sequence_ident is None:
        return CheckOutcome("sequence_past_max", True, "no id sequence on this table", severity="WARN")
    last, max_id = one_row(
        conn.execute(
            sql.SQL(
                "SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END, (SELECT max(id) FROM {t}) "
                "FROM {seq}"
            ).format(t=table.ident, seq=table.sequence_ident)
        )
    )
    return CheckOutcome(
        "sequence_past_max",
        max_id is None or last >= max_id,
        f"sequence at {last}, max(id) {max_id}",
        metadata={"sequence": last, "max_id": max_id},
    )


def _no_rows_dropped(result: LoadResult) -> CheckOutcome:
    unexpected = result.rows_dropped - result.dropped_by_filter
    return CheckOutcome(
        "no_rows_dropped",
        result.rows_dropped == 0,
        "no row dropped"
        if result.rows_dropped == 0
        else f"{result.rows_dropped} rows dropped ({result.dropped_by_filter} by filters or scope, {unexpected} because "
        f"their parents were not imported): " + "; ".join(f"{r}: {n}" for r, n in result.dropped.items()),
        severity="ERROR" if unexpected else "WARN",
        metadata={"dropped": result.dropped},
    )
