"""The asset factory: one Dagster asset per relocatable model of a manifest, plus the stages around them.

As dagster-dbt's ``@dbt_assets`` and dagster-sling's ``@sling_assets`` do, the models are ONE
subsettable multi-asset (:func:`build_models_asset`): one ``AssetSpec`` per model (the translator's
keys, groups, FK deps, kinds and metadata) with its four checks, and one step that loads the selected
models with the engine's scheduler (:mod:`backup_assets.core.scheduler`): in dependency order,
independent models at once on their own connections (two by default; ``ModelsConfig.workers``). Each
model's ``MaterializeResult`` and checks are yielded as soon as it is loaded and verified. A Dagster step
costs about 0.3 s of orchestration, more than most model loads: one step for all models is what lets
the user's paths (UI, sensor, backfill, CLI) run at the engine's speed.

``build_restore_graph`` adds the stage assets before the models and ``restore_complete`` after them,
which is what ``definitions.py`` and ``run.py`` use. The step has:

* retries that follow the FK graph: a transient database error rolls one model's load back and loads
  it again inside the step (the numbers of the step's ``RetryPolicy``: exponential backoff, jitter);
  a model that still fails does not stop the models that do not depend on it, its dependents are not
  attempted, and the step then fails naming every failed model with its error (allowing the step's
  ``RetryPolicy`` only when a transient error was the cause). Data and configuration errors are never
  retried (see :mod:`backup_assets.execution`). A retry, a re-execution from failure or a second run
  writes nothing twice: a model already recorded as loaded yields its recorded result
  (``already_loaded``);
* the concurrency pool ``sentry_target`` (limit it in ``dagster.yaml``: ``concurrency: pools:``);
* the engine's asset checks, evaluated in the same step: ``counts_reconcile`` (read = written +
  merged + dropped), ``no_dangling_fk`` (every foreign key of an imported row resolves),
  ``sequence_past_max`` (the id sequence is past max(id)) and ``no_rows_dropped``. A failed check is
  an ERROR, except rows dropped by a filter or the scope, which the engine reports as a WARN.

A subset (a UI selection, a backfill of some models) loads only the selected models, through the
persisted pk maps of parents loaded before; a selected model whose parents were never loaded for the
partition fails naming them. When the import is no longer staged (``restore_complete`` dropped the
staging, a failed run was cleaned up, or a server crash emptied the UNLOGGED staging table), the step
stages the backup again from the ``backup_source`` and ``decryptor`` resources, once, then loads. The
re-created staging stays until ``restore_complete`` is materialized again, which drops it.
"""

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import dagster as dg
from pydantic import Field

from backup_assets.core.decryptors import Decryptor
from backup_assets.core.manifest import Manifest
from backup_assets.core.restore import Restore
from backup_assets.core.results import CheckOutcome, LoadResult
from backup_assets.core.retry import NO_RETRIES, RetryPlan, one_line, operational
from backup_assets.core.scheduler import ModelOutcome, load_models
from backup_assets.core.verify import CHECKS as ENGINE_CHECKS
from backup_assets.execution import Stopwatch, engine_errors, failure, held, open_restore
from backup_assets.partitions import backups_partitions
from backup_assets.resources.backup_source import BackupSourceResource
from backup_assets.resources.decryptor import DecryptorResource
from backup_assets.resources.postgres import PostgresTargetResource
from backup_assets.resources.settings import ImportSettingsResource
from backup_assets.resources.staging import StagingResource
from backup_assets.stages import build_restore_complete_asset, build_stage_assets, open_run_backup
from backup_assets.translator import MODEL_METADATA_KEY, SentryRestoreTranslator, default_model_key

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
DEFAULT_RETRY_POLICY = dg.RetryPolicy(
    max_retries=3, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)
#: Dropped/renamed rows shown in a materialization's preview tables.
PREVIEW_ROWS = 20


