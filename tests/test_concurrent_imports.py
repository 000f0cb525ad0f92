"""Imports that run at the same time into one database, as real ``backup-assets import`` processes: they
end with the rows that the same imports run one after the other give (in some order), slugs and usernames
renamed as Sentry renames them, and no foreign key dangling. A lock wait that times out says so and names
the import holding the lock."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from backup_assets.core.errors import TargetError
from backup_assets.core.locks import GlobalImportUnfinished, LockWaitTimeout, lock_table
from backup_assets.core.manifest import Manifest
from backup_assets.core.postgres import ensure_database
from backup_assets.core.restore import Restore, run_restore
from backup_assets.core.rollback import rollback
from backup_assets.core.semantics import REGENERATED, SECRETS
from backup_assets.core.settings import ImportSettings
from backup_assets.core.source import open_backup
from backup_assets.demo import synthetic
from backup_assets.run import failure_message, materialize_restore
from backup_assets.translator import PARSED_EXPORT_KEY

SCRIPT = Path(sys.executable).with_name("backup-assets")
MANIFEST = Manifest.builtin()
ROUNDS = 2
ROWS = list(synthetic.generate_rows(orgs=2, users=4, projects_per_org=1, teams_per_org=1, members_per_org=3, options=2))
#: Columns whose values each import draws at random (secrets regenerated on collision, reset passwords and
#: hashes, fresh identifiers): not compared.
VOLATILE = (
    {rw.column for rws in SECRETS.values() for rw in rws}
    | {d for rws in SECRETS.values() for rw in rws for d in rw.derived}
    | {c for cols in REGENERATED.values() for c in cols}
    | {"password", "validation_hash", "date_hash_added"}
)
#: Values renamed on collision: (table, column) -> the export's values (a rename is ``value-xxxx``).
RENAMED = {
    (MANIFEST[m].table_name, f): {r["fields"][f] for r in ROWS if r["model"] == m}
    for m, f in (("sentry.organization", "slug"), ("sentry.user", "username"))
}


@pytest.fixture
def export(tmp_path: Path) -> Path:
    path = tmp_path / "export.json"
    synthetic.write_export(path, ROWS)
    return path


def _database(pg_server, name: str) -> str:
    name = f"{name}_{os.getpid()}"
    with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    ensure_database(pg_server.dsn("postgres"), name)
    return pg_server.dsn(name)


def _snapshot(dsn: str) -> dict[str, Counter]:
    """Every relocatable table's rows as a multiset of id-free fingerprints: a row's own values (volatile
    ones left out, renamed ones brought back to their base) and, for each foreign key, the fingerprint of
    the row it points to. Asserts that no foreign key dangles and that renamed values are unique and of
    Sentry's form (``base`` or ``base-xxxx``)."""
    tables: dict[str, str] = {}
    for model in MANIFEST.relocatable():
        tables.setdefault(MANIFEST[model].table_name, model)
    with psycopg.connect(dsn) as conn:
        rows = {
            t: {
                r[0]["id"]: r[0]
                for r in conn.execute(sql.SQL("SELECT to_jsonb(t) FROM {} t").format(sql.Identifier(t)))
            }
            for t in tables
            if conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f'public."{t}"',)).fetchone()[0]
        }
    for (table, column), bases in RENAMED.items():
        values = [r[column] for r in rows.get(table, {}).values()]
        assert len(values) == len(set(values)), f"{table}.{column} repeats a value: {sorted(values)}"
        for v in values:
            assert v in bases or (re.fullmatch(r".+-[0-9a-f]{4}", v) and v[:-5] in bases), f"{table}.{column}: {v!r}"
    memo: dict[tuple[str, int], str] = {}

    def fingerprint(table: str, row_id: int) -> str:
        if (table, row_id) not in memo:
            spec = MANIFEST[tables[table]]
            row = rows[table][row_id]
            fks = {fk.column: fk for fk in spec.foreign_keys}
            out = {k: v for k, v in row.items() if k != "id" and k not in fks and k not in VOLATILE}
            for (t, column), bases in RENAMED.items():
                if t == table and out.get(column) not in bases:
                    out[column] = out[column][:-5]
            for column, fk in fks.items():
                parent, value = MANIFEST[fk.model].table_name, row.get(column)
                if value is not None and parent in rows:
                    assert value in rows[parent], f"{table}.{column} = {value} dangles (no such {parent}.id)"
                    value = fingerprint(parent, value)
                out[column] = value
            memo[table, row_id] = hashlib.sha256(json.dumps(out, sort_keys=True).encode()).hexdigest()
        return memo[table, row_id]

    return {t: Counter(fingerprint(t, i) for i in by_id) for t, by_id in rows.items()}


