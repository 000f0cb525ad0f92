"""``backup_assets.core.heap``: the heap alive when a load starts is out of the collector's sight while it
runs, and given back whole when the last load ends; the engine's parse and loads run that way."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest

from backup_assets.core.heap import heap_frozen
from backup_assets.core.restore import Restore
from backup_assets.core.retry import NO_RETRIES
from backup_assets.core.scheduler import load_models
from backup_assets.core.settings import ImportSettings
from backup_assets.core.source import open_backup
from tests.test_engine import MANIFEST, row, write


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


@pytest.fixture(autouse=True)
def _thawed():
    assert gc.get_freeze_count() == 0, "another test left the heap frozen"
    yield
    gc.unfreeze()


def test_a_cycle_alive_at_the_start_is_freed_only_after_the_block():
    node = _Node()
    gone = weakref.ref(node)
    with heap_frozen():
        assert gc.get_freeze_count() > 0
        del node
        gc.collect()
        assert gone() is not None  # frozen: the collector does not see it
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert gone() is None  # thawed with the rest, then collected: nothing leaks


def test_nested_and_concurrent_blocks_share_one_freeze_thawed_by_the_last():
    entered, release = threading.Event(), threading.Event()

    def other() -> None:
        with heap_frozen():
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=other)
    with heap_frozen():
        thread.start()
        entered.wait(10)
        with heap_frozen():
            pass
        assert gc.get_freeze_count() > 0  # the inner block's end thaws nothing
    assert gc.get_freeze_count() > 0  # the other thread's block still runs
    release.set()
    thread.join(10)
    assert gc.get_freeze_count() == 0


def test_a_heap_the_process_froze_itself_stays_frozen():
    gc.freeze()
    frozen = gc.get_freeze_count()
    with heap_frozen():
        pass
    assert gc.get_freeze_count() == frozen > 0


def test_the_parse_and_the_loads_run_with_the_heap_frozen(pg_dsn, tmp_path):
    rows = [row("t.org", 1, slug="a"), row("t.project", 2, organization=1), row("t.key", 3, project=2)]
    restore = Restore(pg_dsn, MANIFEST, "heap-1", ImportSettings(create_schema=True))
    during_parse: list[int] = []
    restore.stage(
        open_backup(write(tmp_path, rows)), progress=lambda done, n: during_parse.append(gc.get_freeze_count())
    )
    assert during_parse and all(during_parse) and gc.get_freeze_count() == 0
    restore.prepare()
    during_loads = [(o.loaded, gc.get_freeze_count()) for o in load_models(restore, restore.plan(), retry=NO_RETRIES)]
    assert during_loads and all(loaded and frozen for loaded, frozen in during_loads), during_loads
    assert gc.get_freeze_count() == 0
