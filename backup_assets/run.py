"""Run the restore graph in-process for one backup: what ``backup-assets import`` calls, so the command
line and the Dagster UI share one code path (and one record: see :mod:`backup_assets.dagster_home`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from psycopg.conninfo import conninfo_to_dict

from backup_assets.assets import build_restore_graph
from backup_assets.core.decryptors import Decryptor
from backup_assets.core.manifest import Manifest
from backup_assets.core.settings import ImportSettings, check_import_id
from backup_assets.dagster_home import HOME_ENV, cli_home
from backup_assets.event_log import ephemeral_instance
from backup_assets.partitions import backups_partitions, partition_key_for_file, partitions_name
from backup_assets.resources.backup_source import BackupSourceResource
from backup_assets.resources.decryptor import DecryptorResource
from backup_assets.resources.postgres import target_resource
from backup_assets.resources.settings import ImportSettingsResource
from backup_assets.resources.staging import StagingResource
from backup_assets.translator import PARSED_EXPORT_KEY

if TYPE_CHECKING:
    from dagster._core.execution.plan.objects import StepFailureData

#: Run tag naming the target database (host:port/dbname, never credentials): ``dagster.yaml`` allows one
#: restore at a time per value.
TARGET_TAG = "backup_assets/target"
BACKUP_TAG = "backup_assets/backup"


def target_tag(dsn: str | None) -> str:
    """``host:port/dbname`` of a DSN, for the run-coordination tag; ``embedded`` when no DSN is given."""
    if not dsn:
        return "embedded"
    try:
        d = conninfo_to_dict(dsn)
    except Exception:  # noqa: BLE001 - a malformed DSN fails later, with the engine's message
        return "unknown"
    return f"{d.get('host') or 'localhost'}:{d.get('port') or 5432}/{d.get('dbname') or ''}"


@contextmanager
def cli_instance() -> Iterator[tuple[dg.DagsterInstance, bool]]:
    """The command line's instance and whether it records (see :mod:`backup_assets.dagster_home`): the
    home's, with ``$DAGSTER_HOME`` set to it for this process as Dagster's own commands have it (the
    event log ``dagster.yaml`` ships finds its folder there), else an ephemeral one (in memory, see
    :func:`backup_assets.event_log.ephemeral_instance`); closed afterwards."""
    home = cli_home()
    if home is None:
        with ephemeral_instance() as ephemeral:
            yield ephemeral, False
        return
    os.environ[HOME_ENV] = str(home)
    with dg.DagsterInstance.get() as recorded:
        yield recorded, True


def _add_partition(instance: dg.DagsterInstance, key: str) -> None:
    """Add the backup's partition to ``instance`` unless it is there already."""
    if not instance.has_dynamic_partition(partitions_name(backups_partitions), key):
        instance.add_dynamic_partitions(partitions_name(backups_partitions), [key])


def _restore_resources(
    path: Path,
    key: str,
    dsn: str | None,
    decryptor: Decryptor | None,
    staging: StagingResource | None,
    settings: ImportSettings | None,
) -> dict[str, object]:
    """The resources of a restore of the one file ``path``, pinned to the partition ``key``."""
    return {
        "target": target_resource(dsn),  # the DSN never becomes config
        "backup_source": BackupSourceResource(folder=str(path.parent), glob=path.name, pinned={key: str(path)}),
        "decryptor": dg.ResourceDefinition.hardcoded_resource(decryptor) if decryptor else DecryptorResource(),
        "staging": staging or StagingResource(),
        "import_settings": ImportSettingsResource.from_settings(settings or ImportSettings()),
    }


