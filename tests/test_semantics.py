"""Sentry's import semantics against a real PostgreSQL: scopes, filters, flags, collisions, resets,
global replace and rollback, on small generated exports (the outcomes Sentry's own tests assert)."""

from __future__ import annotations

import copy
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from backup_assets.cli import main
from backup_assets.core.errors import TargetError, UniqueViolationError
from backup_assets.core.manifest import Manifest
from backup_assets.core.pk_kind import PkKind
from backup_assets.core.restore import Restore, run_restore
from backup_assets.core.results import RestoreResult
from backup_assets.core.rollback import rollback
from backup_assets.core.settings import ImportSettings, new_import_id
from backup_assets.core.source import open_backup
from backup_assets.demo.synthetic import generate_rows, write_export

MANIFEST = Manifest.builtin()
# 2 orgs (acme: alice, bob + an invite; globex: bob, carol + an invite), 5 users, 1 project each
ROWS = list(generate_rows(orgs=2, users=5, projects_per_org=1, teams_per_org=1, members_per_org=3, options=2))


def _export(tmp_path: Path, rows: list[dict], name: str = "export.json") -> Path:
    path = tmp_path / name
    write_export(path, rows)
    return path


def _import(dsn: str, path: Path, **settings) -> RestoreResult:
    settings.setdefault("create_schema", True)
    return run_restore(dsn, open_backup(path), MANIFEST, ImportSettings(**settings))


def _q(dsn: str, query: str, *args) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(query, args or None).fetchall()


def _count(dsn: str, table: str, where: str = "true") -> int:
    exists = _q(dsn, "SELECT to_regclass(%s) IS NOT NULL", table)[0][0]
    return _q(dsn, f"SELECT count(*) FROM {table} WHERE {where}")[0][0] if exists else 0


def _only(rows: list[dict], *models: str) -> list[dict]:
    return [copy.deepcopy(r) for r in rows if r["model"] in models]


@pytest.fixture
def export(tmp_path: Path) -> Path:
    return _export(tmp_path, ROWS)


# -- scopes ----------------------------------------------------------------------------------------
SCOPE_TABLES = {
    "users": {"auth_user", "sentry_email", "sentry_useremail", "sentry_useroption"},
    "organizations": {
        "auth_user",
        "sentry_organization",
        "sentry_project",
        "sentry_organizationmember",
        "sentry_projectkey",
        "sentry_team",
    },
    "config": {
        "auth_user",
        "sentry_option",
        "sentry_controloption",
        "sentry_relay",
        "sentry_userrole",
        "sentry_userpermission",
    },
    "global": {"auth_user", "sentry_organization", "sentry_option", "auth_authenticator", "sentry_userip"},
}
NEVER = {
    "users": {"sentry_organization", "sentry_option", "auth_authenticator", "sentry_userip", "sentry_userrole"},
    "organizations": {"sentry_option", "sentry_userrole", "auth_authenticator", "sentry_userip"},
    "config": {"sentry_organization", "auth_authenticator", "sentry_userip", "sentry_project"},
    "global": set(),
}


@pytest.mark.parametrize("scope", list(SCOPE_TABLES))
def test_scope_imports_exactly_its_models(pg_dsn, export, scope):
    result = _import(pg_dsn, export, scope=scope, replace_existing=scope == "global")
    assert result.ok
    for table in SCOPE_TABLES[scope]:
        assert _count(pg_dsn, table) > 0, table
    for table in NEVER[scope]:
        assert _count(pg_dsn, table) == 0, table
    assert _count(pg_dsn, "auth_user") == 5
    # a global saved search is Global: only a global import brings it
    if scope in ("organizations", "global"):
        assert _count(pg_dsn, "sentry_savedsearch", "is_global") == (1 if scope == "global" else 0)
    if scope == "users":  # options pointing at an organization or project: parent outside the scope
        drops = result.loads["sentry.useroption"].dropped
        assert all(r.startswith("filtered: scope") for r in drops) and sum(drops.values()) == 5


