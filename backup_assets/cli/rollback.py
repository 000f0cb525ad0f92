"""``backup-assets rollback IMPORT_ID``: undo an import (what it inserted goes, what it overwrote comes back)."""

from __future__ import annotations

from pathlib import Path

import click

from ..core.manifest import Manifest
from ..core.postgres import resolve_dsn
from ..core.rollback import rollback
from . import main
from .common import dsn_option, manifest_option, project_errors


@main.command("rollback")
@click.argument("import_id")
@dsn_option
@manifest_option
@project_errors
def rollback_command(import_id: str, dsn: str | None, manifest: Path | None) -> None:
    """Undo import IMPORT_ID: delete every row it inserted (children first), restore the rows it
    overwrote to their previous values, and leave rows it merged onto existing ones alone. Works after
    a partial import; running it twice is harmless.

    \b
    Example:
      backup-assets rollback 3f2c9a7e0b1d4c5e8f6a7b8c9d0e1f2a --dsn postgresql://localhost/sentry
    """
    result = rollback(resolve_dsn(dsn), import_id, Manifest.load(manifest))
    if result.already_rolled_back:
        click.echo(f"import {import_id} was already rolled back; nothing to do", err=True)
        return
    for model, n in result.deleted.items():
        click.echo(f"deleted {n} {model}", err=True)
    for model, n in result.restored.items():
        click.echo(f"restored {n} {model} (overwritten)", err=True)
    click.echo(
        f"import {import_id} rolled back: {sum(result.deleted.values())} rows deleted, "
        f"{sum(result.restored.values())} restored",
        err=True,
    )
