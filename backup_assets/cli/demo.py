"""``backup-assets demo`` (a whole restore of a generated, encrypted backup) and ``backup-assets embedded``."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import click

from ..core import keys, synthetic
from ..core.decryptors import PemDecryptor, PemEncryptor
from ..core.manifest import Manifest
from ..core.postgres import embedded_default, ensure_database, resolve_dsn
from ..core.settings import ImportSettings
from ..core.source import encrypt_export
from . import main
from .common import dsn_option, project_errors
from .imports import _restore, _summary


@main.command()
@click.option("--folder", type=click.Path(file_okay=False, path_type=Path), default="backups", show_default=True,
              help="Where the demo backup is written (the Dagster backup source's default folder).")
@click.option("--scale", type=click.IntRange(1, 400), default=1, show_default=True,
              help="Size of the generated export (1: a small instance; 195: about a million rows).")
@dsn_option
@project_errors
def demo(folder: Path, scale: int, dsn: str | None) -> None:
    """Restore a demo backup into the embedded PostgreSQL, through the whole asset graph.

    Generates a Sentry-format export (organizations, users, teams, projects, keys, options...),
    encrypts it the way `sentry export --encrypt-with` does with a fresh RSA key that stays in memory,
    writes the tarball to FOLDER, and restores it in global scope into the database `sentry` of the
    embedded PostgreSQL (or --dsn), replacing what a previous demo left there.

    \b
    Example:
      backup-assets demo
      backup-assets demo --scale 30 --dsn postgresql://localhost/scratch
    """
    folder.mkdir(parents=True, exist_ok=True)
    tar = folder / "demo-sentry-export.tar"
    rows = synthetic.demo_rows() if scale == 1 else synthetic.generate_rows(scale=scale)
    private_pem, public_pem = keys.generate_key_pair()
    # the JSON streams through a pipe into the encryption: no plaintext file, constant memory
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
    click.echo(f"Wrote {tar} ({tar.stat().st_size:,} bytes; {written[0]:,} bytes of JSON, encrypted with a one-time "
               "RSA key that is not kept)", err=True)
    target = resolve_dsn(dsn)
    settings = ImportSettings(scope="global", create_schema=True, replace_existing=True)
    result = _restore(tar, PemDecryptor(private_pem, source="the demo key"), target, Manifest.builtin(), settings,
                      None, silent=False)
    _summary(result)
    click.echo(f"\nRestored into {target}\n"
               f"Try:\n"
               f"  psql {target} -c 'SELECT slug, name FROM sentry_organization'\n"
               f"  backup-assets export global demo-roundtrip.json --dsn {target}\n"
               f"  dagster dev            # the asset graph, sensors and checks in the UI", err=True)


@main.group()
def embedded() -> None:
    """The embedded PostgreSQL used when no DSN is configured.

    \b
    Example:
      backup-assets embedded status
    """


@embedded.command("start")
def embedded_start() -> None:
    """Start the embedded server (if it is not running) and print the DSN of its `sentry` database."""
    server = embedded_default().start()
    ensure_database(server.dsn("postgres"), "sentry")
    click.echo(server.dsn("sentry"))


@embedded.command("stop")
def embedded_stop() -> None:
    """Stop the embedded server (its data stays in $BACKUP_ASSETS_HOME/postgres)."""
    embedded_default().stop()


@embedded.command("status")
def embedded_status() -> None:
    """Say whether the embedded server is running, and where."""
    server = embedded_default()
    port = server.running_port()
    click.echo(f"running on 127.0.0.1:{port} ({server.data_dir}); DSN {server.dsn('sentry').replace(str(server.port), str(port))}"
               if port else f"not running ({server.data_dir})")
