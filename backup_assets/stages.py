"""The stage assets of one import (one backup partition), before and after the model assets.

``sentry_backup/backup_file``        the file: path, size, SHA-256 (checked against the partition key)
``sentry_backup/unwrapped_tarball``  the tarball's members validated (plain JSON: passes through)
``sentry_backup/data_key``           ``key.pub`` matched against the private key and ``data.key`` unwrapped in
                                     memory, then discarded (plain JSON: passes through)
``sentry_backup/parsed_export``      the export parsed into the staging area, the import prepared
``sentry_backup/restore_complete``   after every model: totals, staging dropped

Nothing is handed from one stage to the next but the target database: the data key is never
returned, persisted or logged; the parse stage unwraps it again in memory (each step may run in
another process or on another machine).
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import dagster as dg

from backup_assets.core import keys
from backup_assets.core.decryptors import Decryptor
from backup_assets.core.errors import BackupFormatError, DecryptionError
from backup_assets.core.manifest import Manifest
from backup_assets.core.results import StageResult
from backup_assets.core.source import Backup, open_backup
from backup_assets.core.tarball import BLOCK, compression_of, is_tar_header, read_tarball
from backup_assets.execution import Stopwatch, engine_errors, held, import_id_of, open_restore
from backup_assets.resources.backup_source import BackupFile, BackupSourceResource
from backup_assets.resources.decryptor import DecryptorResource
from backup_assets.resources.postgres import PostgresTargetResource
from backup_assets.resources.settings import ImportSettingsResource
from backup_assets.resources.staging import StagingResource
from backup_assets.translator import (
    BACKUP_FILE_KEY,
    DATA_KEY_KEY,
    PARSED_EXPORT_KEY,
    RESTORE_COMPLETE_KEY,
    UNWRAPPED_TARBALL_KEY,
)

STAGE_GROUP = "sentry_backup"
PLAIN_JSON_NOTE = "plain JSON export: not encrypted, nothing to unwrap"


def _backup_file(context: dg.AssetExecutionContext, source: BackupSourceResource) -> BackupFile:
    import_id = import_id_of(context)
    with engine_errors("backup file"):
        return source.resolve(import_id)


def _decryptor(resource: DecryptorResource | Decryptor, bf: BackupFile) -> Decryptor:
    """The core decryptor of an encrypted backup: from the resource's configuration, or a decryptor object
    given as the resource itself (``run.materialize_restore`` does that; it never enters run config)."""
    if isinstance(resource, Decryptor):
        return resource
    if not (resource.private_key_path or resource.private_key_env):
        raise DecryptionError(
            f"{bf.path}: this backup is encrypted; configure the 'decryptor' resource "
            "(private_key_path, or private_key_env naming a variable that holds the PEM)"
        )
    return resource.get_decryptor()


def _is_plain(bf: BackupFile) -> bool:
    """Whether the backup is a plain JSON export (else a tarball, possibly compressed: the engine says so)."""
    with engine_errors("backup file"):
        try:
            with open(bf.path, "rb") as f:
                head = f.read(BLOCK)
        except OSError as e:
            raise BackupFormatError(f"cannot read: {e.strerror or e}", path=str(bf.path)) from None
    return not (is_tar_header(head) or compression_of(head))


def open_run_backup(
    context: dg.AssetExecutionContext, source: BackupSourceResource, decryptor: DecryptorResource | Decryptor
) -> Backup:
    """The run's backup, opened; a decryptor is only asked for when the backup is encrypted. Used by
    the parse stage, and by a model asset that finds its import's staging gone (it stages again)."""
    bf = _backup_file(context, source)
    plain = _is_plain(bf)
    with engine_errors("backup file"):
        return open_backup(bf.path, None if plain else _decryptor(decryptor, bf))


def _stage(
    fn: Callable[..., dg.MaterializeResult],
    key: dg.AssetKey,
    deps: list[dg.AssetKey],
    description: str,
    partitions_def: dg.PartitionsDefinition | None,
    check_specs: list[dg.AssetCheckSpec] | None = None,
) -> dg.AssetsDefinition:
    return dg.asset(
        key=key,
        deps=deps,
        description=description,
        group_name=STAGE_GROUP,
        partitions_def=partitions_def,
        kinds={"sentry"},
        check_specs=check_specs,
    )(fn)


