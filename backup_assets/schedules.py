"""The scheduled restore drill: restore the newest backup into a standby database, then verify it.

A backup nobody has restored is a hope, not a backup. The drill takes the newest file of the
``backup_source`` folder (by modification time), adds its partition, and runs ``restore_drill_job``
(every asset of the graph, so every asset check too) with run configuration that points the
``target`` resource at the standby database and imports with global scope, replacing what the
standby holds (``ImportSettings(scope="global", replace_existing=True)``).

The drill's proof is the round trip (``sentry_backup/round_trip``, on by default: every asset is
selected): the standby's copy is re-exported and compared with the backup as Sentry's validator does, in
bounded memory, so a large backup does not fail its drill for want of memory.

A model whose ERROR-severity check fails makes ``restore_complete`` fail (see
:mod:`backup_assets.stages`; the drill also sets its ``fail_on_dropped_rows``, so rows dropped because
their parent is missing from the backup fail the drill, where an ordinary restore only warns), so the
drill run fails and shows up red in the UI and in run-failure alerts. WARN checks (rows a filter or
the scope dropped on purpose) do not fail it.

The standby DSN is never put into run configuration: the run config names an environment variable
(``{"env": "BACKUP_ASSETS_STANDBY_DSN"}`` by default) that Dagster reads where the run executes.
Each backup is drilled once (the run key is ``drill:<partition key>``): a later drill of the same backup
into the same standby would find the import recorded there and prove nothing new.

The schedule is off by default (``DefaultScheduleStatus.STOPPED``): turn it on in the UI or with
``dagster schedule start``. Its cron comes from ``$BACKUP_ASSETS_DRILL_CRON`` when set.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dagster as dg

from backup_assets.core.errors import BackupAssetsError
from backup_assets.partitions import backups_partitions, partition_key_for_file, partitions_name
from backup_assets.resources.backup_source import BackupSourceResource
from backup_assets.run import BACKUP_TAG, TARGET_TAG, target_tag
from backup_assets.translator import RESTORE_COMPLETE_KEY
from backup_assets.verification import ROUND_TRIP_CHECK_KEY

DRILL_JOB_NAME = "restore_drill_job"
DRILL_SCHEDULE_NAME = "restore_drill_schedule"
CRON_ENV = "BACKUP_ASSETS_DRILL_CRON"
STANDBY_DSN_ENV = "BACKUP_ASSETS_STANDBY_DSN"
#: 04:00 every day.
DEFAULT_CRON = "0 4 * * *"
DRILL_TAG = "backup_assets/drill"


def drill_job(name: str = DRILL_JOB_NAME, *, round_trip_check: bool = False) -> dg.UnresolvedAssetJobDefinition:
    """Every asset (and so every check) of the graph, the round trip included, in-process, tagged as a drill.
    ``round_trip_check``: the definitions hold the restore's opt-in round-trip check, which the drill leaves
    out (its ``round_trip`` asset does the same)."""
    selection: dg.AssetSelection = dg.AssetSelection.all()
    if round_trip_check:
        selection = selection - dg.AssetSelection.checks(ROUND_TRIP_CHECK_KEY)
    return dg.define_asset_job(
        name,
        selection=selection,
        executor_def=dg.in_process_executor,
        tags={DRILL_TAG: "true"},
        description="Restore drill: the newest backup into the standby database "
        "(global replace), every check verified; fails on an ERROR check.",
    )


def drill_run_config(standby_dsn_env: str = STANDBY_DSN_ENV, create_schema: bool = True) -> dict[str, Any]:
    """Run config of a drill: the standby target (read from ``standby_dsn_env`` at run time), a global
    import that replaces the standby's data and refuses rows of models the manifest does not know
    (``strict``), and a strict ``restore_complete`` (rows dropped for a missing parent fail the drill too,
    where an ordinary restore only warns, as Sentry's import does)."""
    return {
        "resources": {
            "target": {"config": {"dsn": {"env": standby_dsn_env}}},
            "import_settings": {
                "config": {"scope": "global", "replace_existing": True, "create_schema": create_schema, "strict": True}
            },
        },
        "ops": {RESTORE_COMPLETE_KEY.to_python_identifier(): {"config": {"fail_on_dropped_rows": True}}},
    }


def newest_backup(source: BackupSourceResource) -> Path | None:
    """The most recently modified backup of the folder (ties: the last name), or None when there is none."""
    newest: tuple[int, str, Path] | None = None
    for path in source.candidate_paths():
        try:
            candidate = (path.stat().st_mtime_ns, path.name, path)
        except FileNotFoundError:
            continue
        if newest is None or candidate[:2] > newest[:2]:
            newest = candidate
    return newest[2] if newest else None


def build_restore_drill_schedule(
    cron: str | None = None,
    *,
    name: str = DRILL_SCHEDULE_NAME,
    job: dg.UnresolvedAssetJobDefinition | str = DRILL_JOB_NAME,
    standby_dsn_env: str = STANDBY_DSN_ENV,
    create_schema: bool = True,
    execution_timezone: str | None = None,
    partitions_def: dg.DynamicPartitionsDefinition = backups_partitions,
    default_status: dg.DefaultScheduleStatus = dg.DefaultScheduleStatus.STOPPED,
) -> dg.ScheduleDefinition:
    """The drill schedule (see the module doc). ``cron``: explicit, else ``$BACKUP_ASSETS_DRILL_CRON``,
    else 04:00 daily. ``job`` must select every asset of the graph (default: :func:`drill_job`'s name)."""
    cron = cron or os.environ.get(CRON_ENV) or DEFAULT_CRON
    job_kwargs = {"job_name": job} if isinstance(job, str) else {"job": job}

    @dg.schedule(
        name=name,
        cron_schedule=cron,
        execution_timezone=execution_timezone,
        default_status=default_status,
        **job_kwargs,
        description=f"Restore drill ({cron}): the newest backup into the standby database "
        f"(${standby_dsn_env}), global replace, every check; fails on an ERROR check.",
    )
    def _schedule(
        context: dg.ScheduleEvaluationContext, backup_source: BackupSourceResource
    ) -> dg.RunRequest | dg.SkipReason:
        try:
            path = newest_backup(backup_source)
            if path is None:
                return dg.SkipReason(f"no backup in {backup_source.folder} matching {backup_source.glob}")
            key = partition_key_for_file(path)
        except (BackupAssetsError, OSError) as e:
            return dg.SkipReason(f"backup folder unreadable: {e}")
        if not context.instance.has_dynamic_partition(partitions_name(partitions_def), key):
            context.instance.add_dynamic_partitions(partitions_name(partitions_def), [key])
        return dg.RunRequest(
            run_key=f"drill:{key}",
            partition_key=key,
            run_config=drill_run_config(standby_dsn_env, create_schema),
            tags={
                DRILL_TAG: "true",
                BACKUP_TAG: path.name,
                TARGET_TAG: target_tag(os.environ.get(standby_dsn_env))
                if os.environ.get(standby_dsn_env)
                else f"${standby_dsn_env}",
            },
        )

    return _schedule
