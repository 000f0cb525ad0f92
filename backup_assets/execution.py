"""What every step of the restore graph does around the engine: build the ``Restore`` of the run's
partition, and turn engine errors into the right kind of Dagster failure.

The classification itself lives in :mod:`backup_assets.core.retry` (the engine's scheduler retries
each model's load by it); this module words it for Dagster.

* A transient database error is retried (per model inside the models' step, then by the step's
  ``RetryPolicy``): ``psycopg.OperationalError``
  anywhere in the exception chain (a connection cut, a server restart, a serialization failure, a
  deadlock), including the target's ``statement_timeout`` / ``lock_timeout`` being hit (``QueryCanceled``,
  ``LockNotAvailable``: the lock or the load is likely free on the next attempt). It becomes
  ``dagster.Failure(allow_retries=True)`` naming the model or stage, so the step's log and the run's
  final error say which load it was; the engine makes a retried step idempotent.
* Resource exhaustion is not transient (:data:`~backup_assets.core.retry.EXHAUSTED`: disk full, out of memory, a configured
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
from contextlib import ExitStack, contextmanager

import dagster as dg

from backup_assets.core.errors import BackupAssetsError
from backup_assets.core.manifest import Manifest
from backup_assets.core.restore import Restore
from backup_assets.core.retry import exhausted_resource, one_line, operational
from backup_assets.core.settings import check_import_id
from backup_assets.resources.postgres import PostgresTargetResource
from backup_assets.resources.settings import ImportSettingsResource
from backup_assets.resources.staging import StagingResource


def failure(what: str, e: BaseException, retried: int = 0) -> dg.Failure:
    """The Dagster failure for an engine error about ``what`` (a model or stage name), classified as the
    module doc says; ``retried`` says how often the step already loaded it again."""
    if isinstance(e, dg.Failure):
        return e
    op = operational(e)
    ran_out = exhausted_resource(op)
    if op is not None and not ran_out:  # transient (see is_transient)
        again = f" (after {retried} retries in the step)" if retried else ""
        return dg.Failure(
            description=f"{what}: transient database error{again}, retried by policy: "
            f"{type(op).__name__}: {one_line(op)}",
            allow_retries=True,
        )
    if ran_out and op is not None:
        return dg.Failure(
            description=f"{what}: {ran_out} ({type(op).__name__}: {one_line(op)}); nothing of "
            "this step was committed: free the resource, then re-materialize",
            allow_retries=False,
        )
    kind = "" if isinstance(e, BackupAssetsError) else "unexpected error: "
    return dg.Failure(description=f"{what}: {kind}{type(e).__name__}: {e}", allow_retries=False)


@contextmanager
def engine_errors(what: str) -> Iterator[None]:
    """Run engine calls for ``what`` (a model or stage name), classifying failures (see module doc)."""
    try:
        yield
    except dg.Failure:
        raise
    except Exception as e:
        raise failure(what, e) from e


def import_id_of(context: dg.AssetExecutionContext) -> str:
    """The import id of the run: its partition key (one partition is one import)."""
    if not context.has_partition_key:
        raise dg.Failure(
            "the restore assets are partitioned by backup: select a partition (a backup) to run", allow_retries=False
        )
    with engine_errors("partition key"):
        return check_import_id(context.partition_key)


def open_restore(
    context: dg.AssetExecutionContext,
    manifest: Manifest,
    target: PostgresTargetResource,
    import_settings: ImportSettingsResource,
    staging: StagingResource,
) -> Restore:
    """The engine object of this run's import (each step opens its own connections)."""
    import_id = import_id_of(context)
    with engine_errors("configuration"):
        return Restore(
            target.resolved_dsn(),
            manifest,
            import_id,
            import_settings.to_settings(),
            unlogged_staging=staging.unlogged,
            run_id=context.run.run_id,
        )


@contextmanager
def held(restore: Restore) -> Iterator[None]:
    """Hold the import lock for the step (:meth:`Restore.hold`: the steps of a run may be separate
    processes); an import that may not run now (another global import's marker stands, a lock wait timed
    out) fails the step at once, naming why."""
    with ExitStack() as stack:
        with engine_errors("import lock"):
            stack.enter_context(restore.hold())
        yield


class Stopwatch:
    """Wall time of a block, for the duration and rate metadata."""

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
