"""The restore engine against a real PostgreSQL: parse, staging, FK-ordered load, pk remapping, drops, checks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from backup_assets.core.errors import BackupFormatError, ExportParseError, MissingParentError, TargetError
from backup_assets.core.manifest import Manifest
from backup_assets.core.restore import Restore, run_restore
from backup_assets.core.schema import Constraint
from backup_assets.core.settings import ImportSettings
from backup_assets.core.source import open_backup


def entry(name, table, fks=(), scope="Organization", uniques=(), deps=()):
    return {
        "dangling": False,
        "model": name,
        "relocation_dependencies": list(deps),
        "relocation_scope": scope,
        "silos": ["Region"],
        "table_name": table,
        "uniques": [list(u) for u in uniques],
        "foreign_keys": {f: {"kind": "FlexibleForeignKey", "model": m, "nullable": n} for f, m, n in fks},
    }


#: org <- project <- key (3 levels), org <- team; member -> org (required) + user_id (nullable) + inviter_id;
#: node -> node (self-reference); project has a nullable FK "template" to a model that is never in exports.
MANIFEST = Manifest.from_json(
    {
        "t.user": entry("t.user", "t_user", scope="User", uniques=[["username"]]),
        "t.org": entry("t.org", "t_org", uniques=[["slug"]]),
        "t.template": entry("t.template", "t_template", fks=[("organization", "t.org", False)]),
        "t.project": entry(
            "t.project", "t_project", fks=[("organization", "t.org", False), ("template", "t.template", True)]
        ),
        "t.key": entry("t.key", "t_key", fks=[("project", "t.project", False)]),
        "t.member": entry("t.member", "t_member", fks=[("organization", "t.org", False), ("user_id", "t.user", True)]),
        "t.node": entry("t.node", "t_node", fks=[("parent", "t.node", True), ("organization", "t.org", False)]),
        "t.gone": entry("t.gone", "t_gone", scope="Excluded"),
    }
)


def row(model, pk, **fields):
    return {"model": model, "pk": pk, "fields": fields}


def write(tmp_path, rows, name="export.json", indent=None):
    p = tmp_path / name
    p.write_text(json.dumps(rows, indent=indent))
    return p


def restore(dsn, path, manifest=MANIFEST, workers=None, **settings):
    settings.setdefault("create_schema", True)
    return run_restore(dsn, open_backup(path), manifest, ImportSettings(**settings), workers=workers)


def table(conn, name, order="id"):
    cur = conn.execute(f"SELECT * FROM {name} ORDER BY {order}")
    cols = [d.name for d in cur.description]
    return [dict(zip(cols, r)) for r in cur]


BASIC = [
    row("t.user", 7, username="ann", is_active=True, date_joined="2023-06-22T22:59:55.531Z"),
    row("t.user", 3, username="bob", is_active=False, date_joined="2023-06-22T22:59:55Z"),
    row("t.org", 100, slug="acme", status=0, flags="10", date_added="2023-01-01T00:00:00.000Z"),
    row("t.org", 50, slug="beta", status=1, flags="0", date_added="2023-01-02T00:00:00Z"),
    row("t.project", 9, organization=100, template=None, name="web", platform=None),
    row("t.project", 4, organization=50, name="api"),  # FK field absent -> null
    row("t.key", 1, project=9, data={"rate": [1, 2], "nested": {"a": None}}, public_key="k1"),
    row("t.key", 2, project=4, data={}, public_key="k2"),
    row("t.member", 11, organization=100, user_id=7, role="owner"),
    row("t.member", 12, organization=100, user_id=None, email="invite@example.com", role="member"),
    row("sentry.unknownthing", 1, anything=True),
    row("t.gone", 1, x=1),
]


def test_fk_chains_are_remapped_in_dependency_order_whatever_the_input_order(pg_dsn, pg_conn, tmp_path):
    rows = list(reversed(BASIC))  # children before parents: input need not be ordered or grouped
    result = restore(pg_dsn, write(tmp_path, rows))
    assert result.stage.unknown_models == {"sentry.unknownthing": 1}
    assert result.stage.excluded_models == {"t.gone": 1}
    orgs = {o["slug"]: o for o in table(pg_conn, "t_org")}
    projects = {p["name"]: p for p in table(pg_conn, "t_project")}
    assert projects["web"]["organization_id"] == orgs["acme"]["id"]
    assert projects["api"]["organization_id"] == orgs["beta"]["id"]
    assert projects["web"]["template_id"] is None and projects["api"]["template_id"] is None
    keys = {k["public_key"]: k for k in table(pg_conn, "t_key")}
    assert keys["k1"]["project_id"] == projects["web"]["id"]
    assert keys["k2"]["project_id"] == projects["api"]["id"]
    members = table(pg_conn, "t_member")
    users = {u["username"]: u for u in table(pg_conn, "t_user")}
    assert {m["role"]: m["user_id"] for m in members} == {"owner": users["ann"]["id"], "member": None}
    # new ids follow the order of the old pks (beta pk 50 before acme pk 100; bob pk 3 before ann pk 7)
    assert orgs["beta"]["id"] < orgs["acme"]["id"]
    assert users["bob"]["id"] < users["ann"]["id"]
    # every check passes
    assert all(c.passed for cs in result.checks.values() for c in cs), result.checks


def test_values_are_converted_to_the_column_types(pg_dsn, pg_conn, tmp_path):
    pg_conn.execute("""
        CREATE TABLE t_org (id bigserial PRIMARY KEY, slug varchar(50) UNIQUE NOT NULL, status integer,
            flags bigint, date_added timestamptz, data jsonb, config json, note text, ratio double precision,
            ip inet, tags text[], active boolean)""")
    rows = [
        row(
            "t.org",
            5,
            slug="a",
            status=2,
            flags="12",
            date_added="2023-06-22T22:59:55.531Z",
            data={"x": [1, {"y": None}]},
            config=[1, 2],
            note={"as": "text"},
            ratio=0.25,
            ip="10.0.0.1",
            tags=["p", "q"],
            active=True,
            unknown_field="ignored",
        ),
        row(
            "t.org",
            6,
            slug="b",
            status=None,
            flags="0",
            date_added="2023-06-22T22:59:55Z",
            data=None,
            config={"k": "v"},
            note="plain",
            ratio=3,
            ip=None,
            tags=[],
            active=False,
        ),
    ]
    result = restore(pg_dsn, write(tmp_path, rows), create_schema=False)
    assert result.loads["t.org"].skipped_fields == ["unknown_field"]
    a, b = table(pg_conn, "t_org")
    assert a["flags"] == 12 and b["flags"] == 0
    assert a["date_added"].isoformat() == "2023-06-22T22:59:55.531000+00:00"
    assert b["date_added"].isoformat() == "2023-06-22T22:59:55+00:00"
    assert a["data"] == {"x": [1, {"y": None}]} and b["data"] is None
    assert a["config"] == [1, 2] and b["config"] == {"k": "v"}
    assert json.loads(a["note"]) == {"as": "text"} and b["note"] == "plain"
    assert a["ratio"] == 0.25 and b["ratio"] == 3.0
    assert str(a["ip"]) == "10.0.0.1" and b["ip"] is None
    assert a["tags"] == ["p", "q"] and b["tags"] == []
    assert a["active"] is True and b["active"] is False
    # the sequence is past max(id), so the application can insert afterwards
    new_id = pg_conn.execute("INSERT INTO t_org (slug) VALUES ('c') RETURNING id").fetchone()[0]
    assert new_id > max(a["id"], b["id"])


def test_create_mode_infers_types_and_keeps_mixed_json_values(pg_dsn, pg_conn, tmp_path):
    rows = [
        row("t.user", 1, username="a", n=1, big=2**40, f=1.5, when="2023-06-22T22:59:55.531Z", mixed=1, s="x"),
        row("t.user", 2, username="b", n=2, big=3, f=2, when="2023-06-22T22:59:55Z", mixed="1", s=None),
    ]
    restore(pg_dsn, write(tmp_path, rows))
    types = dict(
        pg_conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 't_user'"
        ).fetchall()
    )
    assert types["n"] == "bigint" and types["big"] == "bigint" and types["f"] == "numeric"
    assert types["when"] == "timestamp with time zone" and types["s"] == "text" and types["mixed"] == "jsonb"
    mixed = [r[0] for r in pg_conn.execute("SELECT mixed FROM t_user ORDER BY id")]
    assert mixed == [1, "1"]  # each value keeps its own JSON type


def test_rows_whose_parents_are_missing_are_dropped_with_their_descendants_and_counted(pg_dsn, pg_conn, tmp_path):
    rows = [
        row("t.org", 1, slug="a"),
        row("t.project", 10, organization=1, name="ok"),
        row("t.project", 11, organization=999, name="orphan"),  # parent not in the export
        row("t.key", 20, project=11, public_key="grandchild"),  # its child: parent was dropped
        row("t.key", 21, project=10, public_key="fine"),
        row("t.member", 30, organization=1, user_id=77, role="x"),
    ]  # nullable FK to a missing user
    result = restore(pg_dsn, write(tmp_path, rows))
    p, k, m = result.loads["t.project"], result.loads["t.key"], result.loads["t.member"]
    assert (p.rows_read, p.rows_written, p.rows_dropped) == (2, 1, 1)
    assert p.dropped == {"missing parent: t.org (organization) is not in the import": 1}
    assert p.dropped_sample == [
        {"pk": 11, "row": 2, "reason": "missing parent: t.org (organization) is not in the import"}
    ]
    assert k.dropped == {"missing parent: t.project (project) was dropped": 1}
    assert m.rows_dropped == 1  # a non-null FK to a missing row drops the row, as Sentry does
    assert [x["name"] for x in table(pg_conn, "t_project")] == ["ok"]
    assert [x["public_key"] for x in table(pg_conn, "t_key")] == ["fine"]
    checks = {c.name: c for c in result.checks["t.project"]}
    assert checks["counts_reconcile"].passed and not checks["no_rows_dropped"].passed
    assert checks["no_rows_dropped"].severity == "ERROR"


def test_self_references_are_remapped_and_broken_chains_dropped(pg_dsn, pg_conn, tmp_path):
    rows = [
        row("t.org", 1, slug="a"),
        row("t.node", 5, organization=1, parent=None, name="root"),
        row("t.node", 3, organization=1, parent=5, name="child"),  # points at a later, larger pk
        row("t.node", 8, organization=1, parent=3, name="grandchild"),
        row("t.node", 9, organization=1, parent=404, name="lost"),
        row("t.node", 10, organization=1, parent=9, name="lost-child"),
    ]
    result = restore(pg_dsn, write(tmp_path, rows))
    nodes = {n["name"]: n for n in table(pg_conn, "t_node")}
    assert set(nodes) == {"root", "child", "grandchild"}
    assert nodes["child"]["parent_id"] == nodes["root"]["id"]
    assert nodes["grandchild"]["parent_id"] == nodes["child"]["id"]
    assert result.loads["t.node"].rows_dropped == 2


def test_preserve_pks_keeps_every_key_and_refuses_taken_keys_before_writing(pg_dsn, pg_conn, tmp_path):
    path = write(tmp_path, BASIC)
    restore(pg_dsn, path, preserve_pks=True)
    assert sorted(o["id"] for o in table(pg_conn, "t_org")) == [50, 100]
    assert sorted(k["id"] for k in table(pg_conn, "t_key")) == [1, 2]
    before = pg_conn.execute("SELECT count(*) FROM t_user").fetchone()[0]
    with pytest.raises(TargetError, match=r"t.org: primary keys 50, 100 are already taken"):
        restore(pg_dsn, path, preserve_pks=True, scope="organizations")
    assert pg_conn.execute("SELECT count(*) FROM t_user").fetchone()[0] == before


def test_a_model_load_is_idempotent_and_a_child_needs_its_parents(pg_dsn, pg_conn, tmp_path):
    r = Restore(pg_dsn, MANIFEST, "imp-1", ImportSettings(create_schema=True))
    r.stage(open_backup(write(tmp_path, BASIC)))
    r.prepare()
    with pytest.raises(MissingParentError, match="t.org"):
        r.load_model("t.project")
    for m in ("t.user", "t.org", "t.template", "t.project"):
        first = r.load_model(m)
        assert not first.already_loaded
    again = r.load_model("t.project")
    assert again.already_loaded and again.rows_written == first.rows_written == 2
    assert pg_conn.execute("SELECT count(*) FROM t_project").fetchone()[0] == 2
    # a later process (a new Restore object) loads a child through the persisted maps
    r2 = Restore(pg_dsn, MANIFEST, "imp-1", ImportSettings(create_schema=True))
    key = r2.load_model("t.key")
    assert key.rows_written == 2 and key.rows_dropped == 0
    r2.finish()
    assert not r2.is_staged()


@pytest.mark.parametrize(
    "text, words, row",
    [
        ('{"model": "t.org"}', "JSON export starts with '\\['", None),
        ("", "empty", None),
        ('[{"model": "t.org", "pk": 1, "fields": {}}, 3]', "a row must be an object", 1),
        ('[{"model": "t.org", "pk": "1", "fields": {}}]', "'pk' must be a 64-bit integer", 0),
        ('[{"model": "t.org", "pk": 1, "fields": []}]', "'fields' must be an object", 0),
        ('[{"model": 5, "pk": 1, "fields": {}}]', "'model' must be a string", 0),
        ('[{"model": "t.project", "pk": 1, "fields": {"organization": ["acme"]}}]', "natural keys", 0),
        (
            '[{"model": "t.org", "pk": 1, "fields": {"slug": "a"}}, {"model": "t.org", "pk": 1, "fields": {}}]',
            "pk 1 appears more than once",
            1,
        ),
        ('[{"model": "t.org", "pk": 1, "fields": {"slug": "a"}}, {"model": "t.org", "pk": 2, "fi', "malformed JSON", 1),
        ('[{"model": "t.org", "pk": 1, "fields": {"slug": "a"}}] trailing', "malformed JSON", None),
    ],
)
def test_malformed_exports_are_named_and_leave_nothing_behind(pg_dsn, pg_conn, tmp_path, text, words, row):
    p = tmp_path / "bad.json"
    p.write_text(text)
    with pytest.raises((ExportParseError, BackupFormatError), match=words) as e:
        restore(pg_dsn, p)
    if row is not None:
        assert e.value.row == row and f"row {row}" in str(e.value)
    # a byte offset where the parser saw it (a duplicate pk is found after the whole stream, by the index)
    assert e.value.offset is not None or "empty" in str(e.value) or "more than once" in str(e.value)
    leftovers = pg_conn.execute(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'backup_assets' AND tablename LIKE 'stage_%'"
    ).fetchone()[0]
    assert leftovers == 0
    assert pg_conn.execute("SELECT to_regclass('t_org')").fetchone()[0] is None


def test_invalid_values_name_the_model_row_and_field_and_write_nothing(pg_dsn, pg_conn, tmp_path):
    pg_conn.execute("CREATE TABLE t_org (id bigserial PRIMARY KEY, slug text, status integer)")
    rows = [row("t.org", i, slug=f"s{i}", status=i) for i in range(1, 50)]
    rows.append(row("t.org", 50, slug="bad", status="not-a-number"))
    with pytest.raises(Exception) as e:
        restore(pg_dsn, write(tmp_path, rows), create_schema=False)
    msg = str(e.value)
    assert "t.org" in msg and "row 49" in msg and "'status'" in msg and "not-a-number" in msg
    assert pg_conn.execute("SELECT count(*) FROM t_org").fetchone()[0] == 0


def test_hostile_names_reach_no_sql(pg_server, pg_dsn, pg_conn, tmp_path):
    """Field and model names with quotes, semicolons, unicode and 10,000 characters are skipped and reported,
    and the server's statement log (every statement and its parameters) never sees them."""
    hostile = ['x"; DROP TABLE t_org; --', "é🙂'", "z" * 10000, "a b"]
    rows = [row("t.org", 1, slug="a", **{h: 1 for h in hostile}), *[row(h, 1, v=1) for h in hostile]]
    dbname = pg_dsn.rsplit("/", 1)[1]
    pg_conn.execute(f"ALTER DATABASE \"{dbname}\" SET log_statement = 'all'")
    log = pg_server.data_dir / "server.log"
    start = log.stat().st_size
    result = restore(pg_dsn, write(tmp_path, rows))
    assert pg_conn.execute("SELECT slug FROM t_org").fetchall() == [("a",)]
    assert sum(result.stage.unknown_models.values()) == 4
    assert all(name.startswith("<unusual model name") for name in result.stage.unknown_models)
    assert len(result.loads["t.org"].skipped_fields) == 4
    with open(log, "rb") as f:
        f.seek(start)
        logged = f.read().decode("utf-8", "replace")
    assert "INSERT INTO" in logged  # the log does record our statements...
    for h in hostile:  # ...and none of them carries a hostile name
        assert h not in logged and h.lower() not in logged


