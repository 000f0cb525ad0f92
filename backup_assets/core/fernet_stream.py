"""Streaming Fernet: encrypt and decrypt tokens of any size in constant memory.

A Fernet token is ``urlsafe_b64encode(0x80 | timestamp (8, big-endian) | IV (16) | ciphertext | HMAC (32))``,
where the ciphertext is AES-128-CBC over the PKCS7-padded plaintext with ``key[16:]`` and the HMAC is
HMAC-SHA256 with ``key[:16]`` over everything before it.  The output of this module is byte-identical to
:class:`cryptography.fernet.Fernet` (``encrypt_at_time`` / ``decrypt`` without TTL) for well-formed tokens.

Why two passes (and when one is enough)
---------------------------------------
Fernet authenticates the whole token with one MAC at its end, so a streaming decryptor cannot know a
plaintext byte is authentic before it has read the last byte.  By default we therefore read the token twice
from a *seekable* source:

1. **authenticate**: decode the base64 in chunks and feed HMAC-SHA256 over ``version..ciphertext``; compare
   with the token's MAC in constant time (:meth:`cryptography.hazmat.primitives.hmac.HMAC.verify`).
   No plaintext exists yet; a bad token raises :class:`DecryptionError` here.
2. **decrypt**: seek back, decode and decrypt chunk by chunk, releasing plaintext as it goes, *and*
   recompute the HMAC over the bytes actually decrypted.  At the end it must equal the MAC authenticated in
   pass 1, otherwise :class:`DecryptionError` is raised at EOF: a file that changed between the passes cannot
   slip through (a consumer that commits only after reading to EOF therefore never commits forged data).

The price is reading and MAC-ing the token twice; with AES-NI/SHA-NI both passes run at memory-ish speed and
the whole remains faster than whole-buffer ``Fernet.decrypt``, which copies the token about seven times.

**One pass** (``FernetDecryptingReader(..., authenticate_first=False)``) skips pass 1: the reader decodes,
decrypts and MACs in a single read of the token, collects the token's MAC from the end of the decoded stream
and, at EOF, checks the layout and verifies the MAC in constant time *before* it releases the last cipher
block's plaintext (which the PKCS7 unpadder holds back anyway) and only then checks the padding.  Plaintext
that is not yet authenticated is released on the way, so this mode is only for a consumer that

* publishes or commits nothing before it has read the stream to EOF (the restore parses into a staging table
  inside one transaction, and reads the stream to its end before committing), and
* reports a :class:`DecryptionError` found by reading to EOF in preference to whatever error the plaintext
  made it raise (a tampered block decrypts to garbage, which a parser rejects first).

Writing a file (``backup decrypt``), comparing or any other consumer keeps the two passes.

We are stricter than ``Fernet.decrypt`` about the base64 text: it silently skips characters outside the
alphabet (newlines, spaces...), we reject any of them with the byte offset of the first one.  Error messages
never contain key material or plaintext.
"""

from __future__ import annotations

import base64
import binascii
import hmac as _hmac_mod
import io
import os
import re
import struct
import time
from collections.abc import Iterable, Iterator
from typing import BinaryIO, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hmac, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from pybase64 import b64decode as _b64decode

from .errors import DecryptionError, EncryptionError

__all__ = [
    "CHUNK_SIZE",
    "FernetDecryptingReader",
    "decrypt_to",
    "encrypt_to",
    "iter_encrypt",
    "token_length",
]

CHUNK_SIZE = 1 << 20  #: bytes of token text read at a time (a multiple of 4, so chunks decode on their own)
VERSION = 0x80
_HEADER = 1 + 8 + 16  # version, timestamp, IV
_MAC = 32
_AES_BLOCK = 16
_MIN_DECODED = _HEADER + _AES_BLOCK + _MAC  # the shortest valid token carries one (padding) block