# -- metadata ---------------------------------------------------------------------------------------
def _preview(rows: Sequence[Mapping[str, Any]]) -> dg.TableMetadataValue:
    columns = list(dict.fromkeys(k for r in rows[:PREVIEW_ROWS] for k in r))
    return dg.MetadataValue.table(
        records=[
            dg.TableRecord({c: ("" if r.get(c) is None else str(r.get(c))) for c in columns})
            for r in rows[:PREVIEW_ROWS]
        ],
        schema=dg.TableSchema(columns=[dg.TableColumn(c, "string") for c in columns]),
    )


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
        raise dg.Failure(
            f"{key.to_user_string()}: the engine reported undeclared checks {unknown}", allow_retries=False
        )
    results = []
    for name in CHECKS:
        o = by_name.get(name)
        if o is None:
            results.append(
                dg.AssetCheckResult(
                    check_name=name,
                    asset_key=key,
                    passed=False,
                    description="not verified: the engine reported no outcome",
                )
            )
            continue
        results.append(
            dg.AssetCheckResult(
                check_name=name,
                asset_key=key,
                passed=o.passed,
                description=o.description,
                severity=dg.AssetCheckSeverity.WARN if o.severity == "WARN" else dg.AssetCheckSeverity.ERROR,
                metadata=o.metadata,
            )
        )
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


def model_asset_specs(manifest: Manifest, translator: SentryRestoreTranslator | None = None) -> dict[str, dg.AssetSpec]:
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
                f"the translator gave models {seen[spec.key]} and {m} the same asset key {spec.key.to_user_string()}"
            )
        seen[spec.key] = m
    return specs


MODELS_STEP = "sentry_models"


class ModelsConfig(dg.Config):
    """How the models' step loads."""

    workers: int = Field(
        default=0,
        ge=0,
        description="Models loaded at once, each on its own connection "
        "(0: the factory's default, two on a multi-core machine).",
    )


def retry_plan(policy: dg.RetryPolicy | None) -> RetryPlan:
    """The in-step retries of one model's load: the numbers of the step's ``RetryPolicy``."""
    if policy is None:
        return NO_RETRIES
    return RetryPlan(
        max_retries=policy.max_retries,
        delay=float(policy.delay or 0),
        backoff=2.0 if policy.backoff == dg.Backoff.EXPONENTIAL else 1.0,
        jitter=0.5 if policy.jitter is not None else 0.0,
    )


#: What the models' step yields for one model: its materialization, then its check results.
ModelEvents = list[dg.MaterializeResult | dg.AssetCheckResult]


def _model_result(context: dg.AssetExecutionContext, key: dg.AssetKey, outcome: ModelOutcome) -> ModelEvents:
    """The model's materialization, then each selected check's result as an event of its own: Dagster
    looks up the checked materialization once per check result so yielded (twice per result embedded in
    the ``MaterializeResult``)."""
    result = outcome.result
    assert result is not None
    metadata = load_metadata(result)
    metadata["attempt"] = outcome.attempts
    metadata["step_attempt"] = context.retry_number + 1
    metadata["restaged"] = outcome.restaged
    checks = check_results(key, outcome.checks)
    metadata["failed_checks"] = dg.MetadataValue.json(
        [r.check_name for r in checks if not r.passed and r.severity == dg.AssetCheckSeverity.ERROR]
    )
    selected = context.selected_asset_check_keys  # a run may leave the checks out; failed_checks still says
    return [
        dg.MaterializeResult(asset_key=key, metadata=metadata),
        *(r for r in checks if r.check_name and dg.AssetCheckKey(key, r.check_name) in selected),
    ]


def _models_failure(outcomes: Sequence[ModelOutcome], retried: dict[str, int]) -> dg.Failure:
    """One failure naming every failed model (with its own error) and the models left out because of them."""
    failed = [(o.model, failure(o.model, o.error, retried.get(o.model, 0))) for o in outcomes if o.error]
    blocked = [o for o in outcomes if o.blocked_by]
    lines = [f"{len(failed)} model(s) failed:", *(f"  {f.description}" for _, f in failed)]
    if blocked:
        lines.append(
            "not attempted, their parents failed: "
            + ", ".join(f"{o.model} (needs {', '.join(o.blocked_by)})" for o in blocked)
        )
    return dg.Failure(
        description="\n".join(lines),
        allow_retries=any(f.allow_retries for _, f in failed),
        metadata={
            "failed_models": dg.MetadataValue.json([m for m, _ in failed]),
            "not_attempted": dg.MetadataValue.json([o.model for o in blocked]),
        },
    )


