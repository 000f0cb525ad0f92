"""``backup-assets backup encrypt|decrypt`` and ``backup-assets keygen``: Sentry's export tarball format."""

from __future__ import annotations

import os
from pathlib import Path

import click

from ..core import keys
from ..core.decryptors import LocalFileDecryptor, LocalFileEncryptor
from ..core.source import decrypt_backup, encrypt_export
from . import backup, main
from .common import EXISTING_FILE, NEW_FILE, project_errors


@backup.command("encrypt")
@click.argument("dest", type=NEW_FILE)
@click.option("--src", required=True, type=EXISTING_FILE, help="The plain JSON export to encrypt.")
@click.option(
    "--encrypt-with",
    "public_key",
    required=True,
    type=EXISTING_FILE,
    metavar="PUBLIC.pem",
    help="The RSA public key (PEM) to encrypt for.",
)
@project_errors
def encrypt(dest: Path, src: Path, public_key: Path) -> None:
    """Encrypt a JSON export into a tarball that `sentry import --decrypt-with` accepts.

    A fresh data key is made for each export and wrapped for PUBLIC.pem.

    \b
    Example:
      backup-assets backup encrypt backup.tar --src export.json --encrypt-with public.pem
    """
    encrypt_export(src, dest, LocalFileEncryptor(public_key))
    click.echo(f"Encrypted {src} -> {dest}", err=True)


@backup.command("decrypt")
@click.argument("dest", type=NEW_FILE)
@click.option("--src", required=True, type=EXISTING_FILE, help="The encrypted export tarball.")
@click.option(
    "--decrypt-with",
    "private_key",
    required=True,
    type=EXISTING_FILE,
    metavar="PRIVATE.pem",
    help="The RSA private key (unencrypted PEM) the tarball was encrypted for.",
)
@project_errors
def decrypt(dest: Path, src: Path, private_key: Path) -> None:
    """Decrypt an export tarball to its plain JSON.

    DEST is written only once the whole export authenticated; on any failure no DEST is left behind.

    \b
    Example:
      backup-assets backup decrypt export.json --src backup.tar --decrypt-with private.pem
    """
    decrypt_backup(src, dest, LocalFileDecryptor(private_key))
    click.echo(f"Decrypted {src} -> {dest}", err=True)


def write_key_file(path: Path, data: bytes, mode: int, force: bool) -> None:
    """Write ``data`` to ``path`` with ``mode`` (also when it replaces a file: via a temp file + rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)  # the umask may have narrowed it; never widened for the private key
        if force:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if path appeared meanwhile
            tmp.unlink()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@main.command("keygen")
@click.argument("private", type=NEW_FILE)
@click.argument("public", type=NEW_FILE)
@click.option("--bits", type=click.Choice(["2048", "4096"]), default="2048", show_default=True, help="RSA key size.")
@click.option("--force", is_flag=True, help="Overwrite existing key files.")
@project_errors
def keygen(private: Path, public: Path, bits: str, force: bool) -> None:
    """Generate an RSA key pair for encrypted exports (PKCS8 private key, mode 0600; SPKI public key).

    \b
    Example:
      backup-assets keygen private.pem public.pem --bits 4096
    """
    if private.resolve() == public.resolve():
        raise click.UsageError("PRIVATE and PUBLIC must be different files")
    if not force:
        for p in (private, public):
            if p.exists():
                raise click.ClickException(f"{p} already exists; pass --force to overwrite it")
    private_pem, public_pem = keys.generate_key_pair(int(bits))
    try:
        write_key_file(private, private_pem, 0o600, force)
        write_key_file(public, public_pem, 0o644, force)
    except FileExistsError as e:
        raise click.ClickException(
            f"{e.filename2 or e.filename} already exists; pass --force to overwrite it"
        ) from None
    except OSError as e:
        raise click.ClickException(f"cannot write {e.filename}: {e.strerror}") from None
    click.echo(
        f"Wrote {private} (private, mode 0600) and {public}; fingerprint {keys.fingerprint(public_pem)}", err=True
    )
