"""Export from a real PostgreSQL: Sentry's format, filters, scopes, encryption, memory, and the CLI."""

from __future__ import annotations

import json
import re
import tracemalloc
from collections import defaultdict

import psycopg
import pytest
from click.testing import CliRunner

from backup_assets.cli import main
from backup_assets.core import keys
from backup_assets.core.compare import compare, iter_export
from backup_assets.core.decryptors import PemDecryptor, PemEncryptor
from backup_assets.core.errors import ConfigurationError, TargetError
from backup_assets.core.export import export_rows, export_to, format_datetime, iter_json
from backup_assets.core.manifest import Manifest
from backup_assets.core.restore import run_restore
from backup_assets.core.roundtrip import canonical_datetimes
from backup_assets.core.settings import ImportSettings
from backup_assets.core.source import open_backup
from backup_assets.demo import synthetic
from tests.corpus import manifest_entry

BUILTIN = Manifest.builtin()


def entry(name, table, fks=(), scope="Organization"):
    """A manifest model whose foreign keys, (field, model) pairs, are all nullable."""
    return manifest_entry(name, table, tuple((f, m, True) for f, m in fks), scope)


#: x.thing is listed first but depends on x.org: the export must still write x.org first.
TYPED = Manifest.from_json(
    {
        "x.thing": entry("x.thing", "x_thing", fks=[("organization", "x.org"), ("owner_id", "x.person")]),
        "x.org": entry("x.org", "x_org"),
        "x.person": entry("x.person", "x_person", scope="User"),
        "x.node": entry("x.node", "x_node", fks=[("parent", "x.node")]),
        "x.hidden": entry("x.hidden", "x_hidden", scope="Excluded"),
    }
)

TYPED_DDL = """
CREATE TABLE x_org (id bigint PRIMARY KEY, slug text, flags varchar(10), status int);
CREATE TABLE x_person (id bigint PRIMARY KEY, username text);
CREATE TABLE x_thing (id bigint PRIMARY KEY, organization_id bigint, owner_id bigint, created timestamptz,
                      naive timestamp, day date, data jsonb, raw json, amount numeric, ratio float8, whole numeric,
                      guid uuid, ip inet, tags text[], blob bytea, ok boolean);
CREATE TABLE x_node (id bigint PRIMARY KEY, parent_id bigint);
CREATE TABLE x_hidden (id bigint PRIMARY KEY);
INSERT INTO x_org VALUES (2, 'b', '10', 0), (1, 'a', '0', 1);
INSERT INTO x_person VALUES (7, 'pat');
INSERT INTO x_thing VALUES
  (30, 2, 7, '2023-06-22 22:59:55.531987+02', '2023-06-22 22:59:55', '2023-06-22', '{"a": [1, 2.5, null]}', '"s"',
   1.25, 0.5, 12, 'b8f5d2a8-3a7c-4ed0-9a57-0f7d3c7a5e11', '10.0.0.1', '{x,y}', '\\x00ff', true),
  (10, 1, NULL, '2023-01-01 00:00:00+00', NULL, NULL, 'null', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, false),
  (20, 99, 7, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
INSERT INTO x_node VALUES (1, 3), (2, NULL), (3, 2), (4, 5);
INSERT INTO x_hidden VALUES (1);
"""


def typed(conn):
    conn.execute(TYPED_DDL)
    return list(export_rows(conn, TYPED, "global"))


def by_model(rows):
    out = defaultdict(list)
    for row in rows:
        out[row["model"]].append(row)
    return out


def restored(dsn, tmp_path, rows, **settings):
    path = tmp_path / "src.json"
    synthetic.write_export(path, rows)
    settings.setdefault("create_schema", True)
    result = run_restore(dsn, open_backup(path), BUILTIN, ImportSettings(**settings))
    return path, result


# -- format -----------------------------------------------------------------------------------------


def test_values_are_written_in_the_json_types_the_columns_hold(pg_conn):
    rows = typed(pg_conn)
    thing = {r["pk"]: r["fields"] for r in rows if r["model"] == "x.thing"}[30]
    assert thing == {
        "organization": 2,
        "owner_id": 7,
        "created": "2023-06-22T20:59:55.531Z",
        "naive": "2023-06-22T22:59:55.000Z",
        "day": "2023-06-22",
        "data": {"a": [1, 2.5, None]},
        "raw": "s",
        "amount": 1.25,
        "ratio": 0.5,
        "whole": 12,
        "guid": "b8f5d2a8-3a7c-4ed0-9a57-0f7d3c7a5e11",
        "ip": "10.0.0.1",
        "tags": ["x", "y"],
        "blob": "AP8=",
        "ok": True,
    }
    assert type(thing["whole"]) is int
    orgs = [r for r in rows if r["model"] == "x.org"]
    assert [(r["pk"], r["fields"]) for r in orgs] == [
        (1, {"slug": "a", "flags": "0", "status": 1}),
        (2, {"slug": "b", "flags": "10", "status": 0}),
    ]


