"""Streaming parse: the export JSON, row by row with ijson's C backend, checked and staged per model.

Memory does not grow with the export: one row is alive at a time, and rows go to PostgreSQL through a
single ``COPY`` into the import's staging table. The caller runs this inside a transaction, so a
malformed row, a JSON error or a bad MAC found at the end of an encrypted stream leaves nothing behind.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

import ijson
import orjson
import psycopg
from psycopg import sql

from .compat import deleted_fields, removed_models
from .errors import ExportParseError
from .manifest import MODEL_NAME, Manifest
from .query import one_row
from .results import StageResult
from .schema import BOOL, DATETIME, DATETIME_RE, INT, JSON, NULL, NUMBER, TEXT, describe_name, type_for
from .staging import analyze_staging, create_staging, index_staging

_INT64 = (-(2**63), 2**63 - 1)
_BOM = b"\xef\xbb\xbf"
#: the datetimes Sentry writes, ASCII digits as 0: a string that is one of these once its digits are zeroed is
#: matched by DATETIME_RE (a test checks each), and is told so without the regex (several times cheaper)
_DATETIME_FORMS = frozenset(
    {
        b"0000-00-00T00:00:00.000Z",
        b"0000-00-00T00:00:00Z",
        b"0000-00-00T00:00:00.000000Z",
        b"0000-00-00T00:00:00.000+00:00",
        b"0000-00-00T00:00:00+00:00",
        b"0000-00-00 00:00:00.000000+00:00",
        b"0000-00-00 00:00:00+00:00",
    }
)
_ZERO_DIGITS = bytes.maketrans(b"123456789", b"000000000")
#: Deepest nesting of arrays/objects accepted (Sentry's rows nest a few levels). ijson's item builder keeps a
#: prefix string per open level, so its memory grows with the square of the depth: 20,000 levels take 1 GB.
MAX_DEPTH = 512
#: ijson's C backend (yajl): fast, and it refuses integers past 64 bits, which the checks below rely on
_IJSON = ijson.get_backend("yajl2_c")
_ENCODE = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
_dumps = orjson.dumps
_BATCH = 2000  # rows per write to the COPY stream
_BIG = 1 << 18  # bytes of one row's fields beyond which it is written on its own
_SHAPES = 10_000  # row shapes remembered (beyond, new shapes take the long way: memory stays bounded)
_SHAPE_FIELDS = 256  # fields of a row beyond which its shape is not remembered

ProgressFn = Callable[[int, int], None]  # (plaintext bytes read, rows parsed)


_ESCAPE = re.compile(rb"\\.", re.S)  # a backslash and the byte it escapes
_PASSES = 16  # beyond this, walking the brackets one by one is cheaper than more passes
_NOT_SYNTAX = bytes(b for b in range(256) if b not in b'"[]{}')


class _DepthGuard:
    """Tracks how deep arrays and objects nest, outside strings, in the bytes fed to it chunk by chunk.

    All of it is C-level work on the chunk (about 1 GB/s): escapes are removed, every byte but quotes and
    brackets is deleted, adjacent quote pairs are dropped (an empty string, or the end of a string and the
    start of the next: no bracket lies between them either way), and what remains is split at quotes, whose
    pieces alternate between outside and inside strings. The brackets are walked one by one only when a
    bound on the chunk's nesting exceeds the limit.
    """

    def __init__(self, limit: int = MAX_DEPTH) -> None:
        self.limit = limit
        self.depth = 0
        self._in_string = False
        self._escaped = False  # the previous chunk ended with a backslash inside a string

    def feed(self, data: bytes) -> bool:
        """Account for ``data``; False if it takes the nesting beyond the limit."""
        if self._escaped and data:
            data, self._escaped = data[1:], False
        if b"\\" in data:
            data = _ESCAPE.sub(b"", data)
            if data.endswith(b"\\"):
                data, self._escaped = data[:-1], True
        parts = data.translate(None, _NOT_SYNTAX).replace(b'""', b"").split(b'"')
        first = 1 if self._in_string else 0
        self._in_string = (len(parts) - first) % 2 == 0
        brackets = b"".join(parts[first::2])
        opened = brackets.count(b"[") + brackets.count(b"{")
        end_depth = self.depth + 2 * opened - len(brackets)
        inner, passes = brackets, 0  # passes = how deep pairs nest inside the chunk (up to _PASSES)
        while passes <= _PASSES:
            shorter = inner.replace(b"[]", b"").replace(b"{}", b"")
            if len(shorter) == len(inner):
                break
            inner, passes = shorter, passes + 1
        if max(self.depth, end_depth) + passes > self.limit or passes > _PASSES:
            depth = self.depth
            for b in brackets:
                depth += 1 if b in b"[{" else -1
                if depth > self.limit:
                    return False
        self.depth = end_depth
        return True


class _SurrogateGuard:
    """Finds UTF-16 surrogate escapes that are not a high-low pair (``\\ud800`` alone), which ijson's C
    backend would silently turn into ``?``: JSON text escapes are walked chunk by chunk, an escape cut by
    a chunk's end (or a high surrogate waiting for its low half) carried into the next chunk."""

    _ESCAPE = re.compile(rb"\\(?:u([0-9a-fA-F]{4})|.)", re.S)

    def __init__(self) -> None:
        self._carry = b""
        self.seen = 0  # bytes fed before the carry (for offsets)

    def feed(self, data: bytes) -> int | None:
        """Account for ``data`` (b"" at the end); the byte offset of a lone surrogate escape, or None."""
        buf = self._carry + data
        base = self.seen - len(self._carry)
        self.seen += len(data)
        self._carry = b""
        if b"\\" not in buf:
            return None
        final = not data
        limit = len(buf) - 12  # a pair of escapes is 12 bytes: what starts later may be cut, so waits
        pending: re.Match | None = None  # a high surrogate waiting for its low half
        last_end = 0
        for m in self._ESCAPE.finditer(buf):
            if pending is not None and m.start() != pending.end():
                return base + pending.start()  # a high half not followed by anything
            if not final and m.start() >= limit:
                self._carry = buf[(pending or m).start() :]
                return None
            last_end = m.end()
            code = int(m.group(1), 16) if m.group(1) else None
            if pending is not None:
                if code is not None and 0xDC00 <= code <= 0xDFFF:
                    pending = None
                    continue
                return base + pending.start()  # a high half followed by another escape
            if code is not None and 0xD800 <= code <= 0xDBFF:
                pending = m
            elif code is not None and 0xDC00 <= code <= 0xDFFF:
                return base + m.start()  # a low half alone
        if pending is not None:
            if final or len(buf) - pending.end() > 1 or buf[pending.end() :] not in (b"", b"\\"):
                return base + pending.start()
            self._carry = buf[pending.start() :]  # the low half may start the next chunk
            return None
        if not final and last_end < len(buf) and buf.endswith(b"\\"):
            self._carry = b"\\"  # an escape cut right after its backslash
        return None