class _InOrder:
    """Releases the step's results so that no model comes before a model of the step it depends on (Dagster
    requires a multi-asset's outputs in topological order): a result is held until every parent of its
    model in the step has settled (its result released, or failed, or not attempted)."""

    def __init__(self, manifest: Manifest, models: Sequence[str]) -> None:
        selected = set(models)
        self.parents = {m: {d for d in manifest[m].dependencies if d in selected and d != m} for m in models}
        self.settled: set[str] = set()
        self.held: dict[str, ModelEvents] = {}

    def add(self, model: str, events: ModelEvents) -> ModelEvents:
        """``events`` of ``model`` (none: it failed or was not attempted); returns what may be yielded now."""
        self.held[model] = events
        out: ModelEvents = []
        while ready := [m for m in self.held if self.parents[m] <= self.settled]:
            for m in ready:
                self.settled.add(m)
                out += self.held.pop(m)
        return out


def _skipped(restore: Restore, models: Mapping[str, dg.AssetKey], plan: set[str]) -> dict[str, str]:
    """The models of ``models`` with nothing to load, and why: outside the scope, or no row staged."""
    staged = restore.staged_result()  # None when not staged (yet): then every model is loaded (or re-staged)
    out = {m: f"not part of a {restore.settings.scope!r} import: nothing loaded" for m in models if m not in plan}
    if staged is not None:
        out.update(
            {
                m: "no row of this model in the backup: nothing loaded"
                for m in models
                if m in plan and not staged.rows_per_model.get(m)
            }
        )
    return out


