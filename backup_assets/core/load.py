"""Load one model: staged rows -> Sentry's rules -> foreign keys rewritten -> rows in the target table.

One model's load is one transaction: its rows, its primary-key map and its load record commit together
or not at all, so a load killed mid-way leaves nothing behind and a re-run completes it exactly. A load
that already committed for this import is not repeated: the recorded result is returned.

Everything is set-based SQL in the target database (no per-row round trips):

1. ``_cand`` (a temporary table): one row per staged row of the model, with each foreign key resolved
   through the persisted primary-key maps of the parent models (a LEFT JOIN per foreign key).
2. Rows are dropped, with a reason: first by Sentry's filters and scope (``semantics.py``), then where a
   non-null foreign key has no imported target (the parent is not in the export, was dropped itself, or
   was filtered; NULL-if-missing keys are set NULL instead, rows of merged users go). Self-references
   are resolved to a fixed point.
3. The rest of Sentry's rules: existing rows matched by a unique key (merged or overwritten), rows
   repeating an earlier row's key, values renamed or regenerated on collision.
4. New ids from the table's sequence, in the order of the old pks (``nextval`` over the sorted rows),
   or the old pks themselves where they are kept; the pk map is written. For a model where no filter,
   unique-key match or self-reference decides which rows stay (most of them), steps 1, 2 and 4 are one
   pass: the candidates are created with their drop reasons and new ids.
5. ``INSERT ... SELECT`` of the new rows (and ``UPDATE`` of overwritten ones, their previous values kept
   for rollback); in create mode the table's unique and foreign-key constraints are built now that its
   rows are in (``constraints.py``); the id sequence is moved past ``max(id)``; the load record is
   written. After the commit, the pk map's planner statistics are refreshed for the children's joins.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import psycopg
from psycopg import sql

from . import constraints, locks
from .errors import LoadError, MissingParentError, TargetError, UniqueViolationError
from .manifest import ModelSpec
from .pk_kind import PkKind
from .query import one_row
from .results import LoadResult
from .schema import Column, TableInfo, describe_name, require_table, value_sql
from .semantics import ModelRules, Rewrite, Where
from .state import LOAD_RECORD, OVERWRITTEN, PK_MAP_ROW, pk_scope

SAMPLE = 20
#: Rows a model must have for its load to gather planner statistics (its candidates, then the pk map).
ANALYZE_AFTER = 2000
RENAMED_SAMPLE = 1000  #: renames listed in a LoadResult (all are counted in ``resets``)
REROLLS = 20  #: attempts to find a free value for a rewritten unique value
#: A candidate still to be inserted: not dropped, not matched to an existing row (its id drawn or not yet).
_TO_INSERT = sql.SQL("c.reason IS NULL AND (c.kind IS NULL OR c.kind = 'I')")


@dataclass
class LoadContext:
    import_id: str
    staging: sql.Composable  #: the import's staging table
    plan: list[str]  #: every model of this import, in dependency order
    fields: list[str] | None = None  #: the model's field names as the parse saw them (None: read the staging)
    staged_rows: int | None = None  #: the model's staged rows as the parse counted them (None: ask the staging)


def lock_key(import_id: str, model: str) -> str:
    return f"backup-assets:{import_id}:{model}"


def recorded_result(conn: psycopg.Connection, import_id: str, model: str) -> LoadResult | None:
    row = conn.execute(
        sql.SQL("SELECT result FROM {} WHERE import_id = %s AND model = %s").format(LOAD_RECORD), (import_id, model)
    ).fetchone()
    return LoadResult.from_json(row[0]) if row else None


def load_model(conn: psycopg.Connection, ctx: LoadContext, spec: ModelSpec, rules: ModelRules) -> LoadResult:
    """Load ``spec``'s staged rows (see the module docstring). ``conn`` must not be in a transaction."""
    started = time.monotonic()
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (lock_key(ctx.import_id, spec.name),))
            locks.lock_database(conn, exclusive=False)  # no DDL nor global wipe while this load runs
            done = recorded_result(conn, ctx.import_id, spec.name)
            if done is not None:
                done.already_loaded = True
                return done
            _check_parents(conn, ctx, spec)
            if ctx.staged_rows is not None:
                staged = ctx.staged_rows > 0
            else:
                staged = one_row(
                    conn.execute(
                        sql.SQL("SELECT EXISTS (SELECT 1 FROM {} s WHERE s.model = %s)").format(ctx.staging),
                        (spec.name,),
                    )
                )[0]
            if staged:
                conn.execute("SET LOCAL work_mem = '64MB'")  # the sorts by old pk stay in memory
                table = require_table(conn, spec)
                # another import's collision checks and insert into this table come before or after ours
                locks.lock_table(conn, table.schema, table.name)
                result = _load(conn, ctx, spec, rules, table)
            else:  # nothing staged: nothing to write, and the table need not even exist
                result = LoadResult(model=spec.name, table=spec.table_name)
            result.seconds = round(time.monotonic() - started, 3)
            conn.execute(
                sql.SQL("INSERT INTO {} (import_id, model, result) VALUES (%s, %s, %s)").format(LOAD_RECORD),
                (ctx.import_id, spec.name, psycopg.types.json.Jsonb(result.to_json())),
            )
        if result.rows_read >= ANALYZE_AFTER:
            # keep the planner's picture of the pk maps true for the children's joins; after the commit, so that
            # loads running at once do not queue behind each other's ANALYZE (it holds its lock to the end)
            try:
                conn.execute(sql.SQL("ANALYZE {}").format(PK_MAP_ROW))
            except psycopg.errors.LockNotAvailable:  # lock_timeout while another load analyzes: theirs will do
                pass
        return result
    except psycopg.errors.UniqueViolation as e:
        raise _unique_error(spec, e) from None
    except psycopg.errors.NotNullViolation as e:
        raise _not_null_error(conn, ctx, spec, e.diag.column_name) from None
    except psycopg.errors.ForeignKeyViolation as e:
        raise LoadError(
            spec.name, f"a foreign key does not hold: {e.diag.message_detail or e.diag.message_primary}"
        ) from None
    except (psycopg.DataError, psycopg.errors.CheckViolation) as e:
        raise _diagnose_value_error(conn, ctx, spec, e) from None