UNKNOWN_MODELS_CHECK = "no_unknown_models"


def _unknown_models_check(staged: StageResult) -> dg.AssetCheckResult:
    """ERROR when rows were skipped because the manifest does not know their model (the restore is not
    complete: they are named with their row counts); rows of models Sentry removed do not count."""
    unknown = dict(sorted(staged.unknown_models.items()))
    described = ", ".join(f"{m} ({n})" for m, n in unknown.items())
    return dg.AssetCheckResult(
        check_name=UNKNOWN_MODELS_CHECK,
        passed=not unknown,
        severity=dg.AssetCheckSeverity.ERROR,
        description=(
            f"{sum(unknown.values())} rows of {len(unknown)} models the manifest does not know were "
            f"skipped: {described}; pass the manifest of the export's Sentry release"
            if unknown
            else "every row is of a model the manifest knows"
        ),
        metadata={"unknown_models": dg.MetadataValue.json(unknown), "unknown_rows": sum(unknown.values())},
    )


def _backup_file_stage(context: dg.AssetExecutionContext, backup_source: BackupSourceResource) -> dg.MaterializeResult:
    bf = _backup_file(context, backup_source)
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(bf.path)),
            "size_bytes": bf.size,
            "sha256": bf.sha256,
            "import_id": context.partition_key,
        }
    )


def _unwrapped_tarball_stage(
    context: dg.AssetExecutionContext, backup_source: BackupSourceResource
) -> dg.MaterializeResult:
    bf = _backup_file(context, backup_source)
    if _is_plain(bf):
        return dg.MaterializeResult(metadata={"kind": "json", "note": PLAIN_JSON_NOTE})
    with engine_errors("tarball"):
        contents = read_tarball(bf.path)
    members = dg.MetadataValue.table(
        records=[dg.TableRecord({"member": m, "bytes": n}) for m, n in contents.members.items()],
        schema=dg.TableSchema(columns=[dg.TableColumn("member", "string"), dg.TableColumn("bytes", "int")]),
    )
    return dg.MaterializeResult(
        metadata={"kind": "tarball", "members": members, "export_json_bytes": contents.export_size}
    )


def _data_key_stage(
    context: dg.AssetExecutionContext, backup_source: BackupSourceResource, decryptor: DecryptorResource
) -> dg.MaterializeResult:
    bf = _backup_file(context, backup_source)
    if _is_plain(bf):
        return dg.MaterializeResult(metadata={"kind": "json", "note": PLAIN_JSON_NOTE})
    with engine_errors("data key"):
        contents = read_tarball(bf.path)
        fingerprint = keys.fingerprint(contents.key_pub)
        # Proves key.pub matches the private key and data.key unwraps; the key is dropped at once.
        _decryptor(decryptor, bf).unwrap_data_key(contents.data_key, contents.key_pub)
    return dg.MaterializeResult(
        metadata={
            "kind": "tarball",
            "key_pub_fingerprint": fingerprint,
            "key_pub_matched": True,
            "note": "data key unwrapped in memory and discarded; later stages unwrap it again",
        }
    )