KILL_SCRIPT = textwrap.dedent("""
    import sys
    from backup_assets.core.restore import Restore
    from backup_assets.core.settings import ImportSettings
    from tests.test_engine import MANIFEST
    r = Restore(sys.argv[1], MANIFEST, "killed", ImportSettings(create_schema=True))
    print("loading", flush=True)
    r.load_model("t.key")
""")


def test_a_load_killed_mid_model_leaves_nothing_and_the_rerun_is_exact(pg_dsn, pg_conn, tmp_path):
    n = 150_000
    rows = [row("t.org", 1, slug="a"), row("t.project", 1, organization=1, name="p")]
    rows += [row("t.key", i, project=1, public_key=f"k{i}", data={"i": i}) for i in range(1, n + 1)]
    r = Restore(pg_dsn, MANIFEST, "killed", ImportSettings(create_schema=True))
    r.stage(open_backup(write(tmp_path, rows)))
    r.prepare()
    for m in ("t.user", "t.org", "t.template", "t.project"):
        r.load_model(m)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, pg_dsn], env=env, stdout=subprocess.PIPE)
    deadline = time.monotonic() + 60
    seen = False
    while time.monotonic() < deadline and not seen:  # wait until the load is writing rows, then kill it
        seen = pg_conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'backup-assets' "
            "AND query LIKE 'INSERT INTO \"public\".\"t_key\"%' AND state = 'active'"
        ).fetchone()[0]
        time.sleep(0.02)
    assert seen, "the load never reached its INSERT"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    pg_conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'backup-assets' "
        "AND pid <> pg_backend_pid()"
    )
    assert pg_conn.execute("SELECT count(*) FROM t_key").fetchone()[0] == 0
    assert pg_conn.execute("SELECT count(*) FROM backup_assets.pk_map WHERE model = 't.key'").fetchone()[0] == 0
    result = r.load_model("t.key")
    assert (result.rows_read, result.rows_written, result.already_loaded) == (n, n, False)
    assert pg_conn.execute("SELECT count(*), count(DISTINCT public_key) FROM t_key").fetchone() == (n, n)


