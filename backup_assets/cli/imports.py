"""``backup-assets import users|organizations|config|global SRC``: Sentry's ``sentry import``, into PostgreSQL."""

from __future__ import annotations

import sys
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import click

from ..core import locks
from ..core.backup_key import file_sha256, partition_key
from ..core.decryptors import LocalFileDecryptor
from ..core.errors import ImportFailed
from ..core.findings import InstanceID, RpcImportError, write_findings
from ..core.manifest import Manifest
from ..core.postgres import resolve_dsn
from ..core.restore import Restore
from ..core.results import RestoreResult, StageResult
from ..core.settings import ImportSettings, new_import_id
from ..core.source import open_backup
from . import main
from .common import (
    EXISTING_FILE,
    NEW_FILE,
    F,
    dsn_option,
    filter_flags,
    findings_on_error,
    manifest_option,
    project_errors,
)
from .display import restore_progress

SCOPE_HELP = {
    "users": "Import users (and their emails and options) only.",
    "organizations": "Import organizations and the users who are their members.",
    "config": "Import instance configuration (options, relays, admin roles) and users.",
    "global": "Restore everything: the whole instance, as `sentry import global` does.",
}


@main.group("import")
def import_group() -> None:
    """Import a Sentry export (plain JSON or encrypted tarball) into PostgreSQL.

    \b
    Examples:
      backup-assets import global backup.tar --decrypt-with private.pem --no-prompt
      backup-assets import organizations export.json --filter-org-slugs acme --dsn postgresql://...
    """


def _import_options(command: F) -> F:
    """The argument and options of every ``import SCOPE`` command, in the order its help lists them."""
    options: list[Callable[[F], F]] = [
        click.argument("src", type=EXISTING_FILE),
        click.option(
            "--decrypt-with",
            type=EXISTING_FILE,
            metavar="PRIVATE.pem",
            help="RSA private key (unencrypted PEM) for an encrypted export tarball.",
        ),
        click.option("--filter-usernames", metavar="A,B", help="Import only these users (comma-separated)."),
        click.option("--filter-usernames-file", type=EXISTING_FILE, help="Read --filter-usernames from a file."),
        click.option("--filter-org-slugs", metavar="A,B", help="Import only these organizations and their members."),
        click.option("--merge-users", is_flag=True, help="Map users whose username exists onto the existing user."),
        click.option("--overwrite-configs", is_flag=True, help="Overwrite existing config rows (options, relays...)."),
        click.option(
            "--findings-file", type=NEW_FILE, help="Write findings (Sentry's JSON format) here; [] on success."
        ),
        click.option(
            "--no-prompt", is_flag=True, help="Do not ask for confirmation (global: existing data is replaced)."
        ),
        click.option("--silent", is_flag=True, help="Print only errors."),
        dsn_option,
        manifest_option,
        click.option("--create-schema", is_flag=True, help="Create missing tables (restoring into an empty database)."),
        click.option(
            "--preserve-pks", is_flag=True, help="Keep every primary key (disaster recovery into an empty database)."
        ),
        click.option("--import-id", metavar="ID", help="Name this import (default: a new random id)."),
        click.option(
            "--strict",
            is_flag=True,
            help="Exit 1, writing nothing, if the export holds rows of models "
            "the manifest does not know (default: skip and report them).",
        ),
    ]
    for option in reversed(options):  # as stacked decorators apply: the last one first
        command = option(command)
    return command


def _confirm_replace(scope: str, no_prompt: bool, silent: bool) -> bool | None:
    """Whether the import replaces existing data (a global one does, once confirmed); None if cancelled."""
    if scope != "global":
        return False
    if not no_prompt and not click.confirm(
        "A global import replaces every relocatable table of the target database. Continue?",
        default=False,
        err=True,
    ):
        if not silent:
            click.echo("Import cancelled.", err=True)
        return None
    return True


