"""A backup file's stable key: its readable stem, ``-``, and the first hex digits of its SHA-256.

``sentry-2024-06-01.tar`` whose SHA-256 starts ``3fa9c2d1`` has the key ``sentry-2024-06-01-3fa9c2d1``.
A file rewritten under the same name gets a new key. The key is the Dagster partition of the backup
and the import id the engine records (it satisfies :func:`backup_assets.core.settings.check_import_id`).
It lives in the core so that the resources and the Dagster layer share it without importing each other.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

from backup_assets.core.settings import check_import_id

#: Hex digits of the SHA-256 kept in a key.
HASH_PREFIX_LEN = 8
_MAX_STEM = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9._:@+=-]+")
_KEY = re.compile(rf"^(?P<stem>.+)-(?P<hash>[0-9a-f]{{{HASH_PREFIX_LEN}}})$")
#: A file changed less than this long before it is hashed is not remembered.
SETTLED_SECONDS = 2.0
#: Bytes read into one buffer at a time while hashing.
_READ_SIZE = 1 << 18


class _Identity(NamedTuple):
    """What tells a file's version apart: any write moves ``ctime_ns``."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int


#: Digests remembered per process, least recently hashed first.
_digests: OrderedDict[_Identity, str] = OrderedDict()
_REMEMBERED = 64
_lock = threading.Lock()


def key_stem(filename: str) -> str:
    """The readable part of a key: the file name without .tar/.json, unsafe characters replaced by ``-``."""
    stem = Path(filename).name
    for suffix in (".tar", ".json"):
        if stem.lower().endswith(suffix) and len(stem) > len(suffix):
            stem = stem[: -len(suffix)]
            break
    stem = _UNSAFE.sub("-", stem).strip("-")
    stem = re.sub(r"^[^A-Za-z0-9]+", "", stem)[:_MAX_STEM]
    return stem or "backup"


def partition_key(filename: str | Path, sha256_hex: str) -> str:
    """The key (partition and import id) of a backup named ``filename`` whose SHA-256 is ``sha256_hex``."""
    digest = sha256_hex.lower()
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError(f"not a SHA-256 hex digest: {sha256_hex!r}")
    return check_import_id(f"{key_stem(str(filename))}-{digest[:HASH_PREFIX_LEN]}")


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, read in chunks.

    A process hashes a file once while it is unchanged: the digest is remembered under the file's
    identity (device, inode, size, modification and status-change times; any write moves the last). The
    command line derives a backup's key and then runs the restore that checks it, and a run's steps each
    resolve their partition's file: a large backup is read once for its hash, not once per step. The
    kernel stamps those times with a clock that moves a few milliseconds at a time, so a file changed
    within :data:`SETTLED_SECONDS` is read every time (as git treats a "racily clean" file): a rewrite
    of the same size a moment later could otherwise carry the same identity."""
    with open(path, "rb") as f:
        identity = _identity(os.fstat(f.fileno()))
        with _lock:
            known = _digests.get(identity)
        if known is not None:
            return known
        started = time.time_ns()
        digest = _read_digest(f, _READ_SIZE)
        if started - max(identity.mtime_ns, identity.ctime_ns) > SETTLED_SECONDS * 1e9:
            _remember(identity, digest)
    return digest


def forget_digests() -> None:
    """Forget every remembered digest: the next :func:`file_sha256` of each file reads it again, as a
    fresh process would (a benchmark that stands for two processes in one)."""
    with _lock:
        _digests.clear()


def _identity(st: os.stat_result) -> _Identity:
    return _Identity(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _read_digest(f: io.BufferedReader, chunk: int) -> str:
    h = hashlib.sha256()
    buffer = bytearray(chunk)  # one buffer, read into again and again
    view = memoryview(buffer)
    while n := f.readinto(buffer):
        h.update(view[:n])
    return h.hexdigest()


def _remember(identity: _Identity, digest: str) -> None:
    with _lock:
        _digests[identity] = digest
        _digests.move_to_end(identity)
        while len(_digests) > _REMEMBERED:
            _digests.popitem(last=False)


def partition_key_for_file(path: str | Path) -> str:
    """The key of the backup file at ``path`` (hashes the whole file)."""
    return partition_key(Path(path).name, file_sha256(path))


def split_partition_key(key: str) -> tuple[str, str] | None:
    """``(stem, hash_prefix)`` of a key made by :func:`partition_key`, or None for any other key."""
    m = _KEY.match(key)
    return (m["stem"], m["hash"]) if m else None
