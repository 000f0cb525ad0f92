"""What a restore reports: the parse's staging, each model's load and checks, and the whole restore."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class StageResult:
    """What the parse staged."""

    import_id: str
    rows: int = 0  #: rows in the export
    rows_per_model: dict[str, int] = field(default_factory=dict)  #: staged rows of known models
    unknown_models: dict[str, int] = field(default_factory=dict)  #: rows skipped: models the manifest does not know
    excluded_models: dict[str, int] = field(default_factory=dict)  #: rows skipped: models whose scope is Excluded
    removed_models: dict[str, int] = field(default_factory=dict)  #: rows dropped: models Sentry has removed
    deleted_fields: dict[str, int] = field(default_factory=dict)  #: "model.field" -> rows it was dropped from
    bytes: int = 0  #: plaintext bytes parsed
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
    rows_written: int = 0  #: inserted (kind Inserted) plus overwritten in place (kind Overwrite)
    rows_overwritten: int = 0  #: of rows_written, those that overwrote an existing row keeping its id
    rows_merged: int = 0  #: mapped onto an existing row without writing (kind Existing)
    dropped: dict[str, int] = field(default_factory=dict)  #: reason -> count
    dropped_by_filter: int = 0  #: of the dropped rows, those a filter or the scope removed (expected)
    dropped_sample: list[dict[str, Any]] = field(default_factory=list)  #: a few dropped rows: pk, reason
    renamed: list[dict[str, Any]] = field(default_factory=list)  #: collisions renamed: pk, field, old, new
    resets: dict[str, int] = field(default_factory=dict)  #: field -> rows whose value was reset
    skipped_fields: list[str] = field(default_factory=list)  #: export fields with no column in the table
    new_id_min: int | None = None
    new_id_max: int | None = None
    seconds: float = 0.0
    already_loaded: bool = False  #: this model was loaded for this import before; nothing was changed

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
    severity: str = "ERROR"  #: ERROR or WARN
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