def _sequential(dsn: str, export: Path, scopes: list[str]) -> list[dict[str, Counter]]:
    """The snapshot after each of the imports ``scopes`` run one after the other (create mode)."""
    out = []
    for scope in scopes:
        settings = ImportSettings(scope=scope, create_schema=True, replace_existing=scope == "global")
        run_restore(dsn, open_backup(export), MANIFEST, settings)
        out.append(_snapshot(dsn))
    return out


def _start(dsn: str, export: Path, command: str, err) -> subprocess.Popen:
    """``backup-assets import SCOPE [FLAGS] EXPORT`` into ``dsn``, its output to the file ``err``."""
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    return subprocess.Popen(
        [SCRIPT, "import", *command.split(), export, "--dsn", dsn, "--no-prompt", "--silent"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=err,
        stderr=err,
    )


def _import_at_once(dsn: str, export: Path, commands: list[str]) -> None:
    """Start one ``backup-assets import SCOPE [FLAGS]`` process per command at once; every one must exit 0."""
    with ExitStack() as stack:
        errs = [stack.enter_context(tempfile.TemporaryFile("w+")) for _ in commands]  # files: no pipe fills up
        procs = [_start(dsn, export, c, err) for c, err in zip(commands, errs)]
        codes = [p.wait(timeout=300) for p in procs]
        failed = []
        for command, code, err in zip(commands, codes, errs):
            err.seek(0)
            if code:
                failed.append((command, code, err.read().strip()[-800:]))
    assert not failed, failed


@pytest.mark.timeout(600)  # twelve import processes, each starting Dagster
def test_concurrent_cli_imports_end_as_if_run_one_after_the_other(pg_server, export):
    """Each round: three organization imports at once into a fresh database in create mode (they race to
    create the tables and to take the same slugs), then, into those tables, two more with a global import
    among them (it waits for the running ones and runs alone; the later ones wait for it)."""
    three_orgs = _sequential(_database(pg_server, "seq_orgs"), export, ["organizations"] * 3)[-1]
    after_global = _sequential(_database(pg_server, "seq_global"), export, ["global", "organizations", "organizations"])
    assert sum(three_orgs["sentry_organization"].values()) == 6
    for _ in range(ROUNDS):
        dsn = _database(pg_server, "concurrent")
        _import_at_once(dsn, export, ["organizations --create-schema"] * 3)
        assert _snapshot(dsn) == three_orgs
        # the organizations' tables exist; the global import creates the instance-wide ones it needs
        _import_at_once(dsn, export, ["organizations", "global --create-schema", "organizations"])
        assert _snapshot(dsn) in after_global  # the global one came after none, one or both of the others


#: One import by the engine alone (no Dagster), two models loading at once, every table created in create
#: mode getting its constraints after its rows (the path where a load locks its parent tables).
ENGINE_CHILD = """
import sys
from backup_assets.core import restore
from backup_assets.core.manifest import Manifest
from backup_assets.core.settings import ImportSettings
from backup_assets.core.source import open_backup
restore.DEFER_CONSTRAINTS_AT = 1
restore.run_restore(sys.argv[1], open_backup(sys.argv[2]), Manifest.builtin(),
                    ImportSettings(scope="organizations", create_schema=True), workers=2)
"""


def test_engine_imports_at_once_with_two_loads_each_end_as_if_run_one_after_the_other(pg_server, export):
    """The locks of concurrent imports and the engine's own two concurrent loads per import take theirs in
    one order (import, database, table, then a load's parent tables): three imports at once, each loading
    two models at a time and building constraints after the rows, neither deadlock nor differ from a
    sequential run."""
    three_orgs = _sequential(_database(pg_server, "seq_engine"), export, ["organizations"] * 3)[-1]
    for _ in range(ROUNDS):
        dsn = _database(pg_server, "engine_at_once")
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", ENGINE_CHILD, dsn, str(export)],
                stdin=subprocess.DEVNULL,
                cwd=Path(__file__).parent.parent,
            )
            for _ in range(3)
        ]
        assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
        assert _snapshot(dsn) == three_orgs