def test_models_in_dependency_order_pks_ascending_and_excluded_models_left_out(pg_conn):
    rows = typed(pg_conn)
    models = [r["model"] for r in rows]
    assert models == sorted(models, key=lambda m: TYPED.sorted_models().index(m))
    assert models.index("x.org") < models.index("x.thing")
    assert "x.hidden" not in models
    for model, group in by_model(rows).items():
        pks = [r["pk"] for r in group]
        assert pks == sorted(pks), model


def test_rows_whose_foreign_keys_point_at_unexported_rows_are_left_out(pg_conn):
    groups = by_model(typed(pg_conn))
    assert [r["pk"] for r in groups["x.thing"]] == [10, 30]  # 20 points at organization 99
    assert [r["pk"] for r in groups["x.node"]] == [1, 2, 3]  # 4 -> 5 does not exist; 1 -> 3 -> 2 does
    assert groups["x.thing"][0]["fields"]["data"] is None  # a JSON null is null


def test_scope_selects_the_models(pg_conn):
    pg_conn.execute(TYPED_DDL)
    users = {r["model"] for r in export_rows(pg_conn, TYPED, "users")}
    assert users == {"x.person"}
    with pytest.raises(ConfigurationError, match="scope 'everything'"):
        list(export_rows(pg_conn, TYPED, "everything"))


def test_datetime_format_truncates_to_milliseconds():
    from datetime import datetime, timedelta, timezone

    moment = datetime(2023, 6, 22, 22, 59, 55, 531999, tzinfo=timezone(timedelta(hours=-3)))
    assert format_datetime(moment) == "2023-06-23T01:59:55.531Z"
    assert format_datetime(datetime(2023, 1, 1)) == "2023-01-01T00:00:00.000Z"


def test_non_finite_numbers_are_an_error_naming_the_row(pg_conn):
    pg_conn.execute("CREATE TABLE x_org (id bigint PRIMARY KEY, status float8); INSERT INTO x_org VALUES (4, 'NaN')")
    with pytest.raises(TargetError, match=r"x.org pk 4: field 'status'"):
        list(export_rows(pg_conn, TYPED, "global"))


def test_json_text_like_sentry_export():
    rows = [{"model": "a.b", "pk": 1, "fields": {"x": "é"}}, {"model": "a.b", "pk": 2, "fields": {}}]
    text = b"".join(iter_json(rows)).decode()
    assert (
        text == '[\n  {\n    "model": "a.b",\n    "pk": 1,\n    "fields": {\n      "x": "é"\n    }\n  },\n'
        '  {\n    "model": "a.b",\n    "pk": 2,\n    "fields": {}\n  }\n]\n'
    )
    assert json.loads(b"".join(iter_json(rows, None))) == rows
    assert b"".join(iter_json([])) == b"[]\n"


# -- round trip of generated data ------------------------------------------------------------------


def test_export_after_restore_equals_the_original(pg_dsn, tmp_path):
    src, _ = restored(pg_dsn, tmp_path, synthetic.generate_rows(orgs=3, users=7, seed=5))
    with psycopg.connect(pg_dsn) as conn:
        counts = export_to(tmp_path / "out.json", export_rows(conn, BUILTIN, "global"))
    with open(src, "rb") as f:
        left = list(iter_export(f))
    with open(tmp_path / "out.json", "rb") as f:
        right = list(iter_export(f))
    assert sum(counts.values()) == len(right) == len(left)
    # the originals without milliseconds are the only differences Sentry's validator would see
    raw = compare(left, right, BUILTIN)
    removed = [line for f in raw for line in f.reason.splitlines() if line.startswith("-  ")]
    assert raw and {f.kind.name for f in raw} == {"UnequalJSON"}
    assert removed and all(re.search(r'T\d\d:\d\d:\d\dZ",?$', line) for line in removed)
    assert compare(list(canonical_datetimes(left)), right, BUILTIN) == []
    member = next(r for r in right if r["model"] == "sentry.organizationmember")
    assert "organization" in member["fields"] and "user_id" in member["fields"]
    assert "organization_id" not in member["fields"]


# -- filters ----------------------------------------------------------------------------------------


def _closed(rows, manifest=BUILTIN):
    """Every non-null FK of every row (inviter_id aside) points at an exported row."""
    pks = defaultdict(set)
    for row in rows:
        pks[row["model"]].add(row["pk"])
        for fk in manifest[row["model"]].foreign_keys:
            value = row["fields"].get(fk.field)
            if value is not None and fk.field != "inviter_id":
                assert value in pks[fk.model], (row, fk)


