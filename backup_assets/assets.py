"""The asset factory: one Dagster asset per relocatable model of a manifest, plus the stages around them.

``build_restore_assets`` makes the model assets only (for custom graphs); ``build_restore_graph``
adds the stage assets before them and ``restore_complete`` after them, which is what
``definitions.py`` and ``run.py`` use. Each model asset is its own step, with:

* a ``RetryPolicy`` (exponential backoff with jitter) that only transient database errors reach;
  data and configuration errors fail at once (see :mod:`backup_assets.execution`);
* the concurrency pool ``sentry_target`` (limit it in ``dagster.yaml``: ``concurrency: pools:``);
* the engine's asset checks, evaluated in the same step: ``counts_reconcile`` (read = written +
  merged + dropped), ``no_dangling_fk`` (every foreign key of an imported row resolves),
  ``sequence_past_max`` (the id sequence is past max(id)) and ``no_rows_dropped``. A failed check is
  an ERROR, except rows dropped by a filter or the scope, which the engine reports as a WARN.

A model asset whose import is no longer staged (``restore_complete`` dropped the staging, a failed
run was cleaned up, or a server crash emptied the UNLOGGED staging table, which is then dropped
first) stages the backup again from the ``backup_source`` and ``decryptor`` resources, then loads:
a subset or a backfill of models never loaded for an already finished partition works. Staging is
idempotent per import (the same backup gives the same staged rows) and loads already recorded are
never repeated. The re-created staging stays until ``restore_complete`` is materialized again, which drops it.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

from backup_assets.core.decryptors import Decryptor
from backup_assets.core.errors import StagingMissingError
from backup_assets.core.manifest import Manifest
from backup_assets.core.restore import Restore
from backup_assets.core.settings import CheckOutcome, LoadResult
from backup_assets.core.verify import CHECKS as ENGINE_CHECKS
from backup_assets.execution import Stopwatch, engine_errors, open_restore
from backup_assets.partitions import backups_partitions
from backup_assets.settings_resource import ImportSettingsResource
from backup_assets.stages import build_restore_complete_asset, build_stage_assets, open_run_backup
from backup_assets.translator import MODEL_METADATA_KEY, SentryRestoreTranslator, default_model_key
from resources.backup_source import BackupSourceResource
from resources.decryptor import DecryptorResource
from resources.postgres import PostgresTargetResource
from resources.staging import StagingResource

_CHECK_DESCRIPTIONS: Mapping[str, str] = {
    "counts_reconcile": "Rows read from the backup = rows written + rows merged + rows dropped, and the "
                        "written rows are in the table.",
    "no_dangling_fk": "No foreign key of a row this import wrote points at a missing row.",
    "sequence_past_max": "The table's id sequence is past max(id), so the next insert cannot collide.",
    "no_rows_dropped": "Every row was imported (a warning when the only drops are those a filter or the "
                       "scope asked for).",
}
#: The checks of every model asset (the engine's, in its order) -> description.
CHECKS: Mapping[str, str] = {name: _CHECK_DESCRIPTIONS.get(name, name.replace("_", " ")) for name in ENGINE_CHECKS}

#: Concurrency pool of every model asset (one target database).
DEFAULT_POOL = "sentry_target"
#: Three retries, 2 s, 4 s, 8 s apart (plus or minus jitter), for transient database errors only.
DEFAULT_RETRY_POLICY = dg.RetryPolicy(max_retries=3, delay=2, backoff=dg.Backoff.EXPONENTIAL,
                                      jitter=dg.Jitter.PLUS_MINUS)
#: Dropped/renamed rows shown in a materialization's preview tables.
PREVIEW_ROWS = 20


# -- metadata ---------------------------------------------------------------------------------------
def _preview(rows: Sequence[Mapping[str, Any]]) -> dg.TableMetadataValue:
    columns = list(dict.fromkeys(k for r in rows[:PREVIEW_ROWS] for k in r))
    return dg.MetadataValue.table(
        records=[dg.TableRecord({c: ("" if r.get(c) is None else str(r.get(c))) for c in columns})
                 for r in rows[:PREVIEW_ROWS]],
        schema=dg.TableSchema(columns=[dg.TableColumn(c, "string") for c in columns]))


def load_metadata(result: LoadResult) -> dict[str, Any]:
    """Materialization metadata of one model's load."""
    md: dict[str, Any] = {
        "dagster/row_count": result.rows_written + result.rows_merged,
        "rows_read": result.rows_read,
        "rows_written": result.rows_written,
        "rows_overwritten": result.rows_overwritten,
        "rows_merged": result.rows_merged,
        "rows_dropped": result.rows_dropped,
        "rows_dropped_by_filter": result.dropped_by_filter,
        "dropped_by_reason": dg.MetadataValue.json(dict(sorted(result.dropped.items()))),
        "rows_renamed": len(result.renamed),
        "duration_s": dg.MetadataValue.float(round(result.seconds, 4)),
        "rows_per_s": dg.MetadataValue.float(round(result.rows_read / result.seconds, 1) if result.seconds else 0.0),
        "already_loaded": result.already_loaded,
    }
    if result.new_id_min is not None:
        md["new_id_min"] = result.new_id_min
        md["new_id_max"] = result.new_id_max
        md["new_id_range"] = f"{result.new_id_min}..{result.new_id_max}"
    if result.resets:
        md["fields_reset"] = dg.MetadataValue.json(dict(sorted(result.resets.items())))
    if result.skipped_fields:
        md["skipped_fields"] = dg.MetadataValue.json(sorted(result.skipped_fields))
    if result.dropped_sample:
        md["dropped_rows_preview"] = _preview(result.dropped_sample)
    if result.renamed:
        md["renamed_rows_preview"] = _preview(result.renamed)
    return md


