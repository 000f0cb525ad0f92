"""Export: the target database, read through the manifest, written as a Sentry export.

    with psycopg.connect(dsn) as conn:
        counts = export_to("out.json", export_rows(conn, manifest, "global"))

:func:`export_rows` yields ``{"model", "pk", "fields"}`` rows the way ``sentry export`` writes them: models
grouped in the manifest's dependency order (relocatable models of the export scope whose table exists),
ascending pk within a model, ``pk`` = the ``id`` column, every other column a field, a foreign-key column
named as the manifest names the field (column ``organization_id`` -> field ``organization`` when the
manifest says ``organization``; ``user_id`` stays ``user_id``), datetimes in UTC with exactly three
millisecond digits and ``Z``, json/jsonb as their JSON values, numerics as JSON numbers (integral ones as
ints), other types (uuid, inet, arrays, bytea as base64) as JSON strings or lists.

Which rows, as Sentry's exporter decides: a row is exported when its model is in the scope, it passes the
explicit filters (usernames, organization slugs), and each of its non-null foreign keys points at a row
already exported (``sentry.organizationmember.inviter_id`` never filters). Non-global exports also apply
the scope's implicit filters: a config export takes only globally privileged users (staff, superusers,
holders of a user permission or an admin role), and ``sentry.email`` rows only for the emails of the
exported users' ``sentry.useremail`` rows. ``import_id`` restricts the export to the rows that import
inserted or overwrote (``pk_map`` kinds I and O): what a round-trip verification re-exports.

Memory: each model's rows are streamed (libpq's chunked mode, ``itersize`` rows a chunk: the server sends
the next rows while these are converted, and waits when the client is behind); the pks of exported rows
that later models refer to are kept in a temporary table of the export's transaction, not in the client. The
export runs in one transaction (REPEATABLE READ when the connection is idle), so it sees one snapshot.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import math
import os
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from pathlib import Path
from typing import Any, BinaryIO

import psycopg
from psycopg import sql

from .decryptors import Encryptor
from .errors import ConfigurationError, TargetError
from .manifest import IMPORT_SCOPES, Manifest, ModelSpec
from .query import one_row
from .schema import INTERNAL_SCHEMA, TableInfo, find_table
from .state import PK_MAP, PK_MAP_ROW, pk_scope

__all__ = ["export_rows", "export_to", "export_plan", "format_datetime", "iter_json"]

#: Foreign keys that never keep a row out of an export (Sentry's exporter makes this one exception).
NEVER_FILTERS = frozenset({("sentry.organizationmember", "inviter_id")})

_names = itertools.count(1)


# -- values ---------------------------------------------------------------------------------------


def format_datetime(value: datetime) -> str:
    """UTC ISO-8601 with exactly three millisecond digits (truncated) and ``Z``; naive values are UTC."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}T{value.hour:02d}:{value.minute:02d}:"
        f"{value.second:02d}.{value.microsecond // 1000:03d}Z"
    )


def _decimal(value: Decimal) -> int | float:
    if not value.is_finite():
        raise ValueError(f"{value} is not a JSON number")
    exponent = value.as_tuple().exponent  # an int: the value is finite
    return int(value) if isinstance(exponent, int) and exponent >= 0 else float(value)