def _api_rows() -> list[dict]:
    user = _only(ROWS, "sentry.user")[:1]
    app = {"model": "sentry.apiapplication", "pk": 1, "fields": {"client_id": "c1", "owner": 1, "name": "app"}}
    tokens = [
        {
            "model": "sentry.apitoken",
            "pk": i,
            "fields": {
                "user": 1,
                "application": app_id,
                "token": f"{i:064x}",
                "hashed_token": f"h{i}",
                "refresh_token": None,
                "hashed_refresh_token": None,
                "token_last_characters": f"{i:04x}",
                "scope_list": "[]",
            },
        }
        for i, app_id in ((1, None), (2, 1))
    ]
    return user + [app] + tokens


@pytest.mark.parametrize("scope,tokens", [("config", 1), ("global", 2)])
def test_api_tokens_decide_their_scope_per_row(pg_dsn, tmp_path, scope, tokens):
    result = _import(pg_dsn, _export(tmp_path, _api_rows()), scope=scope)
    assert _count(pg_dsn, "sentry_apitoken") == tokens
    if scope == "config":
        assert _count(pg_dsn, "sentry_apitoken", "token = repeat('0', 63) || '1'") == 1
        assert result.loads["sentry.apitoken"].dropped_by_filter == 1


# -- resets ----------------------------------------------------------------------------------------
def test_users_scope_resets_privileges_claims_and_email_verification(pg_dsn, export):
    result = _import(pg_dsn, export, scope="users")
    assert _count(pg_dsn, "auth_user", "is_staff OR is_superuser OR is_managed") == 0
    assert _count(pg_dsn, "auth_user", "is_unclaimed AND password LIKE '!%'") == 5
    assert _count(pg_dsn, "sentry_useremail", "is_verified") == 0
    assert _count(pg_dsn, "sentry_useremail", "date_hash_added > now() - interval '1 hour'") == 5
    staged_hashes = {r["fields"]["validation_hash"] for r in ROWS if r["model"] == "sentry.useremail"}
    assert not staged_hashes & {h for (h,) in _q(pg_dsn, "SELECT validation_hash FROM sentry_useremail")}
    resets = result.loads["sentry.user"].resets
    assert resets["is_staff"] == 1 and resets["is_superuser"] == 1 and resets["is_unclaimed"] == 5
    assert result.loads["sentry.useremail"].resets["validation_hash"] == 5


def test_config_scope_keeps_privileges_but_unclaims(pg_dsn, export):
    _import(pg_dsn, export, scope="config")
    assert _count(pg_dsn, "auth_user", "is_staff") == 1 and _count(pg_dsn, "auth_user", "is_superuser") == 1
    assert _count(pg_dsn, "auth_user", "is_unclaimed") == 5
    assert _count(pg_dsn, "sentry_useremail", "is_verified") == 0


def test_global_scope_keeps_users_as_they_are(pg_dsn, export):
    result = _import(pg_dsn, export, scope="global")
    assert _count(pg_dsn, "auth_user", "is_unclaimed OR password LIKE '!%'") == 0
    assert _count(pg_dsn, "sentry_useremail", "is_verified") == 4
    assert not result.loads["sentry.user"].resets


# -- filters ---------------------------------------------------------------------------------------
def test_username_filter_keeps_those_users_and_their_rows(pg_dsn, export):
    result = _import(pg_dsn, export, scope="users", filter_usernames={"bob@example.com", "nobody"})
    assert [u for (u,) in _q(pg_dsn, "SELECT username FROM auth_user")] == ["bob@example.com"]
    assert [e for (e,) in _q(pg_dsn, "SELECT email FROM sentry_email")] == ["bob@example.com"]
    assert _count(pg_dsn, "sentry_useremail") == 1
    for model in ("sentry.user", "sentry.email", "sentry.useremail"):
        load = result.loads[model]
        assert load.dropped_by_filter == 4 and all(r.startswith("filtered:") for r in load.dropped), model
    assert result.ok