def _check_parents(conn: psycopg.Connection, ctx: LoadContext, spec: ModelSpec) -> None:
    parents = [m for m in ctx.plan if m in spec.dependencies]
    if not parents:
        return
    loaded = {
        r[0]
        for r in conn.execute(
            sql.SQL("SELECT model FROM {} WHERE import_id = %s AND model = ANY(%s)").format(LOAD_RECORD),
            (ctx.import_id, parents),
        )
    }
    missing = [m for m in parents if m not in loaded]
    if missing:  # a parent with nothing staged has nothing to map: its load may be skipped
        staged = {
            r[0]
            for r in conn.execute(
                sql.SQL(
                    "SELECT m FROM unnest(%s::text[]) m WHERE EXISTS (SELECT 1 FROM {} s WHERE s.model = m)"
                ).format(ctx.staging),
                (missing,),
            )
        }
        missing = [m for m in missing if m in staged]
    if missing:
        raise MissingParentError(
            spec.name,
            f"parent model(s) {', '.join(missing)} were not loaded for import "
            f"{ctx.import_id}; load them first (their primary-key maps are needed)",
        )


@dataclass
class _Shape:
    """What a model's load works with, decided before any row is read."""

    spec: ModelSpec
    table: TableInfo
    rules: ModelRules  #: the model's rules, the rewrites' values among its overrides
    staged: sql.Composable  #: the import's staging table, as ``s``
    model: sql.Composable  #: the model's name, as a literal
    data_cols: list[Column]  #: the columns written from the staged fields (not id, not fks)
    fks: list  #: the foreign keys to other models (``fkN``, ``kN``, ``hasN``)
    self_fks: list  #: the foreign keys to the model itself
    rewrites: list[tuple[int, Rewrite, Column]]
    reset_columns: list[str]  #: the columns whose value a rule sets
    key: list[tuple[str, sql.Composable]]  #: the unique key existing rows are matched on, with its values
    matching: bool  #: existing rows are matched on ``key``
    one_pass: bool  #: the candidates are created with their reasons and new ids


def _load(
    conn: psycopg.Connection, ctx: LoadContext, spec: ModelSpec, rules: ModelRules, table: TableInfo
) -> LoadResult:
    result = LoadResult(model=spec.name, table=spec.table_name)
    shape = _shape(conn, ctx, spec, rules, table, result)
    reason, expected = _missing_parent_reason(spec, shape.fks, shape.rules)
    result.rows_read = _create_candidates(conn, ctx, shape, reason, expected)
    _drop_filtered(conn, shape, Where(ctx.staging, ctx.import_id))
    _drop_missing_parents(conn, shape, reason, expected, result)
    _drop_orphaned_self_references(conn, shape)
    if shape.matching:
        _match_existing(conn, shape)
    _rewrite_collisions(conn, ctx, shape)
    _draw_new_ids(conn, ctx, shape)
    inserted, overwritten = _write(conn, ctx, shape)
    constraints.apply_pending(conn, table.schema, table.name)  # create mode: built now that the rows are in
    _advance_sequence(conn, table)
    _summarize(conn, result, shape)
    result.rows_overwritten = overwritten
    result.rows_written = inserted + overwritten
    return result


def _shape(
    conn: psycopg.Connection, ctx: LoadContext, spec: ModelSpec, rules: ModelRules, table: TableInfo, result: LoadResult
) -> _Shape:
    """The columns, keys and rules of this load; the staged fields the table has no column for go in
    ``result.skipped_fields``. A foreign key without its column, or new rows without a sequence, fail."""
    model = sql.Literal(spec.name)
    staged = sql.SQL("{staging} s").format(staging=ctx.staging)
    present = (
        set(ctx.fields)
        if ctx.fields is not None
        else {
            r[0]
            for r in conn.execute(
                sql.SQL("SELECT DISTINCT jsonb_object_keys(s.fields) FROM {staged} WHERE s.model = {model}").format(
                    staged=staged, model=model
                )
            )
        }
    )
    fk_columns = {fk.column for fk in spec.foreign_keys}
    rewrites = [(j, rw, table.columns[rw.column]) for j, rw in enumerate(rules.rewrites) if rw.column in table.columns]
    reset_columns = [c for c in rules.overrides if c in table.columns]
    rules = replace(rules, overrides={**rules.overrides, **_rewrite_overrides(rewrites, table, rules)})
    result.skipped_fields = sorted(
        describe_name(k) for k in present if k not in table.columns and k not in spec.fk_by_field
    )
    data_cols = [
        c
        for name, c in table.columns.items()
        if name != "id" and name not in fk_columns and (name in present or name in rules.overrides)
    ]
    fks = [fk for fk in spec.foreign_keys if fk.model != spec.name]
    self_fks = [fk for fk in spec.foreign_keys if fk.model == spec.name]
    for fk in spec.foreign_keys:
        if fk.column not in table.columns and fk.field in present:
            raise TargetError(
                f"{spec.name}: table {spec.table_name!r} has no column {fk.column!r} for the foreign key {fk.field!r}"
            )
    if not rules.keep_pks and table.sequence_ident is None:
        raise TargetError(
            f"{spec.name}: table {spec.table_name!r} has no sequence behind 'id' to number new rows "
            "(use --preserve-pks to keep the export's keys)"
        )
    key = [(c, _key_value(c, table, fks, rules)) for c in rules.match_columns if c in table.columns]
    matching = bool(key) and len(key) == len(rules.match_columns)
    return _Shape(
        spec,
        table,
        rules,
        staged,
        model,
        data_cols,
        fks,
        self_fks,
        rewrites,
        reset_columns,
        key,
        matching,
        one_pass=not rules.drops and not self_fks and not matching,
    )