def test_create_mode_adds_the_columns_a_table_created_from_no_rows_lacks(pg_dsn, pg_conn, tmp_path):
    restore(pg_dsn, write(tmp_path, [row("t.org", 1, slug="a")], "first.json"))  # t_user created bare
    assert "username" not in {
        r[0] for r in pg_conn.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 't_user'")
    }
    result = restore(
        pg_dsn, write(tmp_path, [row("t.user", 5, username="zed", is_active=True)], "second.json"), scope="users"
    )
    assert result.loads["t.user"].skipped_fields == []
    assert pg_conn.execute("SELECT username, is_active FROM t_user").fetchall() == [("zed", True)]


def test_the_types_seen_while_parsing_are_the_types_the_staged_rows_call_for(pg_dsn, pg_conn, tmp_path):
    """Create mode takes column types from what the parse saw; reading the staged rows back says the same."""
    from backup_assets.core.schema import infer_field_types
    from backup_assets.core.staging import staging_ident

    rows = [
        row(
            "t.user",
            1,
            username="a",
            n=1,
            big=2**62,
            f=1.5,
            when="2023-06-22T22:59:55.531Z",
            mixed=1,
            s="x",
            obj={"a": 1},
            lst=[1],
            flag=True,
            nothing=None,
            mostly_dates="2023-06-22T22:59:55Z",
            dated_line="2023-06-22T22:59:55Z\n",
        ),
        row(
            "t.user",
            2,
            username="b",
            n=-2,
            big=3,
            f=2,
            when="2023-06-22T22:59:55Z",
            mixed="1",
            s=None,
            obj=None,
            lst=[],
            flag=False,
            nothing=None,
            mostly_dates="not a date",
            dated_line="2023-06-22T22:59:55Z",
        ),
    ]
    r = Restore(pg_dsn, MANIFEST, "types", ImportSettings(create_schema=True))
    staged = r.stage(open_backup(write(tmp_path, rows)))
    from_sql = infer_field_types(pg_conn, staging_ident("types"), "t.user")
    assert staged.fields["t.user"] == from_sql
    assert (
        from_sql["big"] == "bigint"
        and from_sql["f"] == "numeric"
        and from_sql["mostly_dates"] == "text"
        and from_sql["obj"] == "jsonb"
    )
    assert (
        from_sql["dated_line"] == "text"
    )  # a trailing newline is not part of a datetime (a timestamptz would drop it)


