"""Streaming Fernet against `cryptography.fernet.Fernet`: identical output, tampering caught before any byte."""

from __future__ import annotations

import base64
import hmac
import io
import os
import random
import struct
from hashlib import sha256

import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backup_assets.core.errors import DecryptionError, EncryptionError
from backup_assets.core.fernet_stream import (
    FernetDecryptingReader,
    decrypt_to,
    encrypt_to,
    iter_encrypt,
    token_length,
)

KEY = Fernet.generate_key()
B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def decrypt_all(token: bytes, key: bytes = KEY, **kw) -> bytes:
    out = io.BytesIO()
    decrypt_to(io.BytesIO(token), key, out, **kw)
    return out.getvalue()


def read_in(reader: FernetDecryptingReader, sizes: list[int]) -> bytes:
    parts, i = [], 0
    while chunk := reader.read(sizes[i % len(sizes)]):
        parts.append(chunk)
        i += 1
    return b"".join(parts)


def assert_rejected(token: bytes, key: bytes = KEY, match: str | None = None) -> None:
    """Both APIs refuse the token and release nothing."""
    out = io.BytesIO()
    with pytest.raises(DecryptionError, match=match):
        decrypt_to(io.BytesIO(token), key, out, chunk_size=16)
    assert out.getvalue() == b""
    with pytest.raises(DecryptionError, match=match):
        FernetDecryptingReader(io.BytesIO(token), key)


def signed_token(body: bytes, key: bytes = KEY) -> bytes:
    """A token with a valid MAC over arbitrary ``body`` (version..ciphertext): what only a key holder can make."""
    signing = base64.urlsafe_b64decode(key)[:16]
    return base64.urlsafe_b64encode(body + hmac.new(signing, body, sha256).digest())


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 47, 48, 1000, 65536, 3 * 65536 + 7])
@pytest.mark.parametrize("chunk_size", [4, 1000, 1 << 20])
def test_encrypt_is_byte_identical_and_round_trips(size: int, chunk_size: int) -> None:
    plaintext = random.Random(size).randbytes(size)
    iv = bytes(range(16))
    expected = Fernet(KEY)._encrypt_from_parts(plaintext, 1_700_000_000, iv)
    out = io.BytesIO()
    n = encrypt_to(io.BytesIO(plaintext), KEY, out, current_time=1_700_000_000, iv=iv, chunk_size=chunk_size)
    assert out.getvalue() == expected
    assert n == len(expected) == token_length(size)
    assert decrypt_all(expected, chunk_size=chunk_size) == plaintext
    assert Fernet(KEY).decrypt(out.getvalue()) == plaintext


def test_encrypt_from_an_iterable_of_chunks_and_fresh_iv() -> None:
    pieces = [b"[", b"", b'{"model": "sentry.user"}' * 100, b"]"]
    token = b"".join(iter_encrypt(pieces, KEY))
    assert Fernet(KEY).decrypt(token) == b"".join(pieces)
    assert b"".join(iter_encrypt(pieces, KEY)) != token  # a fresh IV each time


def test_encrypt_rejects_a_bad_key_without_echoing_it() -> None:
    with pytest.raises(EncryptionError) as e:
        encrypt_to(io.BytesIO(b"x"), b"short-secret-key", io.BytesIO())
    assert "short-secret-key" not in str(e.value)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.one_of(st.integers(0, 100), st.integers(0, 300_000)),
    seed=st.integers(0, 2**32),
    chunk_size=st.one_of(st.integers(1, 200), st.integers(200, 70_000)),
    read_sizes=st.lists(st.one_of(st.just(1), st.integers(1, 50), st.integers(1, 100_000)), min_size=1, max_size=5),
)
def test_streaming_decrypt_matches_fernet(size: int, seed: int, chunk_size: int, read_sizes: list[int]) -> None:
    plaintext = random.Random(seed).randbytes(size)
    token = Fernet(KEY).encrypt(plaintext)
    assert Fernet(KEY).decrypt(token) == plaintext
    assert decrypt_all(token, chunk_size=chunk_size) == plaintext
    reader = FernetDecryptingReader(io.BytesIO(token), KEY, chunk_size=chunk_size)
    assert read_in(reader, read_sizes) == plaintext
    assert reader.read(10) == b""