def _create_candidates(
    conn: psycopg.Connection, ctx: LoadContext, shape: _Shape, reason: sql.Composable, expected: sql.Composable
) -> int:
    """Step 1: ``_cand``, one row per staged row with every foreign key resolved through the parents' pk
    maps; in the one-pass case also the reason a row goes and the new ids. Returns the rows read."""
    candidates = _candidates_select(conn, ctx, shape)
    if shape.one_pass:  # reason as computed; kept rows numbered in old-pk order (the sequence is read in that order)
        new_id = (
            sql.SQL("y.old_pk")
            if shape.rules.keep_pks
            else sql.SQL("nextval({})").format(sql.Literal(shape.table.sequence))
        )
        select = sql.SQL(
            "SELECT y.*, CASE WHEN y.reason IS NULL THEN {new_id} END AS new_pk, "
            "CASE WHEN y.reason IS NULL THEN 'I' END::\"char\" AS kind FROM (SELECT x.*, {reason} AS reason, "
            "{expected} AS expected FROM ({candidates} ORDER BY s.pk OFFSET 0) x) y"
        ).format(new_id=new_id, reason=reason, expected=expected, candidates=candidates)
    else:  # reasons and ids are decided by the steps that follow
        select = sql.SQL(
            "SELECT x.*, NULL::text AS reason, false AS expected, NULL::bigint AS new_pk, "
            'NULL::"char" AS kind FROM ({candidates}) x'
        ).format(candidates=candidates)
    # room on each page for the updates of the steps that follow (in the one-pass case, only renames on a collision)
    rows = conn.execute(
        sql.SQL("CREATE TEMP TABLE _cand WITH (fillfactor = {}) ON COMMIT DROP AS {}").format(
            sql.Literal(100 if shape.one_pass else 50), select
        )
    ).rowcount
    conn.execute("CREATE UNIQUE INDEX ON _cand (old_pk)")
    if rows >= ANALYZE_AFTER:  # the planner's estimates matter for the joins that follow
        conn.execute("ANALYZE _cand")
    conn.execute("ALTER TABLE _cand ADD COLUMN dup_of bigint")
    for j, _rw, _col in shape.rewrites:
        conn.execute(
            sql.SQL("ALTER TABLE _cand ADD COLUMN {} text, ADD COLUMN {} boolean NOT NULL DEFAULT false").format(
                sql.Identifier(f"rw{j}"), sql.Identifier(f"rwf{j}")
            )
        )
    return rows


def _candidates_select(conn: psycopg.Connection, ctx: LoadContext, shape: _Shape) -> sql.Composable:
    """The staged rows of the model with each foreign key's new id (``fkN``), pk map kind (``kN``) and
    whether the row names a parent (``hasN``). Each old value is read out of the staged JSON once (the
    parse let only integers and nulls through), in a subquery kept apart from the joins (OFFSET 0) so
    that it is not read again for each use."""
    cols: list[sql.Composable] = [sql.SQL("s.pk AS old_pk"), sql.SQL("s.row_index")]
    olds: list[sql.Composable] = [sql.SQL("s.pk"), sql.SQL("s.row_index")]
    joins: list[sql.Composable] = []
    for i, fk in enumerate(shape.fks):
        m, old = sql.Identifier(f"m{i}"), sql.Identifier(f"old{i}")
        olds.append(sql.SQL("(s.fields ->> {f})::bigint AS {old}").format(f=sql.Literal(fk.field), old=old))
        cols += [
            sql.SQL("{m}.new_pk AS {c}").format(m=m, c=sql.Identifier(f"fk{i}")),
            sql.SQL("{m}.kind AS {c}").format(m=m, c=sql.Identifier(f"k{i}")),
            sql.SQL("s.{old} IS NOT NULL AS {c}").format(old=old, c=sql.Identifier(f"has{i}")),
        ]
        scope = pk_scope(conn, ctx.import_id, fk.model)  # None: the parent has no pk map, no row matches
        joins.append(
            sql.SQL("LEFT JOIN {pk_map} {m} ON {m}.scope = {scope} AND {m}.old_pk = s.{old}").format(
                pk_map=PK_MAP_ROW, m=m, scope=sql.Literal(scope), old=old
            )
        )
    return sql.SQL(
        "SELECT {cols} FROM (SELECT {olds} FROM {staged} WHERE s.model = {model} OFFSET 0) s {joins}"
    ).format(
        cols=sql.SQL(", ").join(cols),
        olds=sql.SQL(", ").join(olds),
        staged=shape.staged,
        joins=sql.SQL(" ").join(joins),
        model=shape.model,
    )


def _drop_filtered(conn: psycopg.Connection, shape: _Shape, where: Where) -> None:
    """Step 2a: Sentry's filters and scope (before missing parents, so a row out of scope is counted as such)."""
    for drop in shape.rules.drops:
        conn.execute(
            sql.SQL(
                "UPDATE _cand c SET reason = {why}, expected = {exp} FROM {staged} "
                "WHERE s.model = {model} AND s.pk = c.old_pk AND c.reason IS NULL AND ({cond})"
            ).format(
                why=sql.Literal(drop.reason),
                exp=sql.Literal(drop.expected),
                staged=shape.staged,
                model=shape.model,
                cond=drop.sql(where),
            )
        )


