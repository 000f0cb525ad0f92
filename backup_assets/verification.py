"""Proof of a restore, and its undo, as Dagster definitions.

* ``sentry_backup/round_trip`` — re-exports what the partition's import wrote and compares it with the
  backup as Sentry's validator does (``core/roundtrip.py``: both read together, in bounded memory); the
  findings are attached to the materialization and a check fails (ERROR) when there are any. It is not
  part of the restore job: ``verify_restore_job`` and the drill run it (on by default in the drill).
* the check ``round_trip`` of ``sentry_backup/restore_complete`` — the same comparison as an asset check
  of every restore; opt-in (``build_definitions(round_trip_check=True)``, the component's
  ``round_trip_check``), off by default.
* ``rollback_import_job`` — removes everything an import inserted and puts overwritten rows back
  (``core/rollback.py``), for the import id given in its config.
"""

import warnings
from typing import Any

import dagster as dg

from backup_assets.core.findings import Finding
from backup_assets.core.manifest import Manifest
from backup_assets.core.rollback import rollback
from backup_assets.core.roundtrip import verify_round_trip
from backup_assets.execution import engine_errors, import_id_of
from backup_assets.partitions import backups_partitions
from backup_assets.resources.backup_source import BackupSourceResource
from backup_assets.resources.decryptor import DecryptorResource
from backup_assets.resources.postgres import PostgresTargetResource
from backup_assets.stages import STAGE_GROUP, open_run_backup
from backup_assets.translator import RESTORE_COMPLETE_KEY, STAGE_PREFIX

ROUND_TRIP_KEY = dg.AssetKey([STAGE_PREFIX, "round_trip"])
#: The opt-in check of the restore: the round trip, run after ``restore_complete``.
ROUND_TRIP_CHECK_KEY = dg.AssetCheckKey(RESTORE_COMPLETE_KEY, "round_trip")
FINDINGS_SHOWN = 50


def _round_trip(
    context: Any,
    backup_source: BackupSourceResource,
    decryptor: DecryptorResource,
    target: PostgresTargetResource,
    manifest: Manifest,
) -> list[Finding]:
    """The findings of the run's partition: its backup against a re-export of what its import wrote."""
    backup = open_run_backup(context, backup_source, decryptor)
    with engine_errors("round trip"):
        return verify_round_trip(target.resolved_dsn(), backup, manifest, import_id_of(context))


def findings_metadata(findings: list[Finding]) -> dict[str, Any]:
    """How many findings, how many of each kind, and the first :data:`FINDINGS_SHOWN` of them."""
    by_kind: dict[str, int] = {}
    for f in findings:
        by_kind[f.kind_name] = by_kind.get(f.kind_name, 0) + 1
    return {
        "findings": len(findings),
        "findings_by_kind": dg.MetadataValue.json(by_kind),
        "first_findings": dg.MetadataValue.json([f.to_json() for f in findings[:FINDINGS_SHOWN]]),
    }


def build_round_trip_asset(
    manifest: Manifest, partitions_def: dg.PartitionsDefinition | None = backups_partitions
) -> dg.AssetsDefinition:
    """``sentry_backup/round_trip`` for ``manifest``, with its check ``round_trip_clean`` (see the module doc)."""

    @dg.asset(
        key=ROUND_TRIP_KEY,
        deps=[RESTORE_COMPLETE_KEY],
        group_name=STAGE_GROUP,
        partitions_def=partitions_def,
        kinds={"postgres"},
        check_specs=[
            dg.AssetCheckSpec("round_trip_clean", asset=ROUND_TRIP_KEY, description="The re-export equals the backup.")
        ],
        description="Re-export what this import wrote and compare it with the backup, as Sentry's "
        "validator does; the findings are attached.",
    )
    def round_trip(
        context: dg.AssetExecutionContext,
        backup_source: BackupSourceResource,
        decryptor: DecryptorResource,
        target: PostgresTargetResource,
    ) -> dg.MaterializeResult:
        findings = _round_trip(context, backup_source, decryptor, target, manifest)
        return dg.MaterializeResult(
            metadata=findings_metadata(findings),
            check_results=[
                dg.AssetCheckResult(
                    check_name="round_trip_clean",
                    passed=not findings,
                    severity=dg.AssetCheckSeverity.ERROR,
                    description=f"{len(findings)} differences between the backup and the re-export",
                    metadata={"findings": len(findings)},
                )
            ],
        )

    return round_trip


def build_round_trip_check(
    manifest: Manifest, partitions_def: dg.PartitionsDefinition | None = backups_partitions
) -> dg.AssetChecksDefinition:
    """The opt-in check ``round_trip`` of ``restore_complete`` (see the module doc): ERROR when the re-export
    of the import differs from the backup, the findings attached as with the asset."""

    def round_trip(
        context: dg.AssetCheckExecutionContext,
        backup_source: BackupSourceResource,
        decryptor: DecryptorResource,
        target: PostgresTargetResource,
    ) -> dg.AssetCheckResult:
        findings = _round_trip(context, backup_source, decryptor, target, manifest)
        return dg.AssetCheckResult(
            passed=not findings,
            severity=dg.AssetCheckSeverity.ERROR,
            description=f"{len(findings)} differences between the backup and the re-export",
            metadata=findings_metadata(findings),
        )

    with warnings.catch_warnings():  # partitioned checks are a "preview" of Dagster's; a restore's check needs one
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.asset_check(
            asset=RESTORE_COMPLETE_KEY,
            name=ROUND_TRIP_CHECK_KEY.name,
            partitions_def=partitions_def,
            description="Opt-in round trip: re-export what this import wrote and compare it with "
            "the backup, as Sentry's validator does.",
        )(round_trip)


def verify_job() -> "dg.UnresolvedAssetJobDefinition":
    """``verify_restore_job``: the round trip of one partition, in-process."""
    return dg.define_asset_job(
        "verify_restore_job",
        selection=dg.AssetSelection.assets(ROUND_TRIP_KEY),
        executor_def=dg.in_process_executor,
        description="Re-export a restored backup (a partition) and compare it with the backup.",
    )


class RollbackConfig(dg.Config):
    import_id: str  #: the import to undo (a partition key, or the id `backup-assets import` printed)


def build_rollback_job(manifest: Manifest) -> dg.JobDefinition:
    @dg.op(description="Remove what the import inserted, restore what it overwrote; twice is harmless.")
    def rollback_import(
        context: dg.OpExecutionContext, config: RollbackConfig, target: PostgresTargetResource
    ) -> dg.Output:
        with engine_errors("rollback"):
            result = rollback(target.resolved_dsn(), config.import_id, manifest)
        context.log.info(
            f"rolled back import {config.import_id}: deleted {sum(result.deleted.values())} rows, "
            f"restored {sum(result.restored.values())}"
            + (" (nothing left to undo)" if result.already_rolled_back else "")
        )
        return dg.Output(
            None, metadata={"import_id": config.import_id, "result": dg.MetadataValue.json(result.to_json())}
        )

    @dg.job(
        name="rollback_import_job",
        executor_def=dg.in_process_executor,
        description="Undo one import: the rows it inserted go, the config rows it overwrote come back.",
    )
    def rollback_import_job() -> None:
        rollback_import()

    return rollback_import_job
