"""``backup-assets ui``: the Dagster UI over the home the command line records its runs in."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from . import main

#: The demo's private key, which the UI needs to restore the demo's encrypted backups again.
DEMO_KEY = Path("backups") / "demo-key.pem"
KEY_PATH_ENV = "BACKUP_ASSETS_PRIVATE_KEY_PATH"
#: The restore drill's database on the embedded server, when neither a target nor a standby is configured.
EMBEDDED_STANDBY = "sentry_standby"


def ui_environment(home: Path) -> dict[str, str]:
    """The environment of ``dagster dev``: the home; the demo key when no key is configured; with the
    embedded server as the target, its ``sentry_standby`` database as the drill's standby."""
    from ..core.postgres import DSN_ENV
    from ..schedules import STANDBY_DSN_ENV

    env = {**os.environ, "DAGSTER_HOME": str(home)}
    if not (env.get(KEY_PATH_ENV) or env.get("BACKUP_ASSETS_PRIVATE_KEY")) and DEMO_KEY.is_file():
        env[KEY_PATH_ENV] = str(DEMO_KEY.absolute())
    if not (env.get(DSN_ENV) or env.get(STANDBY_DSN_ENV)):
        env[STANDBY_DSN_ENV] = _embedded_standby()
    return env


def _embedded_standby() -> str:
    """The DSN of the embedded server's standby database (started and created when missing; no password)."""
    from ..core.postgres import embedded_default, ensure_database

    server = embedded_default().start()
    ensure_database(server.dsn("postgres"), EMBEDDED_STANDBY)
    return server.dsn(EMBEDDED_STANDBY)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the UI listens on.")
@click.option("-p", "--port", default=3000, show_default=True, type=click.IntRange(1, 65535), help="Port of the UI.")
def ui(host: str, port: int) -> None:
    """Start the Dagster UI (`dagster dev`) on the runs this command line recorded.

    The UI shares its instance with `backup-assets demo` and `import`: $DAGSTER_HOME when set, else
    .dagster_home/ in the working directory (created here, with the repository's dagster.yaml). The
    target is the one the commands use ($BACKUP_ASSETS_DSN, else the embedded server), backups come
    from ./backups, and the demo's key (backups/demo-key.pem) decrypts them unless a key is configured.
    The restore drill restores into $BACKUP_ASSETS_STANDBY_DSN, else, with the embedded server as the
    target, into its `sentry_standby` database.

    \b
    Example:
      backup-assets demo && backup-assets ui      # then open http://127.0.0.1:3000
    """
    from ..dagster_home import ensure_home

    home = ensure_home()
    dagster = Path(sys.executable).with_name("dagster")
    argv = [str(dagster), "dev", "-w", str(home / "workspace.yaml"), "-h", host, "-p", str(port)]
    click.echo(f"Dagster UI on http://{host}:{port} (instance {home})", err=True)
    os.execve(argv[0], argv, ui_environment(home))
