"""Which database errors are worth another attempt, and how long to wait before it.

Shared by the engine's scheduler (:mod:`backup_assets.core.scheduler`, which retries each model's load)
and the Dagster layer (:mod:`backup_assets.execution`, which words the failures):

* transient: ``psycopg.OperationalError`` anywhere in the exception chain (a connection cut, a server
  restart, a serialization failure, a deadlock, the target's ``statement_timeout`` / ``lock_timeout``);
* exhausted (:data:`EXHAUSTED`: disk full, out of memory, a configured or program limit): an operational
  error too, but one that another attempt would hit the same way, so never retried.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg

#: SQLSTATEs (or their two-character classes) of exhausted resources: retrying cannot help.
EXHAUSTED: dict[str, str] = {
    "53100": "the target database ran out of disk space",
    "53200": "the target database ran out of memory",
    "53400": "a configured limit of the target database was reached",
    "54": "a program limit of the target database was reached",
}


def chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or during, innermost last."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def operational(exc: BaseException) -> psycopg.OperationalError | None:
    """The first PostgreSQL operational error in ``exc``'s chain, if any."""
    return next((e for e in chain(exc) if isinstance(e, psycopg.OperationalError)), None)


def exhausted_resource(op: psycopg.OperationalError | None) -> str | None:
    """What ran out, when ``op`` is a resource-exhaustion error."""
    state = (op.sqlstate or "") if op is not None else ""
    return EXHAUSTED.get(state) or (EXHAUSTED.get(state[:2]) if state else None)


def exhausted(exc: BaseException) -> str | None:
    """What ran out, when ``exc`` (or its chain) is a resource-exhaustion error of PostgreSQL."""
    return exhausted_resource(operational(exc))


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` or an exception it was raised from is a PostgreSQL operational error worth
    retrying (any ``OperationalError`` but resource exhaustion)."""
    op = operational(exc)
    return op is not None and exhausted_resource(op) is None


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (its type when it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__


@dataclass(frozen=True)
class RetryPlan:
    """How often, and after which pauses, a model whose load hit a transient error is loaded again:
    ``delay * backoff ** (n - 1)`` seconds before retry ``n``, plus or minus ``jitter`` of it."""

    max_retries: int = 3
    delay: float = 2.0
    backoff: float = 2.0
    jitter: float = 0.0

    def pause(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        base = self.delay * self.backoff ** (retry - 1)
        return max(0.0, base * (1 + random.uniform(-self.jitter, self.jitter))) if self.jitter else base


#: What :func:`backup_assets.core.restore.run_restore` does: five quick retries (0.1 s to 1.6 s apart),
#: enough for two of its own loads that locked each other out under a tight ``lock_timeout``.
QUICK_RETRIES = RetryPlan(max_retries=5, delay=0.1, backoff=2.0)
#: No retry at all.
NO_RETRIES = RetryPlan(max_retries=0)