def test_filter_org_slugs_keeps_the_organization_its_members_and_their_data(pg_dsn, tmp_path):
    src_rows = list(synthetic.generate_rows(orgs=3, users=6, seed=1))
    restored(pg_dsn, tmp_path, src_rows)
    with psycopg.connect(pg_dsn) as conn:
        rows = list(export_rows(conn, BUILTIN, "organizations", filter_org_slugs=["globex"]))
    groups = by_model(rows)
    assert [r["fields"]["slug"] for r in groups["sentry.organization"]] == ["globex"]
    org = groups["sentry.organization"][0]["pk"]
    member_users = {
        r["fields"]["user_id"]
        for r in src_rows
        if r["model"] == "sentry.organizationmember"
        and r["fields"]["organization"] == org
        and r["fields"]["user_id"] is not None
    }
    assert {r["pk"] for r in groups["sentry.user"]} == member_users
    assert {r["fields"]["organization"] for r in groups["sentry.project"]} == {org}
    assert "sentry.option" not in groups  # config models are not in this scope
    emails = {r["fields"]["email"] for r in groups["sentry.email"]}
    assert emails == {r["fields"]["email"] for r in groups["sentry.user"]}
    _closed(rows)


def test_filter_usernames_and_the_config_scope(pg_dsn, tmp_path):
    restored(pg_dsn, tmp_path, synthetic.generate_rows(orgs=2, users=5, seed=1))
    with psycopg.connect(pg_dsn) as conn:
        users = by_model(export_rows(conn, BUILTIN, "users", filter_usernames=["bob@example.com", "nobody"]))
        config = by_model(export_rows(conn, BUILTIN, "config"))
        none = by_model(export_rows(conn, BUILTIN, "users", filter_usernames=[]))
    assert [r["fields"]["username"] for r in users["sentry.user"]] == ["bob@example.com"]
    assert {r["fields"]["user"] for r in users["sentry.useremail"]} == {users["sentry.user"][0]["pk"]}
    assert [r["fields"]["email"] for r in users["sentry.email"]] == ["bob@example.com"]
    assert set(users) <= {"sentry.user", "sentry.email", "sentry.useremail", "sentry.useroption", "sentry.userip"}
    # config: only privileged users (alice is staff, superuser and holds a permission), all options
    assert [r["fields"]["username"] for r in config["sentry.user"]] == ["alice@example.com"]
    assert len(config["sentry.option"]) == 3 and "sentry.organization" not in config
    assert none == {}


def test_inviter_id_never_filters(pg_conn):
    manifest = Manifest.from_json(
        {
            "sentry.user": entry("sentry.user", "u", scope="User"),
            "sentry.organizationmember": entry(
                "sentry.organizationmember", "m", fks=[("inviter_id", "sentry.user"), ("user_id", "sentry.user")]
            ),
        }
    )
    pg_conn.execute(
        "CREATE TABLE u (id bigint PRIMARY KEY, username text);"
        "CREATE TABLE m (id bigint PRIMARY KEY, user_id bigint, inviter_id bigint);"
        "INSERT INTO u VALUES (1, 'a'), (2, 'b'); INSERT INTO m VALUES (1, 1, 2), (2, 2, 1)"
    )
    rows = list(export_rows(pg_conn, manifest, "global", filter_usernames=["a"]))
    assert [(r["model"], r["pk"], r["fields"]) for r in rows] == [
        ("sentry.user", 1, {"username": "a"}),
        ("sentry.organizationmember", 1, {"user_id": 1, "inviter_id": 2}),
    ]


def test_import_id_restricts_to_the_rows_that_import_wrote(pg_dsn, tmp_path):
    org = next(r for r in synthetic.generate_rows(orgs=1) if r["model"] == "sentry.organization")
    org["fields"].update(slug="zzz", name="Zzz")
    _, first = restored(pg_dsn, tmp_path, [org])
    _, second = restored(pg_dsn, tmp_path, synthetic.generate_rows(orgs=1, users=2, seed=4), scope="organizations")
    with psycopg.connect(pg_dsn) as conn:
        everything = list(export_rows(conn, BUILTIN, "global"))
        one = list(export_rows(conn, BUILTIN, "global", import_id=second.import_id))
        assert [
            (r["model"], r["fields"]["slug"]) for r in export_rows(conn, BUILTIN, "global", import_id=first.import_id)
        ] == [("sentry.organization", "zzz")]
        wrote = {
            (m, pk)
            for m, pk in conn.execute(
                "SELECT model, new_pk FROM backup_assets.pk_map WHERE import_id = %s AND kind IN ('I', 'O')",
                (second.import_id,),
            )
        }
    assert {(r["model"], r["pk"]) for r in one} == wrote
    assert 0 < len(one) < len(everything)
    assert {r["model"] for r in one} <= {m for m in BUILTIN.models if BUILTIN[m].in_scope("organizations")}


