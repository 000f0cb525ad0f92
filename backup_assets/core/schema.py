"""The target's tables: read from the catalog (a Sentry database), or created from the manifest and the export.

Identifiers that reach SQL come from two places only: the manifest (table names, foreign-key fields,
validated when the manifest is read) and the database catalog (column and sequence names). In create
mode a column is named after an export field only when that name is a plain lower-case identifier of
at most 63 characters, as every Django field name is; any other field is reported and skipped.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import psycopg
from psycopg import sql

from .errors import TargetError
from .manifest import Manifest, ModelSpec
from .query import one_row

#: Names a created column may take (Django field names; PostgreSQL keeps 63 bytes of an identifier).
SAFE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

INTERNAL_SCHEMA = "backup_assets"


def describe_name(name: str) -> str:
    """How an export's field name is reported: itself when it is a plain identifier, else a description,
    so that an odd name (quotes, semicolons, 10,000 characters) is never sent anywhere, not even as data."""
    if SAFE_NAME.match(name) or re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$", name) or _DESCRIBED.match(name):
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"<unusual field name of {len(name)} characters, sha256 {digest}>"


_DESCRIBED = re.compile(r"^<unusual field name of \d+ characters, sha256 [0-9a-f]{8}>$")


@dataclass(frozen=True)
class Column:
    name: str
    type_sql: str  #: format_type() of the column, e.g. "timestamp with time zone", "character varying(128)"
    type_name: str  #: pg_type.typname, e.g. "timestamptz", "varchar", "_text" for text[]
    category: str  #: pg_type.typcategory: A array, B boolean, D datetime, N numeric, S string, U user (json...)
    max_length: int | None  #: for character varying(n)

    @property
    def is_json(self) -> bool:
        return self.type_name in ("json", "jsonb")


@dataclass(frozen=True)
class TableInfo:
    schema: str
    name: str
    columns: dict[str, Column]
    sequence: str | None  #: quoted qualified name of the sequence behind ``id`` (for regclass), if any
    sequence_parts: tuple[str, str] | None = None

    @property
    def ident(self) -> sql.Composable:
        return sql.Identifier(self.schema, self.name)

    @property
    def sequence_ident(self) -> sql.Composable | None:
        return sql.Identifier(*self.sequence_parts) if self.sequence_parts else None


def find_table(conn: psycopg.Connection, table: str) -> TableInfo | None:
    """The table named ``table`` in the connection's search path, with its columns and id sequence."""
    row = conn.execute(
        """SELECT c.oid, n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relname = %s AND c.relkind IN ('r', 'p') AND n.nspname = ANY (current_schemas(false))
           ORDER BY array_position(current_schemas(false), n.nspname::text) LIMIT 1""",
        (table,),
    ).fetchone()
    if row is None:
        return None
    oid, schema = row
    cols = {}
    for name, type_sql, typname, cat, typmod in conn.execute(
        """SELECT a.attname, format_type(a.atttypid, a.atttypmod), t.typname, t.typcategory, a.atttypmod
               FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
               WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum""",
        (oid,),
    ):
        max_len = typmod - 4 if typname in ("varchar", "bpchar") and typmod > 4 else None
        cols[name] = Column(name, type_sql, typname, cat, max_len)
    seq = conn.execute(
        """SELECT sn.nspname, s.relname, quote_ident(sn.nspname) || '.' || quote_ident(s.relname) FROM pg_depend d
           JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
           JOIN pg_namespace sn ON sn.oid = s.relnamespace
           JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
           WHERE d.refobjid = %s AND a.attname = 'id' AND d.deptype IN ('a', 'i') LIMIT 1""",
        (oid,),
    ).fetchone()
    return TableInfo(
        schema=schema,
        name=table,
        columns=cols,
        sequence=seq[2] if seq else None,
        sequence_parts=(seq[0], seq[1]) if seq else None,
    )


