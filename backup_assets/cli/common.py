"""Pieces every command shares: error reporting, the common options."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ParamSpec, TypeVar

import click

from ..core.errors import BackupAssetsError
from ..core.findings import Finding, InstanceID, write_findings

F = TypeVar("F", bound=Callable[..., object])
P = ParamSpec("P")
R = TypeVar("R")

EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
NEW_FILE = click.Path(dir_okay=False, path_type=Path)


def project_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn the project's errors into click's one-line ``Error: ...`` on stderr, exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except BackupAssetsError as e:
            raise click.ClickException(str(e)) from None

    return wrapper


def dsn_option(fn: F) -> F:
    return click.option(
        "--dsn",
        envvar="BACKUP_ASSETS_DSN",
        metavar="DSN",
        help="PostgreSQL connection string of the target (default: $BACKUP_ASSETS_DSN, else the "
        "embedded PostgreSQL, started on demand).",
    )(fn)


def manifest_option(fn: F) -> F:
    return click.option(
        "--manifest",
        type=EXISTING_FILE,
        envvar="BACKUP_ASSETS_MANIFEST",
        help="Sentry's model_dependencies/detailed.json of your Sentry release (default: the built-in manifest).",
    )(fn)


def split_list(values: str | None) -> frozenset[str] | None:
    """A comma- (or newline-) separated list, as Sentry's --filter-* flags and their files take it."""
    if values is None:
        return None
    return frozenset(v.strip() for v in values.replace("\n", ",").split(",") if v.strip())


def filter_flags(
    verb: str, scope: str, usernames: str | None, usernames_file: Path | None, org_slugs: str | None
) -> tuple[frozenset[str] | None, frozenset[str] | None]:
    """Sentry's filter flags of ``import``/``export`` SCOPE, checked as its CLI checks them: usernames for
    the users and config scopes (inline or from a file, not both), org slugs for organizations."""
    if usernames is not None and usernames_file is not None:
        raise click.UsageError("--filter-usernames and --filter-usernames-file are mutually exclusive")
    if usernames_file is not None:
        usernames = usernames_file.read_text()
    if scope not in ("users", "config") and usernames is not None:
        raise click.UsageError(f"--filter-usernames is not available for `{verb} {scope}`")
    if scope != "organizations" and org_slugs is not None:
        raise click.UsageError(f"--filter-org-slugs is only available for `{verb} organizations`")
    return split_list(usernames), split_list(org_slugs)


@contextmanager
def findings_on_error(findings_file: Path | None, finding: type[Finding]) -> Iterator[None]:
    """Sentry's --findings-file on failure: the error as one finding (its kind the error type), then re-raised."""
    try:
        yield
    except BackupAssetsError as e:
        if findings_file:
            write_findings(
                [
                    finding(
                        kind=getattr(e, "kind", None) or type(e).__name__,
                        on=InstanceID(getattr(e, "model", None) or "*"),
                        reason=str(e),
                    )
                ],
                findings_file,
            )
        raise
