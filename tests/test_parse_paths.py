"""The two ways the parse reads an export: rows cut out of the bytes and parsed by orjson (the fast path), and
ijson's streaming parser (the exact path). The fast path must stage exactly what ijson stages, and hand over to
ijson whenever it is not sure: the same rows, values, types and errors either way."""

from __future__ import annotations

import io
import json

import psycopg
import pytest

from backup_assets.core import parse
from backup_assets.core.errors import ExportParseError
from backup_assets.core.parse import stage_export
from backup_assets.core.staging import staging_table_name
from backup_assets.core.state import ensure_state
from tests import corpus
from tests.corpus import row


class OneWay(io.RawIOBase):
    """A stream that cannot be read twice: the parse then goes straight to ijson."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        chunk = self._data.read(len(b))
        b[: len(chunk)] = chunk
        return len(chunk)


@pytest.fixture
def conn(pg_conn) -> psycopg.Connection:
    ensure_state(pg_conn)
    return pg_conn


@pytest.fixture
def passes(monkeypatch) -> list[bool]:
    """Which passes each staging made: [True] the fast path alone, [True, False] the fast path then ijson."""
    seen: list[bool] = []
    real = parse._stage

    def spy(conn, import_id, stream, manifest, fast, *args):
        seen.append(fast)
        return real(conn, import_id, stream, manifest, fast, *args)

    monkeypatch.setattr(parse, "_stage", spy)
    return seen


def staged(conn: psycopg.Connection, stream) -> tuple[dict, list[tuple]]:
    """Stage ``stream`` in a transaction rolled back afterwards: what the result says, and the staged rows."""
    with conn.transaction(force_rollback=True):
        result = stage_export(conn, "paths", stream, corpus.MANIFEST)
        rows = conn.execute(
            "SELECT model, pk, row_index, fields::text FROM backup_assets."
            + staging_table_name("paths")
            + " ORDER BY row_index"
        ).fetchall()
    out = result.to_json()
    out.pop("seconds")
    return out, rows


def either_way(conn: psycopg.Connection, data: bytes, passes: list[bool]) -> tuple[tuple, list[bool]]:
    """Stage ``data`` by the fast path (falling back as it decides) and by ijson alone; both must agree."""
    fast = staged(conn, io.BytesIO(data))
    taken = list(passes)
    passes.clear()
    exact = staged(conn, OneWay(data))
    assert passes == [False]
    assert fast == exact
    return fast, taken


def nested_rows() -> list[dict]:
    """Rows whose bytes hold the row separator ``},{`` where no row ends: lists of objects, and strings."""
    return corpus.valid_rows() + [
        row("c.project", 300, organization=10, name="},{", options=[{"a": 1}, {"b": [{"c": 2}, {}]}, {}]),
        row("c.project", 301, organization=11, name='"}, {"model": "c.org"', options={"x": [{}, {}, {"y": "}"}]}),
        row("c.project", 302, organization=10, name="caf\u00e9 \U0001f600 \\ \n \t", options=[1.5, -0.0, 2**59 + 1]),
        row("c.unknown", 1, anything=[{"a": 1}, {"b": 2}]),
        row("c.org", 12, slug="n" + "9" * 30, status=-(2**59), flags="0"),
    ]


@pytest.mark.parametrize("block", [1 << 20, 7], ids=["1 MiB reads", "7-byte reads"])
@pytest.mark.parametrize("layout", ["sentry", "compact", "spaced"])
def test_the_fast_path_stages_what_ijson_stages(conn, passes, monkeypatch, layout, block) -> None:
    monkeypatch.setattr(parse, "_READ_SIZE", block)  # 7 bytes: rows and separators cut across reads
    rows = nested_rows()
    data = {
        "sentry": json.dumps(rows, indent=2),
        "compact": json.dumps(rows, separators=(",", ":")),
        "spaced": "[" + "\r\n ,\t".join(json.dumps(r) for r in rows) + "]",
    }[layout].encode()
    (result, staged_rows), taken = either_way(conn, data, passes)
    assert taken == [True]  # no second pass: the separators inside rows were found and passed over
    assert result["rows"] == len(rows) and result["unknown_models"] == {"c.unknown": 1}
    assert [(m, pk) for m, pk, _i, _f in staged_rows][-4:] == [
        ("c.project", 300),
        ("c.project", 301),
        ("c.project", 302),
        ("c.org", 12),
    ]  # the unknown row is not staged
    assert json.loads(staged_rows[-2][3])["options"] == [1.5, -0.0, 2**59 + 1]


@pytest.mark.parametrize(
    "name,data",
    [
        (
            "a 19-digit integer",
            corpus.export_bytes(
                corpus.valid_rows() + [row("c.project", 400, organization=10, name="big", options={"n": 2**63 - 1})]
            ),
        ),
        (
            "form feeds between rows (yajl takes them as whitespace)",
            corpus.export_bytes().replace(b",\n  {", b",\x0c{"),
        ),
        ("an empty list", b"[ ]"),
    ],
)
@pytest.mark.parametrize("block", [1 << 20, 7], ids=["1 MiB reads", "7-byte reads"])
def test_what_the_fast_path_is_unsure_of_is_staged_by_ijson(conn, passes, monkeypatch, name, data, block) -> None:
    monkeypatch.setattr(parse, "_READ_SIZE", block)
    (result, staged_rows), taken = either_way(conn, data, passes)
    assert taken == [True, False], name
    if name == "a 19-digit integer":  # orjson would take it, but past 64 bits it returns floats: ijson decides
        assert staged_rows[-1][3] == '{"name": "big", "options": {"n": 9223372036854775807}, "organization": 10}'


@pytest.mark.parametrize(
    "name,data",
    [
        (
            "an integer past 64 bits",
            corpus.export_bytes(
                corpus.valid_rows()
                + [row("c.project", 400, organization=10, name="big", options={"n": 123456789012345678901234567890})]
            ),
        ),
        (
            "an integer just past int64",
            corpus.export_bytes(
                corpus.valid_rows() + [row("c.project", 400, organization=10, name="big", options={"n": 2**63})]
            ),
        ),
        ("a lone surrogate", corpus.export_bytes().replace(b'"acme"', b'"ac\\ud800me"')),
        ("a trailing comma", corpus.export_bytes()[:-2] + b",\n]"),
        ("a row that is a list", corpus.export_bytes()[:-2] + b", [1, 2]\n]"),
        (
            "a foreign key that is a string",
            corpus.export_bytes(corpus.valid_rows() + [row("c.project", 401, organization="acme", name="x")]),
        ),
        ("a duplicate pk", corpus.export_bytes(corpus.valid_rows() + [row("c.org", 10, slug="again")])),
        ("text after the list", corpus.export_bytes() + b" []"),
        ("a cut export", corpus.export_bytes()[:-40]),
    ],
)
def test_errors_are_ijsons_whichever_path_meets_them(conn, passes, name, data) -> None:
    errors = []
    for stream in (io.BytesIO(data), OneWay(data)):
        with pytest.raises(ExportParseError) as e, conn.transaction(force_rollback=True):
            stage_export(conn, "paths", stream, corpus.MANIFEST)
        errors.append(str(e.value))
    assert errors[0] == errors[1], name
    assert passes[:2] == [True, False]  # the fast path gave up; ijson found the error and named it


@pytest.mark.parametrize("where", ["last", "in the middle"])
def test_a_row_longer_than_the_fast_paths_limit_is_left_to_ijson(conn, passes, monkeypatch, where) -> None:
    monkeypatch.setattr(parse, "_BIG_ROW", 1000)
    monkeypatch.setattr(parse, "_READ_SIZE", 7)  # the limit holds for the text read without a row boundary
    rows = corpus.valid_rows()
    big = row("c.project", 402, organization=10, name="x" * 5000)
    rows = rows + [big] if where == "last" else rows[:3] + [big] + rows[3:]
    (result, _rows), taken = either_way(conn, corpus.export_bytes(rows), passes)
    assert taken == [True, False] and result["rows_per_model"]["c.project"] == 9


@pytest.mark.parametrize("block", [1 << 20, 7], ids=["1 MiB reads", "7-byte reads"])
@pytest.mark.parametrize("where", ["last", "in the middle"])
def test_a_row_boundary_look_alike_inside_a_row_never_splits_it(conn, passes, monkeypatch, where, block) -> None:
    """Objects in a list whose first key is "model" look like rows: text cut there ends inside a row, which
    orjson refuses, and ijson stages the export; a batch that holds the whole row parses it whole."""
    monkeypatch.setattr(parse, "_READ_SIZE", block)
    rows = corpus.valid_rows()
    tricky = row("c.project", 403, organization=10, name="t", options=[{"model": "c.org", "pk": 1}, {"model": 2}])
    rows = rows + [tricky] if where == "last" else rows[:3] + [tricky] + rows[3:]
    (result, staged_rows), taken = either_way(conn, corpus.export_bytes(rows), passes)
    assert json.loads(next(f for m, pk, _i, f in staged_rows if pk == 403))["options"] == tricky["fields"]["options"]
    if where == "last" or block == 7:  # the last boundary in the text read is the one inside the row
        assert taken == [True, False]


def test_rows_of_a_shape_seen_before_still_tell_datetimes_from_text(conn, passes) -> None:
    """Rows with the same keys and value types are checked the short way: only the strings of fields that so
    far held datetimes are looked at. The types still come out as reading every staged value says."""
    from backup_assets.core.schema import infer_field_types
    from backup_assets.core.staging import staging_ident

    rows = [
        row(
            "c.project",
            500 + i,
            organization=10,
            name=f"p{i}",
            when="2023-06-22T22:59:55.531Z",
            later="2023-06-22T22:59:55Z",
            note=None,
        )
        for i in range(5)
    ]
    rows[3]["fields"]["later"] = "not a date"  # same shape as the rows before it
    rows[4]["fields"]["note"] = "2023-06-22 22:59"  # a new shape (str where null was): the long way
    data = corpus.export_bytes(corpus.valid_rows() + rows)
    for stream in (io.BytesIO(data), OneWay(data)):
        with conn.transaction(force_rollback=True):
            result = stage_export(conn, "paths", stream, corpus.MANIFEST)
            assert result.fields["c.project"] == infer_field_types(conn, staging_ident("paths"), "c.project")
        assert {k: result.fields["c.project"][k] for k in ("when", "later", "note")} == {
            "when": "timestamptz",
            "later": "text",
            "note": "timestamptz",
        }
    assert passes == [True, False]  # the fast path, then ijson alone


@pytest.mark.parametrize("pad", range(7))
def test_a_long_number_is_seen_wherever_the_reads_cut_it(conn, passes, monkeypatch, pad) -> None:
    """A 20-digit number cut by 7-byte reads at each offset still sends the export to ijson (which refuses it)."""
    monkeypatch.setattr(parse, "_READ_SIZE", 7)
    data = b"[" + b" " * pad + corpus.export_bytes([row("c.org", 1, slug="a", status=12345678901234567890)])[1:]
    with pytest.raises(ExportParseError, match="integer overflow"), conn.transaction(force_rollback=True):
        stage_export(conn, "paths", io.BytesIO(data), corpus.MANIFEST)
    assert passes == [True, False]


def test_a_byte_order_mark_is_skipped_and_counted_in_offsets(conn, passes) -> None:
    """Python's json reading bytes ignores a UTF-8 byte-order mark, and so does the backup's sniffer: the
    parse does too (yajl alone would call it malformed), and error offsets stay offsets in the file."""
    data = corpus.export_bytes()
    (with_mark, staged_rows), taken = either_way(conn, b"\xef\xbb\xbf" + data, passes)
    (without, same_rows), _ = either_way(conn, data, passes)
    assert taken == [True] and staged_rows == same_rows and with_mark["bytes"] == without["bytes"] + 3
    offsets = []
    for text in (data[:-2] + b",\n]", b"\xef\xbb\xbf" + data[:-2] + b",\n]"):  # a trailing comma
        with pytest.raises(ExportParseError) as e, conn.transaction(force_rollback=True):
            stage_export(conn, "paths", OneWay(text), corpus.MANIFEST)
        offsets.append(e.value.offset)
    assert offsets[1] == offsets[0] + 3


def test_the_datetime_shortcut_says_what_the_regex_says() -> None:
    """Strings in the usual datetime forms are told without the regex; each form must be one the regex takes,
    and for any string the answer must be the regex's."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from backup_assets.core.schema import DATETIME_RE

    for form in parse._DATETIME_FORMS:
        assert DATETIME_RE.fullmatch(form.decode().replace("0", "7"))
    chars = st.sampled_from(list("0123456789-T :.Z+") + ["\u0663", "\n", "\ud800", "x"])
    near = st.sampled_from(sorted(f.decode() for f in parse._DATETIME_FORMS)).flatmap(
        lambda form: st.lists(st.one_of(st.just(None), chars), min_size=len(form), max_size=len(form)).map(
            lambda edits: "".join(c if e is None else e for c, e in zip(form.replace("0", "5"), edits))
        )
    )

    exact = st.sampled_from(sorted(f.decode() for f in parse._DATETIME_FORMS)).flatmap(
        lambda form: st.lists(st.sampled_from(list("0123456789")), min_size=len(form), max_size=len(form)).map(
            lambda digits: "".join(d if c == "0" else c for c, d in zip(form, digits))
        )
    )

    @settings(max_examples=3000, deadline=None)
    @given(st.one_of(exact, near, st.text(chars, max_size=34)))
    def agrees(v: str) -> None:
        assert parse._is_datetime(v) == (DATETIME_RE.fullmatch(v) is not None)

    agrees()