def _drop_missing_parents(
    conn: psycopg.Connection, shape: _Shape, reason: sql.Composable, expected: sql.Composable, result: LoadResult
) -> None:
    """Step 2b: rows whose parents were not imported go (already decided in the one-pass case); the
    NULL-if-missing keys set NULL are counted in ``result.resets``."""
    if not shape.one_pass and shape.fks:
        conn.execute(
            sql.SQL(
                "UPDATE _cand SET reason = {reason}, expected = {expected} "
                "WHERE reason IS NULL AND {reason} IS NOT NULL"
            ).format(reason=reason, expected=expected)
        )
    for i, fk in enumerate(shape.fks):
        if fk.field in shape.rules.null_if_missing:
            n = one_row(
                conn.execute(
                    sql.SQL("SELECT count(*) FROM _cand WHERE {has} AND {fk} IS NULL").format(
                        has=sql.Identifier(f"has{i}"), fk=sql.Identifier(f"fk{i}")
                    )
                )
            )[0]
            if n:
                result.resets[f"{fk.field} (target not imported: set NULL)"] = n


def _drop_orphaned_self_references(conn: psycopg.Connection, shape: _Shape) -> None:
    """Step 2c: a row whose parent in the same model is not imported goes too, to a fixed point."""
    for fk in shape.self_fks:
        f = sql.Literal(fk.field)
        while conn.execute(
            sql.SQL(
                "UPDATE _cand c SET reason = {why} FROM {staged} WHERE s.model = {model} AND s.pk = c.old_pk "
                "AND c.reason IS NULL AND jsonb_typeof(s.fields -> {f}) = 'number' AND NOT EXISTS "
                "(SELECT 1 FROM _cand p WHERE p.old_pk = (s.fields ->> {f})::bigint AND p.reason IS NULL)"
            ).format(
                why=sql.Literal(f"missing parent: {shape.spec.name} ({fk.field}) is not imported"),
                staged=shape.staged,
                model=shape.model,
                f=f,
            )
        ).rowcount:
            pass


def _match_existing(conn: psycopg.Connection, shape: _Shape) -> None:
    """Step 3: existing rows matched on a unique key are merged (E) or overwritten in place (O); with
    ``dedupe``, a row repeating an earlier row's key inside the export maps onto that row."""
    rules = shape.rules
    match = sql.SQL(" AND ").join(
        sql.SQL("t.{col} IS NOT DISTINCT FROM {v}").format(col=sql.Identifier(c), v=v) for c, v in shape.key
    )
    conn.execute(
        sql.SQL(
            "UPDATE _cand c SET new_pk = t.id, kind = {kind} FROM {staged}, {table} t "
            "WHERE s.model = {model} AND s.pk = c.old_pk AND c.reason IS NULL AND {match}"
        ).format(
            kind=sql.Literal(PkKind.OVERWRITTEN if rules.overwrite else PkKind.EXISTING),
            staged=shape.staged,
            table=shape.table.ident,
            model=shape.model,
            match=match,
        )
    )
    # one export row overwrites an existing row; later rows with the same key only map onto it
    conn.execute(
        "UPDATE _cand c SET kind = 'E' WHERE c.kind = 'O' AND EXISTS "
        "(SELECT 1 FROM _cand o WHERE o.kind = 'O' AND o.new_pk = c.new_pk AND o.old_pk < c.old_pk)"
    )
    if rules.dedupe:
        conn.execute(
            sql.SQL(
                "UPDATE _cand u SET kind = 'E', dup_of = d.first FROM (SELECT c.old_pk, first_value(c.old_pk) "
                "OVER (PARTITION BY {keys} ORDER BY c.old_pk) AS first FROM _cand c JOIN {staged} ON s.model = {model} "
                "AND s.pk = c.old_pk WHERE c.reason IS NULL AND c.kind IS NULL AND {not_null}) d "
                "WHERE u.old_pk = d.old_pk AND d.first <> d.old_pk"
            ).format(
                keys=sql.SQL(", ").join(v for _c, v in shape.key),
                staged=shape.staged,
                model=shape.model,
                not_null=sql.SQL(" AND ").join(sql.SQL("({}) IS NOT NULL").format(v) for _c, v in shape.key),
            )
        )


def _rewrite_collisions(conn: psycopg.Connection, ctx: LoadContext, shape: _Shape) -> None:
    """Values that collide with the table or an earlier row of the export: renamed or regenerated."""
    if not shape.rewrites:
        return
    # every candidate to be inserted (the usual case): the collision checks read the staged values alone
    everyone = not one_row(
        conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM _cand c WHERE NOT ({}))").format(_TO_INSERT))
    )[0]
    for j, rw, col in shape.rewrites:
        _rewrite(conn, shape.spec, shape.table, ctx.staging, shape.model, j, rw, col, everyone)


def _draw_new_ids(conn: psycopg.Connection, ctx: LoadContext, shape: _Shape) -> None:
    """Step 4: new ids, in the order of the old pks (drawn with the candidates in the one-pass case), or
    the old pks where they are kept; then the pk map is written."""
    if shape.one_pass:
        pass
    elif shape.rules.keep_pks:
        conn.execute("UPDATE _cand SET new_pk = old_pk, kind = 'I' WHERE reason IS NULL AND kind IS NULL")
    else:
        conn.execute(
            sql.SQL(
                "UPDATE _cand c SET new_pk = a.id, kind = 'I' FROM (SELECT o.old_pk, nextval({seq}) AS id FROM "
                "(SELECT old_pk FROM _cand WHERE reason IS NULL AND kind IS NULL ORDER BY old_pk OFFSET 0) o) a "
                "WHERE a.old_pk = c.old_pk"
            ).format(seq=sql.Literal(shape.table.sequence))
        )
    if shape.matching and shape.rules.dedupe:
        conn.execute("UPDATE _cand c SET new_pk = f.new_pk FROM _cand f WHERE c.dup_of = f.old_pk")
    conn.execute(
        sql.SQL(
            "INSERT INTO {pk_map} (scope, old_pk, new_pk, kind) SELECT {scope}, old_pk, new_pk, "
            "COALESCE(kind, (CASE WHEN expected THEN 'F' ELSE 'D' END)::\"char\") FROM _cand"
        ).format(pk_map=PK_MAP_ROW, scope=sql.Literal(pk_scope(conn, ctx.import_id, shape.spec.name, create=True)))
    )


