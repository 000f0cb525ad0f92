"""What every step of the restore graph does around the engine: build the ``Restore`` of the run's
partition, and turn engine errors into the right kind of Dagster failure.

* A transient database error is retried by the asset's ``RetryPolicy``: ``psycopg.OperationalError``
  anywhere in the exception chain (a connection cut, a server restart, a serialization failure, a
  deadlock), including the target's ``statement_timeout`` / ``lock_timeout`` being hit (``QueryCanceled``,
  ``LockNotAvailable``: the lock or the load is likely free on the next attempt). It becomes
  ``dagster.Failure(allow_retries=True)`` naming the model or stage, so the step's log and the run's
  final error say which load it was; the engine makes a retried step idempotent.
* Resource exhaustion is not transient (:data:`EXHAUSTED`: disk full, out of memory, a configured
  limit such as ``temp_file_limit``, a program limit): retrying would fail the same way, so it fails
  at once with a message that says what ran out and that nothing of the step was committed.
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


#: SQLSTATEs (or their two-character classes) of exhausted resources: retrying cannot help.
EXHAUSTED: dict[str, str] = {
    "53100": "the target database ran out of disk space",
    "53200": "the target database ran out of memory",
    "53400": "a configured limit of the target database was reached",
    "54": "a program limit of the target database was reached",
}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or during, innermost last."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _operational(exc: BaseException) -> psycopg.OperationalError | None:
    return next((e for e in _chain(exc) if isinstance(e, psycopg.OperationalError)), None)


def exhausted(exc: BaseException) -> str | None:
    """What ran out, when ``exc`` (or its chain) is a resource-exhaustion error of PostgreSQL."""
    return _exhausted(_operational(exc))


def _exhausted(op: psycopg.OperationalError | None) -> str | None:
    state = (op.sqlstate or "") if op is not None else ""
    return EXHAUSTED.get(state) or (EXHAUSTED.get(state[:2]) if state else None)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` or an exception it was raised from is a PostgreSQL operational error worth
    retrying (any ``OperationalError`` but resource exhaustion)."""
    op = _operational(exc)
    return op is not None and _exhausted(op) is None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


@contextmanager
def engine_errors(what: str) -> Iterator[None]:
    """Run engine calls for ``what`` (a model or stage name), classifying failures (see module doc)."""
    try:
        yield
    except dg.Failure:
        raise
    except Exception as e:
        op = _operational(e)
        ran_out = _exhausted(op)
        if op is not None and not ran_out:  # transient (see is_transient)
            raise dg.Failure(description=f"{what}: transient database error, retried by policy: "
                                         f"{type(op).__name__}: {_one_line(op)}", allow_retries=True) from e
        if ran_out:
            raise dg.Failure(description=f"{what}: {ran_out} ({type(op).__name__}: {_one_line(op)}); nothing of "
                                         "this step was committed: free the resource, then re-materialize",
                             allow_retries=False) from e
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