def test_reader_is_a_usable_binary_stream() -> None:
    plaintext = b'[{"model": "sentry.email", "pk": 1}]' * 500
    token = Fernet(KEY).encrypt(plaintext)
    buf = io.BufferedReader(FernetDecryptingReader(io.BytesIO(token), KEY, chunk_size=1024))
    assert buf.read() == plaintext
    reader = FernetDecryptingReader(io.BytesIO(token), KEY, chunk_size=1024)
    reader.authenticate()  # idempotent
    into = bytearray(100)
    assert reader.readinto(into) == 100 and bytes(into) == plaintext[:100]
    assert reader.read() == plaintext[100:]
    assert "token of" in repr(reader)


def test_token_inside_a_larger_file() -> None:
    token = Fernet(KEY).encrypt(b"hello world" * 50)
    blob = b"x" * 1234 + token + b"trailing junk"
    reader = FernetDecryptingReader(io.BytesIO(blob), KEY, start=1234, length=len(token), chunk_size=64)
    assert reader.read() == b"hello world" * 50


# Regions of the decoded token: version, timestamp, IV, ciphertext, last (padding) block, MAC.
PLAINTEXT = b'{"a": 1, "padding": "forty bytes...."}'  # 40 bytes -> 3 blocks; decoded token: 105 bytes
REGIONS = {
    "version": range(0, 1),
    "timestamp": range(1, 9),
    "iv": range(9, 25),
    "ciphertext": range(25, 57),
    "padding block": range(57, 73),
    "mac": range(73, 105),
}


@pytest.mark.parametrize("region", REGIONS)
@pytest.mark.parametrize("xor", [0x01, 0x80, 0xFF])
def test_flipping_any_byte_is_detected_before_any_output(region: str, xor: int) -> None:
    raw = bytearray(base64.urlsafe_b64decode(Fernet(KEY).encrypt(PLAINTEXT)))
    assert len(raw) == 105
    for i in REGIONS[region]:
        tampered = raw.copy()
        tampered[i] ^= xor
        assert_rejected(base64.urlsafe_b64encode(bytes(tampered)), match="corrupt or was tampered")


def test_changing_any_character_of_the_text_is_detected() -> None:
    token = Fernet(KEY).encrypt(PLAINTEXT)
    for i in range(len(token)):
        tampered = bytearray(token)
        tampered[i] = B64[(B64.find(token[i]) + 1) % 64] if token[i] != ord("=") else ord("A")
        assert_rejected(bytes(tampered))
        assert_rejected_by_eof(bytes(tampered))  # the one-pass reader too (defined below)


@pytest.mark.parametrize("cut", [0, 1, 4, 50, 99, 100, 120, 136, 139, -1, -4])
def test_truncated_tokens_are_rejected(cut: int) -> None:
    token = Fernet(KEY).encrypt(PLAINTEXT)  # 140 bytes
    assert len(token) == 140
    assert_rejected(token[:cut] if cut else b"")


def test_truncation_everywhere_in_a_bigger_token() -> None:
    token = Fernet(KEY).encrypt(os.urandom(3000))
    for cut in range(0, len(token), 37):
        assert_rejected(token[:cut])


def test_wrong_key() -> None:
    assert_rejected(Fernet(KEY).encrypt(PLAINTEXT), key=Fernet.generate_key(), match="HMAC")


