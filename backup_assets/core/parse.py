"""Streaming parse: the export JSON, row by row with ijson's C backend, checked and staged per model.

Memory does not grow with the export: one row is alive at a time, and rows go to PostgreSQL through a
single ``COPY`` into the import's staging table. The caller runs this inside a transaction, so a
malformed row, a JSON error or a bad MAC found at the end of an encrypted stream leaves nothing behind.
"""
from __future__ import annotations

import json
import time
from typing import BinaryIO, Callable

import ijson
import psycopg
from psycopg import sql

from .errors import ExportParseError
from .manifest import MODEL_NAME, Manifest
from .settings import StageResult
from .staging import create_staging, index_staging

_INT64 = (-(2 ** 63), 2 ** 63 - 1)
_ENCODE = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode

ProgressFn = Callable[[int, int], None]   # (plaintext bytes read, rows parsed)


class _CountingReader:
    """A read-only wrapper that counts the bytes handed to the parser (for error offsets)."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.pos = 0
        self._head = b""

    def peek_start(self) -> int | None:
        """The first byte that is not whitespace or a UTF-8 BOM, without consuming it."""
        while True:
            chunk = self._raw.read(64)
            self._head += chunk
            stripped = self._head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
            if stripped:
                return stripped[0]
            if not chunk:
                return None

    def read(self, n: int = -1) -> bytes:
        if self._head:
            data, self._head = self._head, b""
            if n is not None and 0 <= n < len(data):
                data, self._head = data[:n], data[n:]
        else:
            data = self._raw.read(n)
        self.pos += len(data)
        return data


def _kind(v: object) -> str:
    return {str: "a string", list: "a list", dict: "an object", float: "a number with a fraction",
            bool: "a boolean"}.get(type(v), type(v).__name__)


def stage_export(conn: psycopg.Connection, import_id: str, stream: BinaryIO, manifest: Manifest, *,
                 unlogged: bool = True, progress: ProgressFn | None = None) -> StageResult:
    """Parse ``stream`` (export JSON bytes) and stage the rows of the manifest's relocatable models.

    Must run inside a transaction of ``conn``; raises :class:`ExportParseError` naming the row index,
    the byte offset the parser had reached, and the model and field when a row is at fault.
    """
    started = time.monotonic()
    result = StageResult(import_id=import_id)
    reader = _CountingReader(stream)
    first = reader.peek_start()
    if first is None:
        raise ExportParseError("the export is empty; a Sentry export is a JSON list of rows", offset=0)
    if first != ord("["):
        raise ExportParseError(f"the export must be a JSON list of rows, but it starts with {chr(first)!r}",
                               offset=0)
    known = {name: tuple(fk.field for fk in spec.foreign_keys)
             for name, spec in manifest.models.items() if spec.relocatable}
    excluded = {name for name, spec in manifest.models.items() if not spec.relocatable}
    per_model = result.rows_per_model
    ident = create_staging(conn, import_id, unlogged=unlogged)
    index = -1
    try:
        with conn.cursor() as cur, cur.copy(
                sql.SQL("COPY {} (model, pk, row_index, fields) FROM STDIN").format(ident)) as copy:
            for index, row in enumerate(ijson.items(reader, "item", use_float=True, buf_size=256 * 1024)):
                if type(row) is not dict:
                    raise ExportParseError(f"a row must be an object, not {_kind(row)}", row=index, offset=reader.pos)
                model = row.get("model")
                if type(model) is not str:
                    raise ExportParseError(f"'model' must be a string, not {_kind(model) if 'model' in row else 'missing'}",
                                           row=index, offset=reader.pos)
                model = model.lower()
                fk_fields = known.get(model)
                if fk_fields is None:
                    bucket = result.excluded_models if model in excluded else result.unknown_models
                    name = model if MODEL_NAME.match(model) else f"<unusual model name of {len(model)} characters>"
                    bucket[name] = bucket.get(name, 0) + 1
                    continue
                pk = row.get("pk")
                if type(pk) is not int or not _INT64[0] <= pk <= _INT64[1]:
                    hint = " (natural keys are not supported: re-export with a current Sentry)" \
                        if isinstance(pk, (str, list)) else ""
                    raise ExportParseError(f"'pk' must be a 64-bit integer, not {_kind(pk) if 'pk' in row else 'missing'}"
                                           f"{hint}", row=index, offset=reader.pos, model=model)
                fields = row.get("fields")
                if type(fields) is not dict:
                    raise ExportParseError(f"'fields' must be an object, not {_kind(fields) if 'fields' in row else 'missing'}",
                                           row=index, offset=reader.pos, model=model)
                for f in fk_fields:
                    v = fields.get(f)
                    if v is not None and (type(v) is not int or not _INT64[0] <= v <= _INT64[1]):
                        natural = (" Older Sentry exports wrote natural keys (use_natural_foreign_keys); neither "
                                   "Sentry's importer nor this one reads them: re-export with a current Sentry."
                                   if isinstance(v, (str, list)) else "")
                        raise ExportParseError(f"a foreign key must be an integer pk or null, not {_kind(v)}.{natural}",
                                               row=index, offset=reader.pos, model=model, field=f)
                try:
                    encoded = _ENCODE(fields)
                except (RecursionError, ValueError) as e:
                    raise ExportParseError(f"a value cannot be staged: {e}", row=index, offset=reader.pos,
                                           model=model) from None
                copy.write_row((model, pk, index, encoded))
                per_model[model] = per_model.get(model, 0) + 1
                if progress is not None and index % 20000 == 0:
                    progress(reader.pos, index + 1)
    except ijson.JSONError as e:
        raise ExportParseError(f"malformed JSON: {_clean(e)}", row=index + 1, offset=reader.pos) from None
    except UnicodeDecodeError as e:
        raise ExportParseError(f"invalid UTF-8: {e.reason}", row=index + 1, offset=reader.pos) from None
    except psycopg.DataError as e:
        raise ExportParseError(f"a value cannot be stored: {e.diag.message_primary} ({_copy_line(e)})",
                               offset=reader.pos) from None
    result.rows = index + 1
    result.bytes = reader.pos
    try:
        with conn.transaction():
            index_staging(conn, import_id)
    except psycopg.errors.UniqueViolation:
        model, pk, rows = conn.execute(sql.SQL(
            "SELECT model, pk, array_agg(row_index ORDER BY row_index) FROM {} GROUP BY model, pk "
            "HAVING count(*) > 1 ORDER BY min(row_index) LIMIT 1").format(ident)).fetchone()
        raise ExportParseError(f"pk {pk} appears more than once for this model (rows {', '.join(map(str, rows[:5]))})",
                               row=rows[1], model=model) from None
    if progress is not None:
        progress(reader.pos, result.rows)
    result.seconds = time.monotonic() - started
    return result


def _clean(e: Exception) -> str:
    return " ".join(str(e).split())[:300]


def _copy_line(e: psycopg.Error) -> str:
    ctx = (e.diag.context or "").strip()
    return ctx.splitlines()[0][:200] if ctx else "while staging"
