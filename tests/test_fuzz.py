"""Property tests: the tar reader, the streaming decryptor and the export parser, fed random and mutated input,
return a valid result or raise the project's own error type -- never another exception, never a hang."""

from __future__ import annotations

import io
import json
import os
import tarfile

import psycopg
import pytest
from cryptography.fernet import Fernet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backup_assets.core.errors import BackupFormatError, DecryptionError, ExportParseError
from backup_assets.core.fernet_stream import FernetDecryptingReader
from backup_assets.core.parse import _DepthGuard, stage_export
from backup_assets.core.postgres import ensure_database
from backup_assets.core.state import ensure_state
from backup_assets.core.tarball import MEMBERS, read_tarball
from tests import corpus

pytestmark = pytest.mark.timeout(120)
FUZZ = settings(max_examples=150, deadline=3000, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

KEYS = corpus.KeySet.generate()
PLAIN = corpus.export_bytes()
PARTS = corpus.Parts.encrypt(PLAIN, KEYS)
TAR = PARTS.tar()
HEADERS = [offset - tarfile.BLOCKSIZE for _name, offset, _size in corpus._member_offsets(TAR)]


# --------------------------------------------------------------------------------------------- mutations


@st.composite
def mutated(draw: st.DrawFn, data: bytes, alphabet: bytes | None = None) -> bytes:
    """``data`` with a few byte replacements, insertions, deletions and possibly a truncation."""
    out = bytearray(data)
    byte = st.sampled_from(alphabet) if alphabet else st.integers(0, 255)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["replace", "insert", "delete", "flip"]))
        at = draw(st.integers(0, max(0, len(out) - 1)))
        if kind == "replace" and out:
            out[at] = draw(byte)
        elif kind == "flip" and out:
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            out[at:at] = bytes(draw(st.lists(byte, min_size=1, max_size=8)))
        elif out:
            del out[at : at + draw(st.integers(1, 16))]
    if draw(st.booleans()):
        del out[draw(st.integers(0, len(out))) :]
    return bytes(out)


def fix_checksums(data: bytes) -> bytes:
    """Recompute the checksum of the blocks where the valid tarball had headers, so mutations of header fields get
    past the checksum to the field parsing."""
    out = bytearray(data)
    for at in HEADERS:
        block = out[at : at + tarfile.BLOCKSIZE]
        if len(block) < tarfile.BLOCKSIZE:
            break
        block[148:156] = b" " * 8
        out[at + 148 : at + 156] = b"%06o\0 " % sum(block)
    return bytes(out)


# --------------------------------------------------------------------------------------------- tar reader


def check_tar(data: bytes) -> None:
    try:
        contents = read_tarball(io.BytesIO(data))
    except BackupFormatError:
        return
    assert set(contents.members) == set(MEMBERS)
    assert contents.export_offset + contents.export_size <= len(data)


@FUZZ
@given(st.binary(max_size=4096))
def test_tar_reader_on_random_bytes(data: bytes) -> None:
    check_tar(data)


@FUZZ
@given(st.binary(max_size=600).map(lambda b: TAR[:512] + b) | st.binary(min_size=512, max_size=2048))
def test_tar_reader_on_random_bytes_after_a_valid_header(data: bytes) -> None:
    check_tar(data)


@FUZZ
@given(mutated(TAR), st.booleans())
def test_tar_reader_on_mutated_tarballs(data: bytes, fix: bool) -> None:
    check_tar(fix_checksums(data) if fix else data)


# --------------------------------------------------------------------------------------------- decryptor

B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_="


def decrypt(token: bytes, key: bytes, chunk_size: int, reads: list[int]) -> bytes | None:
    """The plaintext, or None on DecryptionError; nothing is released before the whole token authenticated."""
    try:
        reader = FernetDecryptingReader(io.BytesIO(token), key, chunk_size=chunk_size)
    except DecryptionError:
        return None
    out = bytearray()
    sizes = iter(reads)
    while chunk := reader.read(next(sizes, -1)):
        out += chunk
    return bytes(out)


@FUZZ
@given(
    st.binary(max_size=512) | st.lists(st.sampled_from(B64), max_size=300).map(bytes),
    st.integers(4, 200),
    st.lists(st.integers(1, 300), max_size=20),
)
def test_decryptor_on_random_tokens(token: bytes, chunk_size: int, reads: list[int]) -> None:
    assert decrypt(token, PARTS.fernet_key, chunk_size, reads) is None


@FUZZ
@given(
    mutated(PARTS.token, B64) | mutated(PARTS.token), st.integers(4, 4096), st.lists(st.integers(1, 5000), max_size=20)
)
def test_decryptor_on_mutated_tokens(token: bytes, chunk_size: int, reads: list[int]) -> None:
    """A mutated token either fails, or is the original (a no-op mutation): nothing else authenticates."""
    plain = decrypt(token, PARTS.fernet_key, chunk_size, reads)
    assert plain is None or (plain == PLAIN and token == PARTS.token)


@FUZZ
@given(st.binary(max_size=2000), st.integers(4, 300), st.lists(st.integers(1, 700), max_size=20))
def test_decryptor_round_trips_with_any_read_pattern(plain: bytes, chunk_size: int, reads: list[int]) -> None:
    token = Fernet(PARTS.fernet_key).encrypt(plain)
    assert decrypt(token, PARTS.fernet_key, chunk_size, reads) == plain
    assert decrypt(token, Fernet.generate_key(), chunk_size, reads) is None


