"""Sentry's export tarball: an uncompressed tar of three regular files.

=============== =================================================================
``export.json`` the Fernet token (url-safe base64 text) of the export JSON
``data.key``    the 44-byte Fernet key, RSA-OAEP encrypted (256 bytes for RSA-2048)
``key.pub``     the PEM public key it was encrypted for
=============== =================================================================

Reading (:func:`read_tarball`) validates the structure eagerly and strictly, never extracts anything and never
reads ``export.json``: it returns where the token lies in the file.  Writing (:func:`write_tarball`) produces
what Sentry's ``tarfile.open(mode="w")`` produces (default PAX format, default member metadata: mode 0644,
mtime 0, uid/gid 0), streaming the token from an iterable.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol, runtime_checkable

from .errors import BackupFormatError, EncryptionError

__all__ = [
    "DATA_KEY",
    "EXPORT_JSON",
    "KEY_PUB",
    "MEMBERS",
    "TarballContents",
    "compression_of",
    "is_tar_header",
    "read_tarball",
    "write_tarball",
]

EXPORT_JSON, DATA_KEY, KEY_PUB = "export.json", "data.key", "key.pub"
MEMBERS = (EXPORT_JSON, DATA_KEY, KEY_PUB)  #: in the order Sentry writes them
#: plausible sizes: RSA-OAEP ciphertext of 1024..8192-bit keys; a PEM public key of such keys
DATA_KEY_SIZE = (128, 1024)
KEY_PUB_SIZE = (100, 16 * 1024)
BLOCK = tarfile.BLOCKSIZE
_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE)
_TYPE_NAMES = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.DIRTYPE: "a directory",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
    tarfile.CONTTYPE: "a contiguous file",
    tarfile.GNUTYPE_SPARSE: "a sparse file",
}
_COMPRESSION = (  # magic, name, how to undo it
    (b"\x1f\x8b", "gzip", "gunzip"),
    (b"BZh", "bzip2", "bunzip2"),
    (b"\xfd7zXZ\x00", "xz", "unxz"),
    (b"\x28\xb5\x2f\xfd", "zstd", "unzstd"),
    (b"PK\x03\x04", "zip", "unzip"),
)


@dataclass(frozen=True)
class TarballContents:
    """What a valid tarball holds: the token's place in the file, and the two small members."""

    export_offset: int  #: byte offset of ``export.json``'s data in the file
    export_size: int
    data_key: bytes  #: RSA-OAEP ciphertext of the Fernet key
    key_pub: bytes  #: PEM public key
    members: dict[str, int]  #: member name -> size

    def __repr__(self) -> str:  # data.key is ciphertext, but there is no need to print it
        return f"TarballContents(export_offset={self.export_offset}, members={self.members})"


def compression_of(head: bytes) -> tuple[str, str] | None:
    """``(format, tool)`` if ``head`` starts like a compressed file, else None."""
    for magic, name, tool in _COMPRESSION:
        if head.startswith(magic):
            return name, tool
    return None


def _octal(field: bytes) -> int | None:
    digits = field.rstrip(b"\0 ").lstrip(b" ")
    try:
        return int(digits, 8) if digits else None
    except ValueError:
        return None


def is_tar_header(block: bytes) -> bool:
    """True if ``block`` is a whole 512-byte tar header with a valid checksum."""
    if len(block) < BLOCK:
        return False
    stored = _octal(block[148:156])
    if stored is None:
        return False
    rest = block[:148] + block[156:BLOCK]
    unsigned = sum(rest) + 8 * 0x20
    signed = unsigned - 256 * sum(1 for b in rest if b & 0x80)  # some old tars sum signed chars
    return stored in (unsigned, signed)


def _shown(name: str) -> str:
    return repr(name if len(name) <= 100 else name[:100] + "...")


def _check_member(info: tarfile.TarInfo, seen: dict[str, int], file_size: int, where: str) -> None:
    name = info.name
    if name not in MEMBERS:
        raise BackupFormatError(
            f"unknown member {_shown(name)}: a Sentry export tarball holds only {', '.join(MEMBERS)}", path=where
        )
    if name in seen:
        raise BackupFormatError("duplicate member", path=where, member=name)
    if info.type not in _REGULAR:
        kind = _TYPE_NAMES.get(info.type, f"of tar type {info.type!r}")
        raise BackupFormatError(f"is {kind}, not a regular file", path=where, member=name)
    end = info.offset_data + info.size
    if end > file_size:
        raise BackupFormatError(
            f"truncated: the member's {info.size} bytes end at byte {end} but the file has {file_size}",
            path=where,
            member=name,
        )
    bounds = {DATA_KEY: DATA_KEY_SIZE, KEY_PUB: KEY_PUB_SIZE}.get(name)
    if bounds and not bounds[0] <= info.size <= bounds[1]:
        raise BackupFormatError(
            f"implausible size {info.size} bytes (expected {bounds[0]}..{bounds[1]})", path=where, member=name
        )
    if name == EXPORT_JSON and info.size == 0:
        raise BackupFormatError("is empty", path=where, member=name)
    seen[name] = info.size