def test_empty_username_filter_imports_nothing(pg_dsn, export):
    result = _import(pg_dsn, export, scope="users", filter_usernames=set())
    assert _count(pg_dsn, "auth_user") == _count(pg_dsn, "sentry_email") == _count(pg_dsn, "sentry_useremail") == 0
    assert result.loads["sentry.user"].dropped_by_filter == 5


def test_org_filter_brings_its_members_and_their_emails(pg_dsn, export):
    result = _import(pg_dsn, export, scope="organizations", filter_org_slugs={"globex"})
    assert [s for (s,) in _q(pg_dsn, "SELECT slug FROM sentry_organization")] == ["globex"]
    users = {u for (u,) in _q(pg_dsn, "SELECT username FROM auth_user")}
    assert users == {"bob@example.com", "carol@example.com"}  # exactly globex's members
    assert {e for (e,) in _q(pg_dsn, "SELECT email FROM sentry_email")} == users  # Sentry loses these
    assert _count(pg_dsn, "sentry_useremail") == 2
    assert _count(pg_dsn, "sentry_organizationmember") == 3  # 2 members + a pending invite
    assert _count(pg_dsn, "sentry_project") == 1
    assert result.loads["sentry.organization"].dropped == {"filtered: organization slug not in the slug filter": 1}


def test_empty_org_filter_imports_nothing(pg_dsn, export):
    _import(pg_dsn, export, scope="organizations", filter_org_slugs=set())
    for table in ("sentry_organization", "auth_user", "sentry_email", "sentry_useremail", "sentry_project"):
        assert _count(pg_dsn, table) == 0, table


# -- flags and collisions --------------------------------------------------------------------------
def _duplicates() -> list[dict]:
    """Two users with one username, two organizations with one slug, each user owning one of them."""
    rows = _only(ROWS, "sentry.user", "sentry.email", "sentry.useremail", "sentry.organization")
    users = [r for r in rows if r["model"] == "sentry.user"][:2]
    users[1]["fields"]["username"] = users[0]["fields"]["username"]
    orgs = [r for r in rows if r["model"] == "sentry.organization"]
    orgs[1]["fields"]["slug"] = orgs[0]["fields"]["slug"]
    members = [
        {
            "model": "sentry.organizationmember",
            "pk": i,
            "fields": {
                "organization": i,
                "user_id": i,
                "email": None,
                "role": "owner",
                "token": None,
                "inviter_id": None,
                "flags": "0",
                "has_global_access": True,
                "invite_status": 0,
                "type": 50,
            },
        }
        for i in (1, 2)
    ]
    keep = [r for r in rows if r["model"] in ("sentry.email", "sentry.useremail") and r["pk"] <= 2]
    return users + keep + orgs + members


def test_duplicate_usernames_and_slugs_inside_one_backup_are_suffixed(pg_dsn, tmp_path):
    result = _import(pg_dsn, _export(tmp_path, _duplicates()), scope="organizations")
    names = sorted(u for (u,) in _q(pg_dsn, "SELECT username FROM auth_user ORDER BY id"))
    assert names[0] == "alice@example.com" and names[1].startswith("alice@example.com-") and len(names[1]) == 22
    slugs = [s for (s,) in _q(pg_dsn, "SELECT slug FROM sentry_organization ORDER BY id")]
    assert slugs[0] == "acme" and slugs[1].startswith("acme-")
    # each member points at the matching user and organization
    pairs = _q(
        pg_dsn,
        "SELECT u.username, o.slug FROM sentry_organizationmember m JOIN auth_user u ON u.id = m.user_id "
        "JOIN sentry_organization o ON o.id = m.organization_id ORDER BY m.id",
    )
    assert pairs == [("alice@example.com", "acme"), (names[1], slugs[1])]
    renamed = result.loads["sentry.user"].renamed
    assert renamed == [{"pk": 2, "field": "username", "old": "alice@example.com", "new": names[1]}]
    assert result.loads["sentry.organization"].resets == {"slug (taken: renamed)": 1}