class _CountingReader:
    """A read-only wrapper that counts the bytes handed to the parser (for error offsets) and refuses
    nesting deeper than :data:`MAX_DEPTH` before the parser sees it."""

    def __init__(self, raw: BinaryIO, surrogates: bool = True) -> None:
        self._raw = raw
        self.pos = 0
        self._head = b""
        self._depth = _DepthGuard()
        self._surrogates = _SurrogateGuard() if surrogates else None  # orjson refuses lone ones itself

    def peek_start(self) -> int | None:
        """The first byte that is not whitespace, without consuming it. A UTF-8 byte-order mark before it is
        consumed (JSON parsers may ignore one, Python's ``json`` reading bytes does, and so does the backup's
        sniffer; yajl would not): offsets still count its three bytes."""
        while True:
            chunk = self._raw.read(64)
            self._head += chunk
            if chunk and self.pos == 0 and len(self._head) < 3:  # not yet enough to tell a mark
                continue
            if self.pos == 0 and self._head.startswith(_BOM):
                self._head, self.pos = self._head[3:], 3
                if self._surrogates is not None:
                    self._surrogates.seen = 3
            stripped = self._head.lstrip(b" \t\r\n")
            if stripped or not chunk:
                return stripped[0] if stripped else None

    def read(self, n: int = -1) -> bytes:
        if self._head:
            data, self._head = self._head, b""
            if n is not None and 0 <= n < len(data):
                data, self._head = data[:n], data[n:]
        else:
            data = self._raw.read(n)
        if not self._depth.feed(data):
            raise ExportParseError(
                f"arrays or objects are nested more than {self._depth.limit} levels deep (a Sentry export nests a few)",
                offset=self.pos,
            )
        lone = self._surrogates.feed(data) if self._surrogates is not None else None
        if lone is not None:
            raise ExportParseError(
                "a lone UTF-16 surrogate escape (\\ud800-\\udfff without its pair) is not a "
                "character; the parser would alter the value",
                offset=lone,
            )
        self.pos += len(data)
        return data


