"""What every step of the restore graph does around the engine: build the ``Restore`` of the run's
partition, and turn engine errors into the right kind of Dagster failure.

* A transient database error (``psycopg.OperationalError`` anywhere in the exception chain: a
  connection cut, a server restart, a serialization failure) is re-raised as it is, so the asset's
  ``RetryPolicy`` retries the step; the engine makes a retried step idempotent.
* A :class:`~backup_assets.core.errors.BackupAssetsError` says the input or the configuration is
  wrong: retrying cannot help, so it becomes ``dagster.Failure(allow_retries=False)`` with the
  engine's message (which names the model, row and field).
* Anything else is a bug: it also fails at once, keeping the original exception as the cause.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import psycopg

from backup_assets.core.errors import BackupAssetsError
from backup_assets.core.manifest import Manifest
from backup_assets.core.restore import Restore
from backup_assets.core.settings import check_import_id
from backup_assets.settings_resource import ImportSettingsResource
from resources.postgres import PostgresTargetResource
from resources.staging import StagingResource


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` or an exception it was raised from is a PostgreSQL operational error."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, psycopg.OperationalError):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


@contextmanager
def engine_errors(what: str) -> Iterator[None]:
    """Run engine calls for ``what`` (a model or stage name), classifying failures (see module doc)."""
    try:
        yield
    except dg.Failure:
        raise
    except Exception as e:
        if is_transient(e):
            raise
        kind = "" if isinstance(e, BackupAssetsError) else "unexpected error: "
        raise dg.Failure(description=f"{what}: {kind}{type(e).__name__}: {e}", allow_retries=False) from e


def import_id_of(context: dg.AssetExecutionContext) -> str:
    """The import id of the run: its partition key (one partition is one import)."""
    if not context.has_partition_key:
        raise dg.Failure("the restore assets are partitioned by backup: select a partition (a backup) to run",
                         allow_retries=False)
    with engine_errors("partition key"):
        return check_import_id(context.partition_key)


def open_restore(context: dg.AssetExecutionContext, manifest: Manifest, target: PostgresTargetResource,
                 import_settings: ImportSettingsResource, staging: StagingResource) -> Restore:
    """The engine object of this run's import (each step opens its own connections)."""
    import_id = import_id_of(context)
    with engine_errors("configuration"):
        return Restore(target.resolved_dsn(), manifest, import_id, import_settings.to_settings(),
                       unlogged_staging=staging.unlogged)


class Stopwatch:
    """Wall time of a block, for the duration and rate metadata."""

    def __enter__(self) -> "Stopwatch":
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
