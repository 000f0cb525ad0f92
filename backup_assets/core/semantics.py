"""Sentry's import rules, expressed as what a model's load must do differently from a plain copy.

The loader (``load.py``) asks :func:`rules_for` once per model and applies the answer set-based:
rows to drop (filters, scope), foreign keys that become NULL instead of dropping their row, values
reset on import, rows matched onto existing ones (``Existing`` / ``Overwrite``), and values renamed
on collision. Each rule is SQL over the staged row ``s`` (``s.fields`` is the export's JSON object)
and the candidate row ``c`` (its resolved foreign keys); names come from the manifest only.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from psycopg import sql

from .manifest import ModelSpec
from .settings import ImportSettings

#: Foreign keys Sentry sets to NULL (keeping the row) when their target was not imported.
NULL_IF_MISSING = {("sentry.organizationmember", "inviter_id")}


@dataclass
class Drop:
    condition: sql.Composable      #: over ``s`` (staged row) and ``c`` (candidate); true -> the row is dropped
    reason: str
    expected: bool = True          #: caused by a filter or the scope (a warning, not an error, in checks)


@dataclass
class ModelRules:
    drops: list[Drop] = field(default_factory=list)
    null_if_missing: frozenset[str] = frozenset()               #: FK fields set NULL when their target is missing
    drop_if_parent_kind: dict[str, tuple[str, str]] = field(default_factory=dict)  #: fk field -> (kind, reason)
    overrides: dict[str, sql.Composable] = field(default_factory=dict)  #: column -> value expression (resets)
    match_columns: tuple[str, ...] = ()       #: unique key matched against existing rows (kind E, or O)
    overwrite: bool = False                   #: matched rows are overwritten in place, keeping their id
    rename_column: str | None = None          #: value suffixed with "-xxxx" on collision
    keep_pks: bool = False                    #: new id = old pk


def rules_for(spec: ModelSpec, settings: ImportSettings) -> ModelRules:
    """The rules for ``spec`` under ``settings``."""
    rules = ModelRules(
        null_if_missing=frozenset(f for m, f in NULL_IF_MISSING if m == spec.name),
        keep_pks=settings.preserve_pks or (settings.scope == "global" and spec.name == "sentry.project"),
    )
    return rules