def _check_end(f: BinaryIO, offset: int, where: str) -> None:
    """After the last member there must be the end-of-archive marker (zero blocks), not garbage."""
    f.seek(offset)
    block = f.read(BLOCK)
    if len(block) < BLOCK:
        raise BackupFormatError("truncated: the end-of-archive marker is missing", path=where, offset=offset)
    if block.count(0) != BLOCK:
        raise BackupFormatError("invalid tar header (bad checksum or corrupt data)", path=where, offset=offset)


def read_tarball(source: str | os.PathLike[str] | BinaryIO) -> TarballContents:
    """Validate a Sentry export tarball and locate its members (``export.json`` is not read)."""
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source, "rb") as f:
                return _read(f, str(source))
        except FileNotFoundError:
            raise BackupFormatError("no such file", path=str(source)) from None
        except IsADirectoryError:
            raise BackupFormatError("is a directory, not a backup file", path=str(source)) from None
    return _read(source, str(getattr(source, "name", "<tarball>")))


def _read(f: BinaryIO, where: str) -> TarballContents:
    file_size = f.seek(0, os.SEEK_END)
    f.seek(0)
    head = f.read(BLOCK)
    compressed = compression_of(head)
    if compressed:
        raise BackupFormatError(
            f"is a {compressed[0]}-compressed file; Sentry's export tarballs are "
            f"uncompressed tar archives (decompress it first, e.g. with {compressed[1]})",
            path=where,
        )
    if file_size == 0:
        raise BackupFormatError("empty file, not a tar archive", path=where)
    if not is_tar_header(head):
        what = (
            f"truncated, or not a tar archive ({file_size} bytes)"
            if file_size < BLOCK
            else "not a tar archive (no valid tar header at byte 0)"
        )
        raise BackupFormatError(what, path=where)
    f.seek(0)
    seen: dict[str, int] = {}
    spans: dict[str, tuple[int, int]] = {}
    try:
        tar = tarfile.open(fileobj=f, mode="r:")  # noqa: SIM115 - members are only located, never extracted
        while (info := tar.next()) is not None:
            _check_member(info, seen, file_size, where)
            spans[info.name] = (info.offset_data, info.size)
        end = tar.offset
    except tarfile.ReadError as e:
        reason = str(e)
        if "unexpected end" in reason or "truncated" in reason:
            raise BackupFormatError(f"truncated ({reason})", path=where) from None
        raise BackupFormatError(f"corrupt tar archive ({reason})", path=where) from None
    _check_end(f, end, where)
    for name in MEMBERS:
        if name not in spans:
            raise BackupFormatError("missing member", path=where, member=name)
    small = {}
    for name in (DATA_KEY, KEY_PUB):
        offset, size = spans[name]
        f.seek(offset)
        small[name] = f.read(size)
    offset, size = spans[EXPORT_JSON]
    return TarballContents(
        export_offset=offset, export_size=size, data_key=small[DATA_KEY], key_pub=small[KEY_PUB], members=dict(seen)
    )


@runtime_checkable
class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class _ChunkReader:
    """A ``read(n)`` view of an iterable of byte chunks (what :meth:`tarfile.TarFile.addfile` consumes)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._buf = memoryview(b"")

    def read(self, n: int = -1, /) -> bytes:
        """Exactly ``n`` bytes, fewer only at the end (``tarfile`` treats a short read as the end); every
        byte left when ``n`` is negative."""
        if n < 0:
            rest, self._buf = bytes(self._buf) + b"".join(self._chunks), memoryview(b"")
            return rest
        parts, want = [], n
        while want > 0:
            if not self._buf:
                nxt = next(self._chunks, None)
                if nxt is None:
                    break
                self._buf = memoryview(nxt)
            part, self._buf = self._buf[:want], self._buf[want:]
            parts.append(part)
            want -= len(part)
        return b"".join(parts)

    def exhausted(self) -> bool:
        return not self._buf and not self.read(1)


def write_tarball(
    dst: BinaryIO, token: Iterable[bytes] | BinaryIO, token_size: int, data_key: bytes, key_pub: bytes
) -> None:
    """Write Sentry's tarball to ``dst``: ``export.json`` (``token_size`` bytes streamed from ``token``), then
    ``data.key`` and ``key.pub``.  ``token`` is a binary file or an iterable of byte chunks."""
    reader = token if isinstance(token, _Readable) else _ChunkReader(token)
    with tarfile.TarFile(fileobj=dst, mode="w", copybufsize=1 << 20) as tar:
        for name, size, data in (
            (EXPORT_JSON, token_size, reader),
            (DATA_KEY, len(data_key), None),
            (KEY_PUB, len(key_pub), None),
        ):
            info = tarfile.TarInfo(name)
            info.size = size
            if data is None:
                data = _ChunkReader([data_key if name == DATA_KEY else key_pub])
            try:
                tar.addfile(info, data)
            except OSError as e:
                raise EncryptionError(f"{name}: the data ended before its announced {size} bytes") from e
        if isinstance(reader, _ChunkReader) and not reader.exhausted():
            raise EncryptionError(f"{EXPORT_JSON}: the token is longer than its announced {token_size} bytes")
