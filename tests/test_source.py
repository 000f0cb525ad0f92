"""open_backup / encrypt_export / decrypt_backup, and the decryptors, on real files and real crypto."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tarfile

import ijson
import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization

from backup_assets.core import keys
from backup_assets.core.decryptors import (
    Decryptor,
    GCPKMSDecryptor,
    GCPKMSDecryptorConfig,
    LocalFileDecryptor,
    LocalFileEncryptor,
    PemDecryptor,
    PemEncryptor,
)
from backup_assets.core.errors import BackupFormatError, ConfigurationError, DecryptionError, EncryptionError
from backup_assets.core.source import decrypt_backup, encrypt_export, open_backup
from tests.crypto_helpers import (
    OAEP,
    make_key_pair,
    sentry_decrypt,
    sentry_encrypt,
    sentry_tarball,
    tar_of,
)

EXPORT = json.dumps(
    [{"model": "sentry.user", "pk": i, "fields": {"username": f"user{i}", "is_active": True}} for i in range(3000)]
).encode()


@pytest.fixture(scope="module")
def pair() -> tuple[bytes, bytes]:
    return make_key_pair()


@pytest.fixture(scope="module")
def other_pair() -> tuple[bytes, bytes]:
    return make_key_pair()


@pytest.fixture
def key_file(tmp_path, pair):
    path = tmp_path / "private.pem"
    path.write_bytes(pair[0])
    return path


@pytest.fixture
def sentry_tar(tmp_path, pair):
    path = tmp_path / "backup.tar"
    path.write_bytes(sentry_tarball(EXPORT, pair[1]))
    return path


def plaintext_of(backup) -> bytes:
    with backup.open_plaintext() as stream:
        return stream.read()


def test_sentry_tarball_decrypts_byte_identically(sentry_tar, key_file, pair) -> None:
    backup = open_backup(sentry_tar, LocalFileDecryptor(key_file))
    assert backup.kind == "tarball" and backup.size == sentry_tar.stat().st_size
    assert set(backup.members) == {"export.json", "data.key", "key.pub"}
    assert backup.key_pub_fingerprint == keys.fingerprint(pair[1])
    assert backup.sha256() == hashlib.sha256(sentry_tar.read_bytes()).hexdigest()
    assert plaintext_of(backup) == EXPORT
    with backup.open_plaintext() as stream:  # what the engine does with it
        assert [row["pk"] for row in ijson.items(stream, "item")] == list(range(3000))


def test_plain_json_is_detected_through_bom_and_whitespace(tmp_path) -> None:
    for prefix in (b"", b"\xef\xbb\xbf", b" \n\t\r\n" * 300):
        path = tmp_path / "export.json"
        path.write_bytes(prefix + EXPORT)
        backup = open_backup(path)
        assert backup.kind == "json" and backup.members is None and backup.key_pub_fingerprint is None
        assert plaintext_of(backup) == prefix + EXPORT


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "is empty"),
        (b"  \n ", "is empty"),
        (b'\n  {"model": 1}', "byte 3: .*found byte 0x7b"),
        (b"\x1f\x8b\x08\x00rest", "gzip-compressed"),
    ],
)
def test_neither_tarball_nor_json(tmp_path, content: bytes, match: str) -> None:
    path = tmp_path / "x"
    path.write_bytes(content)
    with pytest.raises(BackupFormatError, match=match):
        open_backup(path)


def test_missing_file_and_directory(tmp_path) -> None:
    with pytest.raises(BackupFormatError, match="no such file"):
        open_backup(tmp_path / "nope.tar")
    with pytest.raises(BackupFormatError, match="is a directory"):
        open_backup(tmp_path)


def test_tarball_needs_a_decryptor(sentry_tar) -> None:
    with pytest.raises(DecryptionError, match="this backup is encrypted; pass --decrypt-with"):
        open_backup(sentry_tar)


def test_malformed_tarball_fails_at_open(tmp_path, pair, key_file) -> None:
    token, wrapped, key_pub = sentry_encrypt(EXPORT, pair[1])
    path = tmp_path / "b.tar"
    path.write_bytes(tar_of([("export.json", token), ("data.key", wrapped)]))
    with pytest.raises(BackupFormatError, match=f"{path}: member 'key.pub': missing member"):
        open_backup(path, LocalFileDecryptor(key_file))
    path.write_bytes(tar_of([("export.json", token), ("data.key", wrapped), ("key.pub", b"x" * 451)]))
    with pytest.raises(BackupFormatError, match="member 'key.pub': is not a PEM RSA public key"):
        open_backup(path, LocalFileDecryptor(key_file))


def test_wrong_key_and_mismatched_key_pub(tmp_path, sentry_tar, pair, other_pair) -> None:
    other = tmp_path / "other.pem"
    other.write_bytes(other_pair[0])
    with pytest.raises(DecryptionError, match="key.pub does not match the private key"):
        plaintext_of(open_backup(sentry_tar, LocalFileDecryptor(other)))
    # key.pub claims the other key, data.key is for ours: the check happens before any unwrap
    token, wrapped, _ = sentry_encrypt(EXPORT, pair[1])
    sentry_tar.write_bytes(tar_of([("export.json", token), ("data.key", wrapped), ("key.pub", other_pair[1])]))
    with pytest.raises(DecryptionError, match="key.pub does not match"):
        plaintext_of(open_backup(sentry_tar, PemDecryptor(pair[0])))
    # key.pub matches the other key, but data.key was wrapped for ours: OAEP fails
    with pytest.raises(DecryptionError, match="could not decrypt data.key"):
        plaintext_of(open_backup(sentry_tar, PemDecryptor(other_pair[0])))


def test_tampered_token_yields_nothing(tmp_path, pair) -> None:
    token, wrapped, key_pub = sentry_encrypt(EXPORT, pair[1])
    raw = bytearray(base64.urlsafe_b64decode(token))
    raw[len(raw) // 2] ^= 1
    path = tmp_path / "t.tar"
    path.write_bytes(
        tar_of([("export.json", base64.urlsafe_b64encode(bytes(raw))), ("data.key", wrapped), ("key.pub", key_pub)])
    )
    backup = open_backup(path, PemDecryptor(pair[0]))
    entered = False
    with pytest.raises(DecryptionError, match="tampered"), backup.open_plaintext():
        entered = True
    assert not entered


@pytest.mark.parametrize("from_stream", [False, True])
def test_encrypt_export_is_accepted_by_sentrys_importer(tmp_path, pair, from_stream: bool) -> None:
    src = tmp_path / "export.json"
    src.write_bytes(EXPORT)
    dest = tmp_path / "out.tar"
    encrypt_export(io.BytesIO(EXPORT) if from_stream else src, dest, PemEncryptor(pair[1]))
    assert sentry_decrypt(dest.read_bytes(), pair[0]) == EXPORT
    with tarfile.open(dest) as tar:
        assert tar.getnames() == ["export.json", "data.key", "key.pub"]
    assert sorted(os.listdir(tmp_path)) == ["export.json", "out.tar"]


def test_fresh_data_key_per_export(tmp_path, pair) -> None:
    src = tmp_path / "export.json"
    src.write_bytes(EXPORT)
    private = serialization.load_pem_private_key(pair[0], None)
    data_keys = set()
    for name in ("a.tar", "b.tar"):
        encrypt_export(src, tmp_path / name, PemEncryptor(pair[1]))
        with tarfile.open(tmp_path / name) as tar:
            data_keys.add(private.decrypt(tar.extractfile("data.key").read(), OAEP))
    assert len(data_keys) == 2


def test_encrypt_export_normalises_key_pub(tmp_path, pair) -> None:
    pkcs1 = serialization.load_pem_public_key(pair[1]).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
    )
    pub = tmp_path / "pub.pem"
    pub.write_bytes(pkcs1)
    src = tmp_path / "export.json"
    src.write_bytes(EXPORT)
    encrypt_export(src, tmp_path / "out.tar", LocalFileEncryptor(pub))
    assert sentry_decrypt((tmp_path / "out.tar").read_bytes(), pair[0]) == EXPORT  # byte-exact key.pub check


def test_encrypt_export_errors(tmp_path, pair, sentry_tar) -> None:
    with pytest.raises(EncryptionError, match="cannot read public key file"):
        encrypt_export(io.BytesIO(EXPORT), tmp_path / "o.tar", LocalFileEncryptor(tmp_path / "missing.pem"))
    with pytest.raises(EncryptionError, match="not a PEM public key"):
        encrypt_export(io.BytesIO(EXPORT), tmp_path / "o.tar", PemEncryptor(b"nope"))
    with pytest.raises(EncryptionError, match="not a JSON export"):
        encrypt_export(sentry_tar, tmp_path / "o.tar", PemEncryptor(pair[1]))
    assert not (tmp_path / "o.tar").exists()


def test_decrypt_backup(tmp_path, sentry_tar, pair) -> None:
    dest = tmp_path / "out" / "export.json"
    dest.parent.mkdir()
    decrypt_backup(sentry_tar, dest, PemDecryptor(pair[0]))
    assert dest.read_bytes() == EXPORT
    assert dest.stat().st_mode & 0o777 == 0o600
    assert os.listdir(dest.parent) == ["export.json"]


def test_decrypt_backup_leaves_nothing_on_failure(tmp_path, pair, other_pair) -> None:
    token, wrapped, key_pub = sentry_encrypt(EXPORT, pair[1])
    src = tmp_path / "in" / "b.tar"
    src.parent.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    cases = {
        "tampered": (
            [("export.json", token[:-10] + b"AAAAAAAAAA"), ("data.key", wrapped), ("key.pub", key_pub)],
            PemDecryptor(pair[0]),
            DecryptionError,
        ),
        "truncated token": (
            [("export.json", token[:-8]), ("data.key", wrapped), ("key.pub", key_pub)],
            PemDecryptor(pair[0]),
            DecryptionError,
        ),
        "wrong key": (
            [("export.json", token), ("data.key", wrapped), ("key.pub", key_pub)],
            PemDecryptor(other_pair[0]),
            DecryptionError,
        ),
        "missing member": ([("export.json", token), ("key.pub", key_pub)], PemDecryptor(pair[0]), BackupFormatError),
    }
    for name, (members, decryptor, error) in cases.items():
        src.write_bytes(tar_of(members))
        with pytest.raises(error):
            decrypt_backup(src, out / "export.json", decryptor)
        assert os.listdir(out) == [], name
    (out / "export.json").write_bytes(b"previous")
    src.write_bytes(tar_of(cases["tampered"][0]))
    with pytest.raises(DecryptionError):
        decrypt_backup(src, out / "export.json", PemDecryptor(pair[0]))
    assert (out / "export.json").read_bytes() == b"previous"
    assert os.listdir(out) == ["export.json"]


def test_decrypt_backup_of_plain_json(tmp_path, pair) -> None:
    src = tmp_path / "export.json"
    src.write_bytes(EXPORT)
    with pytest.raises(BackupFormatError, match="plain JSON export, not an encrypted tarball"):
        decrypt_backup(src, tmp_path / "out.json", PemDecryptor(pair[0]))


def test_decryptors_keep_keys_out_of_repr_and_load_lazily(tmp_path, pair, sentry_tar, monkeypatch) -> None:
    missing = LocalFileDecryptor(tmp_path / "later.pem")  # nothing read yet
    assert isinstance(missing, Decryptor)
    with pytest.raises(ConfigurationError, match="cannot read private key file"):
        missing.private_key()
    (tmp_path / "later.pem").write_bytes(pair[0])
    assert plaintext_of(open_backup(sentry_tar, missing)) == EXPORT
    secret_line = pair[0].splitlines()[1].decode()
    monkeypatch.setenv("BA_TEST_PRIVATE_KEY", pair[0].decode())
    from_env = PemDecryptor.from_env("BA_TEST_PRIVATE_KEY")
    assert plaintext_of(open_backup(sentry_tar, from_env)) == EXPORT
    assert repr(missing) == f"LocalFileDecryptor({str(tmp_path / 'later.pem')!r})"
    for d in (from_env, PemDecryptor(pair[0])):
        assert secret_line not in repr(d) and "redacted" in repr(d)
    assert from_env.fingerprint() == keys.fingerprint(pair[1])
    monkeypatch.delenv("BA_TEST_PRIVATE_KEY")
    with pytest.raises(ConfigurationError, match="BA_TEST_PRIVATE_KEY"):
        PemDecryptor.from_env("BA_TEST_PRIVATE_KEY")
    with pytest.raises(DecryptionError, match="Could not deserialize the private key in \\$X"):
        PemDecryptor("garbage", source="the private key in $X").private_key()


def test_kms_config_is_validated_and_fits_the_interface(sentry_tar) -> None:
    config = GCPKMSDecryptorConfig.from_json(
        json.dumps(
            {"project_id": "p", "location": "global", "key_ring": "relocation", "key": "relocation", "version": "1"}
        )
    )
    assert (
        config.key_version_name
        == "projects/p/locations/global/keyRings/relocation/cryptoKeys/relocation/cryptoKeyVersions/1"
    )
    for bad in (
        '{"project_id": "p"}',
        "[]",
        "not json",
        '{"project_id": "p", "location": "l", "key_ring": "r", "key": "k", "version": 1}',
    ):
        with pytest.raises(ConfigurationError, match="five|exactly the string fields"):
            GCPKMSDecryptorConfig.from_json(bad)
    kms = GCPKMSDecryptor(config)
    assert isinstance(kms, Decryptor)
    with pytest.raises(ConfigurationError, match="not available in this build"):
        plaintext_of(open_backup(sentry_tar, kms))


def test_decryptor_resource(tmp_path, pair, sentry_tar, monkeypatch) -> None:
    from backup_assets.resources.decryptor import DecryptorResource

    (tmp_path / "k.pem").write_bytes(pair[0])
    by_path = DecryptorResource(private_key_path=str(tmp_path / "k.pem")).get_decryptor()
    assert plaintext_of(open_backup(sentry_tar, by_path)) == EXPORT
    monkeypatch.setenv("BA_TEST_KEY", pair[0].decode())
    by_env = DecryptorResource(private_key_env="BA_TEST_KEY").get_decryptor()
    assert plaintext_of(open_backup(sentry_tar, by_env)) == EXPORT
    for bad in (DecryptorResource(), DecryptorResource(private_key_path="a", private_key_env="B")):
        with pytest.raises(ConfigurationError, match="exactly one"):
            bad.get_decryptor()


def test_fernet_key_is_what_gets_wrapped(tmp_path, pair) -> None:
    """data.key holds the 44-byte base64 key (what Fernet() takes), not the raw 32 bytes."""
    src = tmp_path / "e.json"
    src.write_bytes(b"[]")
    encrypt_export(src, tmp_path / "o.tar", PemEncryptor(pair[1]))
    with tarfile.open(tmp_path / "o.tar") as tar:
        data_key = PemDecryptor(pair[0]).unwrap_data_key(
            tar.extractfile("data.key").read(), tar.extractfile("key.pub").read()
        )
    assert len(data_key) == 44 and len(base64.urlsafe_b64decode(data_key)) == 32
    Fernet(data_key)