def build_stage_assets(manifest: Manifest, partitions_def: dg.PartitionsDefinition | None) -> list[dg.AssetsDefinition]:
    """The four stages before the model assets (see the module doc)."""

    def parsed_export(
        context: dg.AssetExecutionContext,
        backup_source: BackupSourceResource,
        decryptor: DecryptorResource,
        target: PostgresTargetResource,
        import_settings: ImportSettingsResource,
        staging: StagingResource,
    ) -> dg.MaterializeResult:
        backup = open_run_backup(context, backup_source, decryptor)
        restore = open_restore(context, manifest, target, import_settings, staging)
        with held(restore), engine_errors("parse"), Stopwatch() as sw:
            staged = restore.stage(backup)
            restore.prepare()
        return dg.MaterializeResult(
            metadata=_stage_metadata(staged, sw.seconds), check_results=[_unknown_models_check(staged)]
        )

    return [
        _stage(
            _backup_file_stage,
            BACKUP_FILE_KEY,
            [],
            "The backup file of this partition: size and SHA-256.",
            partitions_def,
        ),
        _stage(
            _unwrapped_tarball_stage,
            UNWRAPPED_TARBALL_KEY,
            [BACKUP_FILE_KEY],
            "The export tarball's members, validated (a plain JSON export passes through).",
            partitions_def,
        ),
        _stage(
            _data_key_stage,
            DATA_KEY_KEY,
            [UNWRAPPED_TARBALL_KEY],
            "key.pub matched against the private key and data.key unwrapped in memory; the key is never "
            "stored (a plain JSON export passes through).",
            partitions_def,
        ),
        _stage(
            parsed_export,
            PARSED_EXPORT_KEY,
            [DATA_KEY_KEY],
            "The export decrypted and parsed into the staging area (schema backup_assets of the target "
            "database), and the import prepared.",
            partitions_def,
            [
                dg.AssetCheckSpec(
                    UNKNOWN_MODELS_CHECK,
                    asset=PARSED_EXPORT_KEY,
                    blocking=False,
                    description="No row skipped because the manifest does not know its model.",
                )
            ],
        ),
    ]


def _stage_metadata(staged: StageResult, seconds: float) -> dict[str, Any]:
    per_model = dg.MetadataValue.table(
        records=[dg.TableRecord({"model": m, "rows": n}) for m, n in sorted(staged.rows_per_model.items())],
        schema=dg.TableSchema(columns=[dg.TableColumn("model", "string"), dg.TableColumn("rows", "int")]),
    )
    return {
        "dagster/row_count": staged.rows,
        "rows": staged.rows,
        "rows_per_model": per_model,
        "models": len(staged.rows_per_model),
        "skipped_unknown_models": dg.MetadataValue.json(dict(sorted(staged.unknown_models.items()))),
        "skipped_unknown_rows": sum(staged.unknown_models.values()),
        "skipped_excluded_models": dg.MetadataValue.json(dict(sorted(staged.excluded_models.items()))),
        "dropped_removed_models": dg.MetadataValue.json(dict(sorted(staged.removed_models.items()))),
        "dropped_deleted_fields": dg.MetadataValue.json(dict(sorted(staged.deleted_fields.items()))),
        "bytes": staged.bytes,
        "duration_s": dg.MetadataValue.float(round(seconds, 4)),
        "rows_per_s": dg.MetadataValue.float(round(staged.rows / seconds, 1) if seconds else 0.0),
    }


# -- after the models -------------------------------------------------------------------------------
_TOTALS = ("rows_read", "rows_written", "rows_merged", "rows_dropped")


def _latest_metadata(
    context: dg.AssetExecutionContext, asset_keys: Sequence[dg.AssetKey]
) -> dict[dg.AssetKey, Mapping[str, Any] | None]:
    """Each key's latest materialization metadata for the run's partition. One query reads every key's
    latest materialization of any partition, which is the partition's own when one backup is restored at
    a time; a key whose latest is another partition's is looked up on its own."""
    latest = {
        r.asset_entry.asset_key: r.asset_entry.last_materialization_record
        for r in context.instance.get_asset_records(list(asset_keys))
    }
    out: dict[dg.AssetKey, Mapping[str, Any] | None] = {}
    for key in asset_keys:
        record = latest.get(key)
        if record is not None and record.partition_key != context.partition_key:
            records = context.instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, asset_partitions=[context.partition_key]), limit=1
            ).records
            record = records[0] if records else None
        mat = record.asset_materialization if record is not None else None
        out[key] = None if mat is None else {k: v.value for k, v in mat.metadata.items()}
    return out


DROPS_CHECK = "no_rows_dropped"


class RestoreCompleteConfig(dg.Config):
    """How strict the end of a restore is. Integrity checks (counts reconcile, no dangling foreign key,
    sequence past max(id)) always fail it; rows dropped because their parents are not in the backup
    (which Sentry's importer drops silently) fail it only when ``fail_on_dropped_rows`` is set, as a
    restore drill does."""

    fail_on_dropped_rows: bool = False


