"""The default restore leaves nothing behind: the built-in manifest is every model Sentry relocates (derived
from Sentry's ``detailed.json``), older exports import with Sentry's compatibility rules, and every row a
restore skips is named (CLI summary, findings file) or refused (``--strict``)."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from backup_assets.cli import main
from backup_assets.core.manifest import Manifest
from backup_assets.manifests.derive import BUILTIN, derive, render


def _shared() -> Path | None:
    """``shared/conformance`` beside the clone (or beside a folder holding it, for a git worktree)."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "shared" / "conformance").is_dir():
            return parent / "shared" / "conformance"
    if os.environ.get("CI"):
        pytest.fail("CI runs with shared/ beside the clone, but no shared/conformance was found")
    return None


SHARED = _shared()
needs_shared = pytest.mark.skipif(SHARED is None, reason="no shared/conformance beside the repository")


@pytest.fixture(scope="module")
def detailed() -> dict:
    return json.loads((SHARED / "model_dependencies" / "detailed.json").read_text())


@needs_shared
def test_the_builtin_manifest_is_derived_from_sentrys_detailed_json(detailed):
    assert BUILTIN.read_text() == render(derive(detailed)), (
        "regenerate: python -m backup_assets.manifests.derive ../shared/conformance/model_dependencies/detailed.json"
    )
    relocatable = {m for m, e in detailed.items() if e["relocation_scope"] != "Excluded"}
    assert set(Manifest.builtin().models) == relocatable and len(relocatable) == 95


def test_the_core_subset_is_named_and_smaller():
    full, core = Manifest.builtin(), Manifest.builtin("core")
    assert set(core.models) < set(full.models) and "sentry.user" in core and "sentry.alertrule" not in core
    assert all(core[m] == full[m] for m in core.models)
    assert Manifest.load(None).models == full.models  # the default of a restore is the full manifest


def _expected_counts(rows: list[dict], detailed: dict) -> Counter:
    """What Sentry's importer writes in a global import into an empty database: rows of relocatable models
    whose every non-null foreign key points at a written row (an organization member's inviter excepted:
    Sentry nulls it), decided until nothing changes."""
    scope = {m: e["relocation_scope"] for m, e in detailed.items()}
    alive = {(r["model"], r["pk"]): r for r in rows if scope.get(r["model"], "Excluded") != "Excluded"}
    while True:
        dead = [
            k
            for k, r in alive.items()
            if any(
                r["fields"].get(f) is not None and (fk["model"], r["fields"][f]) not in alive
                for f, fk in detailed[r["model"]]["foreign_keys"].items()
                if (r["model"], f) != ("sentry.organizationmember", "inviter_id")
            )
        ]
        if not dead:
            return Counter(model for model, _pk in alive)
        for k in dead:
            del alive[k]


def _import(*args: str | Path):
    return CliRunner().invoke(main, ["import", "global", *map(str, args), "--create-schema", "--no-prompt", "--silent"])


def _count(dsn: str, table: str) -> int | None:
    with psycopg.connect(dsn) as conn:
        if conn.execute("SELECT to_regclass(%s)", (f'public."{table}"',)).fetchone()[0] is None:
            return None
        return conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]


@needs_shared
def test_the_24_6_0_export_restores_with_the_default_manifest_as_sentry_would(pg_dsn, tmp_path, detailed):
    export = SHARED / "exports" / "exhaustive-24.6.0.json"
    findings = tmp_path / "findings.json"
    result = _import(export, "--dsn", pg_dsn, "--findings-file", findings)
    assert result.exit_code == 0, result.output
    want = _expected_counts(json.loads(export.read_text()), detailed)
    manifest = Manifest.builtin()
    got = {m: _count(pg_dsn, manifest[m].table_name) for m in manifest.models}
    assert got == {m: want.get(m, 0) for m in manifest.models}  # a table for every model, the rows Sentry keeps
    assert sum(got.values()) > 150 and got["sentry.alertrule"] and got["sentry.integration"]
    reported = {(f["kind"], f["on"]["model"]) for f in json.loads(findings.read_text())}
    # the models Sentry has since removed: dropped, and named in the findings file; none is "unknown"
    assert {
        ("RemovedModel", "sentry.alertruleexcludedprojects"),
        ("RemovedModel", "sentry.alertruletriggerexclusion"),
        ("RemovedModel", "sentry.incidentsubscription"),
    } <= reported
    assert not any(kind == "UnknownModel" for kind, _m in reported)