# --------------------------------------------------------------------------------------------- export parser


@pytest.fixture(scope="module")
def conn(pg_server):
    name = f"fuzz_{os.getpid()}"
    ensure_database(pg_server.dsn("postgres"), name)
    with psycopg.connect(pg_server.dsn(name), autocommit=True) as c:
        ensure_state(c)
        yield c
    with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def stage(conn: psycopg.Connection, data: bytes) -> bool:
    """Stage ``data`` in a transaction that is rolled back; check the result against Python's json. False when
    the parser refused ``data``."""
    try:
        with conn.transaction(force_rollback=True):
            result = stage_export(conn, "fuzz", io.BytesIO(data), corpus.MANIFEST)
            staged = conn.execute("SELECT count(*) FROM backup_assets.stage_" + _stage_suffix()).fetchone()[0]
    except ExportParseError:
        return False
    # yajl also takes vertical tab and form feed as whitespace (Python's json does not); inside strings it refuses
    # every control character, so once the parser accepted the text they can only be whitespace
    rows = json.loads(data.replace(b"\x0b", b" ").replace(b"\x0c", b" "))
    assert isinstance(rows, list) and result.rows == len(rows)
    kept = sum(result.rows_per_model.values())
    assert kept + sum(result.unknown_models.values()) + sum(result.excluded_models.values()) == len(rows)
    assert staged == kept
    return True


def _stage_suffix() -> str:
    from backup_assets.core.staging import staging_table_name

    return staging_table_name("fuzz").removeprefix("stage_")


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=15,
)
MODELS = st.sampled_from(["c.user", "c.org", "c.project", "c.member", "C.ORG", "x.unknown"]) | st.text(max_size=12)
PK = st.integers(-(2**64), 2**64) | st.integers(1, 20) | JSON
FIELDS = (
    st.dictionaries(
        st.sampled_from(["organization", "user_id", "slug", "username", "name"]) | st.text(max_size=6),
        st.integers(1, 20) | JSON,
        max_size=5,
    )
    | JSON
)
ROW = st.fixed_dictionaries({"model": MODELS, "pk": PK, "fields": FIELDS}) | JSON


@settings(FUZZ, max_examples=120)
@given(st.lists(ROW, max_size=12) | JSON, st.booleans())
def test_parser_on_random_json(conn, rows: object, ascii_only: bool) -> None:
    stage(conn, json.dumps(rows, ensure_ascii=ascii_only).encode())


@settings(FUZZ, max_examples=120)
@given(mutated(PLAIN) | mutated(json.dumps(corpus.valid_rows()).encode(), b'[]{}",:\\0123456789-.eE \x00\xff'))
def test_parser_on_mutated_exports(conn, data: bytes) -> None:
    stage(conn, data)


# --------------------------------------------------------------------------------------------- depth guard


def depth(v: object) -> int:
    if isinstance(v, dict):
        v = list(v.values())
    return 1 + max(map(depth, v), default=0) if isinstance(v, list) else 0


NESTED = st.recursive(
    st.sampled_from(['a"[\\', "x]", "{", 1, None, 'q\\"[[', "\\\\", ']]]"}']),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["k[", 'k"{', "k\\", "k"]), inner, max_size=3)
    ),
    max_leaves=30,
)


@FUZZ
@given(NESTED, st.integers(0, 12), st.integers(1, 9))
def test_depth_guard_is_exact_across_chunk_boundaries(value: object, limit: int, step: int) -> None:
    data = json.dumps(value).encode()
    guard = _DepthGuard(limit)
    ok = all(guard.feed(data[i : i + step]) for i in range(0, len(data), step))
    assert ok == (depth(value) <= limit)


def test_the_fuzzers_start_from_valid_inputs(conn) -> None:
    """The mutations start from inputs that pass each entry point (else a fuzzer would only hit the first check)."""
    assert read_tarball(io.BytesIO(fix_checksums(TAR))).export_size == len(PARTS.token)
    assert decrypt(PARTS.token, PARTS.fernet_key, 64, [7, 1, 300]) == PLAIN
    assert stage(conn, PLAIN) and stage(conn, json.dumps(corpus.valid_rows()).encode())


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40),
    st.lists(st.integers(min_value=1, max_value=17), min_size=1, max_size=8),
    st.booleans(),
)
def test_surrogate_guard_passes_pairs_and_stops_lone_halves(text, sizes, lone):
    """Escaped text (astral characters become surrogate pairs) fed in any chunking passes; the same text
    with a lone half spliced in is caught, wherever the chunks cut it."""
    from backup_assets.core.parse import _SurrogateGuard

    data = json.dumps(text).encode()  # ensure_ascii: every non-ASCII character escaped
    if lone:
        data = data[:-1] + b"\\udc01" + data[-1:]
    guard, i, k, found = _SurrogateGuard(), 0, 0, None
    while i < len(data) and found is None:
        n = sizes[k % len(sizes)]
        found, i, k = guard.feed(data[i : i + n]), i + n, k + 1
    if found is None:
        found = guard.feed(b"")
    assert (found is not None) == lone
    if lone:
        assert data[found : found + 6] == b"\\udc01"
