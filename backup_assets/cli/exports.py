"""``backup-assets export users|organizations|config|global [DEST]``: Sentry's ``sentry export``, from PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import click
import psycopg

from ..core.decryptors import LocalFileEncryptor
from ..core.errors import ConfigurationError
from ..core.export import export_rows, export_to
from ..core.findings import RpcExportError, write_findings
from ..core.manifest import Manifest
from ..core.postgres import resolve_dsn
from . import main
from .common import (
    EXISTING_FILE,
    NEW_FILE,
    dsn_option,
    filter_flags,
    findings_on_error,
    manifest_option,
    project_errors,
)

#: What each scope exports (the scopes of ``sentry export``).
SCOPE_HELP = {
    "users": "Export users (with their emails and options) only.",
    "organizations": "Export organizations, everything in them, and the users who are their members.",
    "config": "Export instance configuration (options, relays, admin roles) and the privileged users.",
    "global": "Export everything relocatable: the whole instance, as `sentry export global` does.",
}


@main.group("export")
def export_group() -> None:
    """Export the target database as a Sentry export (JSON, or an encrypted tarball).

    Rows are grouped by model in dependency order with ascending pks, foreign keys named as the
    manifest names them and datetimes in UTC with milliseconds: `sentry import` and
    `backup-assets import` both read the result.

    \b
    Examples:
      backup-assets export global out.json --dsn postgresql://localhost/sentry
      backup-assets export organizations acme.tar --filter-org-slugs acme --encrypt-with public.pem
    """


def _scope_command(scope: str) -> None:
    @export_group.command(
        scope,
        help=f"{SCOPE_HELP[scope]}\n\nDEST is a file, or - for stdout (the default)."
        f"\n\n\b\nExample:\n  backup-assets export {scope} out.json "
        f"--dsn postgresql://localhost/sentry",
    )
    @click.argument("dest", default="-", type=click.Path(dir_okay=False, allow_dash=True))
    @click.option(
        "--encrypt-with",
        type=EXISTING_FILE,
        metavar="PUBLIC.pem",
        help="RSA public key (PEM): write Sentry's encrypted export tarball instead of JSON.",
    )
    @click.option("--filter-usernames", metavar="A,B", help="Export only these users (comma-separated).")
    @click.option("--filter-usernames-file", type=EXISTING_FILE, help="Read --filter-usernames from a file.")
    @click.option("--filter-org-slugs", metavar="A,B", help="Export only these organizations and their members.")
    @click.option(
        "--indent", type=click.IntRange(min=0), default=2, show_default=True, help="Spaces of JSON indentation."
    )
    @click.option("--findings-file", type=NEW_FILE, help="Write findings (Sentry's JSON format) here; [] on success.")
    @click.option("--silent", is_flag=True, help="Print only errors.")
    @dsn_option
    @manifest_option
    @project_errors
    def command(
        dest: str,
        encrypt_with: Path | None,
        filter_usernames: str | None,
        filter_usernames_file: Path | None,
        filter_org_slugs: str | None,
        indent: int,
        findings_file: Path | None,
        silent: bool,
        dsn: str | None,
        manifest: Path | None,
    ) -> None:
        usernames, org_slugs = filter_flags("export", scope, filter_usernames, filter_usernames_file, filter_org_slugs)
        with findings_on_error(findings_file, RpcExportError):
            counts = _export(scope, dest, encrypt_with, usernames, org_slugs, indent, dsn, manifest)
        if findings_file:
            write_findings([], findings_file)
        if not silent:
            where = "stdout" if dest == "-" else dest
            click.echo(
                f"Exported {sum(counts.values())} rows of {len(counts)} models to {where}"
                f"{' (encrypted)' if encrypt_with else ''}.",
                err=True,
            )


def _export(
    scope: str,
    dest: str,
    encrypt_with: Path | None,
    usernames: frozenset[str] | None,
    org_slugs: frozenset[str] | None,
    indent: int,
    dsn: str | None,
    manifest: Path | None,
) -> dict[str, int]:
    models = Manifest.load(manifest)
    encryptor = LocalFileEncryptor(encrypt_with) if encrypt_with else None
    try:
        conn = psycopg.connect(resolve_dsn(dsn), application_name="backup-assets export")
    except psycopg.OperationalError as e:
        raise ConfigurationError(f"cannot connect to the target database: {str(e).strip()}") from None
    with conn:
        rows = export_rows(conn, models, scope, filter_usernames=usernames, filter_org_slugs=org_slugs)
        return export_to(dest, rows, indent=indent, encryptor=encryptor)


for _scope in SCOPE_HELP:
    _scope_command(_scope)