def _tally_models(
    context: dg.AssetExecutionContext,
    model_keys: Mapping[dg.AssetKey, str],
    staged_rows: Mapping[str, int],
    fail_on_dropped_rows: bool,
) -> tuple[dict[str, int], list[str], dict[str, list[str]], list[str]]:
    """Read each model asset's latest materialization of the partition: ``(totals, missing, failed,
    dropped)``, the summed row counts, the models with staged rows never materialized, the failed checks
    per model, and the models whose only failed check is dropped rows (when those do not fail)."""
    totals = dict.fromkeys(_TOTALS, 0)
    missing: list[str] = []
    failed: dict[str, list[str]] = {}
    dropped: list[str] = []
    latest = _latest_metadata(context, list(model_keys))
    for key, model in model_keys.items():
        md = latest[key]
        if md is None:
            if staged_rows.get(model):  # a model with nothing staged need not have been materialized
                missing.append(model)
            continue
        for t in _TOTALS:
            totals[t] += int(md.get(t) or 0)
        checks = [c for c in md.get("failed_checks") or () if c != DROPS_CHECK or fail_on_dropped_rows]
        if checks:
            failed[model] = checks
        elif md.get("failed_checks"):
            dropped.append(model)
    return totals, missing, failed, dropped


def _fail_if_incomplete(partition_key: str, missing: list[str], failed: Mapping[str, list[str]]) -> None:
    """Raise a non-retried failure naming the models never loaded and the failed checks, if any."""
    if not (missing or failed):
        return
    parts = []
    if missing:
        parts.append(f"models never loaded for this partition: {', '.join(missing)}")
    if failed:
        parts.append("failed checks: " + "; ".join(f"{m} ({', '.join(c)})" for m, c in failed.items()))
    raise dg.Failure(
        f"restore {partition_key} is not complete: {'; '.join(parts)} "
        "(staging kept: fix and re-materialize those models)",
        allow_retries=False,
    )


def build_restore_complete_asset(
    manifest: Manifest, model_keys: Mapping[dg.AssetKey, str], partitions_def: dg.PartitionsDefinition | None
) -> dg.AssetsDefinition:
    """``restore_complete``: depends on every model asset; totals their loads, fails when a model with
    staged rows was never materialized for the partition (a model with nothing staged may have been
    left out of a subset) or failed an ERROR check (staging is then kept for re-runs), else
    drops the staging area (unless ``staging.keep_after_restore``)."""

    def restore_complete(
        context: dg.AssetExecutionContext,
        config: RestoreCompleteConfig,
        target: PostgresTargetResource,
        import_settings: ImportSettingsResource,
        staging: StagingResource,
    ) -> dg.MaterializeResult:
        restore = open_restore(context, manifest, target, import_settings, staging)
        with engine_errors("finish"):
            staged = restore.staged_result()
        staged_rows = staged.rows_per_model if staged else {}
        totals, missing, failed, dropped = _tally_models(context, model_keys, staged_rows, config.fail_on_dropped_rows)
        unknown = ", ".join(f"{m} ({n})" for m, n in sorted((staged.unknown_models if staged else {}).items()))
        if unknown and config.fail_on_dropped_rows:
            failed["parsed_export"] = [f"{UNKNOWN_MODELS_CHECK}: {unknown}"]
        elif unknown:
            context.log.warning(f"rows of models the manifest does not know were skipped: {unknown}")
        if dropped:
            context.log.warning(
                f"rows were dropped (their parents are not in the backup, as Sentry drops them): "
                f"{', '.join(dropped)}; see each model's no_rows_dropped check"
            )
        _fail_if_incomplete(context.partition_key, missing, failed)
        with held(restore), engine_errors("finish"):  # a global import's marker goes: other imports may run
            restore.finish(keep_staging=staging.keep_after_restore)
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": totals["rows_written"] + totals["rows_merged"],
                **totals,
                "models": len(model_keys),
                "staging_dropped": not staging.keep_after_restore,
            }
        )

    return dg.asset(
        key=RESTORE_COMPLETE_KEY,
        deps=list(model_keys),
        group_name=STAGE_GROUP,
        partitions_def=partitions_def,
        kinds={"postgres"},
        description="Every model of the import loaded and verified: totals; the staging area dropped.",
    )(restore_complete)