def _check_foreign_keys(fields: dict, fk_fields: tuple[str, ...], index: int, offset: int, model: str) -> None:
    for f in fk_fields:
        v = fields.get(f)
        if v is not None and (type(v) is not int or not _INT64[0] <= v <= _INT64[1]):
            natural = (
                " Older Sentry exports wrote natural keys (use_natural_foreign_keys); neither "
                "Sentry's importer nor this one reads them: re-export with a current Sentry."
                if isinstance(v, (str, list))
                else ""
            )
            raise ExportParseError(
                f"a foreign key must be an integer pk or null, not {_kind(v)}.{natural}",
                row=index,
                offset=offset,
                model=model,
                field=f,
            )


def _note_types(seen: dict[str, int], fields: dict) -> None:
    """Add what each of ``fields``' values is (bits of :mod:`.schema`) to ``seen``, per field name."""
    for k, v in fields.items():
        t = type(v)
        prev = seen.get(k, 0)
        if t is str:
            if prev & TEXT:
                continue
            bit = DATETIME if _is_datetime(v) else TEXT
        elif v is None:
            bit = NULL
        elif t is bool:
            bit = BOOL
        elif t is int:
            bit = INT if _INT64[0] <= v <= _INT64[1] else NUMBER
        elif t is float:
            bit = NUMBER
        else:
            bit = JSON
        if not prev & bit:
            seen[k] = prev | bit


def _is_datetime(v: str) -> bool:
    """Whether DATETIME_RE matches ``v`` (the usual forms without running it)."""
    try:
        if v.encode().translate(_ZERO_DIGITS) in _DATETIME_FORMS:
            return True
    except UnicodeEncodeError:  # a lone surrogate (neither parser lets one through; the regex decides anyway)
        pass
    return DATETIME_RE.fullmatch(v) is not None


def _kind(v: object) -> str:
    return {
        str: "a string",
        list: "a list",
        dict: "an object",
        float: "a number with a fraction",
        bool: "a boolean",
        int: "an integer",
        type(None): "null",
    }.get(type(v), type(v).__name__)


def stage_export(
    conn: psycopg.Connection,
    import_id: str,
    stream: BinaryIO,
    manifest: Manifest,
    *,
    unlogged: bool = True,
    progress: ProgressFn | None = None,
    reopen: Callable[[], BinaryIO] | None = None,
) -> StageResult:
    """Parse ``stream`` (export JSON bytes) and stage the rows of the manifest's relocatable models.

    Must run inside a transaction of ``conn``; raises :class:`ExportParseError` naming the row index,
    the byte offset the parser had reached, and the model and field when a row is at fault.

    When the export can be read again (``reopen`` gives it from the start, or ``stream`` is seekable), the
    rows are first parsed by orjson, a read's worth of rows in one call (:func:`_fast_rows`, the fast path).
    That path accepts only what ijson accepts and gives the same values; whatever it is
    not sure of (an error, a number of 19+ digits, an unusual layout) rolls it back, and the export is
    parsed again by ijson, which decides and reports exactly as it always does.
    """
    seekable = getattr(stream, "seekable", None)
    if reopen is None and seekable is not None and seekable():
        start = stream.tell()

        def reopen() -> BinaryIO:
            stream.seek(start)
            return stream

    if reopen is not None:
        try:
            with conn.transaction():  # a savepoint: the fast attempt leaves nothing behind when it gives up
                return _stage(conn, import_id, stream, manifest, True, unlogged, progress)
        except (_Doubt, ExportParseError):
            stream = reopen()
    return _stage(conn, import_id, stream, manifest, False, unlogged, progress)


