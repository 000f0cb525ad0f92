"""Runs whose steps execute on Celery workers: dagster-celery's executor, routed per target database.

Needs the ``celery`` extra (``pip install 'backup-assets[celery]'``); nothing else of the package
imports this module. The engine is dagster-celery's own (its tasks, its workers, its execution loop);
this module adds two things around it:

* **Per-target routing.** A run's steps go to the Celery queue of its target database: the run tag
  ``dagster-celery/queue`` when given, else :func:`target_queue` of the database the ``target``
  resource writes (``host:port/dbname``, never credentials; the run tag ``backup_assets/target``
  when the DSN is not known to the launcher; a tag naming another database fails the run). Start one worker with
  ``--concurrency 1`` per queue and one database receives one step at a time while other databases
  restore in parallel on other workers. A step's own ``dagster-celery/queue`` tag still wins.
* **A lost worker fails the run.** dagster-celery waits for a step's result forever; a worker killed
  mid-step never writes one. Each running step's worker (known from Celery's ``STARTED`` state, so
  workers run with ``task_track_started``) is pinged; one silent for ``worker_lost_seconds`` fails
  the step and the run, which can then be re-executed from failure on another worker.

Everything a step needs reaches the worker through Dagster: the job is re-imported there from its
code location, resources read ``EnvVar`` (the target DSN, the backup folder) or a variable *name*
(the private key) in the worker's environment, and steps share nothing but the target database.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster._core.execution.context.system import PlanOrchestrationContext
from dagster._core.execution.plan.plan import ExecutionPlan
from dagster._core.execution.retries import RetryMode
from dagster._core.system_config.objects import ResolvedRunConfig
from dagster_celery.core_execution_loop import core_celery_execution_loop
from dagster_celery.executor import CELERY_CONFIG, CeleryExecutor, _submit_task
from dagster_celery.tags import DAGSTER_CELERY_QUEUE_TAG

from backup_assets.core.errors import ConfigurationError
from backup_assets.core.postgres import DSN_ENV
from backup_assets.run import TARGET_TAG, target_tag

#: Environment variables read by the launching process when the run config names no broker / backend.
BROKER_ENV = "BACKUP_ASSETS_CELERY_BROKER"
BACKEND_ENV = "BACKUP_ASSETS_CELERY_BACKEND"
QUEUE_TAG = DAGSTER_CELERY_QUEUE_TAG
QUEUE_PREFIX = "restore-"
DEFAULT_WORKER_LOST_SECONDS = 30.0
#: Seconds between two pings of a running step's worker.
PING_EVERY = 2.0
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class WorkerLostError(Exception):
    """The Celery worker running a step stopped answering: the step's work never completed."""


def target_queue(target: str) -> str:
    """The Celery queue of a target database tag (``host:port/dbname`` -> ``restore-host-port-dbname``)."""
    return QUEUE_PREFIX + (_UNSAFE.sub("-", target).strip("-") or "default")


def run_queue(tags: Mapping[str, str], target: str | None = None) -> str | None:
    """The queue of a run's steps: its ``dagster-celery/queue`` tag, else that of its ``target``
    (``host:port/dbname``, default: its target tag), else None (the executor's default queue)."""
    if tags.get(QUEUE_TAG):
        return tags[QUEUE_TAG]
    target = target or tags.get(TARGET_TAG)
    return target_queue(target) if target else None


def run_target(plan_context: PlanOrchestrationContext) -> str | None:
    """``host:port/dbname`` of the database the run's ``target`` resource writes (as the steps resolve
    it: the run config's DSN, else ``$BACKUP_ASSETS_DSN``); None when neither is set. A run tag naming
    another database is refused: it would put the run in another database's queue and run limit."""
    resolved = ResolvedRunConfig.build(plan_context.job.get_definition(), plan_context.run_config)
    resource = resolved.resources.get("target")
    dsn = (resource.config or {}).get("dsn") if resource is not None else None
    dsn = dsn or os.environ.get(DSN_ENV)
    if not dsn:
        return None
    actual, tagged = target_tag(dsn), plan_context.dagster_run.tags.get(TARGET_TAG)
    if tagged and tagged != actual:
        raise ConfigurationError(
            f"run tag {TARGET_TAG}={tagged} names another database than the run's target "
            f"resource ({actual}): fix the tag, or leave it out"
        )
    return actual


