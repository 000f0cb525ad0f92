"""Progress events of a restore, for whoever listens in this process (the CLI's progress display).

The engine reports what it is doing through :func:`emit`; with no listener (a Dagster run worker, a
test) that costs a list check. Listeners are process-wide because the CLI runs the asset graph
in-process, where the engine is called from inside Dagster steps and cannot be handed a callback.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class ProgressEvent:
    stage: str  #: "parse", "plan" (rows staged for the plan's models: ``total``) or "load"
    name: str  #: "export" for parse, the model for load
    done: int  #: bytes parsed, or rows of the model handled
    total: int | None  #: bytes of the export, or rows staged for the model
    finished: bool = False


Listener = Callable[[ProgressEvent], None]
_listeners: list[Listener] = []
_lock = threading.Lock()  # loads running at once (run_restore's workers) report from their own threads


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


def emit(stage: str, name: str, done: int, total: int | None, finished: bool = False) -> None:
    if _listeners:
        event = ProgressEvent(stage, name, done, total, finished)
        with _lock:  # one event at a time: a listener need not be thread-safe
            for listener in list(_listeners):
                listener(event)