def _write(conn: psycopg.Connection, ctx: LoadContext, shape: _Shape) -> tuple[int, int]:
    """Step 5: ``INSERT ... SELECT`` of the new rows, and ``UPDATE`` of the overwritten ones (their
    previous values kept for rollback). Returns the rows inserted and overwritten."""
    targets, values, self_joins = _written_columns(shape)
    source = sql.SQL("FROM _cand c JOIN {staged} ON s.model = {model} AND s.pk = c.old_pk").format(
        staged=shape.staged, model=shape.model
    )
    table = shape.table.ident
    inserted = conn.execute(
        sql.SQL(
            "INSERT INTO {table} ({targets}) SELECT {values} {source} {joins} WHERE c.kind = 'I' ORDER BY c.new_pk"
        ).format(
            table=table,
            targets=sql.SQL(", ").join(targets),
            values=sql.SQL(", ").join(values),
            source=source,
            joins=sql.SQL(" ").join(self_joins),
        )
    ).rowcount
    if not shape.rules.overwrite:
        return inserted, 0
    conn.execute(
        sql.SQL(
            "INSERT INTO {ow} (import_id, model, id, previous) SELECT {id}, {model}, t.id, to_jsonb(t) "
            "FROM {table} t JOIN _cand c ON t.id = c.new_pk AND c.kind = 'O' "
            "ON CONFLICT DO NOTHING"
        ).format(ow=OVERWRITTEN, id=sql.Literal(ctx.import_id), model=shape.model, table=table)
    )
    sets = [sql.SQL("{} = {}").format(t, v) for t, v in zip(targets[1:], values[1:])]
    if not sets:
        return inserted, 0
    return inserted, conn.execute(
        sql.SQL("UPDATE {table} t SET {sets} {source} WHERE t.id = c.new_pk AND c.kind = 'O'").format(
            table=table, sets=sql.SQL(", ").join(sets), source=source
        )
    ).rowcount


def _written_columns(shape: _Shape) -> tuple[list[sql.Composable], list[sql.Composable], list[sql.Composable]]:
    """The columns a written row sets, their values over ``c`` (the candidate) and ``s`` (its staged row),
    and the joins that resolve self-references (``pN``: the referenced candidate)."""
    targets: list[sql.Composable] = [sql.Identifier("id")]
    values: list[sql.Composable] = [sql.SQL("c.new_pk")]
    self_joins: list[sql.Composable] = []
    for col in shape.data_cols:
        targets.append(sql.Identifier(col.name))
        values.append(_value(col, shape.rules))
    for i, fk in enumerate(shape.fks):
        if fk.column in shape.table.columns:
            targets.append(sql.Identifier(fk.column))
            values.append(sql.SQL("c.{}").format(sql.Identifier(f"fk{i}")))
    for j, fk in enumerate(shape.self_fks):
        if fk.column in shape.table.columns:
            alias = sql.Identifier(f"p{j}")
            targets.append(sql.Identifier(fk.column))
            values.append(sql.SQL("{}.new_pk").format(alias))
            self_joins.append(
                sql.SQL("LEFT JOIN _cand {a} ON {a}.old_pk = (s.fields ->> {f})::bigint AND {a}.reason IS NULL").format(
                    a=alias, f=sql.Literal(fk.field)
                )
            )
    return targets, values, self_joins


def _summarize(conn: psycopg.Connection, result: LoadResult, shape: _Shape) -> None:
    """Step 6: what happened: the drops by reason (with a sample), merges, the new ids' range, the values
    reset or rewritten."""
    for reason, n, expected in conn.execute(
        "SELECT reason, count(*), bool_and(expected) FROM _cand "
        "WHERE reason IS NOT NULL GROUP BY reason ORDER BY reason"
    ):
        result.dropped[reason] = n
        if expected:
            result.dropped_by_filter += n
    if result.dropped:
        result.dropped_sample = [
            {"pk": pk, "row": ri, "reason": r}
            for pk, ri, r in conn.execute(
                "SELECT old_pk, row_index, reason FROM _cand WHERE reason IS NOT NULL ORDER BY row_index LIMIT %s",
                (SAMPLE,),
            )
        ]
    result.rows_merged, result.new_id_min, result.new_id_max = one_row(
        conn.execute(
            "SELECT count(*) FILTER (WHERE kind = 'E'), min(new_pk) FILTER (WHERE kind = 'I'), "
            "max(new_pk) FILTER (WHERE kind = 'I') FROM _cand"
        )
    )
    _record_changes(
        conn, result, shape.rules, shape.staged, shape.model, shape.reset_columns, shape.rewrites, shape.table
    )