# urlsafe -> standard alphabet; '+' and '/' (not urlsafe) become '!' so strict decoding rejects them.
_TO_STD = bytes.maketrans(b"-_+/", b"+/!!")
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_INVALID_CHAR = re.compile(rb"[^A-Za-z0-9\-_=]")

_CORRUPT = "Fernet token is corrupt or was tampered with"


class _Writable(Protocol):
    def write(self, data: bytes, /) -> object: ...


def _split_key(key: bytes | str) -> tuple[bytes, bytes]:
    """``(signing_key, encryption_key)`` of a 44-character url-safe base64 Fernet key."""
    try:
        raw = base64.urlsafe_b64decode(key)
    except (TypeError, ValueError, binascii.Error):
        raw = b""
    if len(raw) != 32:
        raise DecryptionError("the data key is not a valid Fernet key (32 url-safe base64-encoded bytes)")
    return raw[:16], raw[16:]


def token_length(plaintext_length: int) -> int:
    """Length in bytes of the Fernet token text that encrypts ``plaintext_length`` bytes."""
    decoded = _HEADER + (plaintext_length // _AES_BLOCK + 1) * _AES_BLOCK + _MAC
    return 4 * ((decoded + 2) // 3)


# --------------------------------------------------------------------------------------------- decryption


def _read_exact(f: BinaryIO, n: int) -> bytes:
    """Read up to ``n`` bytes, looping over short reads; fewer only at EOF."""
    data = f.read(n)
    if data is None:
        data = b""
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = f.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class _TokenLayout:
    """Where things are in a token of ``length`` text bytes (assuming it is valid base64).

    Only the length is checked at once; :meth:`check` does the rest after pass 1 decoded the whole text, so that
    an invalid character is reported at its own offset rather than as a confusing length problem.
    """

    def __init__(self, length: int, last4: bytes) -> None:
        if length % 4:
            raise DecryptionError(f"{_CORRUPT}: its length ({length} bytes) is not a multiple of 4")
        self.length = length
        self.last4 = last4
        self.pad = min(2, len(last4) - len(last4.rstrip(b"=")))
        self.decoded = length // 4 * 3 - self.pad
        self.mac_start = self.decoded - _MAC  # decoded offset of the MAC

    def check(self) -> None:
        try:
            canonical = _b64(binascii.a2b_base64(self.last4.translate(_TO_STD), strict_mode=True))
        except binascii.Error:
            canonical = b""
        if canonical != self.last4:  # e.g. non-zero unused bits before the padding
            raise DecryptionError(f"{_CORRUPT}: invalid base64 at the end (bytes {self.length - 4}..)")
        if self.decoded < _MIN_DECODED:
            raise DecryptionError(f"{_CORRUPT}: it is too short ({self.length} bytes)")
        if (self.decoded - _HEADER - _MAC) % _AES_BLOCK:
            raise DecryptionError(f"{_CORRUPT}: its ciphertext is not a whole number of AES blocks")


def _decode_chunks(f: BinaryIO, start: int, length: int, chunk_size: int) -> Iterator[bytes]:
    """Decode ``length`` bytes of url-safe base64 text at ``start`` of ``f``, strictly, ``chunk_size`` at a time."""
    chunk_size = max(4, chunk_size - chunk_size % 4)
    f.seek(start)
    pos = 0
    while pos < length:
        text = _read_exact(f, min(chunk_size, length - pos))
        if len(text) < min(chunk_size, length - pos):
            raise DecryptionError(f"{_CORRUPT}: it ends early, at byte {pos + len(text)} of {length}")
        last = pos + len(text) == length
        try:
            if not last and text.endswith(b"="):
                raise binascii.Error("padding before the end")
            if b"+" in text or b"/" in text:  # the standard alphabet's, which pybase64 takes beside "-" and "_"
                raise binascii.Error("not url-safe")
            decoded = _b64decode(text, altchars=b"-_", validate=True)  # SIMD: decoding is on the critical path
        except binascii.Error:
            raise DecryptionError(f"{_CORRUPT}: invalid base64 at byte {pos + _bad_offset(text)}") from None
        yield decoded
        pos += len(text)


def _bad_offset(text: bytes) -> int:
    """Offset of the first byte that makes ``text`` invalid url-safe base64 (an approximation for padding)."""
    m = _INVALID_CHAR.search(text)
    if m:
        return m.start()
    eq = text.find(b"=")
    return eq if eq >= 0 else 0


def _split_at(chunk: bytes, pos: int, cut: int) -> tuple[bytes, bytes]:
    """Split decoded ``chunk`` (starting at decoded offset ``pos``) into the parts before/after offset ``cut``."""
    if pos + len(chunk) <= cut:
        return chunk, b""
    if pos >= cut:
        return b"", chunk
    return chunk[: cut - pos], chunk[cut - pos :]


class _Token:
    """A token at ``[start, start + length)`` of a seekable binary file, and a Fernet key.

    With ``authenticate_first`` (the default) :meth:`plaintext_chunks` runs pass 1 before it decrypts;
    without, it decrypts and authenticates in one pass (see the module's docstring).
    """

    def __init__(
        self,
        f: BinaryIO,
        key: bytes | str,
        start: int | None,
        length: int | None,
        chunk_size: int,
        *,
        authenticate_first: bool = True,
    ) -> None:
        self._signing_key, self._encryption_key = _split_key(key)
        self.f = f
        self.start = f.tell() if start is None else start
        if length is None:
            length = f.seek(0, os.SEEK_END) - self.start
        f.seek(self.start + max(0, length - 4))
        self.layout = _TokenLayout(length, _read_exact(f, min(4, length)))
        self.chunk_size = chunk_size
        self.authenticate_first = authenticate_first
        self.mac: bytes | None = None  # set once the MAC verified (by pass 1, or at the end of the one pass)

    def _hmac(self) -> hmac.HMAC:
        return hmac.HMAC(self._signing_key, hashes.SHA256())

    def _check_version(self, first: bytes) -> None:
        if first[0] != VERSION:
            raise DecryptionError(f"{_CORRUPT}: unknown version byte 0x{first[0]:02x} (expected 0x80)")

    def _verify(self, h: hmac.HMAC, mac: bytes) -> None:
        """Once the whole token is decoded: check its layout, then its MAC (in constant time)."""
        self.layout.check()
        try:
            h.verify(mac)
        except InvalidSignature:
            raise DecryptionError(f"{_CORRUPT} (or the data key is wrong): HMAC verification failed") from None
        self.mac = mac

    def authenticate(self) -> None:
        """Pass 1: verify the MAC over the whole token; nothing is decrypted."""
        if self.mac is not None:
            return
        h = self._hmac()
        mac = bytearray()
        pos = 0
        for chunk in _decode_chunks(self.f, self.start, self.layout.length, self.chunk_size):
            if pos == 0:
                self._check_version(chunk)
            body, tail = _split_at(chunk, pos, self.layout.mac_start)
            if body:
                h.update(body)
            mac += tail
            pos += len(chunk)
        self._verify(h, bytes(mac))

    def plaintext_chunks(self) -> Iterator[bytes]:
        """Pass 2: decrypt, re-MAC, and raise at the end if the token changed since :meth:`authenticate`.

        In one pass (``authenticate_first=False`` and no pass 1 so far): decrypt and MAC, collect the token's
        MAC from the stream, and verify it at the end, before the last block is released and the padding
        checked.
        """
        if self.authenticate_first:
            self.authenticate()
        one_pass = self.mac is None
        h = self._hmac()
        header = bytearray()
        mac = bytearray()
        decryptor = unpadder = None
        pos = 0
        for chunk in _decode_chunks(self.f, self.start, self.layout.length, self.chunk_size):
            if pos == 0 and one_pass:
                self._check_version(chunk)
            body, tail = _split_at(chunk, pos, self.layout.mac_start)
            mac += tail
            pos += len(chunk)
            if not body:
                continue
            h.update(body)
            if decryptor is None:
                header += body
                if len(header) < _HEADER:
                    continue
                iv, body = bytes(header[9:_HEADER]), bytes(header[_HEADER:])
                decryptor = Cipher(algorithms.AES(self._encryption_key), modes.CBC(iv)).decryptor()
                unpadder = padding.PKCS7(128).unpadder()
            assert unpadder is not None  # made with the decryptor
            out = unpadder.update(decryptor.update(body))
            if out:
                yield out
        if one_pass:
            self._verify(h, bytes(mac))  # a valid layout holds a whole header: the decryptor exists
        elif decryptor is None or not _hmac_mod.compare_digest(h.finalize(), self.mac or b""):
            raise DecryptionError(f"{_CORRUPT}: the token changed while it was being decrypted")
        assert decryptor is not None and unpadder is not None
        try:
            out = unpadder.update(decryptor.finalize()) + unpadder.finalize()
        except ValueError:
            raise DecryptionError(f"{_CORRUPT}: invalid PKCS7 padding") from None
        if out:
            yield out


def decrypt_to(
    src: BinaryIO,
    key: bytes | str,
    dst: _Writable,
    *,
    start: int | None = None,
    length: int | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> int:
    """Authenticate the token in seekable ``src`` then decrypt it into ``dst``; returns the plaintext size.

    The token spans ``length`` bytes from ``start`` (defaults: from the current position to EOF).  Nothing is
    written to ``dst`` unless the whole token authenticated; a change of the file during the second pass
    raises :class:`DecryptionError` after the last chunk (the caller must then discard ``dst``).
    """
    token = _Token(src, key, start, length, chunk_size)
    token.authenticate()
    n = 0
    for chunk in token.plaintext_chunks():
        dst.write(chunk)
        n += len(chunk)
    return n


class FernetDecryptingReader(io.RawIOBase):
    """A readable binary stream of the plaintext of a Fernet token (usable by ``ijson``, ``shutil``...).

    The constructor authenticates the whole token (pass 1) and raises :class:`DecryptionError` if it does not;
    reads then decrypt lazily, ``chunk_size`` bytes of token at a time.  The underlying file is not closed.

    With ``authenticate_first=False`` the constructor reads only the token's last bytes, and the token is
    authenticated in the same pass that decrypts it: plaintext is released *before* it is authenticated, and
    the read that reaches EOF raises :class:`DecryptionError` if the MAC does not verify.  Only for consumers
    that commit nothing before EOF and prefer that error to any the plaintext caused (see the module's
    docstring).  Once a read raised :class:`DecryptionError`, every later read raises it again.
    """

    def __init__(
        self,
        fileobj: BinaryIO,
        key: bytes | str,
        *,
        start: int | None = None,
        length: int | None = None,
        chunk_size: int = CHUNK_SIZE,
        authenticate_first: bool = True,
    ) -> None:
        super().__init__()
        self._token = _Token(fileobj, key, start, length, chunk_size, authenticate_first=authenticate_first)
        if authenticate_first:
            self._token.authenticate()
        self._chunks: Iterator[bytes] | None = None
        self._buf = b""
        self._pos = 0  # read position within _buf
        self._eof = False
        self._error: DecryptionError | None = None  # what a read raised: raised again, never EOF after it

    def __repr__(self) -> str:
        return f"<{type(self).__name__} token of {self._token.layout.length} bytes>"

    def authenticate(self) -> None:
        """Verify the token's MAC over the whole token (pass 1; idempotent).

        The constructor already did, unless ``authenticate_first=False``: then this must come before the first
        read (it makes the reader a two-pass one), or after EOF, where the MAC is verified already.
        """
        if self._chunks is not None and self._token.mac is None:
            raise io.UnsupportedOperation("authenticate() after reading started: the MAC is verified at EOF")
        self._token.authenticate()

    def readable(self) -> bool:
        return True

    def _fill(self) -> bool:
        """Make plaintext available in ``_buf``; False at EOF."""
        while self._pos >= len(self._buf):
            if self._eof:
                return False
            if self._error is not None:
                raise self._error
            if self._chunks is None:
                self._chunks = self._token.plaintext_chunks()
            try:
                self._buf, self._pos = next(self._chunks), 0
            except StopIteration:
                self._buf, self._pos, self._eof = b"", 0, True
                return False
            except DecryptionError as e:
                self._error = e
                raise
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        if size == 0 or not self._fill():
            return b""
        if self._pos == 0 and size >= len(self._buf):
            out, self._buf = self._buf, b""
            return out
        out = self._buf[self._pos : self._pos + size]
        self._pos += len(out)
        return out

    def readall(self) -> bytes:
        parts = []
        while self._fill():
            parts.append(self._buf[self._pos :] if self._pos else self._buf)
            self._buf, self._pos = b"", 0
        return b"".join(parts)

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


# --------------------------------------------------------------------------------------------- encryption


def _b64(data: bytes) -> bytes:
    return binascii.b2a_base64(data, newline=False).translate(_TO_URLSAFE)


def iter_encrypt(
    src: BinaryIO | Iterable[bytes],
    key: bytes | str,
    *,
    current_time: int | None = None,
    iv: bytes | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> Iterator[bytes]:
    """Yield the Fernet token text of the plaintext read from ``src`` (a binary file or an iterable of bytes).

    With the same ``current_time`` and ``iv`` the concatenated output equals
    ``Fernet(key)._encrypt_from_parts(plaintext, current_time, iv)``.
    """
    try:
        signing_key, encryption_key = _split_key(key)
    except DecryptionError as e:
        raise EncryptionError(str(e)) from None
    if current_time is None:
        current_time = int(time.time())
    if iv is None:
        iv = os.urandom(16)
    if len(iv) != 16:
        raise EncryptionError("the IV must be 16 bytes")
    h = hmac.HMAC(signing_key, hashes.SHA256())
    encryptor = Cipher(algorithms.AES(encryption_key), modes.CBC(iv)).encryptor()
    padder = padding.PKCS7(128).padder()
    carry = b""  # decoded bytes not yet base64-encoded (fewer than 3 between chunks)

    def emit(raw: bytes, final: bool = False) -> bytes:
        nonlocal carry
        data = carry + raw if carry else raw
        cut = len(data) if final else len(data) - len(data) % 3
        carry = data[cut:]
        return _b64(data[:cut]) if cut else b""

    header = bytes([VERSION]) + struct.pack(">Q", current_time) + iv
    h.update(header)
    pending = [header]
    pending_len = len(header)
    pieces: Iterable[bytes]
    if hasattr(src, "read"):
        reader = src
        pieces = iter(lambda: reader.read(chunk_size), b"")
    else:
        pieces = src
    for piece in pieces:
        ct = encryptor.update(padder.update(piece))
        if ct:
            h.update(ct)
            pending.append(ct)
            pending_len += len(ct)
        if pending_len >= chunk_size:
            out = emit(b"".join(pending))
            pending, pending_len = [], 0
            if out:
                yield out
    ct = encryptor.update(padder.finalize()) + encryptor.finalize()
    h.update(ct)
    pending += [ct, h.finalize()]
    yield emit(b"".join(pending), final=True)


def encrypt_to(
    src: BinaryIO | Iterable[bytes],
    key: bytes | str,
    dst: _Writable,
    current_time: int | None = None,
    iv: bytes | None = None,
    *,
    chunk_size: int = CHUNK_SIZE,
) -> int:
    """Stream the Fernet token of ``src``'s plaintext into ``dst``; returns the token's length."""
    n = 0
    for out in iter_encrypt(src, key, current_time=current_time, iv=iv, chunk_size=chunk_size):
        dst.write(out)
        n += len(out)
    return n
