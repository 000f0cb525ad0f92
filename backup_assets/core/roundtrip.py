"""Round-trip verification: re-export what an import wrote and compare it with the backup.

    findings = verify_round_trip(dsn, open_backup("backup.tar", decryptor), manifest, import_id)

The left side is the backup, restricted to what the import should have kept: rows of the manifest's
relocatable models in the import's scope, less the rows the import did not write (``pk_map`` kinds D
dropped, F filtered, and E mapped onto an existing row, which a re-export of the import's rows cannot
contain). The right side is :func:`backup_assets.core.export.export_rows` restricted to the import
(``pk_map`` kinds I and O). Fields the import sets to fixed values by Sentry's rules (``is_staff`` of
users outside a global import, for example: :func:`reset_fields`) are left out of both sides. Both go
through :func:`backup_assets.core.compare.compare_sources`, so pks may differ, foreign keys are compared through the rows they point at, and Sentry's comparators apply.

One normalisation on both sides: a string that is a complete ISO-8601 datetime is rewritten in the
format exports use today (UTC, three millisecond digits, ``Z``). Exports made before Sentry 23.7.1
write ``...:00Z`` without milliseconds; the database cannot keep that spelling, so without this every
such value would be reported although the instant is the same.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from .compare import compare_sources, iter_rows
from .errors import ConfigurationError, TargetError
from .export import export_rows, format_datetime
from .findings import Finding
from .manifest import IMPORT_SCOPES, Manifest
from .query import one_row
from .reexport import ReexportRequest, reexport_rows
from .schema import INTERNAL_SCHEMA
from .semantics import rules_for
from .settings import ImportSettings
from .source import Backup
from .state import IMPORT, PK_MAP

__all__ = [
    "verify_round_trip",
    "reexported",
    "relocatable_rows",
    "canonical_datetimes",
    "import_settings",
    "reset_fields",
]

_ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)$")


def relocatable_rows(rows: Iterable[Any], manifest: Manifest, scope: str = "global") -> Iterator[Any]:
    """The rows of ``rows`` whose model the manifest knows as relocatable and in ``scope`` (others, such as
    ``sites.site`` in old exports, are skipped, as an import skips them). Non-row items pass through, so
    that the comparison reports them."""
    if scope not in IMPORT_SCOPES:
        raise ConfigurationError(f"scope {scope!r} is not one of {', '.join(IMPORT_SCOPES)}")
    kept: dict[str, bool] = {}  # model as spelled -> whether its rows are kept
    for row in rows:
        model = row.get("model") if isinstance(row, dict) else None
        if isinstance(model, str):
            keep = kept.get(model)
            if keep is None:
                spec = manifest.models.get(model.lower())
                keep = kept[model] = spec is not None and spec.relocatable and spec.in_scope(scope)
            if not keep:
                continue
        yield row


def _maybe_old_datetime(value: Any) -> bool:
    """False only for values :func:`_canonical` returns unchanged: not a string shaped like a datetime, or
    one already in today's format (a cheap test, before the pattern)."""
    return (
        type(value) is str
        and len(value) >= 20
        and value[10] == "T"
        and not (len(value) == 24 and value[19] == "." and value[23] == "Z")
    )


def _canonical(value: Any) -> Any:
    if not _maybe_old_datetime(value) or not _ISO.match(value):
        return value
    try:
        return format_datetime(datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC))
    except ValueError:
        return value


def canonical_datetimes(rows: Iterable[Any]) -> Iterator[Any]:
    """Rows with every top-level field value that is a complete ISO datetime string in today's format."""
    for row in rows:
        fields = row.get("fields") if isinstance(row, dict) else None
        if isinstance(fields, dict):
            changed = {
                k: new
                for k, v in fields.items()
                if type(v) is str and len(v) >= 20 and _maybe_old_datetime(v) and (new := _canonical(v)) is not v
            }
            if changed:
                row = {**row, "fields": {**fields, **changed}}
        yield row


