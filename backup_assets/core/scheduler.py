"""The engine's scheduler: load a set of models in dependency order, a few at once, and report each
model as soon as it is loaded and verified.

    for outcome in load_models(restore, models, workers=2, retry=RetryPlan()):
        ...  # outcome.result, outcome.checks; or outcome.error; or outcome.blocked_by

A model starts once every model of the set it depends on is loaded; among the models ready, the one
with the most staged rows first (the big loads start early, the small ones fill the gaps). Each worker
thread has its own connection, so ``workers`` loads run at once (each one server backend at work).

* A transient database error (:func:`~backup_assets.core.retry.is_transient`) rolls the model's load
  back whole; it is loaded again after the pauses of the :class:`~backup_assets.core.retry.RetryPlan`,
  on a new connection, before it counts as failed.
* A failed model does not stop the others: models that do not depend on it go on; those that do (at
  any depth) are not attempted and are reported with ``blocked_by`` naming the failed parents.
* A model whose import's staging is gone (:class:`StagingMissingError`) calls ``restage`` once for the
  whole set, then loads.

Outcomes come in the order models finish, in the caller's thread, while the other loads go on: a load
that ends starts the next ones from its worker, however long the caller takes over an outcome.
Models of the set whose parents lie outside it load through the parents' persisted primary-key maps
(the loader refuses, naming them, when those parents were never loaded).
"""

from __future__ import annotations

import functools
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import psycopg

from .errors import StagingMissingError
from .heap import heap_frozen
from .results import CheckOutcome, LoadResult
from .retry import QUICK_RETRIES, RetryPlan, is_transient

if TYPE_CHECKING:
    from .restore import Restore

#: Called before a model is loaded again: (model, retry number, pause in seconds, the error).
RetryHook = Callable[[str, int, float, BaseException], None]


def default_workers() -> int:
    """Model loads run at once: two, or one on a single-core machine. Each is one server backend at
    work (the client only waits), so more than the server's cores gains nothing."""
    return max(1, min(2, os.cpu_count() or 1))


@dataclass
class ModelOutcome:
    """What became of one model: loaded and verified, failed, or not attempted."""

    model: str
    result: LoadResult | None = None
    checks: list[CheckOutcome] = field(default_factory=list)
    error: BaseException | None = None
    blocked_by: list[str] = field(default_factory=list)
    attempts: int = 0
    restaged: bool = False

    @property
    def loaded(self) -> bool:
        return self.result is not None


class _Worker:
    """The load of one model on the calling thread's connection, retried as the plan says."""

    def __init__(
        self, restore: Restore, retry: RetryPlan, restage: Callable[[str], None] | None, on_retry: RetryHook | None
    ) -> None:
        self.restore, self.retry, self.restage, self.on_retry = restore, retry, restage, on_retry
        self.connections: list[psycopg.Connection] = []
        self._restage_lock = threading.Lock()
        self._restaged = False

    def _bind(self, fresh: bool = False) -> None:
        """Give this thread its own session connection (a new one after a transient error)."""
        if fresh:
            old = self.restore.unbind_thread_connection()
            if old is not None:
                old.close()
        opened = self.restore.bind_thread_connection()
        if opened is not None:
            self.connections.append(opened)

    def __call__(self, model: str) -> ModelOutcome:
        out = ModelOutcome(model)
        self._bind()
        looked_for_staging = False
        while True:
            out.attempts += 1
            try:
                out.result = self.restore.load_model(model)
                out.checks = self.restore.verify_model(model)
                return out
            except StagingMissingError:
                if self.restage is None or looked_for_staging:
                    raise
                looked_for_staging = True
                out.restaged = self._restage_once(self.restage, model)
                out.attempts -= 1  # staging again is not a retry of the load
            except Exception as e:
                retry = out.attempts
                if not is_transient(e) or retry > self.retry.max_retries:
                    raise
                pause = self.retry.pause(retry)
                if self.on_retry is not None:
                    self.on_retry(model, retry, pause, e)
                time.sleep(pause)
                self._bind(fresh=True)

    def _restage_once(self, restage: Callable[[str], None], model: str) -> bool:
        """Stage the import again, once for all workers; True when this call did it."""
        with self._restage_lock:
            if self._restaged:
                return False
            restage(model)
            self._restaged = True
            return True

    def close(self) -> None:
        for conn in self.connections:
            conn.close()