def check_results(key: dg.AssetKey, outcomes: Sequence[CheckOutcome]) -> list[dg.AssetCheckResult]:
    """One result per declared check. A check the engine did not report fails (it was not verified)."""
    by_name = {o.name: o for o in outcomes}
    unknown = sorted(set(by_name) - set(CHECKS))
    if unknown:
        raise dg.Failure(f"{key.to_user_string()}: the engine reported undeclared checks {unknown}", allow_retries=False)
    results = []
    for name in CHECKS:
        o = by_name.get(name)
        if o is None:
            results.append(dg.AssetCheckResult(check_name=name, asset_key=key, passed=False,
                                               description="not verified: the engine reported no outcome"))
            continue
        results.append(dg.AssetCheckResult(
            check_name=name, asset_key=key, passed=o.passed, description=o.description,
            severity=dg.AssetCheckSeverity.WARN if o.severity == "WARN" else dg.AssetCheckSeverity.ERROR,
            metadata=o.metadata))
    return results


# -- the factory ------------------------------------------------------------------------------------
def _remap_deps(spec: dg.AssetSpec, keys: Mapping[dg.AssetKey, dg.AssetKey | None]) -> dg.AssetSpec:
    """Point dependencies on default model keys at the keys the translator chose; drop those on models
    without an asset; keep every other dependency."""
    deps = []
    for dep in spec.deps:
        if dep.asset_key in keys:
            target = keys[dep.asset_key]
            if target is not None and target != spec.key:
                deps.append(dg.AssetDep(target, partition_mapping=dep.partition_mapping))
        else:
            deps.append(dep)
    return spec.replace_attributes(deps=deps)


def model_asset_specs(manifest: Manifest, translator: SentryRestoreTranslator | None = None
                      ) -> dict[str, dg.AssetSpec]:
    """Model name -> final asset spec, for every relocatable model, in dependency order."""
    translator = translator or SentryRestoreTranslator()
    relocatable = manifest.relocatable()
    raw = {m: translator.get_asset_spec(manifest[m]) for m in relocatable}
    # models without an asset: Excluded ones, and FK targets the manifest lacks (Sentry's group, for one)
    without = {*manifest.models, *(d for r in relocatable for d in manifest[r].dependencies)}
    keys: dict[dg.AssetKey, dg.AssetKey | None] = {default_model_key(m): None for m in without}
    keys.update({default_model_key(m): raw[m].key for m in relocatable})
    specs = {m: _remap_deps(raw[m], keys) for m in relocatable}
    seen: dict[dg.AssetKey, str] = {}
    for m, spec in specs.items():
        if spec.key in seen:
            raise dg.DagsterInvalidDefinitionError(
                f"the translator gave models {seen[spec.key]} and {m} the same asset key {spec.key.to_user_string()}")
        seen[spec.key] = m
    return specs


