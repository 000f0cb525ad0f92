"""RSA keys as Sentry uses them: PEM key pairs, OAEP wrapping of the data key, the ``key.pub`` check.

* private keys: PKCS8, unencrypted, PEM (``-----BEGIN PRIVATE KEY-----``);
* public keys: SubjectPublicKeyInfo PEM exactly as ``cryptography`` serializes it (``-----BEGIN PUBLIC KEY-----``,
  64-character lines, trailing newline) -- Sentry compares ``key.pub`` with this serialization byte for byte;
* the data key (the 44-byte url-safe base64 Fernet key) is wrapped with RSA-OAEP, SHA-256, MGF1-SHA-256, no label.

Messages never contain key material.
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from .errors import DecryptionError, EncryptionError

__all__ = [
    "DATA_KEY_LENGTH",
    "check_key_pub",
    "fingerprint",
    "generate_key_pair",
    "generate_private_key",
    "load_private_key",
    "load_public_key",
    "private_key_pem",
    "public_key_pem",
    "unwrap_data_key",
    "wrap_data_key",
]

DATA_KEY_LENGTH = 44  #: a Fernet key: 32 bytes, url-safe base64
ALLOWED_BITS = (2048, 3072, 4096)
_OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def _kind(key: PrivateKeyTypes | PublicKeyTypes) -> str:
    """'an EC', 'a DSA', 'an Ed25519'... (the key type's name without Private/PublicKey)."""
    name = type(key).__name__.lstrip("_").replace("PrivateKey", "").replace("PublicKey", "")
    name = {"EllipticCurve": "EC"}.get(name, name) or "unknown"
    return f"{'an' if name[0] in 'AEIOU' else 'a'} {name}"


def generate_private_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    """A fresh RSA private key of ``bits`` (2048 by default, as Sentry's CLI asks; 4096 on request)."""
    if bits not in ALLOWED_BITS:
        raise EncryptionError(f"RSA key size must be one of {', '.join(map(str, ALLOWED_BITS))} bits, not {bits}")
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def private_key_pem(key: rsa.RSAPrivateKey) -> bytes:
    """``key`` as unencrypted PKCS8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_key_pem(key: rsa.RSAPrivateKey | rsa.RSAPublicKey) -> bytes:
    """The public half of ``key`` as SubjectPublicKeyInfo PEM: the exact bytes Sentry expects in ``key.pub``."""
    public = key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def generate_key_pair(bits: int = 2048) -> tuple[bytes, bytes]:
    """``(private PEM, public PEM)`` of a fresh RSA key pair."""
    key = generate_private_key(bits)
    return private_key_pem(key), public_key_pem(key)


def load_private_key(pem: bytes, *, source: str = "the private key") -> rsa.RSAPrivateKey:
    """Load an unencrypted PEM RSA private key; ``source`` names it in error messages (e.g. a path)."""
    if pem.lstrip().startswith((b"-----BEGIN PUBLIC KEY-----", b"-----BEGIN RSA PUBLIC KEY-----")):
        raise DecryptionError(f"{source} is a public key; decryption needs the private key")
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise DecryptionError(
            f"{source} is encrypted (password-protected); Sentry's format needs an unencrypted PEM private key"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise DecryptionError(f"Could not deserialize {source}: it is not a PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise DecryptionError(f"{source} is {_kind(key)} key; Sentry backups need an RSA key")
    return key


def load_public_key(pem: bytes, *, source: str = "the public key") -> rsa.RSAPublicKey:
    """Load a PEM RSA public key (SubjectPublicKeyInfo or PKCS1)."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm):
        hint = " (this looks like a private key)" if b"PRIVATE KEY-----" in pem else ""
        raise EncryptionError(f"Could not deserialize {source}: it is not a PEM public key{hint}") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise EncryptionError(f"{source} is {_kind(key)} key; Sentry backups need an RSA key")
    return key


def wrap_data_key(public_key: rsa.RSAPublicKey, data_key: bytes) -> bytes:
    """RSA-OAEP-encrypt the 44-byte Fernet key (the content of ``data.key``)."""
    if len(data_key) != DATA_KEY_LENGTH:
        raise EncryptionError(f"the data key must be {DATA_KEY_LENGTH} bytes of url-safe base64")
    return public_key.encrypt(data_key, _OAEP)


def unwrap_data_key(private_key: rsa.RSAPrivateKey, encrypted: bytes) -> bytes:
    """Decrypt ``data.key``; returns the 44-byte url-safe base64 Fernet key."""
    try:
        data_key = private_key.decrypt(encrypted, _OAEP)
    except ValueError:
        raise DecryptionError(
            "could not decrypt data.key with this private key (wrong key, or data.key is corrupt)"
        ) from None
    if len(data_key) != DATA_KEY_LENGTH:
        raise DecryptionError(f"data.key decrypted to {len(data_key)} bytes, not a {DATA_KEY_LENGTH}-byte Fernet key")
    return data_key


def check_key_pub(private_key: rsa.RSAPrivateKey, key_pub: bytes) -> None:
    """Sentry's check: the private key's public half, serialized as SPKI PEM, must equal ``key.pub`` exactly."""
    if public_key_pem(private_key) != key_pub:
        raise DecryptionError("key.pub does not match the private key: this backup was encrypted for another key")


def fingerprint(key: bytes | rsa.RSAPublicKey | rsa.RSAPrivateKey) -> str:
    """SHA-256 (hex) of the DER SubjectPublicKeyInfo of a public key (PEM bytes or key object), for display."""
    if isinstance(key, bytes):
        key = load_public_key(key)
    public = key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()