def _missing_parent_reason(spec: ModelSpec, fks: list, rules: ModelRules) -> tuple[sql.Composable, sql.Composable]:
    """Why a candidate goes for want of a parent, and whether that was asked for (a filter), as SQL over the
    candidate's columns ``hasN`` (the row names a parent), ``fkN`` (its new id) and ``kN`` (its pk map kind).
    The first foreign key at fault names the reason; NULL when every parent was imported."""
    reasons, expected = [], []
    for i, fk in enumerate(fks):
        if fk.field in rules.null_if_missing:  # kept, with the key set NULL
            continue
        has, fkv, kind = (sql.Identifier(f"{p}{i}") for p in ("has", "fk", "k"))
        what = f"{fk.model} ({fk.field})"
        missing = sql.SQL("{} AND {} IS NULL").format(has, fkv)
        reasons.append(
            sql.SQL(
                "WHEN {missing} THEN CASE {kind} WHEN 'F' THEN {filtered} WHEN 'D' THEN {dropped} ELSE {absent} END"
            ).format(
                missing=missing,
                kind=kind,
                filtered=sql.Literal(f"filtered: parent {what} was filtered"),
                dropped=sql.Literal(f"missing parent: {what} was dropped"),
                absent=sql.Literal(f"missing parent: {what} is not in the import"),
            )
        )
        expected.append(
            sql.SQL("WHEN {missing} THEN {kind} IS NOT DISTINCT FROM 'F'").format(missing=missing, kind=kind)
        )
        if fk.field in rules.drop_if_parent_kind:
            k, why = rules.drop_if_parent_kind[fk.field]
            reasons.append(
                sql.SQL("WHEN {kind} = {k} THEN {why}").format(kind=kind, k=sql.Literal(k), why=sql.Literal(why))
            )
            expected.append(sql.SQL("WHEN {kind} = {k} THEN true").format(kind=kind, k=sql.Literal(k)))
    if not reasons:
        return sql.SQL("NULL::text"), sql.SQL("false")
    return (
        sql.SQL("(CASE {} END)").format(sql.SQL(" ").join(reasons)),
        sql.SQL("(CASE {} ELSE false END)").format(sql.SQL(" ").join(expected)),
    )


def _key_value(column: str, table: TableInfo, fks: list, rules: ModelRules) -> sql.Composable:
    """A match-key column's incoming value: the resolved new foreign key (``c.fkN``), else the staged value."""
    for i, fk in enumerate(fks):
        if fk.column == column:
            return sql.SQL("c.{}").format(sql.Identifier(f"fk{i}"))
    return _value(table.columns[column], rules)


def _rewrite_overrides(
    rewrites: list[tuple[int, Rewrite, Column]], table: TableInfo, rules: ModelRules
) -> dict[str, sql.Composable]:
    """Column values of rewritten rows: the new value (and the columns derived from it), else the usual value."""
    out: dict[str, sql.Composable] = {}
    for j, rw, _col in rewrites:
        flag, new = sql.Identifier(f"rwf{j}"), sql.SQL("c.{}").format(sql.Identifier(f"rw{j}"))
        exprs = {rw.column: new, **{d: fn(new) for d, fn in rw.derived.items()}}
        for name, expr in exprs.items():
            if name not in table.columns:
                continue
            target = table.columns[name]
            out[name] = sql.SQL("CASE WHEN c.{flag} THEN ({expr})::{t} ELSE {orig} END").format(
                flag=flag, expr=expr, t=sql.SQL(target.type_sql), orig=out.get(name, _value(target, rules))
            )
    return out


def _rewrite(
    conn: psycopg.Connection,
    spec: ModelSpec,
    table: TableInfo,
    staging: sql.Composable,
    model: sql.Composable,
    j: int,
    rw: Rewrite,
    col: Column,
    everyone: bool = False,
) -> None:
    """Mark the rows to insert whose ``rw.column`` value is taken (in the table, or by an earlier row of the
    export) and give them a fresh value, re-drawn until no value is taken twice. ``everyone``: every staged
    row of the model is to be inserted."""
    fmt = _rewrite_fmt(table, staging, model, j, rw, col)
    values = _taken_values(fmt)
    if not _any_value_taken(conn, fmt, values, everyone):
        return
    _mark_taken(conn, fmt, values)
    _redraw_taken(conn, spec, table, rw, fmt)


def _rewrite_fmt(
    table: TableInfo, staging: sql.Composable, model: sql.Composable, j: int, rw: Rewrite, col: Column
) -> dict[str, sql.Composable]:
    """The SQL pieces that :func:`_rewrite`'s statements are formatted with."""
    max_len = min(filter(None, (col.max_length, rw.max_length)), default=None)
    return dict(
        rw=sql.Identifier(f"rw{j}"),
        flag=sql.Identifier(f"rwf{j}"),
        fresh=rw.fresh(sql.SQL("d.v"), max_len),
        staged=sql.SQL("{} s").format(staging),
        model=model,
        table=table.ident,
        col=sql.Identifier(rw.column),
        text=sql.SQL("s.fields ->> {}").format(sql.Literal(rw.column)),
        typed=value_sql(col, sql.SQL("s.fields"), rw.column),
        t=sql.SQL(col.type_sql),
        to_insert=_TO_INSERT,
    )


def _taken_values(fmt: dict[str, sql.Composable]) -> sql.Composable:
    """The rewritten column's values of the rows to insert, with their old pk: a value is taken when the
    table holds it, or an earlier row (by old pk) of the export has it."""
    return sql.SQL(
        "SELECT c.old_pk, {text} AS v, {typed} AS tv FROM _cand c JOIN {staged} ON s.model = {model} "
        "AND s.pk = c.old_pk WHERE {to_insert} AND {text} IS NOT NULL"
    ).format(**fmt)


def _any_value_taken(
    conn: psycopg.Connection, fmt: dict[str, sql.Composable], values: sql.Composable, everyone: bool
) -> bool:
    """Whether any value is taken: the usual case (none is) is decided with two hash operations."""
    staged_values = (
        sql.SQL(
            "SELECT {text} AS v, {typed} AS tv FROM {staged} WHERE s.model = {model} AND {text} IS NOT NULL"
        ).format(**fmt)
        if everyone
        else values
    )
    return bool(
        one_row(
            conn.execute(
                sql.SQL(
                    "WITH f AS MATERIALIZED ({values}) SELECT EXISTS (SELECT FROM f GROUP BY v HAVING count(*) > 1) "
                    "OR EXISTS (SELECT FROM f JOIN {table} t ON t.{col} = f.tv)"
                ).format(values=staged_values, **fmt)
            )
        )[0]
    )


