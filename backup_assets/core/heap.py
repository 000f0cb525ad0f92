"""Keep the cyclic garbage collector off the heap a long load finds.

A full collection walks every tracked object of the process. The parse allocates a few objects per row,
so a 1M-row export triggers a few dozen full collections; in a process that already holds a large heap
(Dagster's definitions, its instance and its run) each of them walks that heap again. :func:`heap_frozen`
moves the objects alive when a load starts out of the collector's sight (:func:`gc.freeze`) and gives
them back (:func:`gc.unfreeze`) when the last load that froze them ends. Reference counting still frees
them meanwhile; only cycles among them wait for the load's end.

A process that froze objects itself (a pre-fork server, say) keeps its frozen heap as it is.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_holders = 0
_froze = False


@contextmanager
def heap_frozen() -> Iterator[None]:
    """Run the block with the objects alive at its start frozen; nested and concurrent blocks share one
    freeze, thawed when the last of them ends."""
    _enter()
    try:
        yield
    finally:
        _leave()


def _enter() -> None:
    global _holders, _froze
    with _lock:
        if _holders == 0 and gc.get_freeze_count() == 0:
            gc.freeze()
            _froze = True
        _holders += 1


def _leave() -> None:
    global _holders, _froze
    with _lock:
        _holders -= 1
        if _holders == 0 and _froze:
            gc.unfreeze()
            _froze = False
