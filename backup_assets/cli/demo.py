"""``backup-assets demo`` (a whole restore of a generated, encrypted backup) and ``backup-assets embedded``."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable
from pathlib import Path

import click

from ..core import keys
from ..core.decryptors import LocalFileDecryptor, PemEncryptor
from ..core.manifest import Manifest
from ..core.postgres import embedded_default, ensure_database, resolve_dsn
from ..core.settings import ImportSettings
from ..core.source import encrypt_export
from ..demo import synthetic
from . import main
from .common import dsn_option, project_errors
from .crypto import write_key_file
from .imports import print_summary, restore_file


@main.command()
@click.option(
    "--folder",
    type=click.Path(file_okay=False, path_type=Path),
    default="backups",
    show_default=True,
    help="Where the demo backup is written (the Dagster backup source's default folder).",
)
@click.option(
    "--scale",
    type=click.IntRange(1, 400),
    default=1,
    show_default=True,
    help="Size of the generated export (1: a small instance; 195: about a million rows).",
)
@dsn_option
@project_errors
def demo(folder: Path, scale: int, dsn: str | None) -> None:
    """Restore a demo backup into the embedded PostgreSQL, through the whole asset graph.

    The run is recorded in $DAGSTER_HOME, else in .dagster_home/ of the working directory, which
    `backup-assets ui` opens: the UI shows the demo's partition materialized, with its checks.

    Generates a Sentry-format export (organizations, users, teams, projects, keys, options...),
    encrypts it the way `sentry export --encrypt-with` does for a fresh demo key pair (written beside
    it as demo-key.pem / demo-key.pub), writes the tarball to FOLDER, and restores it in global scope
    into the database `sentry` of the embedded PostgreSQL (or --dsn), replacing what a previous demo
    left there.

    \b
    Examples:
      backup-assets demo
      backup-assets demo --scale 30 --dsn postgresql://localhost/scratch
    """
    folder.mkdir(parents=True, exist_ok=True)
    tar, key_file, pub_file = (folder / n for n in ("demo-sentry-export.tar", "demo-key.pem", "demo-key.pub"))
    rows = map(_as_sentry_writes_it, synthetic.demo_rows() if scale == 1 else synthetic.generate_rows(scale=scale))
    private_pem, public_pem = keys.generate_key_pair()
    write_key_file(key_file, private_pem, 0o600, force=True)  # the demo's own pair, for the next steps
    write_key_file(pub_file, public_pem, 0o644, force=True)
    written = _write_encrypted_export(tar, rows, public_pem)
    click.echo(
        f"Wrote {tar} ({tar.stat().st_size:,} bytes; {written:,} bytes of JSON), encrypted for the demo key "
        f"pair {key_file} (mode 0600) / {pub_file}",
        err=True,
    )
    target = resolve_dsn(dsn)
    settings = ImportSettings(scope="global", create_schema=True, replace_existing=True)
    home = _shared_home()
    # the import is the backup file's partition, as the UI's sensor would name it
    result = restore_file(
        tar, LocalFileDecryptor(key_file), target, Manifest.builtin(), settings, _partition_key(tar), silent=False
    )
    print_summary(result)
    click.echo(
        f"\nRestored into {target}\n"
        f"Try:\n"
        f"  psql {target} -c 'SELECT slug, name FROM sentry_organization'\n"
        f"  backup-assets export global demo-roundtrip.json --dsn {target}\n"
        f"  backup-assets backup compare {tar} demo-roundtrip.json --decrypt-left-with {key_file}\n"
        f"  backup-assets ui    # the asset graph with this restore, its checks, the sensor (instance {home})",
        err=True,
    )


def _write_encrypted_export(tar: Path, rows: Iterable[dict], public_pem: bytes) -> int:
    """Write ``rows`` as an export tarball encrypted for ``public_pem``; return the bytes of JSON written.

    The JSON streams through a pipe into the encryption: no plaintext file, constant memory."""
    read_end, write_end = os.pipe()
    written: list[int] = []

    def produce() -> None:
        try:
            with open(write_end, "wb") as out:
                written.append(synthetic.write_export(out, rows, indent=2))
        except BrokenPipeError:  # the encryption stopped reading (it failed): its error is reported
            pass

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    with open(read_end, "rb") as plain:
        encrypt_export(plain, tar, PemEncryptor(public_pem))
    producer.join()
    return written[0]


def _shared_home() -> Path:
    """The instance the restore is recorded in, which ``backup-assets ui`` opens (see :mod:`dagster_home`)."""
    from ..dagster_home import ensure_home

    return ensure_home()


def _partition_key(path: Path) -> str:
    from ..partitions import partition_key_for_file

    return partition_key_for_file(path)


_NO_MILLIS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)Z$")


def _as_sentry_writes_it(row: dict) -> dict:
    """Timestamps with milliseconds, as a current `sentry export` writes them (the generator also makes
    older exports' spelling, which a round-trip compare would rightly report)."""
    fields = {k: (_NO_MILLIS.sub(r"\1.000Z", v) if isinstance(v, str) else v) for k, v in row["fields"].items()}
    return {**row, "fields": fields}


@main.group()
def embedded() -> None:
    """The embedded PostgreSQL used when no DSN is configured.

    \b
    Example:
      backup-assets embedded status
    """


@embedded.command("start")
@project_errors
def embedded_start() -> None:
    """Start the embedded server (if it is not running) and print the DSN of its `sentry` database.

    \b
    Example:
      psql "$(backup-assets embedded start)" -c 'SELECT count(*) FROM sentry_project'
    """
    server = embedded_default().start()
    ensure_database(server.dsn("postgres"), "sentry")
    click.echo(server.dsn("sentry"))


@embedded.command("stop")
@project_errors
def embedded_stop() -> None:
    """Stop the embedded server (its data stays in $BACKUP_ASSETS_HOME/postgres).

    \b
    Example:
      backup-assets embedded stop
    """
    embedded_default().stop()


@embedded.command("status")
@project_errors
def embedded_status() -> None:
    """Say whether the embedded server is running, and where.

    \b
    Example:
      backup-assets embedded status
    """
    server = embedded_default()
    port = server.running_port()
    if not port:
        click.echo(f"not running ({server.data_dir})")
        return
    server.port = port
    click.echo(f"running on 127.0.0.1:{port} ({server.data_dir}); DSN {server.dsn('sentry')}")
