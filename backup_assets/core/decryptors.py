"""Where the RSA keys come from: one small interface, a few implementations.

A :class:`Decryptor` turns ``data.key`` (and ``key.pub``) into the 44-byte Fernet key; an :class:`Encryptor`
supplies the PEM public key an export is encrypted for.  Local decryptors check ``key.pub`` against the private
key first, exactly as Sentry does; a KMS-backed decryptor skips that check (as Sentry's does), which the
interface allows since the check is the implementation's business.

Private keys are loaded lazily, kept in memory only, and never shown by ``repr()``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography.hazmat.primitives.asymmetric import rsa

from . import keys
from .errors import ConfigurationError, EncryptionError

__all__ = [
    "Decryptor",
    "Encryptor",
    "GCPKMSDecryptor",
    "GCPKMSDecryptorConfig",
    "LocalFileDecryptor",
    "LocalFileEncryptor",
    "PemDecryptor",
    "PemEncryptor",
]


@runtime_checkable
class Decryptor(Protocol):
    def unwrap_data_key(self, encrypted_data_key: bytes, key_pub: bytes) -> bytes:
        """Return the 44-byte url-safe base64 Fernet key wrapped in ``data.key``; raise DecryptionError."""
        ...


@runtime_checkable
class Encryptor(Protocol):
    def public_key_pem(self) -> bytes:
        """The PEM public key to encrypt for; raise EncryptionError."""
        ...


class _PrivateKeyDecryptor:
    """Shared logic of the decryptors holding an RSA private key: lazy load, key.pub check, OAEP unwrap."""

    _source = "the private key"

    def __init__(self) -> None:
        self.__key: rsa.RSAPrivateKey | None = None

    def _pem(self) -> bytes:
        raise NotImplementedError

    def private_key(self) -> rsa.RSAPrivateKey:
        if self.__key is None:
            self.__key = keys.load_private_key(self._pem(), source=self._source)
        return self.__key

    def unwrap_data_key(self, encrypted_data_key: bytes, key_pub: bytes) -> bytes:
        key = self.private_key()
        keys.check_key_pub(key, key_pub)
        return keys.unwrap_data_key(key, encrypted_data_key)

    def fingerprint(self) -> str:
        """SHA-256 of the public half (hex), for display."""
        return keys.fingerprint(self.private_key())


class LocalFileDecryptor(_PrivateKeyDecryptor):
    """An unencrypted PEM RSA private key in a file (read on first use)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = Path(path)
        self._source = f"private key file {str(self.path)!r}"

    def __repr__(self) -> str:
        return f"LocalFileDecryptor({str(self.path)!r})"

    def _pem(self) -> bytes:
        try:
            return self.path.read_bytes()
        except OSError as e:
            raise ConfigurationError(f"cannot read {self._source}: {e.strerror}") from None


class PemDecryptor(_PrivateKeyDecryptor):
    """An unencrypted PEM RSA private key given as bytes (a secret, an environment variable...)."""

    def __init__(self, pem: bytes | str, *, source: str = "the private key") -> None:
        super().__init__()
        self.__pem = pem.encode() if isinstance(pem, str) else bytes(pem)
        self._source = source

    @classmethod
    def from_env(cls, var: str) -> PemDecryptor:
        """The PEM held by environment variable ``var``."""
        value = os.environ.get(var)
        if not value:
            raise ConfigurationError(f"environment variable {var} (the PEM private key) is not set or empty")
        return cls(value, source=f"the private key in ${var}")

    def __repr__(self) -> str:
        return f"PemDecryptor(<{self._source}, redacted>)"

    def _pem(self) -> bytes:
        return self.__pem


@dataclass(frozen=True)
class GCPKMSDecryptorConfig:
    """Sentry's GCP KMS key-version config: five strings."""

    project_id: str
    location: str
    key_ring: str
    key: str
    version: str

    def __post_init__(self) -> None:
        for f in fields(self):
            if not isinstance(getattr(self, f.name), str) or not getattr(self, f.name):
                raise ConfigurationError(
                    "GCP KMS config needs exactly the five non-empty string fields "
                    f"{', '.join(x.name for x in fields(self))}; {f.name!r} is not a non-empty string"
                )

    @classmethod
    def from_json(cls, data: bytes | str) -> GCPKMSDecryptorConfig:
        """Parse Sentry's JSON config object; extra or missing fields are an error, as in Sentry."""
        names = {f.name for f in fields(cls)}
        try:
            obj = json.loads(data)
        except ValueError:
            obj = None
        if not isinstance(obj, dict) or set(obj) != names:
            raise ConfigurationError(
                f"GCP KMS config must be a JSON object with exactly the string fields {', '.join(sorted(names))}"
            )
        return cls(**obj)

    @property
    def key_version_name(self) -> str:
        """The KMS resource name of the crypto key version."""
        return (
            f"projects/{self.project_id}/locations/{self.location}/keyRings/{self.key_ring}"
            f"/cryptoKeys/{self.key}/cryptoKeyVersions/{self.version}"
        )


class GCPKMSDecryptor:
    """Placeholder for a KMS-backed decryptor (no key.pub check, as in Sentry); no KMS client in this build."""

    def __init__(self, config: GCPKMSDecryptorConfig) -> None:
        self.config = config

    def __repr__(self) -> str:
        return f"GCPKMSDecryptor({self.config.key_version_name!r})"

    def unwrap_data_key(self, encrypted_data_key: bytes, key_pub: bytes) -> bytes:
        raise ConfigurationError(
            "GCP KMS decryption is not available in this build; use a local private key (--decrypt-with)"
        )


class LocalFileEncryptor:
    """A PEM RSA public key in a file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"LocalFileEncryptor({str(self.path)!r})"

    def public_key_pem(self) -> bytes:
        try:
            return self.path.read_bytes()
        except OSError as e:
            raise EncryptionError(f"cannot read public key file {str(self.path)!r}: {e.strerror}") from None


class PemEncryptor:
    """A PEM RSA public key given as bytes."""

    def __init__(self, pem: bytes | str) -> None:
        self._pem = pem.encode() if isinstance(pem, str) else bytes(pem)

    def __repr__(self) -> str:
        return "PemEncryptor(<public key>)"

    def public_key_pem(self) -> bytes:
        return self._pem