def test_a_lock_wait_that_times_out_names_the_import_holding_the_lock(pg_dsn, export):
    """With the target's lock_timeout at 300 ms: an import waiting for a table another import is loading,
    or for a global import to finish, fails saying which lock it waited for and which import holds it,
    and writes nothing."""
    run_restore(pg_dsn, open_backup(export), MANIFEST, ImportSettings(create_schema=True))
    tight = pg_dsn + "?options=-c%20lock_timeout%3D300"
    orgs = ImportSettings(scope="organizations")
    holder = Restore(pg_dsn, MANIFEST, "holding-import", orgs)
    with holder.connect() as conn, conn.transaction():
        lock_table(conn, "public", "sentry_organization")
        with pytest.raises(
            LockWaitTimeout,
            match=r"lock_timeout \(300ms\) for the load lock of table "
            r"public\.sentry_organization, held by import holding-import \(pid \d+\)",
        ):
            run_restore(tight, open_backup(export), MANIFEST, orgs)
    with (
        Restore(pg_dsn, MANIFEST, "global-import", ImportSettings(scope="global")).hold(),
        pytest.raises(
            LockWaitTimeout,
            match=r"lock_timeout \(300ms\) for the import lock \(a global import "
            r"runs alone\), held by import global-import \(pid \d+\)",
        ),
    ):
        run_restore(tight, open_backup(export), MANIFEST, orgs)
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM sentry_organization").fetchone()[0] == 2


def test_a_table_created_meanwhile_by_a_session_taking_no_lock_is_a_clear_error(pg_dsn, export):
    """Create mode's DDL is serialised against other imports; a session outside them (no lock of ours)
    creating the same table at the same moment makes the prepare fail with a message saying so, not as an
    unexpected error, and nothing of the import's DDL stays."""
    restore = Restore(pg_dsn, MANIFEST, "racing", ImportSettings(create_schema=True))
    restore.stage(open_backup(export))
    outcome: list[BaseException | None] = []

    def prepare() -> None:
        try:
            restore.prepare()
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - checked below
            outcome.append(e)

    with psycopg.connect(pg_dsn) as other, psycopg.connect(pg_dsn, autocommit=True) as watch:
        other.execute("CREATE TABLE sentry_organization (id bigint)")  # not committed yet
        worker = threading.Thread(target=prepare)
        worker.start()
        deadline = time.monotonic() + 30
        while (
            time.monotonic() < deadline
            and not watch.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'backup-assets' "
                "AND wait_event_type = 'Lock'"
            ).fetchone()[0]
        ):
            time.sleep(0.02)
        other.commit()
        worker.join(30)
        assert isinstance(outcome[0], TargetError), outcome
        assert "another session created the same table or column at the same time" in str(outcome[0])
        assert watch.execute("SELECT to_regclass('auth_user')").fetchone()[0] is None


