"""The ``backup-assets`` command line: mirrors ``sentry import|export|backup``.

Each command group lives in a module of its own and registers itself on :data:`main` or :data:`backup`.
"""

from __future__ import annotations

import importlib

import click

from .. import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="backup-assets")
def main() -> None:
    """Restore Sentry backups into PostgreSQL, as Sentry's own `sentry import|export|backup` would.

    \b
    Examples:
      backup-assets import global backup.tar --decrypt-with private.pem
      backup-assets export global out.json --dsn postgresql://localhost/sentry
      backup-assets backup compare before.json after.json
    """


@main.group()
def backup() -> None:
    """Work with backup files: encrypt, decrypt, compare.

    \b
    Examples:
      backup-assets backup encrypt backup.tar --src export.json --encrypt-with public.pem
      backup-assets backup compare before.json after.json
    """


# Command modules register themselves on `main` / `backup` when imported.
for _name in ("crypto", "imports", "exports", "compare", "rollback", "demo", "ui"):
    importlib.import_module(f"{__name__}.{_name}")
