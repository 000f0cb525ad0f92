"""A first-in first-out queue of export rows that spills to an encrypted, already-unlinked temporary file.

    queue = RowSpill()
    queue.push(row)          # rows beyond one chunk go to disk, encrypted
    row = queue.pop()        # oldest first

The comparison uses it for rows that arrive before they can be paired (inputs not in Sentry's order) and
to read a source twice that is costly to produce twice (a re-export from the database). At most two chunks
of rows (:data:`CHUNK_ROWS` each) are in memory; the rest are on disk as AES-256-GCM chunks under a key
that exists only in this process's memory, in a file unlinked when created (nothing is left behind, not
even after a crash, and nothing on disk is readable without the key).
"""

from __future__ import annotations

import json
import tempfile
from collections import deque
from collections.abc import Iterator
from typing import Any

import orjson
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["RowSpill", "CHUNK_ROWS", "encode_rows", "decode_rows"]

#: Rows per encrypted chunk (and the most rows held in memory per end of the queue).
CHUNK_ROWS = 1000
_ORJSON, _STDLIB = b"o", b"j"  # how a chunk's plaintext is encoded (the stdlib keeps ints past 64 bits)
_LENGTH = 8


def encode_rows(rows: list[Any]) -> bytes:
    """JSON rows as bytes, exactly (orjson, or the stdlib for what orjson cannot write)."""
    try:
        return _ORJSON + orjson.dumps(rows)
    except orjson.JSONEncodeError:  # an integer past 64 bits, a lone surrogate: the stdlib keeps them exactly
        return _STDLIB + json.dumps(rows).encode()


def decode_rows(data: bytes) -> list[Any]:
    """The rows :func:`encode_rows` wrote."""
    return orjson.loads(data[1:]) if data[:1] == _ORJSON else json.loads(data[1:])


class RowSpill:
    """FIFO of JSON rows: the oldest chunk and the newest rows in memory, every chunk between them encrypted
    on disk. ``len()`` is the number of rows queued."""

    def __init__(self, chunk_rows: int = CHUNK_ROWS) -> None:
        self._chunk_rows = chunk_rows
        self._head: deque[Any] = deque()  # the oldest rows, read back from disk (or moved from the tail)
        self._tail: list[Any] = []  # the newest rows, not yet written
        self._aead: AESGCM | None = None
        self._file: Any = None
        self._read_at = self._write_at = 0
        self._nonce = 0
        self._size = 0
        self.spilled_chunks = 0  #: chunks written to disk so far (for tests and benchmarks)

    def __len__(self) -> int:
        return self._size

    def push(self, row: Any) -> None:
        self._tail.append(row)
        self._size += 1
        if len(self._tail) >= self._chunk_rows:
            self._write(self._tail)
            self._tail = []

    def pop(self) -> Any:
        """The oldest row; :class:`IndexError` when the queue is empty."""
        if not self._head:
            if self._read_at < self._write_at:
                self._head.extend(self._read())
            elif self._tail:
                self._head.extend(self._tail)
                self._tail = []
            else:
                raise IndexError("pop from an empty RowSpill")
        self._size -= 1
        return self._head.popleft()

    def drain(self) -> Iterator[Any]:
        """Pop every row, oldest first (a generator)."""
        while self._size:
            yield self.pop()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._head.clear()
        self._tail = []
        self._size = self._read_at = self._write_at = 0

    def __enter__(self) -> RowSpill:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, rows: list[Any]) -> None:
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="backup-assets-spill-")  # noqa: SIM115 - closed by close(); unlinked at creation
            self._aead = AESGCM(AESGCM.generate_key(bit_length=256))
        assert self._aead is not None
        self._nonce += 1
        nonce = self._nonce.to_bytes(12, "big")
        sealed = nonce + self._aead.encrypt(nonce, encode_rows(rows), None)
        self._file.seek(self._write_at)
        self._file.write(len(sealed).to_bytes(_LENGTH, "big") + sealed)
        self._write_at += _LENGTH + len(sealed)
        self.spilled_chunks += 1

    def _read(self) -> list[Any]:
        assert self._aead is not None
        self._file.seek(self._read_at)
        size = int.from_bytes(self._file.read(_LENGTH), "big")
        sealed = self._file.read(size)
        self._read_at += _LENGTH + size
        if self._read_at == self._write_at:  # everything written was read: start the file over
            self._read_at = self._write_at = 0
            self._file.truncate(0)
        return decode_rows(self._aead.decrypt(sealed[:12], sealed[12:], None))
