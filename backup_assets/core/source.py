"""The backup file, whatever its kind: the entry point of the engine.

    backup = open_backup("backup.tar", LocalFileDecryptor("private.pem"))
    with backup.open_plaintext() as stream:    # authenticated, then decrypted lazily
        for row in ijson.items(stream, "item"):
            ...

:func:`open_backup` tells an encrypted tarball from a plain JSON export by content and validates the tarball's
structure at once.  Plaintext only ever exists in memory, chunk by chunk, except in :func:`decrypt_backup`, whose
purpose is to write it to the file the user names.
"""

from __future__ import annotations

import base64
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Literal

from . import keys
from .backup_key import file_sha256
from .decryptors import Decryptor, Encryptor
from .errors import BackupFormatError, DecryptionError, EncryptionError
from .fernet_stream import CHUNK_SIZE, FernetDecryptingReader, iter_encrypt, token_length
from .tarball import BLOCK, TarballContents, compression_of, is_tar_header, read_tarball, write_tarball

__all__ = ["Backup", "decrypt_backup", "encrypt_export", "open_backup"]

_BOM = b"\xef\xbb\xbf"
_WHITESPACE = b" \t\r\n"


class Backup:
    """An opened backup file: a Sentry export tarball (``kind == "tarball"``) or a plain JSON export."""

    def __init__(
        self,
        path: Path,
        kind: Literal["tarball", "json"],
        size: int,
        tarball: TarballContents | None = None,
        decryptor: Decryptor | None = None,
    ) -> None:
        self.path = path
        self.kind = kind
        self.size = size
        self._tarball = tarball
        self._decryptor = decryptor
        self.members: dict[str, int] | None = dict(tarball.members) if tarball else None
        self.key_pub_fingerprint: str | None = None
        if tarball:
            try:
                self.key_pub_fingerprint = keys.fingerprint(tarball.key_pub)
            except EncryptionError:
                raise BackupFormatError("is not a PEM RSA public key", path=str(path), member="key.pub") from None

    def __repr__(self) -> str:
        return f"Backup({str(self.path)!r}, kind={self.kind!r}, size={self.size})"

    def sha256(self) -> str:
        """SHA-256 (hex) of the whole file (:func:`~backup_assets.core.backup_key.file_sha256`: read once per
        process while the file is unchanged)."""
        try:
            return file_sha256(self.path)
        except OSError as e:
            raise BackupFormatError(f"cannot open: {e.strerror}", path=str(self.path)) from None

    def _open(self) -> BinaryIO:
        try:
            return open(self.path, "rb")
        except OSError as e:
            raise BackupFormatError(f"cannot open: {e.strerror}", path=str(self.path)) from None

    def _data_key(self) -> bytes:
        assert self._tarball is not None and self._decryptor is not None
        return self._decryptor.unwrap_data_key(self._tarball.data_key, self._tarball.key_pub)

    def check_key(self) -> None:
        """Unwrap the data key once (checking ``key.pub`` first) and forget it: a wrong or missing key is
        reported before any work starts. Does nothing for a plain JSON export."""
        if self._tarball is not None:
            if self._decryptor is None:
                raise DecryptionError("this backup is encrypted; pass --decrypt-with (the private key)")
            self._data_key()

    @contextmanager
    def open_plaintext(self, *, authenticate_first: bool = True) -> Iterator[BinaryIO]:
        """A readable binary stream of the export JSON.

        For a tarball the data key is unwrapped and the whole token authenticated before this yields; the
        stream then decrypts lazily and raises :class:`DecryptionError` at EOF if the file changed meanwhile.

        With ``authenticate_first=False`` the token is read once: decrypted and authenticated as the stream
        is read, plaintext released before the MAC is verified, and :class:`DecryptionError` raised by the read
        that reaches EOF when it does not verify.  Only for a consumer that commits nothing before it read the
        stream to EOF, and reports that error rather than any the plaintext caused (the restore's staging).
        A plain JSON export ignores the option.
        """
        with self._open() as f:
            if self._tarball is None:
                yield f
                return
            reader = FernetDecryptingReader(
                f,
                self._data_key(),
                start=self._tarball.export_offset,
                length=self._tarball.export_size,
                authenticate_first=authenticate_first,
            )
            with reader:
                yield reader  # type: ignore[misc]


def _sniff(f: BinaryIO, where: str) -> Literal["tarball", "json"]:
    head = f.read(BLOCK)
    if compression_of(head) or is_tar_header(head):
        return "tarball"
    text, offset = head, 0
    if text.startswith(_BOM):
        text, offset = text[len(_BOM) :], len(_BOM)
    while True:
        stripped = text.lstrip(_WHITESPACE)
        offset += len(text) - len(stripped)
        if stripped:
            break
        text = f.read(CHUNK_SIZE)
        if not text:
            raise BackupFormatError("is empty (no JSON and no tar archive)", path=where)
    if stripped.startswith(b"["):
        return "json"
    short = f" (the file has only {len(head)} bytes: a truncated tarball?)" if len(head) < BLOCK else ""
    raise BackupFormatError(
        f"is neither a Sentry export tarball nor a JSON export: found byte 0x{stripped[0]:02x} "
        f"where a JSON export starts with '['{short}",
        path=where,
        offset=offset,
    )