def _float(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{value} is not a JSON number")
    return value


def _list(value: list) -> list:
    return [_jsonable(v) for v in value]


def _bytes(value: bytes | memoryview) -> str:
    return base64.b64encode(bytes(value)).decode("ascii")


_CONVERT: dict[type, Any] = {
    datetime: format_datetime,
    date: date.isoformat,
    time: time.isoformat,
    timedelta: str,
    Decimal: _decimal,
    float: _float,
    list: _list,
    bytes: _bytes,
    memoryview: _bytes,
    uuid.UUID: str,
    **{t: str for t in (IPv4Address, IPv6Address, IPv4Interface, IPv6Interface, IPv4Network, IPv6Network)},
}
_PLAIN = (str, int, bool, dict, type(None))
_PLAIN_TYPES = frozenset(_PLAIN)


def _jsonable(value: Any) -> Any:
    """A column value as a JSON value (json/jsonb values arrive from psycopg already parsed)."""
    kind = type(value)
    if kind in _PLAIN_TYPES:
        return value
    convert = _CONVERT.get(kind)  # no key of it is a subclass of a plain type
    if convert is not None:
        return convert(value)
    return value if isinstance(value, _PLAIN) else str(value)


# -- what to export ---------------------------------------------------------------------------------


@dataclass
class _Model:
    spec: ModelSpec
    table: TableInfo
    columns: list[str]  #: catalog columns other than ``id``, in table order
    fields: list[str]  #: the export's name of each column
    conditions: list[sql.Composable] = field(default_factory=list)
    params: list[object] = field(default_factory=list)
    record: bool = False  #: keep its exported pks (later models, or itself, refer to them)
    #: the import's pk map scope when the export is restricted to an import (0: the import wrote no row)
    scope: int | None = None

    def where(self, cond: sql.Composable, *params: object) -> None:
        self.conditions.append(cond)
        self.params.extend(params)

    def condition(self) -> sql.Composable:
        return sql.SQL(" AND ").join(self.conditions) if self.conditions else sql.SQL("true")

    def rows(self) -> tuple[sql.Composable, list[object]]:
        """The FROM clause naming the table ``t`` and its parameters. Restricted to an import, the import's
        new pks in ascending order drive the join: an index probe per row written, in pk order, and no sort
        (a semi-join on the pk map was planned as a nested loop of random probes and a sort of whole rows)."""
        if self.scope is None:
            return sql.SQL("{} t").format(self.table.ident), []
        return sql.SQL(
            "(SELECT DISTINCT p.new_pk FROM {pk_map} p WHERE p.scope = %s AND p.kind IN ('I', 'O') "
            "ORDER BY p.new_pk) p JOIN {table} t ON t.id = p.new_pk"
        ).format(pk_map=PK_MAP_ROW, table=self.table.ident), [self.scope]


def export_plan(conn: psycopg.Connection, manifest: Manifest, scope: str) -> list[tuple[ModelSpec, TableInfo]]:
    """The models an export in ``scope`` writes, in dependency order, each with its table (models whose
    table does not exist are left out)."""
    if scope not in IMPORT_SCOPES:
        raise ConfigurationError(f"export scope {scope!r} is not one of {', '.join(IMPORT_SCOPES)}")
    out = []
    for name in manifest.sorted_models():
        spec = manifest[name]
        if not spec.relocatable or not spec.in_scope(scope):
            continue
        table = find_table(conn, spec.table_name)
        if table is None:
            continue
        if "id" not in table.columns:
            raise TargetError(f"{name}: table {spec.table_name!r} has no 'id' column to export as the pk")
        out.append((spec, table))
    return out


def _describe(spec: ModelSpec, table: TableInfo) -> _Model:
    by_column = {fk.column: fk.field for fk in spec.foreign_keys}
    columns = [c for c in table.columns if c != "id"]
    return _Model(spec, table, columns, [by_column.get(c, c) for c in columns])


def _in_exported(temp: sql.Identifier, column: sql.Composable, model: str) -> tuple[sql.Composable, str]:
    """``column`` names an exported row of ``model``. An index probe per row: the ``IN (SELECT ...)`` this
    was, beside ``IS NULL OR``, stays a subplan, hashed only while the pks fit in ``work_mem``, else
    scanned again for every row (quadratic)."""
    return sql.SQL("EXISTS (SELECT 1 FROM {tmp} e WHERE e.model = %s AND e.pk = {c})").format(c=column, tmp=temp), model


class _Filters:
    """Builds each model's WHERE clause: scope filters, explicit filters, foreign keys, the import."""

    def __init__(
        self,
        plan: list[_Model],
        scope: str,
        temp: sql.Identifier,
        usernames: frozenset[str] | None,
        org_slugs: frozenset[str] | None,
        import_id: str | None,
    ) -> None:
        self.models = {m.spec.name: m for m in plan}
        self.scope, self.temp = scope, temp
        self.usernames, self.org_slugs, self.import_id = usernames, org_slugs, import_id

    def fk_column(self, model: str, target: str) -> str | None:
        m = self.models.get(model)
        if m is None:
            return None
        for fk in m.spec.foreign_keys:
            if fk.model == target and fk.column in m.table.columns:
                return fk.column
        return None

    def apply(self, m: _Model) -> None:
        name = m.spec.name
        for fk in m.spec.foreign_keys:
            if (name, fk.field) in NEVER_FILTERS or fk.column not in m.table.columns:
                continue
            col = sql.SQL("t.{}").format(sql.Identifier(fk.column))
            inside, target = _in_exported(self.temp, col, fk.model)
            if fk.model == name:  # self-reference: resolved to a fixed point while recording (see below)
                m.record = True
                m.where(sql.SQL("({c} IS NULL OR {c} = t.id OR {i})").format(c=col, i=inside), target)
            else:
                m.where(sql.SQL("({c} IS NULL OR {i})").format(c=col, i=inside), target)
        if name == "sentry.user":
            self._users(m)
        elif name == "sentry.organization" and self.org_slugs is not None:
            m.where(sql.SQL("t.slug = ANY(%s)"), sorted(self.org_slugs))
        elif name == "sentry.email" and self.scope != "global" and self.import_id is None:
            self._emails(m)

    def _users(self, m: _Model) -> None:
        if self.usernames is not None:
            m.where(sql.SQL("t.username = ANY(%s)"), sorted(self.usernames))
        if self.org_slugs is not None:  # users who are members of the kept organizations
            members = self.models.get("sentry.organizationmember")
            org_col = self.fk_column("sentry.organizationmember", "sentry.organization")
            user_col = (
                None
                if members is None
                else next(
                    (
                        fk.column
                        for fk in members.spec.foreign_keys
                        if fk.field == "user_id" and fk.column in members.table.columns
                    ),
                    None,
                )
            )
            orgs = self.models.get("sentry.organization")
            if members is None or orgs is None or org_col is None or user_col is None:
                m.where(sql.SQL("false"))
            else:
                m.where(
                    sql.SQL(
                        "t.id IN (SELECT om.{u} FROM {om} om JOIN {o} o ON o.id = om.{oc} WHERE o.slug = ANY(%s))"
                    ).format(
                        u=sql.Identifier(user_col),
                        om=members.table.ident,
                        o=orgs.table.ident,
                        oc=sql.Identifier(org_col),
                    ),
                    sorted(self.org_slugs),
                )
        if self.scope == "config" and self.import_id is None:
            self._privileged(m)

    def _privileged(self, m: _Model) -> None:
        """Config exports take only globally privileged users: staff, superusers, and users holding a
        user permission or an admin role."""
        parts: list[sql.Composable] = [
            sql.SQL("t.{} IS TRUE").format(sql.Identifier(c))
            for c in ("is_staff", "is_superuser")
            if c in m.table.columns
        ]
        for model in ("sentry.userpermission", "sentry.userroleuser"):
            holder = self.models.get(model)
            column = self.fk_column(model, "sentry.user")
            if holder is not None and column is not None:
                parts.append(
                    sql.SQL("t.id IN (SELECT h.{c} FROM {h} h)").format(c=sql.Identifier(column), h=holder.table.ident)
                )
        m.where(sql.SQL("({})").format(sql.SQL(" OR ").join(parts) if parts else sql.SQL("false")))

    def _emails(self, m: _Model) -> None:
        """Non-global exports take the emails of the exported users' UserEmail rows."""
        useremail = self.models.get("sentry.useremail")
        user_col = self.fk_column("sentry.useremail", "sentry.user")
        users = self.models.get("sentry.user")
        if (
            useremail is None
            or user_col is None
            or users is None
            or "email" not in useremail.table.columns
            or "email" not in m.table.columns
        ):
            m.where(sql.SQL("false"))
            return
        users.record = True
        inside, target = _in_exported(self.temp, sql.SQL("ue.{}").format(sql.Identifier(user_col)), "sentry.user")
        m.where(
            sql.SQL("t.email IN (SELECT ue.email FROM {ue} ue WHERE {i})").format(ue=useremail.table.ident, i=inside),
            target,
        )


# -- the export -------------------------------------------------------------------------------------


def export_rows(
    conn: psycopg.Connection,
    manifest: Manifest,
    scope: str,
    *,
    filter_usernames: Iterable[str] | None = None,
    filter_org_slugs: Iterable[str] | None = None,
    import_id: str | None = None,
    itersize: int = 2000,
) -> Iterator[dict]:
    """Stream the target's rows as a Sentry export in ``scope`` (users, organizations, config, global).

    See the module docstring for the format and the filters. ``conn`` must not be used by anyone else
    while the iterator is alive (the export holds a transaction and a streaming query on it).
    """
    usernames = None if filter_usernames is None else frozenset(filter_usernames)
    org_slugs = None if filter_org_slugs is None else frozenset(filter_org_slugs)
    idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with conn.transaction():
        if idle:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        plan = [_describe(spec, table) for spec, table in export_plan(conn, manifest, scope)]
        temp = sql.Identifier(f"_backup_assets_export_{os.getpid()}_{next(_names)}")
        conn.execute(
            sql.SQL(
                "CREATE TEMP TABLE {} (model text NOT NULL, pk bigint NOT NULL, output boolean NOT NULL, "
                "PRIMARY KEY (model, pk)) ON COMMIT DROP"
            ).format(temp)
        )
        filters = _Filters(plan, scope, temp, usernames, org_slugs, import_id)
        if import_id is not None:
            _seed_existing(conn, temp, import_id)
        referenced = {
            fk.model for m in plan for fk in m.spec.foreign_keys if (m.spec.name, fk.field) not in NEVER_FILTERS
        }
        for m in plan:
            m.record = m.spec.name in referenced
            filters.apply(m)
            if import_id is not None:
                m.scope = pk_scope(conn, import_id, m.spec.name)
                if m.scope is None:  # the import wrote no row of it
                    m.where(sql.SQL("false"))
        for m in plan:
            yield from _export_model(conn, m, temp, itersize)


def _seed_existing(conn: psycopg.Connection, temp: sql.Identifier, import_id: str) -> None:
    """Rows an import mapped onto existing ones (kind E) are not re-exported, but rows referring to them are."""
    if one_row(
        conn.execute(
            "SELECT to_regclass(%s) IS NULL OR to_regclass(%s) IS NULL",
            (f"{INTERNAL_SCHEMA}.pk_map", f"{INTERNAL_SCHEMA}.pk_scope"),
        )
    )[0]:
        raise TargetError(f"import {import_id}: the target has no {INTERNAL_SCHEMA}.pk_map; nothing was imported here")
    conn.execute(
        sql.SQL(
            "INSERT INTO {tmp} (model, pk, output) SELECT model, new_pk, false FROM {pk_map} "
            "WHERE import_id = %s AND kind = 'E' AND new_pk IS NOT NULL ON CONFLICT DO NOTHING"
        ).format(tmp=temp, pk_map=PK_MAP),
        (import_id,),
    )


def _export_model(conn: psycopg.Connection, m: _Model, temp: sql.Identifier, itersize: int) -> Iterator[dict]:
    name = m.spec.name
    select = sql.SQL(", ").join([sql.SQL("t.id"), *(sql.SQL("t.{}").format(sql.Identifier(c)) for c in m.columns)])
    if m.record:
        query = sql.SQL(
            "SELECT {cols} FROM {table} t WHERE t.id IN (SELECT e.pk FROM {tmp} e WHERE e.model = %s "
            "AND e.output) ORDER BY t.id"
        ).format(cols=select, table=m.table.ident, tmp=temp)
        params: list[object] = [name]
    else:
        rows, params = m.rows()
        query = sql.SQL("SELECT {cols} FROM {rows} WHERE {cond} ORDER BY t.id").format(
            cols=select, rows=rows, cond=m.condition()
        )
        params += m.params
    try:
        if m.record:
            _record(conn, m, temp)
        with conn.cursor() as cur:
            for record in cur.stream(query, params, size=itersize):
                yield _row(name, m.fields, record)
    except psycopg.Error as e:
        raise TargetError(
            f"{name}: cannot read table {m.spec.table_name!r}: {e.diag.message_primary or str(e).strip()}"
        ) from None


def _row(model: str, fields: list[str], record: tuple) -> dict:
    try:
        values = {f: _jsonable(v) for f, v in zip(fields, record[1:])}
    except ValueError as e:
        bad = next(f for f, v in zip(fields, record[1:]) if _fails(v))
        raise TargetError(f"{model} pk {record[0]}: field {bad!r}: {e}") from None
    return {"model": model, "pk": record[0], "fields": values}


def _fails(value: Any) -> bool:
    try:
        _jsonable(value)
    except ValueError:
        return True
    return False


def _record(conn: psycopg.Connection, m: _Model, temp: sql.Identifier) -> None:
    """Keep the pks of ``m``'s exported rows; repeated until nothing is added, so that a self-reference
    is satisfied by rows of the same model (in any pk order)."""
    rows, rows_params = m.rows()
    insert = sql.SQL(
        "INSERT INTO {tmp} (model, pk, output) SELECT %s, t.id, true FROM {rows} WHERE {cond} "
        "AND t.id NOT IN (SELECT e.pk FROM {tmp} e WHERE e.model = %s AND e.output) "
        "ON CONFLICT (model, pk) DO UPDATE SET output = true"
    ).format(tmp=temp, rows=rows, cond=m.condition())
    params = [m.spec.name, *rows_params, *m.params, m.spec.name]
    self_ref = any(
        fk.model == m.spec.name and (m.spec.name, fk.field) not in NEVER_FILTERS for fk in m.spec.foreign_keys
    )
    total = 0
    while True:
        added = conn.execute(insert, params).rowcount
        total += added
        if not added or not self_ref:
            break
    if total > 1000:
        conn.execute(sql.SQL("ANALYZE {}").format(temp))


# -- writing ----------------------------------------------------------------------------------------


def iter_json(
    rows: Iterable[dict], indent: int | None = 2, *, counts: dict[str, int] | None = None, chunk_size: int = 1 << 16
) -> Iterator[bytes]:
    """The export's JSON text (a list of rows, pretty-printed like ``sentry export`` when ``indent`` is
    set, compact when it is None), UTF-8, in chunks of about ``chunk_size`` bytes. ``counts`` (if given)
    receives the rows written per model."""
    if indent is None:
        encode: Callable[[Any], str] = json.JSONEncoder(
            separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode
        head, sep, tail = "[", ",", "]\n"
    else:
        pad = " " * indent
        pretty = json.JSONEncoder(indent=indent, ensure_ascii=False, allow_nan=False).encode

        def indented(row: dict) -> str:
            return pad + pretty(row).replace("\n", "\n" + pad)

        encode = indented
        head, sep, tail = "[\n", ",\n", "\n]\n"
    buf = io.StringIO()
    first = True
    for row in rows:
        buf.write(head if first else sep)
        first = False
        buf.write(encode(row))
        if counts is not None:
            counts[row["model"]] = counts.get(row["model"], 0) + 1
        if buf.tell() >= chunk_size:
            yield buf.getvalue().encode("utf-8")
            buf.seek(0)
            buf.truncate()
    buf.write("[]\n" if first else tail)
    yield buf.getvalue().encode("utf-8")


class _ChunkReader(io.RawIOBase):
    """A readable binary stream over an iterator of byte chunks (the JSON being generated)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = chunk
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def export_to(
    dest: str | os.PathLike[str], rows: Iterable[dict], *, indent: int | None = 2, encryptor: Encryptor | None = None
) -> dict[str, int]:
    """Write ``rows`` as export JSON to the file ``dest`` or to stdout (``"-"``); returns rows per model.

    With an ``encryptor`` the output is Sentry's encrypted export tarball: the JSON is generated straight
    into the encryption, so no plaintext reaches the disk (only ciphertext is spooled, as the tarball
    needs its size up front). A file ``dest`` appears only complete (written beside it, then renamed).
    """
    counts: dict[str, int] = {}
    chunks = iter_json(rows, indent, counts=counts)
    to_stdout = str(dest) == "-"
    if encryptor is not None:
        from .source import encrypt_export  # the tarball machinery is needed only here

        reader = io.BufferedReader(_ChunkReader(chunks), buffer_size=1 << 16)
        if not to_stdout:
            encrypt_export(reader, dest, encryptor)
            return counts
        with tempfile.TemporaryDirectory(prefix="backup-assets-export-") as tmp:  # ciphertext only
            target = Path(tmp) / "export.tar"
            encrypt_export(reader, target, encryptor)
            with open(target, "rb") as f:
                _copy(f, sys.stdout.buffer)
        return counts
    if to_stdout:
        for chunk in chunks:
            sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        return counts
    _write_file(Path(dest), chunks)
    return counts


def _copy(src: BinaryIO, dst: BinaryIO) -> None:
    while chunk := src.read(1 << 16):
        dst.write(chunk)
    dst.flush()


def _write_file(dest: Path, chunks: Iterator[bytes]) -> None:
    try:
        fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    except OSError as e:
        raise ConfigurationError(f"{dest}: cannot write the export: {e.strerror or e}") from None
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
        os.replace(tmp, dest)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ConfigurationError(f"{dest}: cannot write the export: {e.strerror or e}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