def _scope_command(scope: str) -> None:
    @import_group.command(
        scope,
        help=f"{SCOPE_HELP[scope]}\n\n\b\nExample:\n  backup-assets import {scope} "
        f"export.json --dsn postgresql://localhost/sentry",
    )
    @_import_options
    @project_errors
    def command(
        src: Path,
        decrypt_with: Path | None,
        filter_usernames: str | None,
        filter_usernames_file: Path | None,
        filter_org_slugs: str | None,
        merge_users: bool,
        overwrite_configs: bool,
        findings_file: Path | None,
        no_prompt: bool,
        silent: bool,
        dsn: str | None,
        manifest: Path | None,
        create_schema: bool,
        preserve_pks: bool,
        import_id: str | None,
        strict: bool,
    ) -> None:
        usernames, org_slugs = filter_flags("import", scope, filter_usernames, filter_usernames_file, filter_org_slugs)
        replace = _confirm_replace(scope, no_prompt, silent)
        if replace is None:
            return
        settings = ImportSettings(
            scope=scope,
            merge_users=merge_users,
            overwrite_configs=overwrite_configs,
            filter_usernames=usernames,
            filter_org_slugs=org_slugs,
            preserve_pks=preserve_pks,
            create_schema=create_schema,
            replace_existing=replace,
            strict=strict,
        )
        decryptor = LocalFileDecryptor(decrypt_with) if decrypt_with else None
        with findings_on_error(findings_file, RpcImportError):
            result = restore_file(
                src, decryptor, resolve_dsn(dsn), Manifest.load(manifest), settings, import_id, silent
            )
        if findings_file:
            write_findings(_skip_findings(result) + _drop_findings(result), findings_file)
        if not silent:
            print_summary(result)


for _scope in SCOPE_HELP:
    _scope_command(_scope)


def restore_file(
    src: Path,
    decryptor: LocalFileDecryptor | None,
    dsn: str,
    manifest: Manifest,
    settings: ImportSettings,
    import_id: str | None,
    silent: bool,
) -> RestoreResult:
    """Restore through the asset graph in-process (the code path of the Dagster UI): one run of
    :func:`backup_assets.run.restore_backup`, then read what it did back from the engine's records. On
    a failed run the import's staging is discarded and :class:`ImportFailed` raised."""
    named = _import_id_meanwhile(src, import_id)
    from ..run import failure_kind, failure_message, restore_backup

    backup = open_backup(src, decryptor)  # fail fast, before Dagster starts, on a bad file or key
    backup.check_key()
    import_id = named.result()
    restore = Restore(dsn, manifest, import_id, settings)
    with restore.hold(), restore_progress(silent):
        run = restore_backup(
            src, dsn, settings, manifest=manifest, import_id=import_id, decryptor=decryptor, log_level="CRITICAL"
        )
    problem = failure_message(run)
    if problem:
        problem += _partial_restore_note(restore)
        try:
            restore.discard_staging()
        except Exception as e:  # noqa: BLE001 - the run's failure is the news; say the cleanup failed too
            problem += f"\n(and the staging of import {import_id} could not be dropped: {str(e).strip()})"
        raise ImportFailed(problem, failure_kind(run) or "ImportFailed")
    with restore.session():
        stage = restore.staged_result()
        out = RestoreResult(import_id=import_id, stage=stage or StageResult(import_id, bytes=backup.size))
        for model in restore.plan():
            load = restore.load_result(model)
            if load is not None:
                out.loads[model] = load
    return out


def _import_id_meanwhile(src: Path, import_id: str | None) -> Future[str]:
    """``import_id``, or else a new one named after the backup (every invocation is a new import, as
    Sentry's import_uuid): its key, from the SHA-256 read on a thread of its own while Dagster is imported
    (hashlib lets go of the GIL, so the second core hashes). The run's check of the key then finds the
    digest remembered (:func:`~backup_assets.core.backup_key.file_sha256`)."""
    if import_id:
        given: Future[str] = Future()
        given.set_result(import_id)
        return given
    pool = ThreadPoolExecutor(1, thread_name_prefix="backup-digest")
    try:
        return pool.submit(lambda: f"{partition_key(src.name, file_sha256(src))}-{new_import_id()[:8]}")
    finally:
        pool.shutdown(wait=False)