def test_invalid_key_is_not_echoed() -> None:
    with pytest.raises(DecryptionError) as e:
        decrypt_all(Fernet(KEY).encrypt(b"x"), key=b"not-a-real-key-but-secret")
    assert "secret" not in str(e.value)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda t: t[:50] + b"\n" + t[50:-1], "byte 50"),  # a newline (Fernet.decrypt would skip it)
        (lambda t: t[:60] + b"+" + t[61:], "byte 60"),  # standard-B64 character
        (lambda t: t[:64] + b"=" + t[65:], "byte 64"),  # padding in the middle
        (lambda t: t + b"\n", "multiple of 4"),
        (lambda t: t[:-3] + b"===", "invalid base64 at byte 16[0-3]"),
        (lambda t: t[:-3] + bytes([B64[B64.index(t[-3]) ^ 1]]) + b"==", "invalid base64 at the end"),  # unused bits
    ],
)
def test_malformed_base64_is_rejected_with_its_offset(mutate, match: str) -> None:
    token = Fernet(KEY).encrypt(PLAINTEXT + b"0123456789")  # 50 bytes: the token ends with "=="
    assert token.endswith(b"==") and not token.endswith(b"===")
    assert_rejected(mutate(token), match=match)


def test_strict_about_what_fernet_tolerates() -> None:
    token = Fernet(KEY).encrypt(PLAINTEXT)
    with_newlines = token[:64] + b"\n" + token[64:128] + b"\n" + token[128:] + b"\n\n"  # len % 4 == 0
    assert Fernet(KEY).decrypt(with_newlines) == PLAINTEXT
    assert_rejected(with_newlines, match="invalid base64 at byte 64")


def test_authentic_but_malformed_bodies_are_still_rejected() -> None:
    iv = bytes(16)
    header = struct.pack(">BQ", 0x80, 0) + iv
    aes = base64.urlsafe_b64decode(KEY)[16:]
    bad_padding = Cipher(algorithms.AES(aes), modes.CBC(iv)).encryptor().update(b"\x00" * 32)
    assert_rejected(signed_token(struct.pack(">BQ", 0x81, 0) + iv + bytes(16)), match="version byte 0x81")
    assert_rejected(signed_token(header + bytes(20)), match="whole number of AES blocks")
    assert_rejected(signed_token(header), match="too short")
    out = io.BytesIO()
    with pytest.raises(DecryptionError, match="PKCS7"):
        decrypt_to(io.BytesIO(signed_token(header + bad_padding)), KEY, out)


def test_a_file_changed_between_the_passes_fails_at_eof(tmp_path) -> None:
    plaintext = os.urandom(200_000)
    path = tmp_path / "token"
    path.write_bytes(Fernet(KEY).encrypt(plaintext))
    other = Fernet(KEY).encrypt(os.urandom(200_000))  # same length, authentic on its own
    with open(path, "rb") as f:
        reader = FernetDecryptingReader(f, KEY, chunk_size=4096)  # pass 1 succeeds
        path.write_bytes(other)  # same inode, rewritten in place
        with pytest.raises(DecryptionError, match="changed while"):
            reader.read()


# --------------------------------------------------------------------------------------------- one pass


def one_pass(token: bytes, key: bytes = KEY, **kw) -> FernetDecryptingReader:
    return FernetDecryptingReader(io.BytesIO(token), key, authenticate_first=False, **kw)


def assert_rejected_by_eof(token: bytes, key: bytes = KEY, match: str | None = None, chunk_size: int = 16) -> bytes:
    """The one-pass reader refuses ``token`` at the latest when reading reaches EOF; returns what it released."""
    released = bytearray()
    with pytest.raises(DecryptionError, match=match):
        reader = one_pass(token, key, chunk_size=chunk_size)
        while chunk := reader.read(7):
            released += chunk
    return bytes(released)