def materialize_restore(
    backup_path: str | os.PathLike[str],
    dsn: str | None,
    settings: ImportSettings | None = None,
    manifest: Manifest | None = None,
    import_id: str | None = None,
    decryptor: Decryptor | None = None,
    instance: dg.DagsterInstance | None = None,
    selection: dg.AssetSelection | str | list | None = None,
    *,
    raise_on_error: bool = False,
    staging: StagingResource | None = None,
    log_level: str | None = None,
) -> dg.ExecuteInProcessResult:
    """Restore ``backup_path`` into ``dsn`` by materializing the asset graph in-process, as one partition.

    ``import_id`` defaults to the file's partition key (readable stem + SHA-256 prefix); the partition is
    added to ``instance`` (default: the command line's, see :mod:`backup_assets.dagster_home`). ``decryptor``
    is handed to the stages as an object, so key material never enters run configuration. ``selection``
    restricts the run to some assets (a subset re-run of an import already staged). With
    ``raise_on_error=False`` a failed step is reported in the result (see :func:`failure_message`).
    ``log_level`` sets Dagster's console logger (the CLI passes ``CRITICAL`` and shows its own progress).
    """
    if instance is None:
        with cli_instance() as (instance, _):
            return materialize_restore(
                backup_path,
                dsn,
                settings,
                manifest,
                import_id,
                decryptor,
                instance,
                selection,
                raise_on_error=raise_on_error,
                staging=staging,
                log_level=log_level,
            )
    path = Path(backup_path).absolute()
    manifest = manifest or Manifest.load(os.environ.get("BACKUP_ASSETS_MANIFEST") or None)
    key = check_import_id(import_id) if import_id else partition_key_for_file(path)
    _add_partition(instance, key)
    resources = _restore_resources(path, key, dsn, decryptor, staging, settings)
    run_config = {"loggers": {"console": {"config": {"log_level": log_level}}}} if log_level else None
    return dg.materialize(
        build_restore_graph(manifest),
        instance=instance,
        partition_key=key,
        resources=resources,
        selection=selection,
        raise_on_error=raise_on_error,
        run_config=run_config,
        tags={TARGET_TAG: target_tag(dsn), BACKUP_TAG: path.name},
    )


#: Every asset, and of the checks only the stage's (a stage asset cannot run without its checks).
_WITHOUT_MODEL_CHECKS = dg.AssetSelection.all().without_checks() | dg.AssetSelection.checks_for_assets(
    PARSED_EXPORT_KEY
)


def restore_backup(
    backup_path: str | os.PathLike[str],
    dsn: str,
    settings: ImportSettings | None = None,
    manifest: Manifest | None = None,
    import_id: str | None = None,
    decryptor: Decryptor | None = None,
    instance: dg.DagsterInstance | None = None,
    log_level: str | None = None,
) -> dg.ExecuteInProcessResult:
    """The whole restore of one backup as one in-process run of the graph (what ``backup-assets import``
    does): the stages, the models' step, ``restore_complete``. Without an instance, the run is recorded
    in the command line's (:func:`backup_assets.dagster_home.cli_home`: ``$DAGSTER_HOME``, else the
    shared ``.dagster_home`` the demo and the UI use), else in an ephemeral instance, closed afterwards
    (it leaves no temporary folder behind), whose run leaves the models' checks out of its selection: the
    engine still verifies every model and ``restore_complete`` still fails on an ERROR check (from each
    model's ``failed_checks``), but no check evaluation is recorded in an instance nobody reads."""
    run = functools.partial(
        materialize_restore,
        backup_path,
        dsn,
        settings,
        manifest=manifest,
        import_id=import_id,
        decryptor=decryptor,
        log_level=log_level,
    )
    if instance is not None:
        return run(instance=instance)
    with cli_instance() as (instance, recorded):
        return run(instance=instance, selection=None if recorded else _WITHOUT_MODEL_CHECKS)


def _step_failures(result: dg.ExecuteInProcessResult) -> Iterator[tuple[str | None, StepFailureData]]:
    """``(step_key, failure)`` of each failed step of the run, in the order they failed."""
    for event in result.all_events:
        data = event.step_failure_data if event.is_step_failure else None
        if data is not None:
            yield event.step_key, data


def failure_message(result: dg.ExecuteInProcessResult) -> str | None:
    """One line per failed step (``step_key: message``), or None when the run succeeded."""
    if result.success:
        return None
    lines = []
    for step_key, data in _step_failures(result):
        described = data.user_failure_data.description if data.user_failure_data else None
        lines.append(f"{step_key}: {described or (data.error.message.strip() if data.error else 'failed')}")
    return "\n".join(lines) or "the restore run failed"


def failure_kind(result: dg.ExecuteInProcessResult) -> str | None:
    """The type name of the first failed step's error: the engine's error that Dagster's ``Failure`` wraps
    (its cause), else the error the step raised; None when no step failed."""
    for _step_key, data in _step_failures(result):
        error = data.error
        while error is not None and error.cls_name == "Failure" and error.cause is not None:
            error = error.cause
        if error is not None:
            return error.cls_name
    return None