def test_only_ddl_and_a_global_wipe_wait_for_the_loads_running(pg_dsn, export, tmp_path):
    """While another import's load runs (it holds the database-wide lock shared), a create-mode import whose
    tables and columns all exist goes through; one that must add a column, and a global import, wait for
    it (here: until the 300 ms lock_timeout, naming the loading import)."""
    from backup_assets.core.locks import lock_database

    run_restore(pg_dsn, open_backup(export), MANIFEST, ImportSettings(create_schema=True))
    tight = pg_dsn + "?options=-c%20lock_timeout%3D300"
    wider = [dict(r, fields={**r["fields"], "extra_note": "x"}) if r["model"] == "sentry.team" else r for r in ROWS]
    synthetic.write_export(tmp_path / "wider.json", wider)
    loading = Restore(pg_dsn, MANIFEST, "loading-import", ImportSettings(scope="organizations"))
    with loading.connect() as conn, conn.transaction():
        lock_database(conn, exclusive=False)
        done = run_restore(
            tight, open_backup(export), MANIFEST, ImportSettings(scope="organizations", create_schema=True)
        )
        assert done.loads["sentry.organization"].rows_written == 2
        for path, settings in (
            (tmp_path / "wider.json", ImportSettings(scope="organizations", create_schema=True)),
            (export, ImportSettings(scope="global", replace_existing=True)),
        ):
            with pytest.raises(
                LockWaitTimeout,
                match=r"for the database-wide import lock .*, held by import "
                r"loading-import \(pid \d+\)",
            ):
                run_restore(tight, open_backup(path), MANIFEST, settings)
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM sentry_organization").fetchone()[0] == 4
        assert conn.execute(
            "SELECT to_regclass('sentry_team') IS NOT NULL AND NOT EXISTS (SELECT FROM "
            "information_schema.columns WHERE column_name = 'extra_note')"
        ).fetchone()[0]


GLOBAL = ImportSettings(scope="global", create_schema=True, replace_existing=True)
ORGS = ImportSettings(scope="organizations")
#: The global import's run stopped after ``parsed_export`` (wipe done, marker written), and the rest of it.
STAGES = dg.AssetSelection.assets(PARSED_EXPORT_KEY).upstream()
REST = dg.AssetSelection.all() - STAGES


def _marker(dsn: str) -> tuple | None:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT import_id, run_id FROM backup_assets.global_import").fetchone()