SMALL = [0, 1, 15, 16, 17, 47, 48, 49, 767, 768, 769, 65536]  # 768 bytes of plaintext ~ 1024 of token text
BIG = [(1 << 20) // 4 * 3 - 57, (1 << 20) // 4 * 3 - 56, 3 << 20]  # tokens of about 1 MiB (one chunk), 4 MiB


@pytest.mark.parametrize(
    "size, chunk_size",
    [(n, c) for n in SMALL for c in (4, 8, 20, 1024, 1 << 20)] + [(n, c) for n in BIG for c in (4096, 1 << 20)],
)
def test_one_pass_matches_fernet(size: int, chunk_size: int) -> None:
    plaintext = random.Random(size).randbytes(size)
    token = Fernet(KEY).encrypt(plaintext)
    reader = one_pass(token, chunk_size=chunk_size)
    assert read_in(reader, [1, 13, 4096]) == Fernet(KEY).decrypt(token) == plaintext
    assert reader.read(10) == b""
    reader.authenticate()  # after EOF: verified already, a no-op


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.integers(0, 5000),
    seed=st.integers(0, 2**32),
    chunk_size=st.integers(1, 300),
    read_sizes=st.lists(st.integers(1, 600), min_size=1, max_size=4),
)
def test_one_pass_streaming_matches_fernet(size: int, seed: int, chunk_size: int, read_sizes: list[int]) -> None:
    plaintext = random.Random(seed).randbytes(size)
    token = Fernet(KEY).encrypt(plaintext)
    assert read_in(one_pass(token, chunk_size=chunk_size), read_sizes) == plaintext


@pytest.mark.parametrize("region", REGIONS)
@pytest.mark.parametrize("xor", [0x01, 0x80, 0xFF])
def test_one_pass_detects_any_flipped_byte_by_eof(region: str, xor: int) -> None:
    raw = bytearray(base64.urlsafe_b64decode(Fernet(KEY).encrypt(PLAINTEXT)))
    for i in REGIONS[region]:
        tampered = raw.copy()
        tampered[i] ^= xor
        match = "unknown version byte" if region == "version" else "corrupt or was tampered.*HMAC verification failed"
        released = assert_rejected_by_eof(base64.urlsafe_b64encode(bytes(tampered)), match=match)
        assert len(released) <= len(PLAINTEXT) // 16 * 16  # the last block's plaintext is withheld


def test_one_pass_detects_any_flipped_byte_of_a_bigger_token() -> None:
    plaintext = os.urandom(100_003)
    raw = base64.urlsafe_b64decode(Fernet(KEY).encrypt(plaintext))
    for i in [
        *range(0, 25),
        25,
        26,
        1000,
        len(raw) // 2,
        len(raw) - 49,
        len(raw) - 48,
        len(raw) - 40,
        len(raw) - 33,
        *range(len(raw) - 32, len(raw)),
    ]:
        tampered = bytearray(raw)
        tampered[i] ^= 0x10
        released = assert_rejected_by_eof(base64.urlsafe_b64encode(bytes(tampered)), chunk_size=4096)
        assert len(released) <= len(plaintext) // 16 * 16  # the last block's plaintext is withheld


def test_one_pass_wrong_key_and_invalid_key() -> None:
    token = Fernet(KEY).encrypt(PLAINTEXT)
    assert_rejected_by_eof(token, key=Fernet.generate_key(), match="or the data key is wrong.*HMAC verification")
    with pytest.raises(DecryptionError) as e:
        one_pass(token, key=b"not-a-real-key-but-secret")
    assert "secret" not in str(e.value)


def test_one_pass_truncated_tokens_are_rejected() -> None:
    token = Fernet(KEY).encrypt(os.urandom(3000))
    for cut in [*range(0, len(token), 37), len(token) - 4, len(token) - 1]:
        assert_rejected_by_eof(token[:cut], match="corrupt or was tampered")


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda t: t[:50] + b"\n" + t[50:-1], "byte 50"),
        (lambda t: t + b"\n", "multiple of 4"),
        (lambda t: t[:-3] + bytes([B64[B64.index(t[-3]) ^ 1]]) + b"==", "invalid base64 at the end"),
    ],
)
def test_one_pass_malformed_base64_is_rejected(mutate, match: str) -> None:
    assert_rejected_by_eof(mutate(Fernet(KEY).encrypt(PLAINTEXT + b"0123456789")), match=match)


