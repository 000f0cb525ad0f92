"""A secret scanner that compression cannot fool: it reads files, every value of every SQLite table, and
whatever zlib, gzip or base64 blobs hide inside them, then looks for the needles in all of it.

Dagster keeps job snapshots zlib-compressed in ``runs.db``; a scan of the raw bytes of the ``.db`` files
cannot see a password in a resource's config default there. This one can.
"""

from __future__ import annotations

import base64
import re
import sqlite3
import zlib
from binascii import Error as Base64Error
from collections.abc import Iterator, Mapping
from pathlib import Path

from backup_assets.core import keys

#: zlib headers (any compression level) and the gzip magic: where a compressed stream may start.
_STREAM_START = re.compile(rb"\x78[\x01\x5e\x9c\xda]|\x1f\x8b\x08")
_BASE64_RUN = re.compile(rb"[A-Za-z0-9+/_-]{24,}={0,2}")
_SQLITE_MAGIC = b"SQLite format 3\x00"
_DEPTH = 3


def _inflate_at(data: bytes, start: int) -> bytes | None:
    """The stream starting at ``start`` decompressed (zlib or gzip, told by its header), or None."""
    inflater = zlib.decompressobj(wbits=47)  # 32 + 15: detect zlib or gzip
    try:
        out = inflater.decompress(data[start:], 1 << 26)
    except zlib.error:
        return None
    return out or None


def _base64(run: bytes) -> Iterator[bytes]:
    """A base64 run decoded at each of the four alignments (the blob may start after a few letters of
    the run); standard or URL-safe alphabet, padding optional."""
    decode = base64.urlsafe_b64decode if (b"-" in run or b"_" in run) else base64.b64decode
    for skip in range(4):
        body = run[skip:].rstrip(b"=")
        body = body[: len(body) - len(body) % 4]
        try:
            decoded = decode(body)
        except (Base64Error, ValueError):
            continue
        if decoded:
            yield decoded


def unwrapped(data: bytes) -> Iterator[tuple[str, bytes]]:
    """Each blob hidden in ``data`` (compressed streams anywhere in it, base64 runs), named by its kind."""
    for m in _STREAM_START.finditer(data):
        inner = _inflate_at(data, m.start())
        if inner is not None:
            yield ("gzip" if m.group().startswith(b"\x1f") else "zlib"), inner
    for m in _BASE64_RUN.finditer(data):
        for inner in _base64(m.group()):
            yield "base64", inner


def layers(data: bytes, depth: int = _DEPTH) -> Iterator[tuple[str, bytes]]:
    """``data`` and every blob unwrapped from it, recursively, each with the path of wrappings that hid it."""
    yield "", data
    if depth:
        for kind, inner in unwrapped(data):
            for path, blob in layers(inner, depth - 1):
                yield kind + ("/" + path if path else ""), blob


def find(data: bytes, needles: Mapping[str, bytes], where: str) -> list[str]:
    """``"<needle> in <where> [<wrappings>]"`` for each needle found in ``data`` or any blob inside it."""
    found = []
    for path, blob in layers(data):
        found += [
            f"{name} in {where}" + (f" [{path}]" if path else "") for name, needle in needles.items() if needle in blob
        ]
    return found


def sqlite_values(path: Path) -> Iterator[tuple[str, bytes]]:
    """``(table.column row N, value)`` for every text or blob value of every table of a SQLite file."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            cursor = conn.execute(f'SELECT * FROM "{table}"')  # names read from sqlite_master of a test's file
            columns = [d[0] for d in cursor.description]
            for n, row in enumerate(cursor):
                for column, value in zip(columns, row):
                    if isinstance(value, (bytes, str)):
                        yield f"{table}.{column} row {n}", value if isinstance(value, bytes) else value.encode()
    conn.close()


def scan_tree(root: Path, needles: Mapping[str, bytes], skip: frozenset[Path] = frozenset()) -> list[str]:
    """Every needle found under ``root``: in each file's bytes and the blobs in them, and for SQLite
    files in each table value and the blobs in it (snapshots, event bodies, run bodies...)."""
    found: list[str] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p not in skip):
        content = path.read_bytes()
        where = str(path.relative_to(root))
        found += find(content, needles, where)
        if content.startswith(_SQLITE_MAGIC):
            for cell, value in sqlite_values(path):
                found += find(value, needles, f"{where} {cell}")
    return found


def sqlite_tables(root: Path) -> set[str]:
    """The tables of every SQLite file under ``root`` (to show what a scan covered)."""
    out: set[str] = set()
    for path in root.rglob("*.db"):
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            out |= {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        conn.close()
    return out


def secret_forms(private_pem: bytes, data_key: bytes) -> dict[str, bytes]:
    """Every form in which the keys could leak: PEM, its lines and body, DER hex, private exponent; the data key
    as written, raw, hex, standard base64, and its signing/encryption halves."""
    lines = private_pem.strip().splitlines()[1:-1]
    body = b"".join(lines)
    key = keys.load_private_key(private_pem)
    raw = base64.urlsafe_b64decode(data_key)
    forms = {
        "private key PEM": private_pem,
        "private key base64 body": body,
        "private key DER hex": base64.b64decode(body).hex().encode(),
        "private exponent (decimal)": str(key.private_numbers().d).encode(),
        "private exponent (hex)": format(key.private_numbers().d, "x").encode(),
        "data key": data_key,
        "data key raw": raw,
        "data key hex": raw.hex().encode(),
        "data key standard base64": base64.b64encode(raw),
        "signing key": raw[:16],
        "encryption key": raw[16:],
        "signing key hex": raw[:16].hex().encode(),
        "encryption key hex": raw[16:].hex().encode(),
    }
    forms.update({f"private key PEM line {i}": line for i, line in enumerate(lines) if len(line) >= 16})
    return forms
