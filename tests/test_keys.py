"""RSA keys in Sentry's PEM forms, OAEP data-key wrapping, and Sentry's exact key.pub check."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from backup_assets.core import keys
from backup_assets.core.errors import DecryptionError, EncryptionError
from tests.crypto_helpers import OAEP, make_key_pair


@pytest.fixture(scope="module")
def pair() -> tuple[bytes, bytes]:
    return keys.generate_key_pair()


@pytest.fixture(scope="module")
def other_pair() -> tuple[bytes, bytes]:
    return make_key_pair()


def test_generated_pair_is_in_sentrys_pem_forms(pair) -> None:
    private, public = pair
    assert private.startswith(b"-----BEGIN PRIVATE KEY-----\n") and private.endswith(b"-----END PRIVATE KEY-----\n")
    assert public.startswith(b"-----BEGIN PUBLIC KEY-----\n") and public.endswith(b"-----END PUBLIC KEY-----\n")
    key = serialization.load_pem_private_key(private, password=None)  # unencrypted
    assert key.key_size == 2048
    assert (
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        == public
    )


def test_unsupported_key_size() -> None:
    with pytest.raises(EncryptionError, match="1024"):
        keys.generate_private_key(1024)


def test_load_private_key_errors(pair) -> None:
    private, public = pair
    key = keys.load_private_key(private)
    for not_a_key in (b"hello, not a key", b"\0tar header... -----BEGIN PUBLIC KEY-----\n" + public):
        with pytest.raises(DecryptionError, match="Could not deserialize"):
            keys.load_private_key(not_a_key)
    with pytest.raises(DecryptionError, match="is a public key"):
        keys.load_private_key(public)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
    )
    with pytest.raises(DecryptionError, match="encrypted"):
        keys.load_private_key(encrypted, source="key.pem")
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(DecryptionError, match="is an EC key; .* RSA"):
        keys.load_private_key(ec_pem)


def test_load_public_key_errors(pair) -> None:
    private, public = pair
    assert keys.load_public_key(public).key_size == 2048
    with pytest.raises(EncryptionError, match="looks like a private key"):
        keys.load_public_key(private)
    ec_pub = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(EncryptionError, match="RSA"):
        keys.load_public_key(ec_pub)


def test_wrap_unwrap_interoperates_with_plain_oaep(pair) -> None:
    private, public = pair
    data_key = Fernet.generate_key()
    assert len(data_key) == keys.DATA_KEY_LENGTH
    wrapped = keys.wrap_data_key(keys.load_public_key(public), data_key)
    assert len(wrapped) == 256
    assert serialization.load_pem_private_key(private, None).decrypt(wrapped, OAEP) == data_key
    theirs = serialization.load_pem_public_key(public).encrypt(data_key, OAEP)
    assert keys.unwrap_data_key(keys.load_private_key(private), theirs) == data_key


def test_unwrap_errors(pair, other_pair) -> None:
    wrapped = keys.wrap_data_key(keys.load_public_key(pair[1]), Fernet.generate_key())
    with pytest.raises(DecryptionError, match="wrong key"):
        keys.unwrap_data_key(keys.load_private_key(other_pair[0]), wrapped)
    with pytest.raises(DecryptionError, match="wrong key"):
        keys.unwrap_data_key(keys.load_private_key(pair[0]), wrapped[:-1] + bytes([wrapped[-1] ^ 1]))
    not_a_fernet_key = serialization.load_pem_public_key(pair[1]).encrypt(b"x" * 32, OAEP)
    with pytest.raises(DecryptionError, match="32 bytes"):
        keys.unwrap_data_key(keys.load_private_key(pair[0]), not_a_fernet_key)
    with pytest.raises(EncryptionError):
        keys.wrap_data_key(keys.load_public_key(pair[1]), b"short")


def test_key_pub_check_is_byte_exact(pair, other_pair) -> None:
    key = keys.load_private_key(pair[0])
    keys.check_key_pub(key, pair[1])
    pkcs1 = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    for wrong in (other_pair[1], pair[1].rstrip(b"\n"), pair[1].replace(b"\n", b"\r\n"), pkcs1):
        with pytest.raises(DecryptionError, match="key.pub does not match the private key"):
            keys.check_key_pub(key, wrong)


def test_fingerprint(pair) -> None:
    der = serialization.load_pem_public_key(pair[1]).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    expected = hashlib.sha256(der).hexdigest()
    assert keys.fingerprint(pair[1]) == expected
    assert keys.fingerprint(keys.load_private_key(pair[0])) == expected