def _check_token_start(f: BinaryIO, tarball: TarballContents, where: str) -> None:
    """``export.json`` must hold Fernet token text: name a compressed or plain-JSON member instead of letting
    the decryptor report invalid base64."""
    f.seek(tarball.export_offset)
    head = f.read(min(8, tarball.export_size))
    compressed = compression_of(head)
    if compressed:
        raise BackupFormatError(
            f"is {compressed[0]}-compressed, but it must hold the Fernet token text as Sentry writes it",
            path=where,
            member="export.json",
        )
    if head.lstrip(_WHITESPACE)[:1] in (b"[", b"{"):
        raise BackupFormatError(
            "holds plain JSON, not the Fernet token of an encrypted export", path=where, member="export.json"
        )


def open_backup(path: str | os.PathLike[str], decryptor: Decryptor | None = None) -> Backup:
    """Open a backup file, detecting its kind by content; a tarball's structure is validated here."""
    path = Path(path)
    where = str(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            kind = _sniff(f, where)
            tarball = read_tarball(f) if kind == "tarball" else None
            if tarball is not None:
                _check_token_start(f, tarball, where)
    except FileNotFoundError:
        raise BackupFormatError("no such file", path=where) from None
    except IsADirectoryError:
        raise BackupFormatError("is a directory, not a backup file", path=where) from None
    except PermissionError:
        raise BackupFormatError("permission denied", path=where) from None
    if tarball is not None and decryptor is None:
        raise DecryptionError(f"{where}: this backup is encrypted; pass --decrypt-with PRIVATE_KEY.pem")
    return Backup(path, kind, size, tarball, decryptor)


def _temp_beside(dest: Path) -> tuple[int, Path]:
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    return fd, Path(name)


def _publish(dest: Path, write) -> None:
    """Call ``write(binary_file)`` on a temp file beside ``dest``, then rename it to ``dest``; no leftovers."""
    fd, tmp = _temp_beside(dest)
    try:
        with os.fdopen(fd, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def encrypt_export(src: str | os.PathLike[str] | BinaryIO, dest: str | os.PathLike[str], encryptor: Encryptor) -> None:
    """Encrypt a JSON export into a Sentry export tarball at ``dest``, with a fresh data key.

    ``key.pub`` is written in the canonical SubjectPublicKeyInfo PEM form, the one Sentry's importer compares
    with its private key, even when the given public key file is formatted differently (e.g. PKCS1).
    """
    dest = Path(dest)
    public = keys.load_public_key(encryptor.public_key_pem())
    key_pub = keys.public_key_pem(public)
    data_key = base64.urlsafe_b64encode(os.urandom(32))
    wrapped = keys.wrap_data_key(public, data_key)

    def write_from(f: BinaryIO, known_size: int | None) -> None:
        if known_size is not None:
            _publish(
                dest,
                lambda out: write_tarball(out, iter_encrypt(f, data_key), token_length(known_size), wrapped, key_pub),
            )
            return
        with tempfile.TemporaryFile(dir=dest.parent) as spool:  # ciphertext only
            for chunk in iter_encrypt(f, data_key):
                spool.write(chunk)
            token_size = spool.tell()
            spool.seek(0)
            _publish(dest, lambda out: write_tarball(out, spool, token_size, wrapped, key_pub))

    if isinstance(src, (str, os.PathLike)):
        try:
            f = open(src, "rb")  # noqa: SIM115 - opened apart from `with f` so that only open() is caught
        except OSError as e:
            raise EncryptionError(f"cannot read {str(src)!r}: {e.strerror}") from None
        with f:
            _sniff_json(f, str(src))
            write_from(f, os.fstat(f.fileno()).st_size)
    else:
        write_from(src, None)


def _sniff_json(f: BinaryIO, where: str) -> None:
    if _sniff(f, where) != "json":
        raise EncryptionError(f"{where}: is a tarball or a compressed file, not a JSON export")
    f.seek(0)


def decrypt_backup(src: str | os.PathLike[str], dest: str | os.PathLike[str], decryptor: Decryptor) -> None:
    """Decrypt a Sentry export tarball to the JSON file ``dest`` (mode 0600).

    ``dest`` appears only after the whole token authenticated and decrypted; on any failure neither ``dest``
    nor a temporary file is left behind (an existing ``dest`` is left untouched).
    """
    backup = open_backup(src, decryptor)
    if backup.kind != "tarball":
        raise BackupFormatError("is a plain JSON export, not an encrypted tarball: nothing to decrypt", path=str(src))
    with backup.open_plaintext() as plaintext:  # authenticated here, before any file is created

        def copy(out: BinaryIO) -> None:
            while chunk := plaintext.read(CHUNK_SIZE):
                out.write(chunk)

        _publish(Path(dest), copy)