def _orgs(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM sentry_organization").fetchone()[0]


def _wait_until_waiting_for_a_lock(dsn: str, proc: subprocess.Popen, err) -> None:
    """Until ``proc`` waits for an advisory lock in ``dsn`` (it must not exit meanwhile)."""
    deadline = time.monotonic() + 120
    with psycopg.connect(dsn, autocommit=True) as watch:
        while not watch.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND "
            "database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchone()[0]:
            if proc.poll() is not None or time.monotonic() > deadline:
                err.seek(0)
                pytest.fail(f"the import did not wait for the lock (exit code {proc.poll()}): {err.read()[-800:]}")
            time.sleep(0.05)


@pytest.mark.timeout(600)
def test_a_dagster_global_import_runs_alone_between_its_steps_and_within_them(pg_server, export, tmp_path):
    """A global import run in Dagster (a real instance) stopped after ``parsed_export``: the database is
    emptied, no process holds a lock, the marker stands. A CLI organizations import then fails at once,
    naming the global import and its run and saying what to do, and so does another Dagster run; neither
    writes anything. The rest of the global
    import (a second run of the partition, as a re-execution from failure is) goes through; a CLI import
    that starts while it runs (the test holds the global import's lock, as the process driving its steps
    does) waits for it and then imports. The end state is that of the imports run one after the other."""
    reference = _sequential(_database(pg_server, "seq_dagster"), export, ["organizations", "global", "organizations"])
    dsn = _database(pg_server, "dagster_global")
    run_restore(dsn, open_backup(export), MANIFEST, ImportSettings(scope="organizations", create_schema=True))
    (tmp_path / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:
        stages = materialize_restore(
            export, dsn, GLOBAL, manifest=MANIFEST, import_id="nightly-global", instance=instance, selection=STAGES
        )
        assert stages.success, failure_message(stages)
        assert _marker(dsn) == ("nightly-global", stages.run_id) and _orgs(dsn) == 0

        with tempfile.TemporaryFile("w+") as err:
            assert _start(dsn, export, "organizations", err).wait(timeout=300) == 1
            err.seek(0)
            said = err.read()
        assert f"global import nightly-global (Dagster run {stages.run_id}, began " in said, said
        assert (
            f"re-execute run {stages.run_id} from failure" in said and "backup-assets rollback nightly-global" in said
        )
        other = materialize_restore(export, dsn, ORGS, manifest=MANIFEST, import_id="other-orgs", instance=instance)
        assert failure_message(other).startswith(
            "sentry_backup__parsed_export: import lock: GlobalImportUnfinished: global import nightly-global "
        ), failure_message(other)
        assert _orgs(dsn) == 0

        with tempfile.TemporaryFile("w+") as err:
            with Restore(dsn, MANIFEST, "nightly-global", GLOBAL).hold():
                waiting = _start(dsn, export, "organizations", err)
                _wait_until_waiting_for_a_lock(dsn, waiting, err)
                rest = materialize_restore(
                    export,
                    dsn,
                    GLOBAL,
                    manifest=MANIFEST,
                    import_id="nightly-global",
                    instance=instance,
                    selection=REST,
                )
                assert rest.success, failure_message(rest)
                assert _marker(dsn) is None and waiting.poll() is None
            assert waiting.wait(timeout=300) == 0, err.seek(0) or err.read()[-800:]
    assert _snapshot(dsn) == reference[-1]


def test_a_global_import_that_failed_mid_way_keeps_other_imports_out_until_it_is_finished(pg_server, export):
    """A global import that emptied the database and loaded part of it, then stopped: every other import
    but a global one fails naming it and writes nothing; the same import run again (same id) is let
    through and finishes it; then the others go on, ending as the imports run one after the other do."""
    reference = _sequential(_database(pg_server, "seq_failed"), export, ["organizations", "global", "organizations"])
    dsn = _database(pg_server, "failed_global")
    run_restore(dsn, open_backup(export), MANIFEST, ImportSettings(scope="organizations", create_schema=True))
    failed = Restore(dsn, MANIFEST, "nightly", GLOBAL, run_id="run-1")
    with failed.hold():
        failed.stage(open_backup(export))
        failed.prepare()
        failed.load_model("sentry.user")
    with pytest.raises(
        GlobalImportUnfinished,
        match=r"^global import nightly \(Dagster run run-1, began .*\) has "
        r"emptied this database and not finished.*--import-id nightly",
    ):
        run_restore(dsn, open_backup(export), MANIFEST, ORGS)
    assert _orgs(dsn) == 0
    run_restore(dsn, open_backup(export), MANIFEST, GLOBAL, import_id="nightly")
    assert _marker(dsn) is None
    run_restore(dsn, open_backup(export), MANIFEST, ORGS)
    assert _snapshot(dsn) == reference[-1]


def test_a_new_global_import_replaces_one_that_failed_mid_way_which_then_cannot_resume(pg_server, export):
    """Last night's global import (a drill, say) emptied the database, loaded part of it and stopped. Tonight's
    global import, a new id, replaces the database as a global import does and takes the marker's place:
    it succeeds, the organizations import after it runs, and the end state is that of the imports run one
    after the other. Re-running last night's import then fails, saying it cannot be resumed, and writes
    nothing."""
    reference = _sequential(_database(pg_server, "seq_replaced"), export, ["organizations", "global", "organizations"])
    dsn = _database(pg_server, "replaced_global")
    run_restore(dsn, open_backup(export), MANIFEST, ImportSettings(scope="organizations", create_schema=True))
    failed = Restore(dsn, MANIFEST, "last-night", GLOBAL, run_id="run-1")
    with failed.hold():
        failed.stage(open_backup(export))
        failed.prepare()
        failed.load_model("sentry.user")
    assert _marker(dsn) == ("last-night", "run-1")
    run_restore(dsn, open_backup(export), MANIFEST, GLOBAL, import_id="tonight")
    assert _marker(dsn) is None
    run_restore(dsn, open_backup(export), MANIFEST, ORGS)
    assert _snapshot(dsn) == reference[-1]
    with pytest.raises(
        TargetError,
        match=r"^global import last-night was ended after it emptied the database "
        r"\(rolled back, or replaced by a later global import\), so it cannot "
        r"be resumed",
    ):
        run_restore(dsn, open_backup(export), MANIFEST, GLOBAL, import_id="last-night")
    assert _snapshot(dsn) == reference[-1]


@pytest.mark.timeout(300)
def test_a_cli_global_import_that_failed_mid_way_says_how_to_finish_it_and_finishes(pg_server, export):
    """``backup-assets import global`` failing after its wipe (a trigger refuses the organizations) says that
    the database is partly restored and how to finish it; run again with ``--import-id``, it finishes, and
    the database ends as after the same imports run without a failure."""
    reference = _sequential(_database(pg_server, "seq_cli_failed"), export, ["organizations", "global"])
    dsn = _database(pg_server, "cli_failed")
    run_restore(dsn, open_backup(export), MANIFEST, ImportSettings(scope="organizations", create_schema=True))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "RAISE EXCEPTION 'refused by the test'; END $$"
        )
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON sentry_organization FOR EACH ROW EXECUTE FUNCTION refuse()"
        )
    with tempfile.TemporaryFile("w+") as err:
        assert _start(dsn, export, "global --create-schema --import-id nightly", err).wait(timeout=120) == 1
        err.seek(0)
        said = " ".join(err.read().split())
    assert "refused by the test" in said and "partly restored" in said, said
    assert "run it again with --import-id nightly to finish it" in said and "backup-assets rollback nightly" in said
    assert _marker(dsn)[0] == "nightly"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TRIGGER refuse ON sentry_organization")
    _import_at_once(dsn, export, ["global --create-schema --import-id nightly"])
    assert _marker(dsn) is None
    assert _snapshot(dsn) == reference[-1]