def dependents(restore: Restore, models: Iterable[str], failed: str) -> list[str]:
    """The models of ``models`` that depend on ``failed``, at any depth, in the given order."""
    models = list(models)
    hit = {failed}
    for m in restore.manifest.relocatable():  # dependency order: parents before children
        if m in models and m not in hit and restore.manifest[m].dependencies & hit:
            hit.add(m)
    return [m for m in models if m in hit and m != failed]


class _Schedule:
    """Which models run, and the outcomes for the caller. A load that ends starts the next ones at once,
    on the worker's side: a caller slow to take an outcome (Dagster writing a model's events) never
    leaves a worker idle."""

    def __init__(self, restore: Restore, models: list[str], workers: int, worker: _Worker) -> None:
        self.restore, self.workers, self.worker = restore, workers, worker
        self.waits_for = {m: {d for d in restore.manifest[m].dependencies if d in models and d != m} for m in models}
        self.staged = restore.staged_counts()
        self.pending, self.loaded, self.running = list(models), set[str](), set[str]()
        self.outcomes: queue.SimpleQueue[ModelOutcome | BaseException | None] = queue.SimpleQueue()
        self.lock = threading.RLock()  # a future already done runs its callback at once, lock held
        self.closed = False
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="backup-assets-load")

    def fill(self) -> None:
        """Start the ready models, the most staged rows first, up to ``workers`` at once; with nothing
        running (done, or only models waiting for a failed parent, reported already), end the outcomes."""
        with self.lock:
            ready = [m for m in self.pending if not self.waits_for[m] - self.loaded]
            for model in sorted(ready, key=lambda m: -self.staged.get(m, 0)):  # stable: plan order among equals
                if len(self.running) >= self.workers or self.closed:
                    break
                self.pending.remove(model)
                self.running.add(model)
                self.pool.submit(self.worker, model).add_done_callback(functools.partial(self._done, model))
            if not self.running:
                self.outcomes.put(None)

    def _done(self, model: str, future: Future[ModelOutcome]) -> None:
        try:
            with self.lock:
                self.running.discard(model)
                self._report(model, future)
                self.fill()
        except BaseException as e:  # noqa: BLE001 - a bug here must reach the caller, not the pool's log
            self.outcomes.put(e)

    def _report(self, model: str, future: Future[ModelOutcome]) -> None:
        try:
            outcome = future.result()
        except Exception as e:  # noqa: BLE001 - reported as the model's outcome
            self.outcomes.put(ModelOutcome(model, error=e))
            for child in dependents(self.restore, self.pending, model):
                self.pending.remove(child)
                self.outcomes.put(ModelOutcome(child, blocked_by=[model]))
            return
        self.loaded.add(model)
        self.outcomes.put(outcome)

    def close(self) -> None:
        """Start nothing more; wait for the running loads."""
        with self.lock:
            self.closed = True
        self.pool.shutdown(wait=True)


def load_models(
    restore: Restore,
    models: Iterable[str],
    *,
    workers: int | None = None,
    retry: RetryPlan = QUICK_RETRIES,
    restage: Callable[[str], None] | None = None,
    on_retry: RetryHook | None = None,
) -> Iterator[ModelOutcome]:
    """Load and verify ``models`` (see the module doc); yields one :class:`ModelOutcome` per model."""
    worker = _Worker(restore, retry, restage, on_retry)
    schedule = _Schedule(restore, list(dict.fromkeys(models)), max(1, workers or default_workers()), worker)
    try:
        with heap_frozen():
            schedule.fill()
            while (outcome := schedule.outcomes.get()) is not None:
                if isinstance(outcome, BaseException):
                    raise outcome
                yield outcome
    finally:
        schedule.close()
        worker.close()