def _partial_restore_note(restore: Restore) -> str:
    """What to do after a global import failed past its wipe (its marker stands), else nothing."""
    try:
        with restore.connect() as conn:
            marker = locks.global_import(conn)
    except Exception:  # noqa: BLE001 - the run's failure is the news
        return ""
    if marker is None or marker[0] != restore.import_id:
        return ""
    return (
        f"\n(the database was emptied and is partly restored; other imports are refused until this one "
        f"ends: run it again with --import-id {restore.import_id} to finish it, or undo what it loaded "
        f"with `backup-assets rollback {restore.import_id}`)"
    )


#: StageResult bucket -> the finding kind and what the rows' skipping means.
_SKIPS = {
    "unknown_models": ("UnknownModel", "the manifest does not know this model"),
    "removed_models": ("RemovedModel", "Sentry has removed this model (its importer drops these rows too)"),
    "excluded_models": ("ExcludedModel", "the model's relocation scope is Excluded"),
}


def _skip_findings(result: RestoreResult) -> list[RpcImportError]:
    """Every model whose rows were skipped, every removed field and every field the target has no column
    for: named, with the number of rows, so that nothing is left behind unreported."""
    out = [
        RpcImportError(kind=kind, on=InstanceID(model), reason=f"{_rows(n)} skipped: {why}")
        for bucket, (kind, why) in _SKIPS.items()
        for model, n in sorted(getattr(result.stage, bucket).items())
    ]
    for name, n in sorted(result.stage.deleted_fields.items()):
        model, field = name.rsplit(".", 1)
        out.append(
            RpcImportError(
                kind="DeletedField",
                on=InstanceID(model),
                reason=f"field {field!r} dropped from {_rows(n)}: Sentry has removed it",
            )
        )
    for model, load in result.loads.items():
        for field in load.skipped_fields:
            out.append(
                RpcImportError(
                    kind="SkippedField",
                    on=InstanceID(model),
                    reason=f"field {field} not restored: table {load.table} has no column for it",
                )
            )
    return out


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def _drop_findings(result: RestoreResult) -> list[RpcImportError]:
    """Rows dropped for reasons other than a filter or the scope: reported, as Sentry does not."""
    out = []
    for model, load in result.loads.items():
        for sample in load.dropped_sample:
            if not sample["reason"].startswith("filtered"):
                out.append(
                    RpcImportError(
                        kind="DroppedRow",
                        on=InstanceID(model),
                        left_pk=sample["pk"],
                        reason=f"row {sample['row']}: {sample['reason']}",
                    )
                )
    return out


def print_summary(result: RestoreResult) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=sys.stderr)
    table = Table(title=f"import {result.import_id}", show_lines=False)
    for col in ("model", "read", "written", "merged", "dropped"):
        table.add_column(col, justify="left" if col == "model" else "right")
    total = [0, 0, 0, 0]
    for model, load in result.loads.items():
        if not load.rows_read:
            continue
        nums = [load.rows_read, load.rows_written, load.rows_merged, load.rows_dropped]
        total = [a + b for a, b in zip(total, nums)]
        table.add_row(model, *map(str, nums))
    table.add_row("total", *map(str, total), style="bold")
    console.print(table)
    for model, load in result.loads.items():
        for reason, n in load.dropped.items():
            console.print(f"  dropped {n} {model}: {reason}")
    for finding in _skip_findings(result):
        console.print(f"  {finding.kind_name} {finding.on.model}: {finding.reason}", soft_wrap=True)
