"""Shared fixtures: one real PostgreSQL for the whole session (the embedded server), a fresh database per test."""

from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path

import psycopg
import pytest

from backup_assets.core.postgres import EmbeddedPostgres, ensure_database

ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.fixture(scope="session")
def pg_server():
    """A PostgreSQL server the suite starts itself (fsync off), stopped and removed at the end."""
    root = Path(tempfile.mkdtemp(prefix="ba-test-pg-"))
    server = EmbeddedPostgres(root / "data", durable=False).start()
    try:
        yield server
    finally:
        server.destroy()
        try:
            root.rmdir()
        except OSError:
            pass


_counter = itertools.count()


@pytest.fixture
def pg_dsn(pg_server, request) -> str:
    """A DSN of a new, empty database on the session's server."""
    name = f"t{os.getpid()}_{next(_counter)}"
    ensure_database(pg_server.dsn("postgres"), name)
    yield pg_server.dsn(name)
    with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


@pytest.fixture
def pg_conn(pg_dsn):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        yield conn