def test_same_backup_twice_gives_three_distinct_usernames(pg_dsn, tmp_path):
    path = _export(tmp_path, _only(ROWS, "sentry.user")[:1])
    for _ in range(3):
        _import(pg_dsn, path, scope="users")
    names = [u for (u,) in _q(pg_dsn, "SELECT username FROM auth_user")]
    assert len(set(names)) == 3 and names.count("alice@example.com") == 1
    assert sum(n.startswith("alice@example.com-") for n in names) == 2


def test_merge_users_maps_onto_the_existing_user(pg_dsn, tmp_path):
    rows = _only(ROWS, "sentry.user", "sentry.email", "sentry.useremail", "sentry.useroption")
    _import(pg_dsn, _export(tmp_path, rows, "first.json"), scope="users")
    for r in rows:  # the second backup: the same users with other addresses
        if r["model"] in ("sentry.email", "sentry.useremail"):
            r["fields"]["email"] = "new-" + r["fields"]["email"]
    result = _import(pg_dsn, _export(tmp_path, rows, "second.json"), scope="users", merge_users=True)
    assert _count(pg_dsn, "auth_user") == 5 and _count(pg_dsn, "auth_user", "username LIKE '%-%'") == 0
    assert result.loads["sentry.user"].rows_merged == 5
    assert _count(pg_dsn, "sentry_useremail") == 5  # the merged users' emails are not written
    assert _count(pg_dsn, "sentry_email") == 10  # the Email rows still are
    assert result.loads["sentry.useremail"].dropped_by_filter == 5
    assert result.ok


def test_email_is_get_or_create_by_address(pg_dsn, tmp_path):
    path = _export(tmp_path, _only(ROWS, "sentry.user", "sentry.email"))
    _import(pg_dsn, path, scope="users")
    result = _import(pg_dsn, path, scope="users")
    assert _count(pg_dsn, "sentry_email") == 5 and result.loads["sentry.email"].rows_merged == 5


def test_second_org_import_suffixes_slugs_and_regenerates_secrets(pg_dsn, tmp_path):
    # (saved searches left out: create mode makes Sentry's partial unique (is_global, name) a full one)
    export = _export(tmp_path, [r for r in ROWS if r["model"] != "sentry.savedsearch"])
    _import(pg_dsn, export, scope="organizations")
    keys_before = set(_q(pg_dsn, "SELECT public_key, secret_key FROM sentry_projectkey"))
    result = _import(pg_dsn, export, scope="organizations")
    assert result.ok
    assert _count(pg_dsn, "sentry_organization") == 4 and _count(pg_dsn, "sentry_organization", "slug LIKE '%-%'") == 2
    keys = _q(pg_dsn, "SELECT public_key, secret_key FROM sentry_projectkey")
    assert len(keys) == 4 and len({k for k, _ in keys}) == 4 and set(keys) >= keys_before
    assert all(len(k) == 32 and len(s) == 32 for k, s in keys)
    tokens = [t for (t,) in _q(pg_dsn, "SELECT token FROM sentry_organizationmember WHERE token IS NOT NULL")]
    assert len(tokens) == len(set(tokens)) == 2  # the colliding invite tokens were cleared
    assert result.loads["sentry.organizationmember"].resets["token (taken: regenerated)"] == 2


def test_other_unique_violations_fail_the_model_naming_the_values(pg_dsn, tmp_path):
    rows = _only(ROWS, "sentry.organization", "sentry.team")
    team = next(r for r in rows if r["model"] == "sentry.team")
    rows.append({"model": "sentry.team", "pk": 99, "fields": dict(team["fields"])})
    with pytest.raises(UniqueViolationError) as e:
        _import(pg_dsn, _export(tmp_path, rows), scope="organizations")
    msg = str(e.value)
    assert "sentry.team" in msg and "organization" in msg and "slug" in msg and "backend" in msg
    assert _count(pg_dsn, "sentry_team") == 0


