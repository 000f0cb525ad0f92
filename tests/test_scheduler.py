"""The engine's scheduler (``backup_assets.core.scheduler``) against a real PostgreSQL: outcomes as models
finish, a failed model blocking only its dependents, transient errors retried per model."""

from __future__ import annotations

import threading

import psycopg

from backup_assets.core.restore import Restore
from backup_assets.core.retry import NO_RETRIES, RetryPlan, is_transient
from backup_assets.core.scheduler import load_models
from backup_assets.core.settings import ImportSettings
from backup_assets.core.source import open_backup
from tests.test_engine import MANIFEST, row, write

ROWS = [
    row("t.user", 1, username="same"),
    row("t.user", 2, username="same"),  # t.user fails: duplicate username
    row("t.org", 1, slug="a"),
    row("t.project", 2, organization=1),
    row("t.key", 3, project=2),
    row("t.member", 4, organization=1, user_id=1),
    row("t.node", 5, organization=1, parent=None),
]


def _staged(dsn: str, tmp_path, rows=ROWS) -> Restore:
    restore = Restore(dsn, MANIFEST, "sched-1", ImportSettings(create_schema=True))
    restore.stage(open_backup(write(tmp_path, rows)))
    restore.prepare()
    return restore


def test_a_failed_model_blocks_only_its_dependents_and_outcomes_follow_the_fk_graph(pg_dsn, pg_conn, tmp_path):
    restore = _staged(pg_dsn, tmp_path)
    outcomes = list(load_models(restore, restore.plan(), workers=2, retry=NO_RETRIES))
    by_model = {o.model: o for o in outcomes}
    assert sorted(by_model) == sorted(restore.plan()) and len(outcomes) == len(by_model)
    assert "unique key (username) collides" in str(by_model["t.user"].error)
    assert by_model["t.member"].blocked_by == ["t.user"] and not by_model["t.member"].loaded
    loaded = [o.model for o in outcomes if o.loaded]
    assert set(loaded) == {"t.org", "t.template", "t.project", "t.key", "t.node"}
    assert all(c.passed for m in loaded for c in by_model[m].checks), [by_model[m].checks for m in loaded]
    # reported in an order where every model comes after the parents it depends on
    position = {m: i for i, m in enumerate(o.model for o in outcomes)}
    for model in loaded:
        assert all(position[d] < position[model] for d in MANIFEST[model].dependencies if d in position), model
    assert pg_conn.execute("SELECT count(*) FROM t_member").fetchone()[0] == 0  # never attempted
    assert pg_conn.execute("SELECT count(*) FROM t_key").fetchone()[0] == 1


def test_a_transient_error_is_retried_on_a_new_connection_until_the_model_loads(pg_dsn, tmp_path):
    restore = _staged(pg_dsn, tmp_path, [r for r in ROWS if r["pk"] != 2 or r["model"] != "t.user"])
    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # the first insert into t_org kills its own backend
        conn.execute("CREATE SEQUENCE kill_once")
        conn.execute(
            "CREATE FUNCTION kill_once() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF nextval('kill_once') = 1 THEN PERFORM pg_terminate_backend(pg_backend_pid()); "
            "PERFORM pg_sleep(5); END IF; RETURN NEW; END $$"
        )
        conn.execute("CREATE TRIGGER kill_once BEFORE INSERT ON t_org FOR EACH ROW EXECUTE FUNCTION kill_once()")
    retries = []
    outcomes = {
        o.model: o
        for o in load_models(
            restore,
            restore.plan(),
            workers=2,
            retry=RetryPlan(max_retries=2, delay=0.05),
            on_retry=lambda *a: retries.append(a),
        )
    }
    assert all(o.loaded for o in outcomes.values()), {m: o.error for m, o in outcomes.items()}
    assert [(m, n) for m, n, _, _ in retries] == [("t.org", 1)] and is_transient(retries[0][3])
    assert outcomes["t.org"].attempts == 2 and outcomes["t.org"].result.rows_written == 1
    assert {m for m, o in outcomes.items() if o.attempts == 1} == set(outcomes) - {"t.org"}


def test_without_retries_a_transient_error_fails_the_model_and_blocks_its_children(pg_dsn, tmp_path):
    restore = _staged(pg_dsn, tmp_path, [r for r in ROWS if r["pk"] != 2 or r["model"] != "t.user"])
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION kill() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "PERFORM pg_terminate_backend(pg_backend_pid()); PERFORM pg_sleep(5); RETURN NEW; END $$"
        )
        conn.execute("CREATE TRIGGER kill BEFORE INSERT ON t_org FOR EACH ROW EXECUTE FUNCTION kill()")
    outcomes = {o.model: o for o in load_models(restore, restore.plan(), workers=1, retry=NO_RETRIES)}
    assert is_transient(outcomes["t.org"].error)
    assert {m for m, o in outcomes.items() if o.blocked_by} == {
        "t.template",
        "t.project",
        "t.key",
        "t.member",
        "t.node",
    }
    assert outcomes["t.user"].loaded


def test_loads_go_on_while_the_caller_is_busy_with_an_outcome(pg_dsn, tmp_path, monkeypatch):
    """A caller slow to take an outcome (Dagster writing a model's events) does not hold up the loads:
    with one worker, the next load starts while the caller still holds the first outcome."""
    restore = _staged(pg_dsn, tmp_path, [r for r in ROWS if r["pk"] != 2 or r["model"] != "t.user"])
    started: list[str] = []
    second_started = threading.Event()
    load = Restore.load_model

    def load_and_say(self: Restore, model: str):
        started.append(model)
        if len(started) == 2:
            second_started.set()
        return load(self, model)

    monkeypatch.setattr(Restore, "load_model", load_and_say)
    outcomes = load_models(restore, restore.plan(), workers=1, retry=NO_RETRIES)
    first = next(outcomes)
    assert first.loaded and started[0] == first.model
    assert second_started.wait(10), "no load started while the caller held the first outcome"
    rest = [o.model for o in outcomes]
    assert [first.model, *rest] == started and sorted(started) == sorted(restore.plan())
