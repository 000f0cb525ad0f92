"""The event log for an instance that keeps Dagster's events in PostgreSQL
(``backup_assets.postgres_event_log``): dagster-postgres's tables, written through a kept connection."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg
import psycopg
import pytest
import yaml
from dagster_postgres.event_log import PostgresEventLogStorage

from backup_assets import postgres_event_log
from backup_assets.core.postgres import ensure_database
from backup_assets.postgres_event_log import PooledPostgresEventLogStorage
from tests.test_event_log import _planned, check_partition_memory, check_schema_memory, downstream, upstream

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def events_db(pg_server, request) -> str:
    """A fresh database for Dagster's events; its SQLAlchemy URL (psycopg2, as dagster-postgres needs)."""
    name = "events_" + request.node.name.lower()[-40:].replace("-", "_")
    with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    ensure_database(pg_server.dsn("postgres"), name)
    return pg_server.dsn(name).replace("postgresql://", "postgresql+psycopg2://", 1)


def _backends(url: str, settle_at: int | None = None) -> list[int]:
    """The server processes connected to the events database, other than this query's. With ``settle_at``,
    asked again for up to 5 s until there are that many: a client's close ends its server process a few
    milliseconds later (a connection Dagster's run storage just closed may still be listed)."""
    dsn = url.replace("postgresql+psycopg2://", "postgresql://", 1)
    deadline = time.monotonic() + 5
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            pids = [
                r[0]
                for r in conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ]
            if settle_at is None or len(pids) == settle_at or time.monotonic() > deadline:
                return pids
            time.sleep(0.05)


def _shipped_postgres_block(port: int, db_name: str) -> dict:
    """The PostgreSQL block ``dagster.yaml`` ships commented out, uncommented, for a server and database."""
    text = (REPO / "dagster.yaml").read_text()
    block = [line[2:] for line in text[text.index("# run_storage:") :].splitlines()]
    config = yaml.safe_load("\n".join(block))
    db = config["run_storage"]["config"]["postgres_db"]  # one mapping, shared by the three (&dagster_db)
    db.update(port=port, db_name=db_name)
    return config


def _instance(url: str, tmp_path, monkeypatch) -> dg.DagsterInstance:
    """An instance on the shipped PostgreSQL block (runs, schedules and events in one database)."""
    parsed = urlsplit(url)
    monkeypatch.setenv("DAGSTER_PG_HOST", parsed.hostname or "")
    monkeypatch.setenv("DAGSTER_PG_USER", parsed.username or "")
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", parsed.password or "")
    config = _shipped_postgres_block(parsed.port or 5432, parsed.path.lstrip("/"))
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump({"telemetry": {"enabled": False}, **config}))
    return dg.DagsterInstance.from_config(str(tmp_path))


def test_a_run_is_written_through_one_kept_connection_and_reads_back_in_dagster_postgres(
    events_db, tmp_path, monkeypatch
):
    """The block dagster.yaml ships, uncommented: a run's events go through one kept connection, and
    dagster-postgres's own storage reads them back."""
    with _instance(events_db, tmp_path, monkeypatch) as instance:
        assert type(instance.event_log_storage) is PooledPostgresEventLogStorage
        result = dg.materialize([upstream, downstream], instance=instance)
        assert result.success
        written = [e.dagster_event_type for e in instance.all_logs(result.run_id) if e.is_dagster_event]
        assert (
            len(_backends(events_db, settle_at=1)) == 1
        )  # the event log's kept connection; the run storage holds none
    assert _backends(events_db, settle_at=0) == []  # closed with the instance

    plain = PostgresEventLogStorage(events_db, should_autocreate_tables=False)
    assert [e.dagster_event_type for e in plain.get_logs_for_run(result.run_id) if e.is_dagster_event] == written
    [check] = plain.get_asset_check_execution_history(dg.AssetCheckKey(dg.AssetKey("downstream"), "positive"), 10)
    assert check.status.value == "SUCCEEDED"
    plain.dispose()


def test_a_cut_connection_is_replaced_before_the_next_write(events_db, monkeypatch):
    monkeypatch.setattr(postgres_event_log, "IDLE_CHECK_SECONDS", 0.0)  # every use comes after an idle spell
    storage = PooledPostgresEventLogStorage(events_db)
    storage.store_event(_planned("r1", "a"))
    [kept] = _backends(events_db)
    with psycopg.connect(events_db.replace("postgresql+psycopg2://", "postgresql://", 1), autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", [kept])
    storage.store_event(_planned("r1", "b"))  # a server restart or an idle timeout costs a reconnect
    assert len(storage.get_logs_for_run("r1")) == 2
    assert _backends(events_db, settle_at=1) not in ([], [kept])
    storage.dispose()
    assert _backends(events_db, settle_at=0) == []


def test_a_partition_found_is_remembered_briefly_and_tables_found_for_good(events_db, monkeypatch):
    """The same memory as the sqlite event log's: partitions for a moment, tables and columns for good."""
    here, other = PooledPostgresEventLogStorage(events_db), PooledPostgresEventLogStorage(events_db)
    try:
        check_partition_memory(here, other, monkeypatch)
        check_schema_memory(here, PostgresEventLogStorage, monkeypatch)
    finally:
        here.dispose()
        other.dispose()