def test_hide_organizations_sets_pending_approval(pg_dsn, export):
    _import(pg_dsn, export, scope="organizations", hide_organizations=True)
    assert {s for (s,) in _q(pg_dsn, "SELECT status FROM sentry_organization")} == {3}


def _configs(tmp_path: Path) -> Path:
    return _export(
        tmp_path, _only(ROWS, "sentry.option", "sentry.controloption", "sentry.relay", "sentry.userrole"), "config.json"
    )


def _tamper(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE sentry_option SET value = '\"y\"'::jsonb")
        conn.execute("UPDATE sentry_relay SET public_key = 'invalid'")


@pytest.mark.parametrize("overwrite", [False, True])
def test_overwrite_configs(pg_dsn, tmp_path, overwrite):
    path = _configs(tmp_path)
    _import(pg_dsn, path, scope="config")
    ids = _q(pg_dsn, "SELECT id FROM sentry_option ORDER BY id")
    _tamper(pg_dsn)
    result = _import(pg_dsn, path, scope="config", overwrite_configs=overwrite)
    assert _q(pg_dsn, "SELECT id FROM sentry_option ORDER BY id") == ids
    tampered = _count(pg_dsn, "sentry_option", "value = '\"y\"'::jsonb") + _count(
        pg_dsn, "sentry_relay", "public_key = 'invalid'"
    )
    assert tampered == (0 if overwrite else 3)
    load = result.loads["sentry.option"]
    assert (load.rows_overwritten, load.rows_merged) == ((2, 0) if overwrite else (0, 2))
    kinds = _q(
        pg_dsn,
        "SELECT DISTINCT kind::text FROM backup_assets.pk_map WHERE import_id = %s AND model = %s",
        result.import_id,
        "sentry.option",
    )
    assert kinds == [(PkKind.OVERWRITTEN if overwrite else PkKind.EXISTING,)]  # the pk map keeps the letter


# -- global replace --------------------------------------------------------------------------------
def test_global_import_into_data_needs_confirmation(pg_dsn, export):
    _import(pg_dsn, export, scope="global")
    users = _count(pg_dsn, "auth_user")
    with pytest.raises(TargetError, match="already holds data"):
        _import(pg_dsn, export, scope="global")
    assert _count(pg_dsn, "auth_user") == users
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE unrelated (id int)")
        conn.execute("INSERT INTO unrelated VALUES (7)")
    _import(pg_dsn, export, scope="global", replace_existing=True)
    assert _count(pg_dsn, "auth_user") == users and _count(pg_dsn, "unrelated") == 1
    assert _q(pg_dsn, "SELECT min(id) FROM auth_user")[0][0] == 1  # sequences restarted
    assert _q(pg_dsn, "SELECT min(id) FROM sentry_organization")[0][0] == 1


def test_non_global_scopes_never_wipe(pg_dsn, export):
    _import(pg_dsn, export, scope="organizations")
    _import(pg_dsn, export, scope="users")
    assert _count(pg_dsn, "sentry_organization") == 2 and _count(pg_dsn, "auth_user") == 10


# -- rollback --------------------------------------------------------------------------------------
def _snapshot(dsn: str, tables: tuple[str, ...]) -> dict[str, list]:
    return {t: _q(dsn, f"SELECT to_jsonb(x) FROM {t} x ORDER BY id") for t in tables}


def test_rollback_of_a_full_import_leaves_existing_rows(pg_dsn, export, tmp_path):
    _import(pg_dsn, _export(tmp_path, _only(ROWS, "sentry.user")[:2], "some.json"), scope="users")
    before = _snapshot(pg_dsn, ("auth_user",))
    result = _import(pg_dsn, export, scope="organizations", merge_users=True)
    assert _count(pg_dsn, "sentry_organization") == 2
    undo = rollback(pg_dsn, result.import_id, MANIFEST)
    assert undo.deleted["sentry.organization"] == 2 and undo.deleted["sentry.user"] == 3
    assert _snapshot(pg_dsn, ("auth_user",)) == before  # the merged users are untouched
    for table in ("sentry_organization", "sentry_project", "sentry_organizationmember", "sentry_email"):
        assert _count(pg_dsn, table) == 0, table
    assert _count(pg_dsn, "backup_assets.pk_map", f"import_id = '{result.import_id}'") == 0
    again = rollback(pg_dsn, result.import_id, MANIFEST)
    assert again.already_rolled_back and not again.deleted


def test_rollback_after_a_partial_import(pg_dsn, export):
    restore = Restore(pg_dsn, MANIFEST, new_import_id(), ImportSettings(scope="global", create_schema=True))
    restore.stage(open_backup(export))
    restore.prepare()
    plan = restore.plan()
    for model in plan[: plan.index("sentry.project") + 1]:
        restore.load_model(model)
    assert _count(pg_dsn, "sentry_project") == 2
    undo = rollback(pg_dsn, restore.import_id, MANIFEST)
    assert undo.deleted["sentry.project"] == 2
    for table in ("auth_user", "sentry_organization", "sentry_project", "sentry_email"):
        assert _count(pg_dsn, table) == 0, table
    assert not restore.is_staged()


def test_rollback_restores_overwritten_configs(pg_dsn, tmp_path):
    path = _configs(tmp_path)
    _import(pg_dsn, path, scope="config")
    _tamper(pg_dsn)
    before = _snapshot(pg_dsn, ("sentry_option", "sentry_relay", "sentry_userrole"))
    result = _import(pg_dsn, path, scope="config", overwrite_configs=True)
    assert _snapshot(pg_dsn, ("sentry_option",)) != {"sentry_option": before["sentry_option"]}
    undo = rollback(pg_dsn, result.import_id, MANIFEST)
    assert undo.restored["sentry.option"] == 2 and not undo.deleted
    assert _snapshot(pg_dsn, ("sentry_option", "sentry_relay", "sentry_userrole")) == before


def test_rollback_of_an_unknown_import_fails(pg_dsn):
    with pytest.raises(TargetError, match="no import"):
        rollback(pg_dsn, "nope", MANIFEST)


# -- the CLI reaches the same semantics ------------------------------------------------------------
def _outcome(dsn: str) -> dict:
    return {
        "users": _q(dsn, "SELECT username, is_staff, is_unclaimed FROM auth_user ORDER BY id"),
        "orgs": _q(dsn, "SELECT slug, status FROM sentry_organization ORDER BY id"),
        "emails": _q(dsn, "SELECT email FROM sentry_email ORDER BY id"),
        "members": _count(dsn, "sentry_organizationmember"),
    }


def test_cli_and_settings_give_the_same_outcome(pg_server, export):
    from backup_assets.core.postgres import ensure_database

    dsns = []
    for name in ("cli_same_a", "cli_same_b"):
        ensure_database(pg_server.dsn("postgres"), name)
        dsns.append(pg_server.dsn(name))
    _import(dsns[0], export, scope="organizations", filter_org_slugs={"acme"}, merge_users=True)
    run = CliRunner().invoke(
        main,
        [
            "import",
            "organizations",
            str(export),
            "--dsn",
            dsns[1],
            "--create-schema",
            "--filter-org-slugs",
            "acme",
            "--merge-users",
            "--silent",
        ],
    )
    assert run.exit_code == 0, run.output
    assert _outcome(dsns[0]) == _outcome(dsns[1]) and _outcome(dsns[0])["orgs"] == [("acme", 0)]
    import_id = _q(dsns[1], "SELECT import_id FROM backup_assets.import")[0][0]
    run = CliRunner().invoke(main, ["rollback", import_id, "--dsn", dsns[1]])
    assert run.exit_code == 0, run.output
    assert _count(dsns[1], "sentry_organization") == 0
    run = CliRunner().invoke(main, ["rollback", "missing-import", "--dsn", dsns[1]])
    assert run.exit_code == 1 and "Error: no import" in run.output