def require_table(conn: psycopg.Connection, spec: ModelSpec) -> TableInfo:
    info = find_table(conn, spec.table_name)
    if info is None:
        raise TargetError(
            f"{spec.name}: table {spec.table_name!r} does not exist in the target database "
            "(restore into a Sentry database, or pass --create-schema for an empty one)"
        )
    if "id" not in info.columns:
        raise TargetError(f"{spec.name}: table {spec.table_name!r} has no 'id' column")
    return info


# -- create mode -----------------------------------------------------------------------------------------

# What a field's values were seen to be, as bits (collected while parsing, one pass, no SQL)
NULL, BOOL, INT, NUMBER, TEXT, DATETIME, JSON = 1, 2, 4, 8, 16, 32, 64
DATETIME_RE = re.compile(r"^\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d(\.\d+)?)?(Z|[+-]\d\d(:?\d\d)?)?$")


def type_for(seen: int) -> str:
    """The column type for a field whose values had the kinds in ``seen`` (bits above), as
    :func:`infer_field_types` decides it: one JSON kind -> its SQL type, several (or objects) -> jsonb."""
    kinds = [
        k
        for k, bits in (("number", INT | NUMBER), ("boolean", BOOL), ("string", TEXT | DATETIME), ("json", JSON))
        if seen & bits
    ]
    if not kinds:
        return "text"
    if len(kinds) > 1 or kinds == ["json"]:
        return "jsonb"
    if kinds == ["number"]:
        return "numeric" if seen & NUMBER else "bigint"
    if kinds == ["boolean"]:
        return "boolean"
    return "text" if seen & TEXT else "timestamptz"


def infer_field_types(conn: psycopg.Connection, staging: sql.Composable, model: str) -> dict[str, str]:
    """SQL column types for the fields of ``model``'s staged rows, from the values themselves.

    Integers -> bigint (numeric past its range), other numbers -> numeric, booleans -> boolean, strings
    that are all ISO datetimes -> timestamptz, other strings -> text, objects and lists -> jsonb, and a
    field whose rows mix JSON types -> jsonb, which keeps each value's type. Nulls do not count.
    """
    q = sql.SQL("""
        SELECT e.key,
               array_agg(DISTINCT jsonb_typeof(e.value)) FILTER (WHERE jsonb_typeof(e.value) <> 'null'),
               bool_and(e.value #>> '{{}}' ~ %s) FILTER (WHERE jsonb_typeof(e.value) = 'string'),
               bool_and(e.value::text !~ '[.eE]' AND abs(e.value::text::numeric) < 9.2e18)
                   FILTER (WHERE jsonb_typeof(e.value) = 'number')
        FROM {staging} s, jsonb_each(s.fields) AS e(key, value)
        WHERE s.model = %s GROUP BY e.key""").format(staging=staging)
    out = {}
    for key, kinds, all_dates, all_ints in conn.execute(q, (DATETIME_RE.pattern, model)):
        kinds = set(kinds or ())
        if not kinds:
            out[key] = "text"
        elif len(kinds) > 1 or kinds & {"object", "array"}:
            out[key] = "jsonb"
        elif kinds == {"number"}:
            out[key] = "bigint" if all_ints else "numeric"
        elif kinds == {"boolean"}:
            out[key] = "boolean"
        else:
            out[key] = "timestamptz" if all_dates else "text"
    return out