def constraints_of(conn, table):
    """(kind, columns, referenced table) of every unique and foreign-key constraint of ``table``."""
    return sorted(
        conn.execute(
            "SELECT c.contype::text, array_agg(a.attname::text ORDER BY a.attnum), c.confrelid::regclass::text "
            "FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey) "
            "WHERE c.conrelid = %s::regclass AND c.contype IN ('u', 'f') GROUP BY c.oid, c.contype, c.confrelid",
            (table,),
        ).fetchall()
    )


@pytest.fixture
def defer_from_one_row(monkeypatch):
    """Constraints after the rows for every table with rows (by default only for thousands of rows)."""
    from backup_assets.core import restore as restore_module

    monkeypatch.setattr(restore_module, "DEFER_CONSTRAINTS_AT", 1)


@pytest.mark.parametrize("deferred", [True, False], ids=["after the rows", "with the table"])
def test_create_mode_builds_the_manifests_constraints_once_the_rows_are_in(
    pg_dsn, pg_conn, tmp_path, deferred, monkeypatch
):
    """Tables with many rows get their uniques and FKs after the insert (in its transaction), tables with
    few rows or none get them with the table; either way the same constraints, and nothing stays pending."""
    from backup_assets.core import constraints as constraints_module
    from backup_assets.core import restore as restore_module

    monkeypatch.setattr(restore_module, "DEFER_CONSTRAINTS_AT", 1 if deferred else 10**9)
    built_after = []
    original = constraints_module.apply_pending

    def apply_pending(conn, schema, table):
        added = original(conn, schema, table)
        built_after.extend((table, c) for c in added)
        return added

    monkeypatch.setattr(constraints_module, "apply_pending", apply_pending)
    result = restore(pg_dsn, write(tmp_path, BASIC))
    if deferred:
        assert ("t_org", Constraint("u", ("slug",))) in built_after
        assert ("t_key", Constraint("f", ("project_id",), "t_project")) in built_after
        assert not any(table == "t_template" for table, _ in built_after)  # no rows: with the table
    else:
        assert built_after == []
    assert all(c.passed for cs in result.checks.values() for c in cs), result.checks
    assert constraints_of(pg_conn, "t_org") == [("u", ["slug"], "-")]
    assert constraints_of(pg_conn, "t_user") == [("u", ["username"], "-")]
    assert constraints_of(pg_conn, "t_project") == [
        ("f", ["organization_id"], "t_org"),
        ("f", ["template_id"], "t_template"),
    ]
    assert constraints_of(pg_conn, "t_template") == [("f", ["organization_id"], "t_org")]  # no rows: at once
    assert constraints_of(pg_conn, "t_node") == [("f", ["organization_id"], "t_org"), ("f", ["parent_id"], "t_node")]
    assert pg_conn.execute("SELECT count(*) FROM backup_assets.pending_constraint").fetchone()[0] == 0
    # they hold: the database refuses what the manifest forbids
    import psycopg

    with pytest.raises(psycopg.errors.UniqueViolation):
        pg_conn.execute("INSERT INTO t_org (slug) VALUES ('acme')")
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        pg_conn.execute("INSERT INTO t_key (project_id) VALUES (999999)")


