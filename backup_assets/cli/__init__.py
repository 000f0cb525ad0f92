"""The ``backup-assets`` command line: mirrors ``sentry import|export|backup``.

Each command group lives in a module of its own and registers itself on :data:`main` or :data:`backup`.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import os
import sys
from typing import NoReturn

import click

from .. import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="backup-assets")
def main() -> None:
    """Restore Sentry backups into PostgreSQL, as Sentry's own `sentry import|export|backup` would.

    \b
    Examples:
      backup-assets import global backup.tar --decrypt-with private.pem
      backup-assets export global out.json --dsn postgresql://localhost/sentry
      backup-assets backup compare before.json after.json
    """


@main.group()
def backup() -> None:
    """Work with backup files: encrypt, decrypt, compare.

    \b
    Examples:
      backup-assets backup encrypt backup.tar --src export.json --encrypt-with public.pem
      backup-assets backup compare before.json after.json
    """


COLLECT_AFTER = 100_000
"""The console script's first collector threshold: container objects allocated (net) between two
collections of the youngest generation, 700 by default."""

# Command modules register themselves on `main` / `backup` when imported.
for _name in ("crypto", "imports", "exports", "compare", "rollback", "demo", "ui"):
    importlib.import_module(f"{__name__}.{_name}")


def run() -> NoReturn:
    """The console script: :data:`main`, then an exit that skips tearing the interpreter down.

    Every command closes what it opened (files, connections, the Dagster instance) before it returns;
    what is left at exit is CPython freeing each object of each module one by one, about half a second
    after a Dagster run. As mypy does, the console script leaves once the atexit handlers have run and
    the output is flushed, without that teardown. An error that escapes ``main`` exits the usual way.

    The process runs one command, and most of what it allocates lives until it ends (the modules of
    Dagster, the definitions, the run): collecting cyclic garbage every :data:`COLLECT_AFTER` objects
    rather than every 700, as mypy does, spares it walking that heap again and again.
    """
    gc.set_threshold(COLLECT_AFTER, *gc.get_threshold()[1:])
    try:
        main(prog_name="backup-assets")
    except SystemExit as e:
        _exit_now(e.code)
    _exit_now(0)


def _exit_now(code: object) -> NoReturn:
    """``sys.exit(code)`` without the interpreter's teardown (see :func:`run`)."""
    if isinstance(code, str):
        print(code, file=sys.stderr)
    status = code if isinstance(code, int) else (0 if code is None else 1)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that went away, a stream already closed
            pass
    os._exit(status)
