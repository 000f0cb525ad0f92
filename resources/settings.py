"""Import settings as run configuration (resource ``import_settings``).

Set once per run, in the launchpad or in ``run_config``::

    resources:
      import_settings:
        config:
          scope: organizations
          merge_users: true
          filter_org_slugs: [acme]

Defaults are those of Sentry's ``sentry import global``: every relocatable model, no filter, no
flag; plus this project's options (``preserve_pks``, ``create_schema``, ``replace_existing``, ``strict``), all
off. Every step of one import must run with the same settings: the engine records them when the
parse stage prepares the import.
"""

from __future__ import annotations

from typing import Literal

import dagster as dg
from pydantic import Field

from backup_assets.core.settings import ImportSettings


class ImportSettingsResource(dg.ConfigurableResource):
    """How to import: Sentry's scope, filters and import flags, and this project's options."""

    scope: Literal["users", "organizations", "config", "global"] = Field(
        default="global", description="Import scope, as Sentry's `import <scope>` subcommands."
    )
    merge_users: bool = Field(default=False, description="Map users whose username exists onto the existing user.")
    overwrite_configs: bool = Field(default=False, description="Overwrite colliding Config-scope rows in place.")
    hide_organizations: bool = Field(default=False, description="Import organizations hidden (pending approval).")
    filter_usernames: list[str] | None = Field(
        default=None, description="Import only these users (and what hangs off them); unset: no filter."
    )
    filter_org_slugs: list[str] | None = Field(
        default=None, description="Import only these organizations (and what hangs off them); unset: no filter."
    )
    preserve_pks: bool = Field(
        default=False, description="Keep every primary key (disaster recovery into an empty database)."
    )
    create_schema: bool = Field(default=False, description="Create missing tables from the manifest and the export.")
    replace_existing: bool = Field(
        default=False, description="Global scope only: confirmed wipe of every relocatable table before loading."
    )
    strict: bool = Field(
        default=False,
        description="Fail the parse, writing nothing, when the export holds rows "
        "of models the manifest does not know (else skipped and reported).",
    )

    def to_settings(self) -> ImportSettings:
        """The core's :class:`ImportSettings` (validated: raises ConfigurationError when contradictory)."""
        # every field, by name: a field added to ImportSettings cannot be dropped on the way
        return ImportSettings.from_json({name: getattr(self, name) for name in ImportSettings.__dataclass_fields__})

    @classmethod
    def from_settings(cls, settings: ImportSettings) -> ImportSettingsResource:
        """The resource configured as ``settings`` (what ``run.materialize_restore`` hands a run)."""
        d = settings.to_json()
        return cls(**d)