def test_a_duplicate_found_by_a_deferred_unique_fails_its_model_and_writes_nothing_of_it(
    pg_dsn, pg_conn, tmp_path, defer_from_one_row
):
    from backup_assets.core.errors import UniqueViolationError

    rows = [row("t.org", 1, slug="same"), row("t.org", 2, slug="same"), row("t.project", 3, organization=1)]
    r = Restore(pg_dsn, MANIFEST, "dup", ImportSettings(create_schema=True))
    r.stage(open_backup(write(tmp_path, rows)))
    r.prepare()
    with pytest.raises(UniqueViolationError, match=r"t\.org: unique key \(slug\) collides: slug='same'"):
        r.load_model("t.org")
    assert pg_conn.execute("SELECT count(*) FROM t_org").fetchone()[0] == 0
    assert pg_conn.execute("SELECT count(*) FROM backup_assets.pk_map WHERE model = 't.org'").fetchone()[0] == 0
    # the constraint still waits for a load of t_org that succeeds
    assert pg_conn.execute(
        "SELECT kind::text, columns FROM backup_assets.pending_constraint WHERE table_name = 't_org'"
    ).fetchall() == [("u", ["slug"])]
    assert constraints_of(pg_conn, "t_org") == []


def _dump(dsn, manifest):
    """Every restored table's rows, in id order, by table name."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        out = {}
        for model in manifest.relocatable():
            t = manifest[model].table_name
            if conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f'"{t}"',)).fetchone()[0]:
                out[t] = conn.execute(f'SELECT * FROM "{t}" ORDER BY id').fetchall()
        return out


def test_models_loaded_concurrently_give_exactly_the_rows_of_one_at_a_time(pg_server, tmp_path, defer_from_one_row):
    """Independent models load at once (two workers, each its own connection, constraints built after the
    rows: the path where loads lock each other's parents); the tables end up identical, ids included, to a
    restore loading one model at a time."""
    from backup_assets.core.postgres import ensure_database
    from backup_assets.demo import synthetic

    manifest = Manifest.builtin()
    path = tmp_path / "synthetic.json"
    synthetic.write_export(path, synthetic.generate_rows(scale=3))
    results = {}
    for workers in (1, 2):
        name = f"conc_{os.getpid()}_{workers}"
        ensure_database(pg_server.dsn("postgres"), name)
        dsn = pg_server.dsn(name)
        results[workers] = (
            run_restore(dsn, open_backup(path), manifest, ImportSettings(create_schema=True), workers=workers),
            _dump(dsn, manifest),
        )
    (one, rows_one), (two, rows_two) = results[1], results[2]
    assert sum(r.rows_written for r in two.loads.values()) == two.stage.rows > 400
    assert list(two.loads) == list(one.loads)  # results in plan order, whatever the finishing order
    assert {m: (r.rows_read, r.rows_written, r.dropped) for m, r in two.loads.items()} == {
        m: (r.rows_read, r.rows_written, r.dropped) for m, r in one.loads.items()
    }
    assert rows_two == rows_one
    assert all(c.passed for cs in two.checks.values() for c in cs), two.checks


def test_a_failing_model_blocks_only_its_dependents_and_is_raised(pg_dsn, pg_conn, tmp_path):
    """t.user fails (a duplicate username); t.org and its descendants do not depend on it and still load.
    The failure is raised once the loads finish, no dependent of t.user is attempted, and the staging is gone."""
    from backup_assets.core.errors import UniqueViolationError

    rows = [
        row("t.user", 1, username="same"),
        row("t.user", 2, username="same"),
        row("t.org", 1, slug="a"),
        row("t.project", 2, organization=1),
        row("t.key", 3, project=2),
        row("t.member", 4, organization=1, user_id=1),
    ]
    with pytest.raises(UniqueViolationError, match=r"t\.user: unique key \(username\) collides"):
        restore(pg_dsn, write(tmp_path, rows), workers=2)
    assert pg_conn.execute("SELECT count(*) FROM t_user").fetchone()[0] == 0
    assert pg_conn.execute("SELECT count(*) FROM t_member").fetchone()[0] == 0  # waits for t.user: never started
    loaded = {r[0] for r in pg_conn.execute("SELECT model FROM backup_assets.load_record")}
    assert "t.user" not in loaded and "t.member" not in loaded
    assert {"t.org", "t.project", "t.key"} <= loaded  # independent of t.user: loaded all the same
    assert (
        pg_conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'backup_assets' AND tablename LIKE 'stage%'"
        ).fetchone()[0]
        == 0
    )


def test_concurrent_loads_ride_out_a_tight_lock_timeout(pg_server, tmp_path, defer_from_one_row):
    """With the target's lock_timeout at 1 ms, two loads adding foreign keys to the same parent at once make
    one of them time out; it rolls back whole and is tried again, and the restore completes exactly."""
    import psycopg

    from backup_assets.core.postgres import ensure_database
    from backup_assets.demo import synthetic

    manifest = Manifest.builtin()
    path = tmp_path / "synthetic.json"
    synthetic.write_export(path, synthetic.generate_rows(scale=4))
    name = f"locks_{os.getpid()}"
    ensure_database(pg_server.dsn("postgres"), name)
    with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE \"{name}\" SET lock_timeout = '1ms'")
    result = run_restore(
        pg_server.dsn(name), open_backup(path), manifest, ImportSettings(create_schema=True), workers=2
    )
    assert sum(r.rows_written for r in result.loads.values()) == result.stage.rows
    assert all(c.passed for cs in result.checks.values() for c in cs), result.checks


@pytest.mark.parametrize("deferred", [True, False], ids=["after the rows", "with the table"])
def test_sentrys_conditional_uniques_become_partial_indexes(pg_dsn, pg_conn, tmp_path, deferred, monkeypatch):
    """Sentry makes saved-search names unique among global searches only (and the (organization, owner,
    type) key among pinned ones): created as full uniques they refused a second organization import of the
    same export. Both are partial unique indexes, and the second import restores its searches."""
    from backup_assets.core import restore as restore_module
    from backup_assets.demo import synthetic

    monkeypatch.setattr(restore_module, "DEFER_CONSTRAINTS_AT", 1 if deferred else 10**9)
    manifest = Manifest.builtin()
    path = tmp_path / "synthetic.json"
    synthetic.write_export(path, synthetic.generate_rows())
    run_restore(pg_dsn, open_backup(path), manifest, ImportSettings(create_schema=True))
    again = run_restore(pg_dsn, open_backup(path), manifest, ImportSettings(scope="organizations"))
    assert again.loads["sentry.savedsearch"].rows_written == 2  # the organizations' searches, again
    indexes = {r[0] for r in pg_conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'sentry_savedsearch'")}
    assert any("(is_global, name) WHERE (is_global = true)" in d for d in indexes), indexes
    assert any("(organization_id, owner_id, type) WHERE (visibility = 'owner_pinned'" in d for d in indexes), indexes
    import psycopg

    with pytest.raises(psycopg.errors.UniqueViolation):  # global names stay unique
        pg_conn.execute(
            "INSERT INTO sentry_savedsearch (name, is_global, query, type) "
            "SELECT name, true, query, type FROM sentry_savedsearch WHERE is_global LIMIT 1"
        )


def test_pk_maps_of_an_older_state_schema_are_carried_into_the_scoped_layout(pg_dsn, pg_conn, tmp_path):
    """A target restored by an earlier version holds one pk map table keyed by (import id, model, old pk) text;
    the state schema is brought up to date in place: every row kept under its (import, model) scope, readable
    through the pk_map view as before, and restores go on on top of it."""
    from backup_assets.core.state import ensure_state

    pg_conn.execute("CREATE SCHEMA backup_assets")
    pg_conn.execute("""CREATE TABLE backup_assets.pk_map (import_id text COLLATE "C" NOT NULL,
        model text COLLATE "C" NOT NULL, old_pk bigint NOT NULL, new_pk bigint, kind "char" NOT NULL,
        PRIMARY KEY (import_id, model, old_pk))""")
    old = [
        ("imp-a", "t.org", 100, 1, "I"),
        ("imp-a", "t.org", 50, None, "D"),
        ("imp-a", "t.project", 9, 3, "E"),
        ("imp-b", "t.org", 100, 7, "O"),
    ]
    with pg_conn.cursor() as cur:
        cur.executemany("INSERT INTO backup_assets.pk_map VALUES (%s, %s, %s, %s, %s)", old)
    ensure_state(pg_conn)
    assert (
        pg_conn.execute("SELECT relkind::text FROM pg_class WHERE oid = 'backup_assets.pk_map'::regclass").fetchone()[0]
        == "v"
    )
    assert pg_conn.execute("SELECT to_regclass('backup_assets.pk_map_by_text')").fetchone()[0] is None
    assert sorted(
        pg_conn.execute("SELECT import_id, model, old_pk, new_pk, kind::text FROM backup_assets.pk_map").fetchall(),
        key=str,
    ) == sorted(old, key=str)
    assert pg_conn.execute("SELECT count(*) FROM backup_assets.pk_scope").fetchone()[0] == 3
    ensure_state(pg_conn)  # once up to date, nothing more happens
    r = restore(pg_dsn, write(tmp_path, BASIC))
    assert r.loads["t.key"].rows_written == 2
    assert pg_conn.execute("SELECT count(*) FROM backup_assets.pk_map WHERE import_id = %s", (r.import_id,)).fetchone()[
        0
    ] == sum(n for n in r.stage.rows_per_model.values())