@dataclass(frozen=True)
class Constraint:
    """A unique or foreign-key constraint that create mode gives a table (see :mod:`.constraints`)."""

    kind: str  #: "u" UNIQUE (columns), "f" FOREIGN KEY (columns) REFERENCES ref_table (id)
    columns: tuple[str, ...]
    ref_table: str | None = None
    where: tuple[str, bool | str] | None = None  #: a unique only where column = value: a partial unique index

    def clause(self, schema: str | None = None) -> sql.Composed | None:
        """The table-constraint clause (for ``CREATE TABLE`` or ``ALTER TABLE ... ADD``), its parent table in
        ``schema`` (else the default one); None for a partial unique, which only an index can be."""
        cols = sql.SQL(", ").join(map(sql.Identifier, self.columns))
        if self.kind == "f":
            assert self.ref_table is not None, "a foreign key names its parent table"
            ref = sql.Identifier(schema, self.ref_table) if schema else sql.Identifier(self.ref_table)
            return sql.SQL("FOREIGN KEY ({}) REFERENCES {} (id)").format(cols, ref)
        return sql.SQL("UNIQUE ({})").format(cols) if self.where is None else None

    def ddl(self, table: sql.Composable, schema: str | None = None) -> sql.Composed:
        """The statement adding it to ``table``."""
        clause = self.clause(schema)
        if clause is not None:
            return sql.SQL("ALTER TABLE {} ADD {}").format(table, clause)
        assert self.where is not None, "only a partial unique has no table-constraint clause"
        column, value = self.where
        return sql.SQL("CREATE UNIQUE INDEX ON {} ({}) WHERE {} = {}").format(
            table, sql.SQL(", ").join(map(sql.Identifier, self.columns)), sql.Identifier(column), sql.Literal(value)
        )


#: Uniques that Sentry declares with a condition (a partial unique index) and the manifest's ``uniques``
#: list without it: (model, fields) -> (field, the value the condition requires). Made full, they would
#: refuse what Sentry allows (two organizations' saved searches of one name).
CONDITIONAL_UNIQUES: dict[tuple[str, tuple[str, ...]], tuple[str, bool | str]] = {
    ("sentry.savedsearch", ("is_global", "name")): ("is_global", True),
    ("sentry.savedsearch", ("organization", "owner_id", "type")): ("visibility", "owner_pinned"),
}


def create_table(
    conn: psycopg.Connection,
    spec: ModelSpec,
    field_types: dict[str, str],
    parent_tables: dict[str, str],
    *,
    defer: bool = False,
) -> list[Constraint]:
    """Create ``spec``'s table: ``id`` identity primary key, one column per safe field name (other fields are
    skipped, and the load reports them) and one per foreign key, then its constraints: the manifest's
    uniques, and a foreign key per FK column whose parent table exists (``parent_tables``: model -> table).
    With ``defer``, the constraints are returned instead, for the caller to add once the rows are in
    (:mod:`.constraints`)."""
    fk_cols = {fk.column: fk for fk in spec.foreign_keys}
    defs: list[sql.Composable] = [sql.SQL("id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")]
    columns = {"id"}
    foreign: list[Constraint] = []
    for fk in spec.foreign_keys:
        if fk.column in columns:
            continue
        defs.append(sql.SQL("{} bigint").format(sql.Identifier(fk.column)))
        columns.add(fk.column)
        ref = spec.table_name if fk.model == spec.name else parent_tables.get(fk.model)
        if ref:
            foreign.append(Constraint("f", (fk.column,), ref))
    for name, typ in sorted(field_types.items()):
        if name in spec.fk_by_field or name in fk_cols or not SAFE_NAME.match(name) or name in columns:
            continue
        defs.append(sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(_TYPES[typ])))
        columns.add(name)
    unique = []
    for fields in spec.uniques:
        cols = tuple(spec.fk_by_field[f].column if f in spec.fk_by_field else f for f in fields)
        where = CONDITIONAL_UNIQUES.get((spec.name, tuple(fields)))
        if cols and all(c in columns for c in cols) and (where is None or where[0] in columns):
            unique.append(Constraint("u", cols, where=where))
    constraints = unique + foreign
    clauses = [] if defer else [(c, c.clause()) for c in constraints]
    defs += [clause for _c, clause in clauses if clause is not None]  # declared with the table
    table = sql.Identifier(spec.table_name)
    conn.execute(sql.SQL("CREATE TABLE {} ({})").format(table, sql.SQL(", ").join(defs)))
    for c, clause in clauses:
        if clause is None:  # a partial unique: an index, made right after the table
            conn.execute(c.ddl(table))
    return constraints if defer else []