def _mark_taken(conn: psycopg.Connection, fmt: dict[str, sql.Composable], values: sql.Composable) -> None:
    """Flag the rows whose value is taken and give each a fresh value."""
    conn.execute(
        sql.SQL(
            "WITH f AS ({values}), firsts AS (SELECT v, min(old_pk) AS first FROM f GROUP BY v HAVING count(*) > 1) "
            "UPDATE _cand u SET {flag} = true, {rw} = {fresh} FROM (SELECT f.old_pk, f.v FROM f LEFT JOIN firsts "
            "ON firsts.v = f.v WHERE f.old_pk > firsts.first OR EXISTS (SELECT 1 FROM {table} t WHERE t.{col} = f.tv)) d "
            "WHERE u.old_pk = d.old_pk"
        ).format(values=values, **fmt)
    )


def _redraw_taken(
    conn: psycopg.Connection, spec: ModelSpec, table: TableInfo, rw: Rewrite, fmt: dict[str, sql.Composable]
) -> None:
    """Re-draw the fresh values still taken until none is, :data:`REROLLS` times at most."""
    # set-based re-draw: the final values of all rows to insert, and the rewritten ones still taken
    reroll = sql.SQL(
        "WITH f AS (SELECT c.old_pk, c.{flag} AS rewritten, CASE WHEN c.{flag} THEN c.{rw} ELSE {text} END AS v "
        "FROM _cand c JOIN {staged} ON s.model = {model} AND s.pk = c.old_pk WHERE {to_insert}), "
        "twice AS (SELECT v FROM f WHERE v IS NOT NULL GROUP BY v HAVING count(*) > 1), "
        "bad AS (SELECT f.old_pk FROM f WHERE f.rewritten AND f.v IS NOT NULL AND (f.v IN (SELECT v FROM twice) "
        "OR EXISTS (SELECT 1 FROM {table} t WHERE t.{col} = f.v::{t}))) "
        "UPDATE _cand u SET {rw} = {fresh} FROM (SELECT c.old_pk, {text} AS v FROM _cand c JOIN {staged} "
        "ON s.model = {model} AND s.pk = c.old_pk WHERE c.old_pk IN (SELECT old_pk FROM bad)) d "
        "WHERE u.old_pk = d.old_pk"
    ).format(**fmt)
    for _ in range(REROLLS):
        if not conn.execute(reroll).rowcount:
            return
    raise LoadError(
        spec.name,
        f"no free value found for {rw.column!r} after {REROLLS} attempts "
        f"(column {table.name}.{rw.column} is too short for a unique suffix?)",
    )


def _record_changes(
    conn: psycopg.Connection,
    result: LoadResult,
    rules: ModelRules,
    staged: sql.Composable,
    model: sql.Composable,
    reset_columns: list[str],
    rewrites: list[tuple[int, Rewrite, Column]],
    table: TableInfo,
) -> None:
    """Count the values reset on written rows, and list the values rewritten on collision."""
    src = sql.SQL("FROM _cand c JOIN {staged} ON s.model = {model} AND s.pk = c.old_pk").format(
        staged=staged, model=model
    )
    for name in reset_columns:
        n = one_row(
            conn.execute(
                sql.SQL(
                    "SELECT count(*) {src} WHERE c.kind IN ('I', 'O') AND ({v})::text IS DISTINCT FROM s.fields ->> {k}"
                ).format(src=src, v=rules.overrides[name], k=sql.Literal(name))
            )
        )[0]
        if n:
            result.resets[name] = n
    for j, rw, _col in rewrites:
        flag, rwc = sql.Identifier(f"rwf{j}"), sql.Identifier(f"rw{j}")
        n = one_row(conn.execute(sql.SQL("SELECT count(*) FROM _cand c WHERE c.{} AND c.kind = 'I'").format(flag)))[0]
        if not n:
            continue
        result.resets[f"{rw.column} (taken: {'renamed' if rw.record else 'regenerated'})"] = n
        if rw.record:
            result.renamed += [
                {"pk": pk, "field": rw.column, "old": old, "new": new}
                for pk, old, new in conn.execute(
                    sql.SQL(
                        "SELECT c.old_pk, s.fields ->> {k}, c.{rw} {src} WHERE c.{flag} AND c.kind = 'I' "
                        "ORDER BY c.old_pk LIMIT {lim}"
                    ).format(k=sql.Literal(rw.column), rw=rwc, src=src, flag=flag, lim=sql.Literal(RENAMED_SAMPLE))
                )
            ]


def _value(col: Column, rules: ModelRules) -> sql.Composable:
    if col.name in rules.overrides:
        return rules.overrides[col.name]
    return value_sql(col, sql.SQL("s.fields"), col.name)


def _advance_sequence(conn: psycopg.Connection, table: TableInfo) -> None:
    """Move the id sequence past max(id), so the application can insert after the restore."""
    if table.sequence_ident is None:
        return
    conn.execute(
        sql.SQL(
            "SELECT setval({seq_name}, m) FROM (SELECT max(id) AS m FROM {table}) x, {seq} "
            "WHERE m IS NOT NULL AND m > CASE WHEN is_called THEN last_value ELSE last_value - 1 END"
        ).format(seq_name=sql.Literal(table.sequence), table=table.ident, seq=table.sequence_ident)
    )


def _unique_error(spec: ModelSpec, e: psycopg.Error) -> UniqueViolationError:
    detail = e.diag.message_detail or ""
    # "Key (slug)=(acme) already exists."
    fields: tuple[str, ...] = ()
    values: tuple = ()
    vals = ""
    if detail.startswith("Key (") and ")=(" in detail:
        names, _, rest = detail[5:].partition(")=(")
        vals = rest.rsplit(")", 1)[0]
        fields = tuple(n.strip() for n in names.split(","))
        values = tuple(v.strip() for v in vals.split(",")) if len(fields) > 1 else (vals,)
    by_column = {fk.column: fk.field for fk in spec.foreign_keys}
    fields = tuple(by_column.get(f, f) for f in fields)
    if len(values) == len(fields):
        shown = ", ".join(f"{f}={v!r}" for f, v in zip(fields, values))
    else:  # a value holds a comma: the server's own words, rather than a wrong split
        values, shown = (vals,), f"({', '.join(fields)})=({vals})"
    return UniqueViolationError(
        spec.name,
        fields or (e.diag.constraint_name or "?",),
        values,
        f"unique key ({', '.join(fields)}) collides: {shown} "
        f"(constraint {e.diag.constraint_name}); nothing of {spec.name} was written",
    )