def test_one_pass_authentic_but_malformed_bodies_are_rejected() -> None:
    iv = bytes(16)
    header = struct.pack(">BQ", 0x80, 0) + iv
    bad_padding = (
        Cipher(algorithms.AES(base64.urlsafe_b64decode(KEY)[16:]), modes.CBC(iv)).encryptor().update(b"\x00" * 32)
    )
    assert_rejected_by_eof(signed_token(header + bytes(20)), match="whole number of AES blocks")
    assert_rejected_by_eof(signed_token(header), match="too short")
    assert_rejected_by_eof(signed_token(header + bad_padding), match="PKCS7")
    # the padding is checked only once the MAC verified: a forged last block is a MAC failure
    assert_rejected_by_eof(signed_token(header + bad_padding)[:-8] + b"AAAAAAA=", match="HMAC")


def test_one_pass_constructor_does_not_read_the_token() -> None:
    plaintext = os.urandom(50_000)
    raw = bytearray(base64.urlsafe_b64decode(Fernet(KEY).encrypt(plaintext)))
    raw[-1] ^= 1  # a wrong MAC
    token = base64.urlsafe_b64encode(bytes(raw))

    class Counting(io.BytesIO):
        read_bytes = 0

        def read(self, n=-1):
            data = super().read(n)
            Counting.read_bytes += len(data)
            return data

    with pytest.raises(DecryptionError, match="HMAC"):
        FernetDecryptingReader(Counting(token), KEY)  # two passes: refused at once
    Counting.read_bytes = 0
    reader = FernetDecryptingReader(Counting(token), KEY, chunk_size=4096, authenticate_first=False)
    assert Counting.read_bytes <= 4  # only the token's last characters (the length of its base64 padding)
    assert reader.read(100) == plaintext[:100]  # released before it is authenticated: one pass
    with pytest.raises(DecryptionError, match="HMAC verification failed"):
        reader.read()
    with pytest.raises(DecryptionError, match="HMAC verification failed"):  # never EOF after the error
        reader.read(10)


def test_one_pass_authenticate_before_reading_makes_it_two_passes() -> None:
    raw = bytearray(base64.urlsafe_b64decode(Fernet(KEY).encrypt(PLAINTEXT)))
    raw[30] ^= 1
    reader = one_pass(base64.urlsafe_b64encode(bytes(raw)))
    with pytest.raises(DecryptionError, match="HMAC"):
        reader.authenticate()
    reader = one_pass(Fernet(KEY).encrypt(PLAINTEXT))
    reader.read(1)
    with pytest.raises(io.UnsupportedOperation):
        reader.authenticate()  # it would move the file under the decryption
    assert reader.read() == PLAINTEXT[1:]


_STRICT_STD = bytes.maketrans(b"-_+/", b"+/!!")  # url-safe -> standard; '+' and '/' made invalid


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(list(b"AQgw09az-_") + list(b"=+/ \n!\x00\xff")), max_size=24).map(bytes))
def test_base64_decoding_accepts_and_refuses_exactly_what_binascii_strict_mode_does(text) -> None:
    """The token's base64 is decoded by pybase64 (SIMD); it must take and refuse what the standard library's
    strict decoder, given the url-safe alphabet only, takes and refuses, and give the same bytes."""
    import binascii

    from backup_assets.core.fernet_stream import _decode_chunks

    try:
        expected = binascii.a2b_base64(text.translate(_STRICT_STD), strict_mode=True)
    except binascii.Error:
        expected = None
    try:
        got = b"".join(_decode_chunks(io.BytesIO(text), 0, len(text), 4096))
    except DecryptionError:
        got = None
    stripped = text.rstrip(b"=")
    if stripped != text and len(stripped) % 4 == 0:
        expected = None  # padding after a whole quantum: binascii's strict mode lets it pass, RFC 4648 does not
    assert got == expected