def _write(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "export.json"
    path.write_text(json.dumps([{"model": m, "pk": pk, "fields": f} for m, pk, f in rows]))
    return path


OLD_RELEASE = [
    ("sentry.actor", 1, {"type": 1, "team": None}),
    (
        "sentry.organization",
        1,
        {"name": "Acme", "slug": "acme", "status": 0, "flags": 1, "date_added": "2023-09-01T00:00:00Z"},
    ),
    (
        "sentry.team",
        2,
        {
            "organization": 1,
            "slug": "core",
            "name": "Core",
            "status": 0,
            "actor": 1,
            "org_role": None,
            "date_added": "2023-09-01T00:00:00Z",
        },
    ),
]


def test_an_older_release_export_drops_what_sentry_removed_and_says_so(pg_dsn, tmp_path):
    findings = tmp_path / "findings.json"
    result = _import(_write(tmp_path, OLD_RELEASE), "--dsn", pg_dsn, "--findings-file", findings, "--strict")
    assert result.exit_code == 0, result.output
    with psycopg.connect(pg_dsn) as conn:
        cols = {
            r[0]
            for r in conn.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 'sentry_team'")
        }
        assert conn.execute("SELECT slug FROM sentry_team").fetchall() == [("core",)]
    assert "actor" not in cols and "actor_id" not in cols and "org_role" not in cols and "slug" in cols
    reported = {(f["kind"], f["on"]["model"], f["reason"]) for f in json.loads(findings.read_text())}
    assert ("RemovedModel", "sentry.actor") in {(k, m) for k, m, _r in reported}
    assert {r for k, m, r in reported if k == "DeletedField"} == {
        "field 'actor' dropped from 1 row: Sentry has removed it",
        "field 'org_role' dropped from 1 row: Sentry has removed it",
    }


UNKNOWN = [
    (
        "sentry.option",
        1,
        {"key": "a", "value": 1, "last_updated": "2024-01-01T00:00:00Z", "last_updated_by": "unknown"},
    ),
    ("sentry.fancynewthing", 1, {"x": 1}),
    ("sentry.fancynewthing", 2, {"x": 2}),
]


def test_strict_refuses_unknown_models_before_writing_anything(pg_dsn, tmp_path):
    findings = tmp_path / "findings.json"
    result = _import(_write(tmp_path, UNKNOWN), "--dsn", pg_dsn, "--strict", "--findings-file", findings)
    assert result.exit_code == 1
    assert "sentry.fancynewthing (2 rows)" in result.output and "strict" in result.output
    # the failed run's finding is named after the engine's error, carried by ImportFailed (not read from text)
    assert [f["kind"] for f in json.loads(findings.read_text())] == ["UnknownModelsError"]
    with psycopg.connect(pg_dsn) as conn:  # the project's bookkeeping tables may exist, holding nothing
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
        assert {schema for schema, _t in tables} <= {"backup_assets"}, tables
        for schema, name in tables:
            if name == "session":  # which import each connection worked for (names lock holders): not data
                continue
            assert conn.execute(f'SELECT count(*) FROM "{schema}"."{name}"').fetchone()[0] == 0, name


def test_without_strict_unknown_models_are_skipped_and_named(pg_dsn, tmp_path):
    findings = tmp_path / "findings.json"
    result = CliRunner().invoke(
        main,
        [
            "import",
            "global",
            str(_write(tmp_path, UNKNOWN)),
            "--dsn",
            pg_dsn,
            "--create-schema",
            "--no-prompt",
            "--findings-file",
            str(findings),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "UnknownModel sentry.fancynewthing: 2 rows skipped" in result.output
    assert [(f["kind"], f["on"]["model"]) for f in json.loads(findings.read_text())] == [
        ("UnknownModel", "sentry.fancynewthing")
    ]
    assert _count(pg_dsn, "sentry_option") == 1


def test_compat_rules_yield_to_a_manifest_that_still_has_the_field_or_model():
    from backup_assets.core.compat import deleted_fields, removed_models

    current = Manifest.builtin()
    assert deleted_fields(current)["sentry.team"] == {"org_role", "actor"}
    assert "sentry.actor" in removed_models(current) and "sites.site" in removed_models(current)
    older = current.to_json()  # an older release's manifest: the team's actor FK and the actor model exist
    older["sentry.team"]["foreign_keys"]["actor"] = {
        "kind": "FlexibleForeignKey",
        "model": "sentry.actor",
        "nullable": True,
    }
    older["sentry.actor"] = {
        **older["sentry.team"],
        "model": "sentry.actor",
        "table_name": "sentry_actor",
        "foreign_keys": {},
        "uniques": [],
    }
    older_manifest = Manifest.from_json(older)
    assert deleted_fields(older_manifest)["sentry.team"] == {"org_role"}
    assert "sentry.actor" not in removed_models(older_manifest)


SHARED_EXPORTS = sorted(p.name for p in (SHARED / "exports").glob("*.json")) if SHARED else []


@needs_shared
@pytest.mark.parametrize("name", SHARED_EXPORTS)
def test_every_shared_export_restores_with_the_default_manifest_what_sentry_would(name, pg_dsn, detailed):
    """The engine alone (no Dagster: the per-export cost stays small), the manifest a restore defaults to."""
    from backup_assets.core.restore import run_restore
    from backup_assets.core.settings import ImportSettings
    from backup_assets.core.source import open_backup

    export = SHARED / "exports" / name
    manifest = Manifest.load(None)
    result = run_restore(
        pg_dsn, open_backup(export), manifest, ImportSettings(create_schema=True, replace_existing=True, strict=True)
    )
    want = _expected_counts(json.loads(export.read_text()), detailed)
    assert {m: load.rows_written for m, load in result.loads.items() if load.rows_written} == dict(want)
    assert result.stage.unknown_models == {}  # strict passed: every model is known, or known to be removed