def import_settings(conn: psycopg.Connection, import_id: str) -> ImportSettings:
    """The settings an import ran with, as recorded in the target."""
    if one_row(conn.execute("SELECT to_regclass(%s) IS NULL", (f"{INTERNAL_SCHEMA}.import",)))[0]:
        raise TargetError(f"import {import_id}: no import was ever recorded in this database")
    row = conn.execute(sql.SQL("SELECT settings FROM {} WHERE import_id = %s").format(IMPORT), (import_id,)).fetchone()
    if row is None:
        raise TargetError(f"import {import_id} is not recorded in this database")
    return ImportSettings.from_json(row[0])


def reset_fields(manifest: Manifest, settings: ImportSettings) -> dict[str, frozenset[str]]:
    """Per model, the fields an import with ``settings`` sets to fixed values by Sentry's rules (for example
    ``is_staff`` of users outside a global import): not expected to survive the round trip."""
    out = {}
    for name in manifest.relocatable():
        spec = manifest[name]
        if spec.in_scope(settings.scope):
            by_column = {fk.column: fk.field for fk in spec.foreign_keys}
            columns = rules_for(spec, settings, manifest).overrides
            if columns:
                out[name] = frozenset(by_column.get(c, c) for c in columns)
    return out


def _without(rows: Iterable[Any], fields: Mapping[str, frozenset[str]]) -> Iterator[Any]:
    if not fields:
        yield from rows
        return
    for row in rows:
        drop = fields.get(str(row.get("model")).lower()) if isinstance(row, dict) else None
        if drop and isinstance(row.get("fields"), dict):
            row = {**row, "fields": {k: v for k, v in row["fields"].items() if k not in drop}}
        yield row


def _not_written(conn: psycopg.Connection, import_id: str) -> set[tuple[str, int]]:
    """(model, old pk) of the backup's rows this import did not write (dropped, filtered or merged)."""
    return {
        (m, pk)
        for m, pk in conn.execute(
            sql.SQL("SELECT model, old_pk FROM {} WHERE import_id = %s AND kind IN ('D', 'F', 'E')").format(PK_MAP),
            (import_id,),
        )
    }


def _connect(dsn: str) -> psycopg.Connection:
    try:
        return psycopg.connect(dsn, autocommit=True, application_name="backup-assets verify")
    except psycopg.OperationalError as e:
        raise ConfigurationError(f"cannot connect to the target database: {str(e).strip()}") from None


def reexported(request: ReexportRequest) -> Iterator[Any]:
    """The right side of a round trip: the rows import ``request.import_id`` wrote, re-exported and
    normalised (datetimes, reset fields) as the left side is."""
    with _connect(request.dsn) as conn:
        rows = export_rows(conn, request.manifest, request.scope, import_id=request.import_id)
        yield from _without(canonical_datetimes(rows), request.reset)


def verify_round_trip(
    dsn: str, backup: Backup, manifest: Manifest, import_id: str, *, separate_process: bool = True
) -> list[Finding]:
    """Compare the backup (a :class:`backup_assets.core.source.Backup`) with a re-export of what import
    ``import_id`` wrote into the database at ``dsn``; an empty list means the round trip is exact.

    Bounded memory: the backup and the re-export are read together, once
    (:func:`backup_assets.core.compare.compare_sources`; twice in the rare case it explains). The re-export
    is made by a child process while this one reads the backup and compares (:mod:`.reexport`), unless
    ``separate_process`` is false.
    """
    with _connect(dsn) as conn:
        settings = import_settings(conn, import_id)
        skipped = _not_written(conn, import_id)
    reset = reset_fields(manifest, settings)
    request = ReexportRequest(dsn, manifest, settings.scope, import_id, reset)

    def left() -> Iterator[Any]:
        rows = relocatable_rows(iter_rows(backup.open_plaintext, str(backup.path)), manifest, settings.scope)
        kept = (
            rows
            if not skipped
            else (
                row
                for row in rows
                if not (isinstance(row, dict) and (str(row.get("model")).lower(), row.get("pk")) in skipped)
            )
        )
        return _without(canonical_datetimes(kept), reset)

    def right() -> Iterator[Any]:
        return reexport_rows(request) if separate_process and sys.executable else reexported(request)

    return list(compare_sources(left, right, manifest, names=(str(backup.path), f"re-export of import {import_id}")))