class WatchedResult:
    """A step's Celery result that also turns ready, failing, when the worker running it goes silent."""

    def __init__(self, result: Any, app: Any, step_key: str, lost_after: float) -> None:
        self._result, self._app, self._step_key, self._lost_after = result, app, step_key, lost_after
        self._next_ping = 0.0
        self._silent_since: float | None = None
        self._lost: str | None = None

    def ready(self) -> bool:
        if self._result.ready():
            return True
        self._lost = self._lost or self._check_worker()
        return self._lost is not None

    def get(self) -> Any:
        if self._lost:
            raise WorkerLostError(self._lost)
        return self._result.get()

    def revoke(self) -> None:
        self._result.revoke()

    def _check_worker(self) -> str | None:
        """A failure message once the worker that started this step has been silent ``lost_after`` s."""
        now = time.monotonic()
        if now < self._next_ping or self._result.state != "STARTED":
            return None
        info = self._result.info if isinstance(self._result.info, dict) else {}
        worker = info.get("hostname")
        if not worker:
            return None
        self._next_ping = now + PING_EVERY
        if self._app.control.ping(destination=[worker], timeout=1.0, limit=1):
            self._silent_since = None
            return None
        self._silent_since = self._silent_since or now
        if now - self._silent_since < self._lost_after:
            return None
        return (
            f"Celery worker {worker} (pid {info.get('pid')}) stopped answering while running step "
            f"{self._step_key}; the step did not complete (its open transaction is rolled back by "
            "PostgreSQL). Re-execute the run from failure once a worker serves its queue."
        )


class RestoreCeleryExecutor(CeleryExecutor):
    """dagster-celery's executor, routing each run to its target's queue and failing on a lost worker."""

    def __init__(self, worker_lost_seconds: float = DEFAULT_WORKER_LOST_SECONDS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.worker_lost_seconds = worker_lost_seconds

    def execute(self, plan_context: PlanOrchestrationContext, execution_plan: ExecutionPlan):
        queue = run_queue(plan_context.dagster_run.tags, run_target(plan_context))
        if queue:  # the execution loop sends every step without a queue tag to the app's default queue
            self.config_source.task_default_queue = queue

        def submit(app: Any, context: Any, step: Any, queue: str, priority: int, known_state: Any) -> WatchedResult:
            result = _submit_task(app, context, step, queue, priority, known_state)
            return WatchedResult(result, app, step.key, self.worker_lost_seconds)

        return core_celery_execution_loop(plan_context, execution_plan, step_execution_fn=submit)


@dg.executor(
    name="backup_assets_celery",
    config_schema={
        **CELERY_CONFIG,
        "backend": dg.Field(
            dg.Noneable(dg.StringSource),
            is_required=False,
            description=f"Celery result backend; default ${BACKEND_ENV}, else a redis broker.",
        ),
        "worker_lost_seconds": dg.Field(
            float,
            is_required=False,
            default_value=DEFAULT_WORKER_LOST_SECONDS,
            description="Seconds a running step's worker may stay silent before the step and the run fail.",
        ),
    },
    requirements=dg.multiple_process_executor_requirements(),
)
def restore_celery_executor(init_context: dg.InitExecutorContext) -> RestoreCeleryExecutor:
    """dagster-celery's executor with per-target queues (see the module doc). ``broker`` / ``backend``
    default to ``$BACKUP_ASSETS_CELERY_BROKER`` / ``$BACKUP_ASSETS_CELERY_BACKEND`` (else the broker)."""
    config: Mapping[str, Any] = init_context.executor_config
    broker = config.get("broker") or os.environ.get(BROKER_ENV)
    backend = (
        config.get("backend")
        or os.environ.get(BACKEND_ENV)
        or (broker if broker and broker.startswith("redis") else None)
    )
    return RestoreCeleryExecutor(
        worker_lost_seconds=config["worker_lost_seconds"],
        broker=broker,
        backend=backend,
        config_source=config.get("config_source"),
        include=config.get("include"),
        retries=RetryMode.from_config(config["retries"]),
    )