def load_selected(
    context: dg.AssetExecutionContext,
    restore: Restore,
    models: Mapping[str, dg.AssetKey],
    workers: int | None,
    retry: RetryPlan,
    restage_with: tuple[BackupSourceResource, DecryptorResource | Decryptor],
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """Load ``models`` (name -> key, dependency order) with the engine's scheduler, yielding each model's
    materialization and checks as soon as it is loaded and verified; then fail naming every failed model."""
    with engine_errors("plan"):
        skipped = _skipped(restore, models, set(restore.plan()))
    if skipped:
        context.log.info(f"nothing to load for {len(skipped)} model(s): {', '.join(skipped)}")
    in_order = _InOrder(restore.manifest, list(models))
    for model, note in skipped.items():
        yield from in_order.add(model, [_nothing_to_load(models[model], note)])
    retried: dict[str, int] = {}

    def on_retry(model: str, n: int, pause: float, e: BaseException) -> None:
        retried[model] = n
        cause = operational(e) or e
        context.log.warning(
            f"{model}: transient database error, loaded again in {pause:.1f}s (retry {n} of "
            f"{retry.max_retries}): {type(cause).__name__}: {one_line(cause)}"
        )

    problems: list[ModelOutcome] = []
    with engine_errors("models"):
        for outcome in load_models(
            restore,
            [m for m in models if m not in skipped],
            workers=workers,
            retry=retry,
            restage=lambda m: restage(context, restore, *restage_with, m),
            on_retry=on_retry,
        ):
            if not outcome.loaded:
                problems.append(outcome)
            yield from in_order.add(
                outcome.model, _model_result(context, models[outcome.model], outcome) if outcome.loaded else []
            )
    if problems:
        raise _models_failure(problems, retried)


def build_models_asset(
    manifest: Manifest,
    translator: SentryRestoreTranslator | None = None,
    partitions_def: dg.PartitionsDefinition | None = backups_partitions,
    retry_policy: dg.RetryPolicy | None = DEFAULT_RETRY_POLICY,
    pool: str | None = DEFAULT_POOL,
    workers: int | None = None,
    name: str = MODELS_STEP,
) -> dg.AssetsDefinition:
    """Every relocatable model of ``manifest`` as one subsettable multi-asset: one asset (with its four
    checks) per model, one step that loads the selected models with the engine's scheduler.

    Required resources: ``target`` (:class:`~backup_assets.resources.postgres.PostgresTargetResource`),
    ``import_settings`` (:class:`~backup_assets.resources.settings.ImportSettingsResource`),
    ``staging`` (:class:`~backup_assets.resources.staging.StagingResource`), and ``backup_source`` /
    ``decryptor`` (used only to stage the backup again when its staging is gone).
    """
    specs = model_asset_specs(manifest, translator)
    keys = {m: spec.key for m, spec in specs.items()}
    retry = retry_plan(retry_policy)

    @dg.multi_asset(
        name=name,
        specs=[
            spec.replace_attributes(metadata={**spec.metadata, MODEL_METADATA_KEY: m}, partitions_def=partitions_def)
            for m, spec in specs.items()
        ],
        check_specs=[dg.AssetCheckSpec(c, asset=k, description=d) for k in keys.values() for c, d in CHECKS.items()],
        can_subset=True,
        retry_policy=retry_policy,
        pool=pool,
        description="Loads the selected Sentry models in dependency order, independent ones at once.",
    )
    def _models(
        context: dg.AssetExecutionContext,
        config: ModelsConfig,
        target: PostgresTargetResource,
        import_settings: ImportSettingsResource,
        staging: StagingResource,
        backup_source: BackupSourceResource,
        decryptor: DecryptorResource,
    ) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        restore = open_restore(context, manifest, target, import_settings, staging)
        selected = {m: k for m, k in keys.items() if k in context.selected_asset_keys}
        with held(restore):
            yield from load_selected(
                context, restore, selected, config.workers or workers, retry, (backup_source, decryptor)
            )

    return _models


def restage(
    context: dg.AssetExecutionContext,
    restore: Restore,
    source: BackupSourceResource,
    decryptor: DecryptorResource | Decryptor,
    model: str,
) -> None:
    """Stage the run's backup again (its staging is gone) and prepare the import (idempotent)."""
    with engine_errors(f"{model}: re-staging"):
        backup = open_run_backup(context, source, decryptor)
        with Stopwatch() as sw:
            staged = restore.stage(backup, if_missing=True)  # once, if several steps find it gone
            restore.prepare()
    context.log.warning(
        f"{model}: the staging of import {restore.import_id} was gone; staged the backup again "
        f"({staged.rows} rows in {sw.seconds:.2f}s). It is dropped when restore_complete "
        "is materialized."
    )


def _nothing_to_load(key: dg.AssetKey, note: str) -> dg.MaterializeResult:
    """A model with nothing to load (outside the import's scope, or no row of it in the backup): recorded
    as materialized with no rows, so ``restore_complete`` runs in the same run, without check results
    (there is nothing to verify; a check result costs Dagster an event and a query)."""
    return dg.MaterializeResult(
        asset_key=key,
        metadata={
            "dagster/row_count": 0,
            "rows_read": 0,
            "rows_written": 0,
            "skipped": note,
            "failed_checks": dg.MetadataValue.json([]),
        },
    )


def build_restore_assets(
    manifest: Manifest,
    translator: SentryRestoreTranslator | None = None,
    partitions_def: dg.PartitionsDefinition | None = backups_partitions,
    retry_policy: dg.RetryPolicy | None = DEFAULT_RETRY_POLICY,
    pool: str | None = DEFAULT_POOL,
    workers: int | None = None,
) -> list[dg.AssetsDefinition]:
    """The model assets of ``manifest`` (for custom graphs): one multi-asset, see :func:`build_models_asset`."""
    return [build_models_asset(manifest, translator, partitions_def, retry_policy, pool, workers)]


def build_restore_graph(
    manifest: Manifest,
    translator: SentryRestoreTranslator | None = None,
    partitions_def: dg.PartitionsDefinition | None = backups_partitions,
    retry_policy: dg.RetryPolicy | None = DEFAULT_RETRY_POLICY,
    pool: str | None = DEFAULT_POOL,
    workers: int | None = None,
) -> list[dg.AssetsDefinition]:
    """The whole graph of one import: the stage assets, the models' multi-asset, and ``restore_complete``."""
    models = build_models_asset(manifest, translator, partitions_def, retry_policy, pool, workers)
    model_keys = {k: models.metadata_by_key[k][MODEL_METADATA_KEY] for k in models.keys}
    return [
        *build_stage_assets(manifest, partitions_def),
        models,
        build_restore_complete_asset(manifest, model_keys, partitions_def),
    ]