_TYPES = {
    "text": "text",
    "jsonb": "jsonb",
    "bigint": "bigint",
    "numeric": "numeric",
    "boolean": "boolean",
    "timestamptz": "timestamp with time zone",
}


def ensure_tables(
    conn: psycopg.Connection,
    manifest: Manifest,
    models: list[str],
    staging: sql.Composable,
    field_types: dict[str, dict[str, str]] | None = None,
    defer: set[str] | frozenset[str] = frozenset(),
) -> dict[str, tuple[TableInfo, list[Constraint]]]:
    """Create mode: create every missing table of ``models`` (in dependency order) from the staged rows.

    ``field_types`` (model -> field -> type) is what the parse saw; without it the staged rows are read.
    A created table of a model in ``defer`` is made without its constraints: they are returned, per model
    with the table, for the caller to add once the rows are in (see :mod:`.constraints`)."""
    created: dict[str, str] = {}
    out: dict[str, tuple[TableInfo, list[Constraint]]] = {}
    for model in models:
        spec = manifest[model]
        existing = find_table(conn, spec.table_name)
        if field_types is not None:
            types = field_types.get(model, {})
        elif one_row(
            conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {} s WHERE s.model = %s)").format(staging), (model,))
        )[0]:
            types = infer_field_types(conn, staging, model)
        else:
            types = {}
        if existing is None:
            constraints = create_table(conn, spec, types, created, defer=model in defer)
            if constraints:
                out[model] = (require_table(conn, spec), constraints)
        elif types:  # a table an earlier import created, maybe from no rows: add the fields it lacks
            add_columns(conn, spec, existing, types)
        created[model] = spec.table_name
    return out


def tables_to_change(
    conn: psycopg.Connection, manifest: Manifest, models: list[str], field_types: dict[str, dict[str, str]] | None
) -> bool:
    """Whether :func:`ensure_tables` would create a table or add a column (without ``field_types``, an
    existing table may need columns: true, to be safe)."""
    for model in models:
        spec = manifest[model]
        existing = find_table(conn, spec.table_name)
        if existing is None or field_types is None:
            return True
        if _new_columns(spec, existing, field_types.get(model, {})):
            return True
    return False


def _new_columns(spec: ModelSpec, table: TableInfo, field_types: dict[str, str]) -> list[str]:
    """The safe field names of ``field_types`` that ``table`` has no column for, sorted."""
    return [
        name
        for name in sorted(field_types)
        if name not in table.columns and name not in spec.fk_by_field and SAFE_NAME.match(name)
    ]


def add_columns(conn: psycopg.Connection, spec: ModelSpec, table: TableInfo, field_types: dict[str, str]) -> None:
    """Create mode on an existing table: add a column for each safe field name it does not have."""
    for name in _new_columns(spec, table, field_types):
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                table.ident, sql.Identifier(name), sql.SQL(_TYPES[field_types[name]])
            )
        )


def value_sql(col: Column, fields: sql.Composable, key: str) -> sql.Composable:
    """The expression converting a staged JSON value (``fields -> key``) to ``col``'s type.

    ``key`` is the column's own name (from the catalog) or a manifest field, never an export name.
    """
    k = sql.Literal(key)
    if col.type_name == "jsonb":
        return sql.SQL("NULLIF({f} -> {k}, 'null'::jsonb)").format(f=fields, k=k)
    if col.type_name == "json":
        return sql.SQL("NULLIF({f} -> {k}, 'null'::jsonb)::json").format(f=fields, k=k)
    text = sql.SQL("({f} ->> {k})").format(f=fields, k=k)
    if col.category == "S":
        return text
    if col.category == "A":
        return sql.SQL(
            "CASE jsonb_typeof({f} -> {k}) WHEN 'array' THEN "
            "ARRAY(SELECT jsonb_array_elements_text({f} -> {k}))::{t} ELSE {x}::{t} END"
        ).format(f=fields, k=k, t=sql.SQL(col.type_sql), x=text)
    return sql.SQL("{x}::{t}").format(x=text, t=sql.SQL(col.type_sql))
