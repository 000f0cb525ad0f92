"""`backup-assets backup encrypt|decrypt` and `backup-assets keygen`, through click and the installed script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization

from backup_assets.cli import main
from tests.crypto_helpers import make_key_pair, sentry_decrypt, sentry_tarball, tar_of

EXPORT = b'[{"model": "sentry.email", "pk": 1, "fields": {"email": "a@example.com"}}]'
SCRIPT = Path(sys.executable).with_name("backup-assets")


@pytest.fixture(scope="module")
def pair() -> tuple[bytes, bytes]:
    return make_key_pair()


@pytest.fixture
def files(tmp_path, pair):
    (tmp_path / "private.pem").write_bytes(pair[0])
    (tmp_path / "public.pem").write_bytes(pair[1])
    (tmp_path / "export.json").write_bytes(EXPORT)
    (tmp_path / "sentry.tar").write_bytes(sentry_tarball(EXPORT, pair[1]))
    return tmp_path


def run(*args: str | Path):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_encrypt_then_sentry_decrypts_and_we_decrypt(files, pair) -> None:
    result = run(
        "backup", "encrypt", files / "out.tar", "--src", files / "export.json", "--encrypt-with", files / "public.pem"
    )
    assert result.exit_code == 0, result.output
    assert sentry_decrypt((files / "out.tar").read_bytes(), pair[0]) == EXPORT
    result = run(
        "backup", "decrypt", files / "round.json", "--src", files / "out.tar", "--decrypt-with", files / "private.pem"
    )
    assert result.exit_code == 0, result.output
    assert (files / "round.json").read_bytes() == EXPORT


def test_decrypt_failure_is_one_line_and_leaves_nothing(files) -> None:
    other, _ = make_key_pair()
    (files / "other.pem").write_bytes(other)
    before = sorted(os.listdir(files))
    result = run(
        "backup", "decrypt", files / "out.json", "--src", files / "sentry.tar", "--decrypt-with", files / "other.pem"
    )
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0
    assert result.output.startswith("Error: ") and "key.pub does not match the private key" in result.output
    assert sorted(os.listdir(files)) == before


def test_usage_errors_exit_2(files) -> None:
    assert (
        run(
            "backup",
            "decrypt",
            files / "o.json",
            "--src",
            files / "missing.tar",
            "--decrypt-with",
            files / "private.pem",
        ).exit_code
        == 2
    )
    assert run("backup", "encrypt", files / "o.tar", "--src", files / "export.json").exit_code == 2


def test_help_has_examples() -> None:
    for args in (["backup", "encrypt", "--help"], ["backup", "decrypt", "--help"], ["keygen", "--help"]):
        result = run(*args)
        assert result.exit_code == 0 and "Example:" in result.output and "backup-assets " in result.output


def test_keygen(tmp_path) -> None:
    private, public = tmp_path / "k.pem", tmp_path / "k.pub"
    result = run("keygen", private, public)
    assert result.exit_code == 0, result.output
    assert private.stat().st_mode & 0o777 == 0o600
    key = serialization.load_pem_private_key(private.read_bytes(), password=None)
    assert key.key_size == 2048
    assert (
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        == public.read_bytes()
    )
    first = private.read_bytes()
    refused = run("keygen", private, public)
    assert refused.exit_code == 1 and "already exists; pass --force" in refused.output
    assert private.read_bytes() == first
    forced = run("keygen", private, public, "--force", "--bits", "4096")
    assert forced.exit_code == 0, forced.output
    assert serialization.load_pem_private_key(private.read_bytes(), password=None).key_size == 4096
    assert private.stat().st_mode & 0o777 == 0o600
    assert sorted(os.listdir(tmp_path)) == ["k.pem", "k.pub"]
    assert run("keygen", private, public, "--bits", "1024").exit_code == 2


def test_installed_script_decrypts_a_sentry_tarball(files) -> None:
    assert SCRIPT.exists(), SCRIPT
    proc = subprocess.run(
        [
            SCRIPT,
            "backup",
            "decrypt",
            files / "out.json",
            "--src",
            files / "sentry.tar",
            "--decrypt-with",
            files / "private.pem",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert (files / "out.json").read_bytes() == EXPORT
    (files / "bad.tar").write_bytes(tar_of([("export.json", b"A" * 100)]))
    proc = subprocess.run(
        [
            SCRIPT,
            "backup",
            "decrypt",
            files / "bad.json",
            "--src",
            files / "bad.tar",
            "--decrypt-with",
            files / "private.pem",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("Error: ") and "missing member" in proc.stderr
    assert not (files / "bad.json").exists()
