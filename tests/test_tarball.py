"""Sentry's tarball layout: read it strictly, write it exactly as Sentry's tarfile code does."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile

import pytest

from backup_assets.core.errors import BackupFormatError, EncryptionError
from backup_assets.core.tarball import DATA_KEY, EXPORT_JSON, KEY_PUB, is_tar_header, read_tarball, write_tarball
from tests.crypto_helpers import tar_of

TOKEN = b"gAAAAA" + b"x" * 200 + b"=="  # content is not checked here, only placement
DATA = bytes(range(256))
PUB = b"-----BEGIN PUBLIC KEY-----\n" + b"A" * 392 + b"\n-----END PUBLIC KEY-----\n"
GOOD = [(EXPORT_JSON, TOKEN), (DATA_KEY, DATA), (KEY_PUB, PUB)]


def read(data: bytes):
    return read_tarball(io.BytesIO(data))


def with_member(info: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, content in GOOD:
            if name != info.name:
                member = tarfile.TarInfo(name)
                member.size = len(content)
                tar.addfile(member, io.BytesIO(content))
        tar.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def test_reads_sentrys_layout_without_reading_the_token() -> None:
    data = tar_of(GOOD)
    contents = read(data)
    assert data[contents.export_offset : contents.export_offset + contents.export_size] == TOKEN
    assert (contents.data_key, contents.key_pub) == (DATA, PUB)
    assert contents.members == {EXPORT_JSON: len(TOKEN), DATA_KEY: 256, KEY_PUB: len(PUB)}
    assert "x" * 10 not in repr(contents)


def test_member_order_is_free() -> None:
    assert read(tar_of(GOOD[::-1])).key_pub == PUB


def test_reads_from_a_path(tmp_path) -> None:
    (tmp_path / "b.tar").write_bytes(tar_of(GOOD))
    assert read_tarball(tmp_path / "b.tar").data_key == DATA
    with pytest.raises(BackupFormatError, match="no such file"):
        read_tarball(tmp_path / "missing.tar")


@pytest.mark.parametrize("as_iterable", [True, False])
def test_writes_byte_for_byte_what_sentry_writes(as_iterable: bool) -> None:
    out = io.BytesIO()
    chunks = [TOKEN[:7], b"", TOKEN[7:100], TOKEN[100:]]
    write_tarball(out, chunks if as_iterable else io.BytesIO(TOKEN), len(TOKEN), DATA, PUB)
    assert out.getvalue() == tar_of(GOOD)
    assert is_tar_header(out.getvalue()[:512])


@pytest.mark.parametrize("size, match", [(len(TOKEN) + 1, "ended before"), (len(TOKEN) - 1, "longer than")])
def test_write_refuses_a_token_of_the_wrong_size(size: int, match: str) -> None:
    with pytest.raises(EncryptionError, match=match):
        write_tarball(io.BytesIO(), [TOKEN], size, DATA, PUB)


@pytest.mark.parametrize("compress, name", [(gzip.compress, "gzip"), (bz2.compress, "bzip2"), (lzma.compress, "xz")])
def test_compressed_tarballs_are_named(compress, name: str) -> None:
    with pytest.raises(BackupFormatError, match=f"is a {name}-compressed file"):
        read(compress(tar_of(GOOD)))


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "empty file"),
        (b'[{"model": "sentry.user"}]', "truncated, or not a tar"),
        (b"hello " * 200, "not a tar archive"),
    ],
)
def test_not_a_tar(data: bytes, match: str) -> None:
    with pytest.raises(BackupFormatError, match=match):
        read(data)


def test_truncation_anywhere_is_detected() -> None:
    data = tar_of(GOOD)
    content_end = 3 * 512 + 512 + 512 + 512  # headers + padded data of the three members
    for cut in [
        *range(1, 512, 97),
        512,
        600,
        1023,
        1024,
        1100,
        1535,
        1536,
        1800,
        2047,
        2048,
        content_end - 1,
        content_end,
        content_end + 511,
    ]:
        with pytest.raises(BackupFormatError, match="truncated|missing member|not a tar"):
            read(data[:cut])


def test_truncated_member_is_named() -> None:
    data = tar_of(GOOD)
    with pytest.raises(BackupFormatError, match="member 'key.pub': truncated"):
        read(data[: 2560 + 100])


def test_missing_end_of_archive_marker() -> None:
    data = tar_of(GOOD)
    with pytest.raises(BackupFormatError, match="end-of-archive marker is missing"):
        read(data[: 3 * 1024])


@pytest.mark.parametrize("missing", [EXPORT_JSON, DATA_KEY, KEY_PUB])
def test_missing_member(missing: str) -> None:
    with pytest.raises(BackupFormatError, match=f"member '{missing}': missing member"):
        read(tar_of([m for m in GOOD if m[0] != missing]))


def test_unknown_member() -> None:
    with pytest.raises(BackupFormatError, match="unknown member 'notes.txt'"):
        read(tar_of([*GOOD, ("notes.txt", b"hi")]))
    with pytest.raises(BackupFormatError, match=r"unknown member '\./export.json'"):
        read(tar_of([("./export.json", TOKEN), *GOOD[1:]]))


def test_long_unknown_name_is_shortened() -> None:
    with pytest.raises(BackupFormatError, match=r"unknown member 'aaaa+\.\.\.'") as e:
        read(tar_of([*GOOD, ("a" * 300, b"")]))
    assert "a" * 101 not in str(e.value)


def test_duplicate_member() -> None:
    with pytest.raises(BackupFormatError, match="member 'data.key': duplicate member"):
        read(tar_of([*GOOD, (DATA_KEY, DATA)]))


@pytest.mark.parametrize(
    "kind, label",
    [
        (tarfile.SYMTYPE, "symbolic link"),
        (tarfile.LNKTYPE, "hard link"),
        (tarfile.DIRTYPE, "directory"),
        (tarfile.CHRTYPE, "character device"),
        (tarfile.BLKTYPE, "block device"),
        (tarfile.FIFOTYPE, "FIFO"),
    ],
)
def test_non_regular_member(kind: bytes, label: str) -> None:
    info = tarfile.TarInfo(KEY_PUB)
    info.type = kind
    info.linkname = "/etc/passwd" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
    with pytest.raises(BackupFormatError, match=f"member 'key.pub': is a {label}, not a regular file"):
        read(with_member(info))


@pytest.mark.parametrize("name, size", [(DATA_KEY, 10), (DATA_KEY, 5000), (KEY_PUB, 5), (KEY_PUB, 20_000)])
def test_implausible_sizes(name: str, size: int) -> None:
    members = [(n, b"x" * size if n == name else d) for n, d in GOOD]
    with pytest.raises(BackupFormatError, match=f"member '{name}': implausible size {size} bytes"):
        read(tar_of(members))


def test_empty_export_json() -> None:
    with pytest.raises(BackupFormatError, match="member 'export.json': is empty"):
        read(tar_of([(EXPORT_JSON, b""), *GOOD[1:]]))


def test_corrupt_header_after_the_first() -> None:
    data = bytearray(tar_of(GOOD))
    data[1024 + 10] ^= 0x55  # in the name field of data.key's header: its checksum no longer matches
    with pytest.raises(BackupFormatError, match="invalid tar header .* byte 1024|corrupt"):
        read(bytes(data))


def test_garbage_after_the_last_member() -> None:
    data = bytearray(tar_of(GOOD))
    data[3072:3082] = b"garbage!!!"  # where the end-of-archive marker starts
    with pytest.raises(BackupFormatError, match="byte 3072: invalid tar header"):
        read(bytes(data))
