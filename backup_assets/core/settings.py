"""Import settings (Sentry's scope, filters and ``ImportFlags``, plus ours) and the results a restore reports."""
from __future__ import annotations

import re
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ConfigurationError
from .manifest import IMPORT_SCOPES

_IMPORT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,199}$")


def new_import_id() -> str:
    """A fresh import id, as Sentry makes its ``import_uuid``."""
    return uuid.uuid4().hex


def check_import_id(import_id: str) -> str:
    if not isinstance(import_id, str) or not _IMPORT_ID.match(import_id):
        raise ConfigurationError(f"import id {import_id!r} must be 1-200 characters of letters, digits and ._:@+=-")
    return import_id


@dataclass(frozen=True)
class ImportSettings:
    """How to import: what Sentry's CLI flags say, plus this project's own options.

    ``filter_usernames`` / ``filter_org_slugs`` are allow-lists: ``None`` means no filter, an empty
    set imports nothing (as in Sentry).
    """

    scope: str = "global"
    merge_users: bool = False
    overwrite_configs: bool = False
    hide_organizations: bool = False
    filter_usernames: frozenset[str] | None = None
    filter_org_slugs: frozenset[str] | None = None
    preserve_pks: bool = False          #: keep every primary key (disaster recovery into an empty database)
    create_schema: bool = False         #: create missing tables from the manifest and the export
    replace_existing: bool = False      #: global scope: confirmed wipe of every relocatable table first
    strict: bool = False                #: refuse an export holding rows of models the manifest does not know

    def __post_init__(self) -> None:
        if self.scope not in IMPORT_SCOPES:
            raise ConfigurationError(f"scope {self.scope!r} is not one of {', '.join(IMPORT_SCOPES)}")
        for name in ("filter_usernames", "filter_org_slugs"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, frozenset):
                object.__setattr__(self, name, frozenset(v))
        if self.filter_usernames is not None and self.filter_org_slugs is not None:
            raise ConfigurationError("filter by usernames or by organization slugs, not both")
        if self.replace_existing and self.scope != "global":
            raise ConfigurationError("replacing existing data is only possible in a global import")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("filter_usernames", "filter_org_slugs"):
            if d[k] is not None:
                d[k] = sorted(d[k])
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ImportSettings:
        fields: dict[str, Any] = {k: (frozenset(v) if k.startswith("filter_") and v is not None else v)
                                  for k, v in d.items()}
        return cls(**fields)


@dataclass
class StageResult:
    """What the parse stage staged."""

    import_id: str
    rows: int = 0                                                 #: rows in the export
    rows_per_model: dict[str, int] = field(default_factory=dict)  #: staged rows of known models
    unknown_models: dict[str, int] = field(default_factory=dict)  #: rows skipped: models the manifest does not know
    excluded_models: dict[str, int] = field(default_factory=dict) #: rows skipped: models whose scope is Excluded
    removed_models: dict[str, int] = field(default_factory=dict)  #: rows dropped: models Sentry has removed
    deleted_fields: dict[str, int] = field(default_factory=dict)  #: "model.field" -> rows it was dropped from
    bytes: int = 0                                                #: plaintext bytes parsed
    seconds: float = 0.0
    #: model -> field -> the SQL type its values call for (see ``schema.type_for``); fields whose names
    #: cannot be columns appear under a description, never verbatim
    fields: dict[str, dict[str, str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LoadResult:
    """What one model's load did. ``rows_read == rows_written + rows_merged + sum(dropped.values())``."""

    model: str
    table: str
    rows_read: int = 0
    rows_written: int = 0            #: inserted (kind Inserted) plus overwritten in place (kind Overwrite)
    rows_overwritten: int = 0        #: of rows_written, those that overwrote an existing row keeping its id
    rows_merged: int = 0             #: mapped onto an existing row without writing (kind Existing)
    dropped: dict[str, int] = field(default_factory=dict)       #: reason -> count
    dropped_by_filter: int = 0       #: of the dropped rows, those a filter or the scope removed (expected)
    dropped_sample: list[dict[str, Any]] = field(default_factory=list)  #: a few dropped rows: pk, reason
    renamed: list[dict[str, Any]] = field(default_factory=list)  #: collisions renamed: pk, field, old, new
    resets: dict[str, int] = field(default_factory=dict)         #: field -> rows whose value was reset
    skipped_fields: list[str] = field(default_factory=list)     #: export fields with no column in the table
    new_id_min: int | None = None
    new_id_max: int | None = None
    seconds: float = 0.0
    already_loaded: bool = False     #: this model was loaded for this import before; nothing was changed

    @property
    def rows_dropped(self) -> int:
        return sum(self.dropped.values())

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["rows_dropped"] = self.rows_dropped
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LoadResult:
        d = {k: v for k, v in d.items() if k != "rows_dropped"}
        return cls(**d)


@dataclass
class CheckOutcome:
    """One verification of a loaded model (counts reconcile, no dangling FK, sequence past max(id))."""

    name: str
    passed: bool
    description: str
    severity: str = "ERROR"          #: ERROR or WARN
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class RestoreResult:
    import_id: str
    stage: StageResult
    loads: dict[str, LoadResult] = field(default_factory=dict)
    checks: dict[str, list[CheckOutcome]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.passed or c.severity != "ERROR" for cs in self.checks.values() for c in cs)