# -- encryption, memory -----------------------------------------------------------------------------


def test_encrypted_export_decrypts_to_the_same_rows(pg_conn, tmp_path):
    private, public = keys.generate_key_pair()
    rows = typed(pg_conn)
    export_to(tmp_path / "out.tar", iter(rows), encryptor=PemEncryptor(public))
    backup = open_backup(tmp_path / "out.tar", PemDecryptor(private))
    assert backup.kind == "tarball"
    with backup.open_plaintext() as stream:
        assert list(iter_export(stream)) == json.loads(json.dumps(rows))
    assert [p.name for p in tmp_path.iterdir()] == ["out.tar"]  # no plaintext, no temp file left


def test_export_streams_in_constant_memory(pg_conn, tmp_path):
    manifest = Manifest.from_json(
        {"x.org": entry("x.org", "x_org"), "x.thing": entry("x.thing", "x_thing", fks=[("organization", "x.org")])}
    )
    pg_conn.execute(
        "CREATE TABLE x_org (id bigint PRIMARY KEY, slug text);"
        "CREATE TABLE x_thing (id bigint PRIMARY KEY, organization_id bigint, name text);"
        "INSERT INTO x_org SELECT g, 'org-' || g FROM generate_series(1, 1000) g;"
        "INSERT INTO x_thing SELECT g, 1 + g % 1000, repeat('n', 60) FROM generate_series(1, 50000) g"
    )

    def peak(rows: int) -> int:
        pg_conn.execute("DELETE FROM x_thing WHERE id > %s", (rows,))
        tracemalloc.start()
        try:
            counts = export_to(
                tmp_path / "out.json", export_rows(pg_conn, manifest, "global", itersize=500), indent=None
            )
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            assert counts["x.thing"] == rows

    big = peak(50000)
    small = peak(5000)
    assert big < 4 * 1024 * 1024
    assert big < small * 1.5 + 256 * 1024  # ten times the rows, about the same memory


# -- CLI --------------------------------------------------------------------------------------------


def test_cli_export_to_file_stdout_and_encrypted(pg_dsn, tmp_path):
    src, _ = restored(pg_dsn, tmp_path, synthetic.generate_rows(orgs=1, users=2, seed=2))
    runner = CliRunner()
    out = tmp_path / "out.json"
    result = runner.invoke(
        main, ["export", "global", str(out), "--dsn", pg_dsn, "--findings-file", str(tmp_path / "f.json")]
    )
    assert result.exit_code == 0, result.output
    assert "Exported" in result.stderr and json.loads((tmp_path / "f.json").read_text()) == []
    compared = runner.invoke(main, ["backup", "compare", str(src), str(out)])
    assert "Done, found" in compared.output

    stdout = runner.invoke(main, ["export", "users", "-", "--dsn", pg_dsn, "--silent", "--indent", "0"])
    assert stdout.exit_code == 0 and stdout.stderr == ""
    assert {r["model"] for r in json.loads(stdout.stdout)} <= {
        "sentry.user",
        "sentry.email",
        "sentry.useremail",
        "sentry.useroption",
        "sentry.userip",
    }
    private, public = keys.generate_key_pair()
    (tmp_path / "pub.pem").write_bytes(public)
    enc = runner.invoke(
        main,
        [
            "export",
            "organizations",
            str(tmp_path / "o.tar"),
            "--dsn",
            pg_dsn,
            "--filter-org-slugs",
            "acme",
            "--encrypt-with",
            str(tmp_path / "pub.pem"),
        ],
    )
    assert enc.exit_code == 0, enc.output
    with open_backup(tmp_path / "o.tar", PemDecryptor(private)).open_plaintext() as stream:
        orgs = [r for r in iter_export(stream) if r["model"] == "sentry.organization"]
    assert [r["fields"]["slug"] for r in orgs] == ["acme"]


def test_cli_errors(pg_dsn, tmp_path):
    runner = CliRunner()
    usage = runner.invoke(main, ["export", "global", "x.json", "--filter-org-slugs", "a", "--dsn", pg_dsn])
    assert usage.exit_code == 2 and "only available for `export organizations`" in usage.output
    bad = runner.invoke(
        main,
        [
            "export",
            "global",
            str(tmp_path / "x.json"),
            "--dsn",
            "postgresql://nobody@127.0.0.1:1/none",
            "--findings-file",
            str(tmp_path / "f.json"),
        ],
    )
    assert bad.exit_code == 1 and bad.stderr.startswith("Error: cannot connect to the target database")
    assert json.loads((tmp_path / "f.json").read_text())[0]["finding"] == "RpcExportError"
    assert not (tmp_path / "x.json").exists()
    helped = runner.invoke(main, ["export", "global", "--help"])
    assert helped.exit_code == 0 and "Example" in helped.output