class _Doubt(Exception):
    """The fast path is not sure it reads the export as ijson would: the export is parsed again by ijson."""


#: a row boundary: "}" "," "{" and a key a row starts with (Sentry writes model, pk, fields)
_CUT = re.compile(rb'\}[ \t\r\n]*,[ \t\r\n]*\{(?=[ \t\r\n]*"(?:model|pk|fields)"[ \t\r\n]*:)')
_JSON_SPACE = b" \t\r\n"
_READ_SIZE = 1 << 20
_BIG_ROW = 4 << 20  # bytes without a row boundary beyond which the fast path gives up on the export
_DIGITS = bytes(48 if 48 <= b <= 57 else 32 for b in range(256))  # digits to "0", everything else to " "
_LONG_RUN = b"0" * 19  # an integer of 19+ digits may be past 64 bits, where orjson returns a float


def _long_number_in(buf: bytes, begin: int) -> bool:
    """Whether a run of 19+ digits that starts at or after ``begin`` (or runs into it) may be a number: one
    that does not follow ``:``, ``,`` or ``[`` (spaces and a minus sign between) is inside a string."""
    begin = max(0, begin - 18)
    mapped = buf[begin:].translate(_DIGITS)
    at = mapped.find(_LONG_RUN)
    while at >= 0:
        i = begin + at - 1
        while i >= 0 and 48 <= buf[i] <= 57:  # back to the run's start (it may begin before ``begin``)
            i -= 1
        while i >= 0 and buf[i] in b" \t\r\n-":
            i -= 1
        if i < 0 or buf[i] in b":,[":
            return True
        end = mapped.find(b" ", at)
        if end < 0:
            return False
        at = mapped.find(_LONG_RUN, end)
    return False


def _last_cut(buf: bytes) -> re.Match | None:
    """The last row boundary in ``buf``: a ``}`` , ``{`` separator followed by a key a row starts with."""
    pos = len(buf)
    while (pos := buf.rfind(b"}", 0, pos)) >= 0:
        m = _CUT.match(buf, pos)
        if m is not None:
            return m
    return None


def _batch(rows_text: bytes) -> list:
    """The rows in ``rows_text`` (``{...}, {...}``, between two row boundaries), parsed by orjson in one call."""
    try:
        return orjson.loads(b"[" + rows_text + b"]")
    except orjson.JSONDecodeError:
        raise _Doubt from None


def _fast_rows(reader: _CountingReader) -> Iterator[object]:
    """The rows of the export, parsed by orjson a read at a time: the text read is cut at its last row
    boundary (:data:`_CUT`), and everything before it is parsed as one list of rows.

    A boundary of that look inside a row (a list of objects whose first key is "model") would cut a row in
    two; the text before it then ends inside the row, where orjson refuses the list (brackets are left
    open): the fast path gives up. Anything orjson refuses raises :class:`_Doubt`; so do a run of 19+
    digits anywhere (orjson turns integers past 64 bits into floats), more than :data:`_BIG_ROW` bytes
    without a row boundary, and an empty list.
    """
    buf = reader.read(_READ_SIZE)
    if _long_number_in(buf, 0):
        raise _Doubt
    start = len(buf) - len(buf.lstrip(_JSON_SPACE))
    if buf[start : start + 1] != b"[":  # more whitespace than a block: ijson decides
        raise _Doubt
    buf = buf[start + 1 :]
    while True:
        cut = _last_cut(buf)
        if cut is not None:
            rows_text, buf = buf[: cut.start() + 1], buf[cut.end() - 1 :]
            yield from _batch(rows_text)
        elif len(buf) > _BIG_ROW:  # a huge row: ijson's path holds it with less memory
            raise _Doubt
        more = reader.read(_READ_SIZE)
        if not more:
            break
        buf += more
        if _long_number_in(buf, len(buf) - len(more)):
            raise _Doubt
    last = buf.rstrip(_JSON_SPACE)
    if not last.endswith(b"]") or len(last) > _BIG_ROW:  # text after the list; or a huge last row
        raise _Doubt
    rows = _batch(last[:-1])
    if not rows:  # an empty list: ijson decides
        raise _Doubt
    yield from rows


