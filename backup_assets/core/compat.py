"""Exports of older Sentry releases: the models and fields the current Sentry has removed.

Sentry's importer keeps exports of older self-hosted releases importable with two shims, applied to the
rows before anything else: it drops the fields of ``DELETED_FIELDS`` and the rows of ``DELETED_MODELS``.
Rows of other models it no longer has (removed since the export was written, or of apps outside its
relocation graph) it skips as unknown. This module holds those facts as our own table: the parse applies
them and reports every field and row it drops; nothing it drops is reported as an unknown model.
"""

from __future__ import annotations

from collections.abc import Mapping

from .manifest import Manifest

#: model -> fields Sentry has removed from it and strips from older exports (its ``DELETED_FIELDS``).
DELETED_FIELDS: Mapping[str, frozenset[str]] = {
    "sentry.team": frozenset({"org_role", "actor"}),
    "sentry.rule": frozenset({"owner"}),
    "sentry.alertrule": frozenset({"owner"}),
    "sentry.grouphistory": frozenset({"actor"}),
}

#: Models of releases from 23.9 on that the current Sentry no longer has: its ``DELETED_MODELS``, models
#: removed since (exports of 24.6.0 hold them) and Django apps outside its relocation graph.
REMOVED_MODELS: Mapping[str, str] = {
    "sentry.actor": "removed by Sentry (DELETED_MODELS)",
    "sentry.alertruleexcludedprojects": "removed by Sentry after 24.6.0",
    "sentry.alertruletriggerexclusion": "removed by Sentry after 24.6.0",
    "sentry.incidentsubscription": "removed by Sentry after 24.6.0",
    "sites.site": "Django's sites app, outside Sentry's relocation graph",
}


def deleted_fields(manifest: Manifest) -> dict[str, frozenset[str]]:
    """The fields to strip per model: ``DELETED_FIELDS`` less any the manifest still declares as foreign
    keys (a manifest of an older release, whose schema has them)."""
    out = {}
    for model, fields in DELETED_FIELDS.items():
        spec = manifest.models.get(model)
        keep = frozenset(spec.fk_by_field) if spec is not None else frozenset()
        if fields - keep:
            out[model] = fields - keep
    return out


def removed_models(manifest: Manifest) -> dict[str, str]:
    """``REMOVED_MODELS`` less the models ``manifest`` knows (an older release's manifest may have them)."""
    return {m: why for m, why in REMOVED_MODELS.items() if m not in manifest.models}