def test_a_global_import_rolled_back_after_its_wipe_lets_the_others_in_and_cannot_resume(pg_dsn, export):
    """``backup-assets rollback`` of a global import that stopped mid-way removes what it loaded and its
    marker: other imports run again; the rolled-back import itself is refused, not resumed on top of them."""
    failed = Restore(pg_dsn, MANIFEST, "nightly", GLOBAL)
    with failed.hold():
        failed.stage(open_backup(export))
        failed.prepare()
        failed.load_model("sentry.user")
    assert rollback(pg_dsn, "nightly", MANIFEST).deleted["sentry.user"] == 4
    assert _marker(pg_dsn) is None
    with pytest.raises(
        TargetError, match=r"global import nightly was ended after it emptied the database \(rolled back, or replaced"
    ):
        run_restore(pg_dsn, open_backup(export), MANIFEST, GLOBAL, import_id="nightly")
    run_restore(pg_dsn, open_backup(export), MANIFEST, ORGS)
    assert _orgs(pg_dsn) == 2


def test_the_session_bookkeeping_holds_only_sessions_that_are_alive(pg_dsn, export):
    """``backup_assets.session`` does not grow with every import: each session recorded prunes the rows of
    the sessions that have ended."""
    for scope in ("global", "organizations", "organizations"):
        run_restore(pg_dsn, open_backup(export), MANIFEST, ImportSettings(scope=scope, create_schema=True), workers=2)
    with psycopg.connect(pg_dsn, autocommit=True) as watch:
        recorded = watch.execute("SELECT count(*) FROM backup_assets.session").fetchone()[0]
        deadline = time.monotonic() + 30
        while (
            watch.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'backup-assets'").fetchone()[
                0
            ]
            and time.monotonic() < deadline
        ):
            time.sleep(0.02)  # the backends of closed connections exit on their own
        with Restore(pg_dsn, MANIFEST, "one-more", ORGS).open_connection() as conn:
            me = conn.execute("SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()").fetchone()
            rows = watch.execute("SELECT pid, backend_start, import_id FROM backup_assets.session").fetchall()
    assert recorded > 1  # the imports' sessions were recorded while they ran
    assert rows == [(*me, "one-more")]