def _stage(
    conn: psycopg.Connection,
    import_id: str,
    stream: BinaryIO,
    manifest: Manifest,
    fast: bool,
    unlogged: bool,
    progress: ProgressFn | None,
) -> StageResult:
    started = time.monotonic()
    result = StageResult(import_id=import_id)
    reader = _CountingReader(stream, surrogates=not fast)
    _check_start(reader)
    seen = _Seen(manifest, result)
    ident = create_staging(conn, import_id, unlogged=unlogged)
    if fast:  # the index grows during the COPY, on the server's core while this one parses; a pk staged twice
        index_staging(conn, import_id)  # then stops the COPY, and ijson's pass (index built after) names its rows
    result.rows = _copy_rows(conn, ident, reader, seen, fast, progress)
    result.bytes = reader.pos
    result.fields = seen.field_types()
    if not fast:
        _index_or_name_duplicate(conn, import_id, ident)
    analyze_staging(conn, import_id)
    if progress is not None:
        progress(reader.pos, result.rows)
    result.seconds = time.monotonic() - started
    return result


def _check_start(reader: _CountingReader) -> None:
    """Refuse an export that is empty or is not a JSON list."""
    first = reader.peek_start()
    if first is None:
        raise ExportParseError("the export is empty; a Sentry export is a JSON list of rows", offset=0)
    if first != ord("["):
        raise ExportParseError(f"the export must be a JSON list of rows, but it starts with {chr(first)!r}", offset=0)


def _copy_rows(
    conn: psycopg.Connection,
    ident: sql.Composable,
    reader: _CountingReader,
    seen: _Seen,
    fast: bool,
    progress: ProgressFn | None,
) -> int:
    """Parse the rows (orjson's fast path, or ijson), check them and ``COPY`` the staged ones into ``ident``,
    :data:`_BATCH` lines of COPY's text format a write; the rows parsed. The loop is the hot path: what
    it does for every row stays inline, what it does once (a new row shape, an error) is a call."""
    known, deleted, shapes, stats, per_model = seen.known, seen.deleted, seen.shapes, seen.stats, seen.per_model
    model_bytes, last_pos, index = seen.model_bytes, 0, -1
    try:
        with _staging_copy(conn, ident) as (copy, lines):
            for index, row in enumerate(_parsed_rows(reader, fast)):
                model = row.get("model") if type(row) is dict else None
                if type(model) is not str:
                    raise _row_error(row, index, reader.pos)
                model = model.lower()
                fk_fields = known.get(model)
                if fk_fields is None:
                    seen.count_unstaged(model)
                    continue
                pk, fields = row.get("pk"), row.get("fields")
                if type(pk) is not int or not _INT64[0] <= pk <= _INT64[1] or type(fields) is not dict:
                    raise _pk_or_fields_error(row, index, reader.pos, model)
                if model in deleted and not deleted[model].isdisjoint(fields):
                    fields = _strip(fields, model, deleted[model], seen.result.deleted_fields)
                shape = (model, *fields, *map(type, fields.values()))
                datetimes = shapes.get(shape)
                if datetimes is None:
                    seen.learn(model, fields, fk_fields, shape, index, reader.pos)
                else:
                    for k in datetimes:
                        if not _is_datetime(fields[k]):
                            stats[model][k] |= TEXT
                try:
                    # a huge row: orjson's growing buffer would peak at several times its size, the stdlib's
                    # encoder does not (the fast path reads a block at a time: its rows are at most _BIG_ROW bytes)
                    if not fast and reader.pos - last_pos > _BIG:
                        raise orjson.JSONEncodeError
                    encoded = _dumps(fields)
                except orjson.JSONEncodeError:
                    encoded = _encode_beyond_orjson(fields, index, reader.pos, model)
                # COPY's text format: tab-separated, backslash escaped; JSON text holds no raw tab or newline
                if b"\\" in encoded:
                    encoded = encoded.replace(b"\\", b"\\\\")
                per_model[model] = per_model.get(model, 0) + 1
                last_pos = reader.pos
                if len(encoded) > _BIG:
                    _write_alone(copy, lines, b"%s\t%d\t%d\t" % (model_bytes[model], pk, index), encoded)
                    continue
                lines.append(b"%s\t%d\t%d\t%s\n" % (model_bytes[model], pk, index, encoded))
                if len(lines) >= _BATCH or index == 0:
                    _write_lines(copy, lines, progress, reader.pos, index + 1)
    except (ijson.JSONError, UnicodeDecodeError, psycopg.DataError, psycopg.errors.UniqueViolation) as e:
        raise _parse_error(e, index + 1, reader.pos) from None
    return index + 1