def _not_null_error(conn: psycopg.Connection, ctx: LoadContext, spec: ModelSpec, column: str | None) -> LoadError:
    """A NOT NULL column got no value: name the first staged row whose field is null or missing, if any."""
    message = f"column {column!r} of table {spec.table_name!r} is NOT NULL, but a row has no value for it"
    field = next((fk.field for fk in spec.foreign_keys if fk.column == column), column)
    try:
        first = (
            conn.execute(
                sql.SQL(
                    "SELECT s.row_index, s.pk FROM {staging} s WHERE s.model = {m} "
                    "AND s.fields ->> {k} IS NULL ORDER BY s.row_index LIMIT 1"
                ).format(staging=ctx.staging, m=sql.Literal(spec.name), k=sql.Literal(field))
            ).fetchone()
            if field
            else None
        )
    except psycopg.Error:
        first = None
    if first is not None:
        message += f" (row {first[0]}, pk {first[1]}: field {field!r} is null or missing)"
    return LoadError(spec.name, f"{message}; nothing of {spec.name} was written")


def _diagnose_value_error(conn: psycopg.Connection, ctx: LoadContext, spec: ModelSpec, e: psycopg.Error) -> LoadError:
    """Find the field and row whose value the column type refused (slow path, only after a failure): a
    string too long for its varchar(n) is looked up directly; otherwise each typed column is converted
    over all staged rows and the failing one is bisected by row index."""
    base = e.diag.message_primary or str(e)
    try:
        table = require_table(conn, spec)
        lo, hi = one_row(
            conn.execute(
                sql.SQL("SELECT min(row_index), max(row_index) FROM {} s WHERE s.model = {}").format(
                    ctx.staging, sql.Literal(spec.name)
                )
            )
        )
        if lo is None:
            return LoadError(spec.name, f"a value does not fit its column: {base}")
        found = None
        if isinstance(e, psycopg.errors.StringDataRightTruncation):  # a string longer than its varchar(n)
            found = _string_too_long(conn, ctx, spec, table, base)
        found = found or _bisect_bad_value(conn, ctx, spec, table, lo, hi, base)
        if found is not None:
            return found
    except psycopg.Error:
        pass
    return LoadError(spec.name, f"a value does not fit its column: {base}; nothing of {spec.name} was written")


def _string_too_long(
    conn: psycopg.Connection, ctx: LoadContext, spec: ModelSpec, table: TableInfo, base: str
) -> LoadError | None:
    """The first staged string longer than its varchar(n) column, as the error naming it; None if none is."""
    for col in table.columns.values():
        if col.type_name != "varchar" or col.max_length is None:
            continue
        long = conn.execute(
            sql.SQL(
                "SELECT s.row_index, s.pk, char_length(s.fields ->> {k}) FROM {staging} s "
                "WHERE s.model = {m} AND char_length(s.fields ->> {k}) > %s "
                "ORDER BY s.row_index LIMIT 1"
            ).format(k=sql.Literal(col.name), staging=ctx.staging, m=sql.Literal(spec.name)),
            (col.max_length,),
        ).fetchone()
        if long:
            return LoadError(
                spec.name,
                f"row {long[0]} (pk {long[1]}): field {col.name!r}: a string of {long[2]} "
                f"characters does not fit {col.type_sql} ({base}); nothing of {spec.name} "
                "was written",
            )
    return None


def _bisect_bad_value(
    conn: psycopg.Connection, ctx: LoadContext, spec: ModelSpec, table: TableInfo, lo: int, hi: int, base: str
) -> LoadError | None:
    """Convert each typed column over the staged rows ``lo``..``hi``; in the first that fails, bisect by row
    index to the row refused, as the error naming it. None if every column converts."""
    for col in table.columns.values():
        if col.is_json or col.category == "S" or col.name == "id":
            continue
        conv = value_sql(col, sql.SQL("s.fields"), col.name)
        if not _conversion_fails(conn, ctx, spec, conv, lo, hi):
            continue
        a, b = lo, hi
        while a < b:
            mid = (a + b) // 2
            if _conversion_fails(conn, ctx, spec, conv, a, mid):
                b = mid
            else:
                a = mid + 1
        pk, raw = one_row(
            conn.execute(
                sql.SQL(
                    "SELECT s.pk, s.fields -> {k} FROM {staging} s WHERE s.model = {m} AND s.row_index = %s"
                ).format(k=sql.Literal(col.name), staging=ctx.staging, m=sql.Literal(spec.name)),
                (a,),
            )
        )
        return LoadError(
            spec.name,
            f"row {a} (pk {pk}): field {col.name!r}: {raw!r:.80} is not a valid "
            f"{col.type_sql} ({base}); nothing of {spec.name} was written",
        )
    return None


def _conversion_fails(
    conn: psycopg.Connection, ctx: LoadContext, spec: ModelSpec, conv: sql.Composable, lo: int, hi: int
) -> bool:
    """Whether converting ``conv`` over the staged rows ``lo``..``hi`` of the model raises a data error."""
    try:
        with conn.transaction():
            conn.execute(
                sql.SQL(
                    "SELECT max(length(({conv})::text)) FROM {staging} s WHERE s.model = {m} "
                    "AND s.row_index BETWEEN %s AND %s"
                ).format(conv=conv, staging=ctx.staging, m=sql.Literal(spec.name)),
                (lo, hi),
            )
        return False
    except psycopg.DataError:
        return True
