"""Pieces every command shares: error reporting, the common options."""
from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from ..core.errors import BackupAssetsError

F = TypeVar("F", bound=Callable[..., object])

EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
NEW_FILE = click.Path(dir_okay=False, path_type=Path)


def project_errors(fn: F) -> F:
    """Turn the project's errors into click's one-line ``Error: ...`` on stderr, exit code 1."""
    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return fn(*args, **kwargs)
        except BackupAssetsError as e:
            raise click.ClickException(str(e)) from None
    return wrapper  # type: ignore[return-value]


def dsn_option(fn: F) -> F:
    return click.option("--dsn", envvar="BACKUP_ASSETS_DSN", metavar="DSN",
                        help="PostgreSQL connection string of the target (default: $BACKUP_ASSETS_DSN, else the "
                             "embedded PostgreSQL, started on demand).")(fn)


def manifest_option(fn: F) -> F:
    return click.option("--manifest", type=EXISTING_FILE, envvar="BACKUP_ASSETS_MANIFEST",
                        help="Sentry's model_dependencies/detailed.json of your Sentry release "
                             "(default: the built-in manifest).")(fn)
