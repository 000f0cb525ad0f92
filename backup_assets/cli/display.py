"""What a restore shows on the terminal: live bars (rich) on a terminal, periodic plain lines otherwise.

It listens to the engine's progress events (``backup_assets.core.progress``): the parse stage in bytes
of the export, then each model's load in rows, with an overall bar over every staged row whose rate
and ETA come from the staged counts.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from ..core.progress import ProgressEvent, listening


class _Live:
    """Live bars: one for the parse stage, one overall, one per model being or having been loaded."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bytes = Progress(
            TextColumn("{task.description:<28}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.rows = Progress(
            TextColumn("{task.description:<28}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.parse: TaskID | None = None
        self.total: TaskID | None = None
        self.models: dict[str, TaskID] = {}
        self.started: dict[str, float] = {}

    def __call__(self, e: ProgressEvent) -> None:
        if e.stage == "parse":
            if self.parse is None:
                self.parse = self.bytes.add_task("decrypt + parse + stage", total=e.total)
            self.bytes.update(self.parse, completed=e.done, total=e.total if e.total and e.total >= e.done else None)
            return
        if e.stage == "plan":
            if self.total is None and e.total:
                self.total = self.rows.add_task("all models", total=e.total, rate="")
            return
        if e.stage != "load" or not e.total:
            return
        if e.name not in self.models:
            self.models[e.name] = self.rows.add_task(e.name, total=e.total, rate="")
            self.started[e.name] = time.monotonic()
        if e.finished:
            secs = max(time.monotonic() - self.started[e.name], 1e-6)
            self.rows.update(self.models[e.name], completed=e.done, rate=f"{e.done / secs:,.0f} rows/s")
            if self.total is not None:
                self.rows.advance(self.total, e.total)

    @contextmanager
    def shown(self) -> Iterator[None]:
        with self.bytes, self.rows:
            yield


class _Plain:
    """Without a terminal: a line every ``every`` seconds, as Sentry prints "Still importing..."."""

    def __init__(self, every: float = 5.0) -> None:
        self.every = every
        self.parsed = 0
        self.rows = 0
        self.model = ""
        self.started = time.monotonic()
        self._stop = threading.Event()

    def __call__(self, e: ProgressEvent) -> None:
        if e.stage == "parse":
            self.parsed = e.done
        elif e.stage == "load":
            self.model = e.name
            if e.finished:
                self.rows += e.done

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            print(
                f"Still importing: {time.monotonic() - self.started:.0f} s elapsed, "
                f"{_size(self.parsed)} parsed, {self.rows} rows loaded" + (f", at {self.model}" if self.model else ""),
                file=sys.stderr,
                flush=True,
            )

    @contextmanager
    def shown(self) -> Iterator[None]:
        t = threading.Thread(target=self._tick, daemon=True)
        t.start()
        try:
            yield
        finally:
            self._stop.set()


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


@contextmanager
def restore_progress(silent: bool) -> Iterator[None]:
    """Show the progress of the restore run inside this block (nothing when ``silent``)."""
    if silent:
        yield
        return
    console = Console(file=sys.stderr)
    display = _Live(console) if console.is_terminal else _Plain()
    with listening(display), display.shown():
        yield
