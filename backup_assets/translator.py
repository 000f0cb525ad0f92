"""How a Sentry model becomes a Dagster asset: keys, groups, dependencies, tags, descriptions.

Like ``DagsterSlingTranslator`` and ``DagsterDltTranslator``, one overridable hook,
:meth:`SentryRestoreTranslator.get_asset_spec`, turns a :class:`~backup_assets.core.manifest.ModelSpec`
into an :class:`dagster.AssetSpec`. Subclass it to change keys, groups, tags or descriptions without
forking the factory::

    class MyTranslator(SentryRestoreTranslator):
        def get_asset_spec(self, model_spec):
            spec = super().get_asset_spec(model_spec)
            return spec.replace_attributes(key=spec.key.with_prefix("restored"), group_name="sentry")

Dependencies are written as the *default* keys of the parent models; the factory
(:func:`backup_assets.assets.build_restore_assets`) maps them onto whatever keys the translator gave
those parents, and drops dependencies on models that get no asset (Excluded scope, or not in the
manifest). Dependencies on any other key (an asset of your own) are kept as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from backup_assets.core.manifest import SCOPES, ModelSpec

#: Key prefix of the stage assets.
STAGE_PREFIX = "sentry_backup"
BACKUP_FILE_KEY = dg.AssetKey([STAGE_PREFIX, "backup_file"])
UNWRAPPED_TARBALL_KEY = dg.AssetKey([STAGE_PREFIX, "unwrapped_tarball"])
DATA_KEY_KEY = dg.AssetKey([STAGE_PREFIX, "data_key"])
PARSED_EXPORT_KEY = dg.AssetKey([STAGE_PREFIX, "parsed_export"])
RESTORE_COMPLETE_KEY = dg.AssetKey([STAGE_PREFIX, "restore_complete"])

#: Metadata key under which every model asset records its Sentry model name.
MODEL_METADATA_KEY = "sentry/model"


def default_model_key(model: str) -> dg.AssetKey:
    """``sentry.organization`` -> ``sentry/organization``; ``social_auth.usersocialauth`` -> ``social_auth/...``."""
    app, _, name = model.partition(".")
    return dg.AssetKey([app, name])


def primary_scope(model_spec: ModelSpec) -> str:
    """The first relocation scope of the model other than Excluded, in Sentry's enum order."""
    for scope in SCOPES:
        if scope != "Excluded" and scope in model_spec.relocation_scopes:
            return scope
    return "Excluded"


def scopes_text(model_spec: ModelSpec) -> str:
    """The model's relocation scopes, comma-separated in Sentry's enum order."""
    return ", ".join(s for s in SCOPES if s in model_spec.relocation_scopes)


@dataclass(frozen=True)
class SentryRestoreTranslator:
    """Turns manifest models into asset specs. Every piece has its own overridable method, but
    :meth:`get_asset_spec` is the one hook the factory calls."""

    def get_asset_spec(self, model_spec: ModelSpec) -> dg.AssetSpec:
        return dg.AssetSpec(
            key=self.get_asset_key(model_spec),
            deps=self.get_deps(model_spec),
            description=self.get_description(model_spec),
            metadata=self.get_metadata(model_spec),
            group_name=self.get_group_name(model_spec),
            tags=self.get_tags(model_spec),
            kinds={"postgres"},
        )

    def get_asset_key(self, model_spec: ModelSpec) -> dg.AssetKey:
        return default_model_key(model_spec.name)

    def get_group_name(self, model_spec: ModelSpec) -> str:
        return primary_scope(model_spec).lower()

    def get_deps(self, model_spec: ModelSpec) -> list[dg.AssetKey]:
        """The parse stage, then every model this one needs loaded first (FK targets, relocation dependencies)."""
        return [PARSED_EXPORT_KEY, *(default_model_key(m) for m in sorted(model_spec.dependencies))]

    def get_description(self, model_spec: ModelSpec) -> str:
        fks = ", ".join(f"`{fk.column}` -> {fk.model}" for fk in model_spec.foreign_keys) or "none"
        scopes = scopes_text(model_spec)
        return (
            f"Rows of Sentry model `{model_spec.name}` restored into table `{model_spec.table_name}`, "
            f"primary keys remapped and foreign keys rewritten through the parents' key maps.\n\n"
            f"Relocation scope: {scopes}. Foreign keys: {fks}."
        )

    def get_metadata(self, model_spec: ModelSpec) -> dict[str, object]:
        return {
            MODEL_METADATA_KEY: model_spec.name,
            "table": model_spec.table_name,
            "dagster/table_name": model_spec.table_name,
            "foreign_keys": dg.MetadataValue.json(
                [
                    {"field": fk.field, "column": fk.column, "model": fk.model, "nullable": fk.nullable}
                    for fk in model_spec.foreign_keys
                ]
            ),
            "relocation_scopes": scopes_text(model_spec),
            "uniques": dg.MetadataValue.json([list(u) for u in model_spec.uniques]),
        }

    def get_tags(self, model_spec: ModelSpec) -> dict[str, str]:
        tags = {"sentry/app": model_spec.name.partition(".")[0], "sentry/scope": primary_scope(model_spec).lower()}
        if model_spec.silos:
            tags["sentry/silo"] = "-".join(s.lower() for s in model_spec.silos)
        return tags