@contextmanager
def _staging_copy(conn: psycopg.Connection, ident: sql.Composable) -> Iterator[tuple[psycopg.Copy, list[bytes]]]:
    """Open the ``COPY`` into the staging table ``ident``, with the list of lines gathered for it; the lines
    left when the parse ends are written before the COPY closes (not after an error: the COPY is aborted)."""
    lines: list[bytes] = []
    with (
        conn.cursor() as cur,
        cur.copy(sql.SQL("COPY {} (model, pk, row_index, fields) FROM STDIN WITH (FREEZE)").format(ident)) as copy,
    ):
        yield copy, lines
        _write_lines(copy, lines, None, 0, 0)


def _parsed_rows(reader: _CountingReader, fast: bool) -> Iterator[Any]:
    """The rows of the export as they are parsed: orjson's fast path, or ijson."""
    return _fast_rows(reader) if fast else _IJSON.items(reader, "item", use_float=True, buf_size=256 * 1024)


class _Seen:
    """What the manifest says of the rows, and what the parse has seen of them: rows per model, the rows of
    models not staged, and each field's types (for create mode and the load).

    A row of a shape seen before (model, keys, value types) tells nothing new but whether its strings are
    datetimes: its foreign keys are integers or null (their type says so; yajl and the fast path refuse
    integers past 64 bits), and only strings of fields so far all datetimes are matched.
    """

    def __init__(self, manifest: Manifest, result: StageResult) -> None:
        self.known = {
            name: tuple(fk.field for fk in spec.foreign_keys)
            for name, spec in manifest.models.items()
            if spec.relocatable
        }
        self.excluded = {name for name, spec in manifest.models.items() if not spec.relocatable}
        self.removed, self.deleted = removed_models(manifest), deleted_fields(manifest)
        self.model_bytes = {name: name.encode() for name in self.known}  # manifest names: no tab, newline or backslash
        self.result = result
        self.per_model = result.rows_per_model
        self.stats: dict[str, dict[str, int]] = {}
        self.shapes: dict[tuple, tuple[str, ...]] = {}  # row shape -> its string fields that so far held only datetimes

    def learn(
        self, model: str, fields: dict, fk_fields: tuple[str, ...], shape: tuple, index: int, offset: int
    ) -> None:
        """A row of a shape not seen before: check its foreign keys, note its fields' types, and remember
        the shape (while fewer than :data:`_SHAPES` are, of rows of at most :data:`_SHAPE_FIELDS` fields)."""
        _check_foreign_keys(fields, fk_fields, index, offset, model)
        seen = self.stats.get(model)
        if seen is None:
            seen = self.stats[model] = {}
        _note_types(seen, fields)
        if len(self.shapes) < _SHAPES and len(fields) <= _SHAPE_FIELDS:
            self.shapes[shape] = tuple(k for k, v in fields.items() if type(v) is str and not seen[k] & TEXT)

    def count_unstaged(self, model: str) -> None:
        """Count a row of a model the manifest excludes, Sentry has removed, or nobody knows."""
        result = self.result
        bucket = (
            result.excluded_models
            if model in self.excluded
            else result.removed_models
            if model in self.removed
            else result.unknown_models
        )
        name = model if MODEL_NAME.match(model) else f"<unusual model name of {len(model)} characters>"
        bucket[name] = bucket.get(name, 0) + 1

    def field_types(self) -> dict[str, dict[str, str]]:
        return {
            model: {describe_name(k): type_for(bits) for k, bits in seen.items()} for model, seen in self.stats.items()
        }


def _row_error(row: object, index: int, offset: int) -> ExportParseError:
    if type(row) is not dict:
        return ExportParseError(f"a row must be an object, not {_kind(row)}", row=index, offset=offset)
    model = row.get("model")
    return ExportParseError(
        f"'model' must be a string, not {_kind(model) if 'model' in row else 'missing'}", row=index, offset=offset
    )


