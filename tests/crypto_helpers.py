"""Test helpers: Sentry's tarball built and opened the way Sentry does it, with `cryptography` alone.

Deliberately independent of ``backup_assets``: these are the reference the project is checked against.
"""

from __future__ import annotations

import io
import tarfile

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def make_key_pair(bits: int = 2048) -> tuple[bytes, bytes]:
    """(PKCS8 private PEM, SPKI public PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def tar_of(members: list[tuple[str, bytes]]) -> bytes:
    """An uncompressed tar (mode "w", default format and metadata) of regular-file members, in order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def sentry_encrypt(plaintext: bytes, public_pem: bytes) -> tuple[bytes, bytes, bytes]:
    """(token, data.key, key.pub) as Sentry's exporter makes them."""
    data_key = Fernet.generate_key()
    token = Fernet(data_key).encrypt(plaintext)
    wrapped = serialization.load_pem_public_key(public_pem).encrypt(data_key, OAEP)
    return token, wrapped, public_pem


def sentry_tarball(plaintext: bytes, public_pem: bytes) -> bytes:
    token, wrapped, key_pub = sentry_encrypt(plaintext, public_pem)
    return tar_of([("export.json", token), ("data.key", wrapped), ("key.pub", key_pub)])


def sentry_decrypt(tar_bytes: bytes, private_pem: bytes) -> bytes:
    """Open a tarball as Sentry's importer does (key.pub compared byte for byte, OAEP, Fernet.decrypt)."""
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r") as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    key = serialization.load_pem_private_key(private_pem, password=None)
    spki = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert spki == files["key.pub"], "key.pub does not match, Sentry would refuse this tarball"
    data_key = key.decrypt(files["data.key"], OAEP)
    return Fernet(data_key).decrypt(files["export.json"])