def _build_model_asset(model: str, spec: dg.AssetSpec, manifest: Manifest,
                       partitions_def: dg.PartitionsDefinition | None, retry_policy: dg.RetryPolicy | None,
                       pool: str | None) -> dg.AssetsDefinition:
    key = spec.key

    @dg.multi_asset(
        name=key.to_python_identifier(),
        specs=[spec.replace_attributes(metadata={**spec.metadata, MODEL_METADATA_KEY: model},
                                       partitions_def=partitions_def)],
        check_specs=[dg.AssetCheckSpec(name, asset=key, description=desc) for name, desc in CHECKS.items()],
        retry_policy=retry_policy,
        pool=pool,
        op_tags={"sentry/model": model},
    )
    def _load(context: dg.AssetExecutionContext, target: PostgresTargetResource,
              import_settings: ImportSettingsResource, staging: StagingResource,
              backup_source: BackupSourceResource, decryptor: DecryptorResource) -> dg.MaterializeResult:
        restore = open_restore(context, manifest, target, import_settings, staging)
        restaged = False
        with engine_errors(model):
            if model not in restore.plan():
                return _not_in_plan(key, restore.settings.scope)
            try:
                result = restore.load_model(model)
            except StagingMissingError:
                restage(context, restore, backup_source, decryptor, model)
                restaged = True
                result = restore.load_model(model)
            outcomes = restore.verify_model(model)
        metadata = load_metadata(result)
        metadata["attempt"] = context.retry_number + 1
        metadata["restaged"] = restaged
        checks = check_results(key, outcomes)
        metadata["failed_checks"] = dg.MetadataValue.json(
            [r.check_name for r in checks if not r.passed and r.severity == dg.AssetCheckSeverity.ERROR])
        context.log.info(f"{model}: read {result.rows_read}, wrote {result.rows_written}, merged "
                         f"{result.rows_merged}, dropped {result.rows_dropped} in {result.seconds:.2f}s")
        return dg.MaterializeResult(metadata=metadata, check_results=checks)

    return _load


def restage(context: dg.AssetExecutionContext, restore: Restore, source: BackupSourceResource,
            decryptor: DecryptorResource | Decryptor, model: str) -> None:
    """Stage the run's backup again (its staging is gone) and prepare the import (idempotent)."""
    with engine_errors(f"{model}: re-staging"):
        backup = open_run_backup(context, source, decryptor)
        with Stopwatch() as sw:
            staged = restore.stage(backup, if_missing=True)  # once, if several steps find it gone
            restore.prepare()
    context.log.warning(f"{model}: the staging of import {restore.import_id} was gone; staged the backup again "
                        f"({staged.rows} rows in {sw.seconds:.2f}s). It is dropped when restore_complete "
                        "is materialized.")


def _not_in_plan(key: dg.AssetKey, scope: str) -> dg.MaterializeResult:
    """A model this import's scope does not cover: nothing is written, and there is nothing to verify."""
    note = f"not part of a {scope!r} import: nothing loaded"
    return dg.MaterializeResult(
        metadata={"dagster/row_count": 0, "rows_read": 0, "rows_written": 0, "skipped": note,
                  "failed_checks": dg.MetadataValue.json([])},
        check_results=[dg.AssetCheckResult(check_name=name, asset_key=key, passed=True, description=note)
                       for name in CHECKS])


def build_restore_assets(manifest: Manifest, translator: SentryRestoreTranslator | None = None,
                         partitions_def: dg.PartitionsDefinition | None = backups_partitions,
                         retry_policy: dg.RetryPolicy | None = DEFAULT_RETRY_POLICY,
                         pool: str | None = DEFAULT_POOL) -> list[dg.AssetsDefinition]:
    """One asset per relocatable model of ``manifest``, in dependency order.

    Required resources: ``target`` (:class:`~resources.postgres.PostgresTargetResource`),
    ``import_settings`` (:class:`~backup_assets.settings_resource.ImportSettingsResource`),
    ``staging`` (:class:`~resources.staging.StagingResource`), and ``backup_source`` /
    ``decryptor`` (used only to stage the backup again when its staging is gone).
    """
    return [_build_model_asset(m, spec, manifest, partitions_def, retry_policy, pool)
            for m, spec in model_asset_specs(manifest, translator).items()]


def build_restore_graph(manifest: Manifest, translator: SentryRestoreTranslator | None = None,
                        partitions_def: dg.PartitionsDefinition | None = backups_partitions,
                        retry_policy: dg.RetryPolicy | None = DEFAULT_RETRY_POLICY,
                        pool: str | None = DEFAULT_POOL) -> list[dg.AssetsDefinition]:
    """The whole graph of one import: the stage assets, one asset per model, and ``restore_complete``."""
    models = build_restore_assets(manifest, translator, partitions_def, retry_policy, pool)
    model_keys = {a.key: a.metadata_by_key[a.key][MODEL_METADATA_KEY] for a in models}
    return [*build_stage_assets(manifest, partitions_def), *models,
            build_restore_complete_asset(manifest, model_keys, partitions_def)]