def _pk_or_fields_error(row: dict, index: int, offset: int, model: str) -> ExportParseError:
    pk = row.get("pk")
    if type(pk) is not int or not _INT64[0] <= pk <= _INT64[1]:
        hint = (
            " (natural keys are not supported: re-export with a current Sentry)" if isinstance(pk, (str, list)) else ""
        )
        return ExportParseError(
            f"'pk' must be a 64-bit integer, not {_kind(pk) if 'pk' in row else 'missing'}{hint}",
            row=index,
            offset=offset,
            model=model,
        )
    fields = row.get("fields")
    return ExportParseError(
        f"'fields' must be an object, not {_kind(fields) if 'fields' in row else 'missing'}",
        row=index,
        offset=offset,
        model=model,
    )


def _parse_error(e: Exception, row: int, offset: int) -> Exception:
    """What a parser's or the server's refusal during the COPY means; a pk staged twice while the fast path
    runs (its index grows with the COPY) sends the export to ijson's pass, which names the rows."""
    if isinstance(e, ijson.JSONError):
        return ExportParseError(f"malformed JSON: {_clean(e)}", row=row, offset=offset)
    if isinstance(e, UnicodeDecodeError):
        return ExportParseError(f"invalid UTF-8: {e.reason}", row=row, offset=offset)
    if isinstance(e, psycopg.errors.UniqueViolation):
        return _Doubt()
    assert isinstance(e, psycopg.DataError)
    return ExportParseError(f"a value cannot be stored: {e.diag.message_primary} ({_copy_line(e)})", offset=offset)


def _encode_beyond_orjson(fields: dict, index: int, offset: int, model: str) -> bytes:
    """``fields`` as JSON by the stdlib's encoder: what orjson refuses (integers past 64 bits, deep
    nesting), and huge rows."""
    try:
        return _ENCODE(fields).encode()
    except (RecursionError, ValueError) as e:
        raise ExportParseError(f"a value cannot be staged: {e}", row=index, offset=offset, model=model) from None


def _write_lines(copy: psycopg.Copy, lines: list[bytes], progress: ProgressFn | None, offset: int, rows: int) -> None:
    """Write the lines gathered to the COPY, and report the progress."""
    if lines:
        copy.write(b"".join(lines))
        lines.clear()
    if progress is not None:
        progress(offset, rows)


def _write_alone(copy: psycopg.Copy, lines: list[bytes], head: bytes, encoded: bytes) -> None:
    """A huge row goes on its own, without further copies (after the lines gathered before it)."""
    _write_lines(copy, lines, None, 0, 0)
    copy.write(head)
    copy.write(encoded)
    copy.write(b"\n")


def _index_or_name_duplicate(conn: psycopg.Connection, import_id: str, ident: sql.Composable) -> None:
    """Build the staging's unique index; a pk staged twice for a model is reported with its rows."""
    try:
        with conn.transaction():
            index_staging(conn, import_id)
    except psycopg.errors.UniqueViolation:
        model, pk, rows = one_row(
            conn.execute(
                sql.SQL(
                    "SELECT model, pk, array_agg(row_index ORDER BY row_index) FROM {} GROUP BY model, pk "
                    "HAVING count(*) > 1 ORDER BY min(row_index) LIMIT 1"
                ).format(ident)
            )
        )
        raise ExportParseError(
            f"pk {pk} appears more than once for this model (rows {', '.join(map(str, rows[:5]))})",
            row=rows[1],
            model=model,
        ) from None


def _strip(fields: dict, model: str, gone: frozenset[str], counts: dict[str, int]) -> dict:
    """``fields`` without the fields Sentry has removed from ``model`` (counted per field in ``counts``)."""
    for name in gone & fields.keys():
        counts[f"{model}.{name}"] = counts.get(f"{model}.{name}", 0) + 1
    return {k: v for k, v in fields.items() if k not in gone}


def _clean(e: Exception) -> str:
    return " ".join(str(e).split())[:300]


def _copy_line(e: psycopg.Error) -> str:
    ctx = (e.diag.context or "").strip()
    return ctx.splitlines()[0][:200] if ctx else "while staging"
