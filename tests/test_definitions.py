"""The Dagster code location: definitions load, one asset per relocatable model, translator, manifest switch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from backup_assets.assets import CHECKS, DEFAULT_POOL, build_restore_assets
from backup_assets.core.errors import ConfigurationError
from backup_assets.core.manifest import Manifest
from backup_assets.core.settings import check_import_id
from backup_assets.definitions import build_definitions
from backup_assets.partitions import backups_partitions, key_stem, partition_key, partition_key_for_file
from backup_assets.resources.backup_source import BackupSourceResource
from backup_assets.resources.settings import ImportSettingsResource
from backup_assets.translator import PARSED_EXPORT_KEY, RESTORE_COMPLETE_KEY, SentryRestoreTranslator

REPO = Path(__file__).resolve().parent.parent
STAGES = {"backup_file", "unwrapped_tarball", "data_key", "parsed_export", "restore_complete", "round_trip"}


def entry(name, fks=(), deps=(), scope="Organization"):
    return {
        "dangling": False,
        "model": name,
        "relocation_dependencies": list(deps),
        "relocation_scope": scope,
        "foreign_keys": {f: {"kind": "FlexibleForeignKey", "model": m, "nullable": True} for f, m in fks},
        "silos": ["Region"],
        "table_name": name.replace(".", "_"),
        "uniques": [],
    }


SMALL = {
    "sentry.user": entry("sentry.user", scope="User"),
    "sentry.organization": entry("sentry.organization"),
    "sentry.secret": entry("sentry.secret", scope="Excluded"),
    "sentry.member": entry(
        "sentry.member",
        fks=[("organization", "sentry.organization"), ("user_id", "sentry.user"), ("secret", "sentry.secret")],
    ),
    "social_auth.usersocialauth": entry(
        "social_auth.usersocialauth", fks=[("user", "sentry.user")], scope=["Excluded", "Global"]
    ),
    "sentry.apitoken": entry(
        "sentry.apitoken", fks=[("user", "sentry.user")], deps=["sentry.member"], scope=["Global", "Config"]
    ),
}


def graph_of(defs: dg.Definitions):
    return defs.resolve_asset_graph()


def models_asset(assets: list[dg.AssetsDefinition]) -> tuple[dg.AssetsDefinition, dict[str, dg.AssetKey]]:
    """The one multi-asset of the models, and model name -> its asset key."""
    [models] = assets
    return models, {models.metadata_by_key[k]["sentry/model"]: k for k in models.keys}


def test_definitions_load_with_one_asset_per_relocatable_model_of_the_builtin_manifest():
    from backup_assets.definitions import defs

    dg.Definitions.validate_loadable(defs)
    manifest = Manifest.builtin()
    assert len(manifest.relocatable()) == 95  # every model Sentry relocates, with no BACKUP_ASSETS_MANIFEST
    graph = graph_of(defs)
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    expected = {"/".join(m.split(".")) for m in manifest.relocatable()} | {f"sentry_backup/{s}" for s in STAGES}
    assert keys == expected
    excluded = [m for m in manifest.models if not manifest[m].relocatable]
    assert all("/".join(m.split(".")) not in keys for m in excluded)
    job = defs.resolve_job_def("restore_backup_job")
    assert job.executor_def is dg.in_process_executor
    # one step for every model (a step costs ~0.3 s of orchestration), the stages around it
    assert {n.name for n in job.graph.node_defs} == {"sentry_models", *(f"sentry_backup__{s}" for s in STAGES)} - {
        "sentry_backup__round_trip"
    }
    complete = graph.get(RESTORE_COMPLETE_KEY)
    assert {k.to_user_string() for k in complete.parent_keys} == {
        "/".join(m.split(".")) for m in manifest.relocatable()
    }
    for key in graph.get_all_asset_keys():
        assert graph.get(key).partitions_def == backups_partitions


def test_model_assets_carry_keys_groups_deps_kinds_metadata_checks_retry_and_pool():
    manifest = Manifest.from_json(SMALL, source="test")
    models, keys = models_asset(build_restore_assets(manifest))
    assert set(keys) == {
        "sentry.user",
        "sentry.organization",
        "sentry.member",
        "social_auth.usersocialauth",
        "sentry.apitoken",
    }
    assert models.can_subset and models.op.name == "sentry_models"
    member = keys["sentry.member"]
    assert member == dg.AssetKey(["sentry", "member"])
    assert models.group_names_by_key[member] == "organization"
    spec = models.specs_by_key[member]
    # the Excluded FK target has no asset, so no dependency on it
    assert {d.asset_key for d in spec.deps} == {
        PARSED_EXPORT_KEY,
        dg.AssetKey(["sentry", "organization"]),
        dg.AssetKey(["sentry", "user"]),
    }
    assert spec.kinds == {"postgres"}
    md = models.metadata_by_key[member]
    assert md["table"] == "sentry_member"
    assert [fk["model"] for fk in md["foreign_keys"].data] == ["sentry.organization", "sentry.secret", "sentry.user"]
    checks = {(c.asset_key, c.name) for c in models.check_specs}
    assert checks == {(k, name) for k in keys.values() for name in CHECKS}
    assert set(CHECKS) >= {"counts_reconcile", "no_dangling_fk", "sequence_past_max"}
    policy = models.op.retry_policy
    assert policy.max_retries >= 1 and policy.backoff == dg.Backoff.EXPONENTIAL and policy.jitter is not None
    assert models.op.pool == DEFAULT_POOL == "sentry_target"
    social = keys["social_auth.usersocialauth"]
    assert social == dg.AssetKey(["social_auth", "usersocialauth"])
    assert models.group_names_by_key[social] == "global"  # first scope other than Excluded
    token = keys["sentry.apitoken"]
    assert models.group_names_by_key[token] == "config"  # Sentry's enum order: Config before Global
    assert dg.AssetKey(["sentry", "member"]) in {d.asset_key for d in models.specs_by_key[token].deps}


def test_a_translator_subclass_changes_keys_groups_and_tags_and_deps_follow():
    class Mine(SentryRestoreTranslator):
        def get_asset_spec(self, model_spec):
            spec = super().get_asset_spec(model_spec)
            return spec.replace_attributes(
                key=spec.key.with_prefix("restored"), group_name="sentry_models", tags={**spec.tags, "team": "sre"}
            )

    manifest = Manifest.from_json(SMALL, source="test")
    models, keys = models_asset(build_restore_assets(manifest, translator=Mine(), retry_policy=None, pool="other"))
    member = keys["sentry.member"]
    assert member == dg.AssetKey(["restored", "sentry", "member"])
    assert models.group_names_by_key[member] == "sentry_models"
    assert models.tags_by_key[member]["team"] == "sre"
    assert {d.asset_key for d in models.specs_by_key[member].deps} == {
        PARSED_EXPORT_KEY,
        dg.AssetKey(["restored", "sentry", "organization"]),
        dg.AssetKey(["restored", "sentry", "user"]),
    }
    assert models.op.retry_policy is None and models.op.pool == "other"
    defs = build_definitions(manifest, translator=Mine())
    dg.Definitions.validate_loadable(defs)
    parents = graph_of(defs).get(RESTORE_COMPLETE_KEY).parent_keys
    assert dg.AssetKey(["restored", "sentry", "apitoken"]) in parents


def test_a_translator_giving_two_models_one_key_is_rejected():
    class Collide(SentryRestoreTranslator):
        def get_asset_key(self, model_spec):
            return dg.AssetKey(["same"])

    with pytest.raises(dg.DagsterInvalidDefinitionError, match="same asset key"):
        build_restore_assets(Manifest.from_json(SMALL, source="test"), translator=Collide())


def test_the_manifest_env_var_switches_the_models(tmp_path):
    path = tmp_path / "detailed.json"
    path.write_text(json.dumps(SMALL))
    code = (
        "import json; from backup_assets.definitions import defs; "
        "print(json.dumps(sorted(k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys())))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "BACKUP_ASSETS_MANIFEST": str(path)},
    )
    keys = json.loads(out.stdout.strip().splitlines()[-1])
    assert keys == sorted(
        [
            "sentry/user",
            "sentry/organization",
            "sentry/member",
            "social_auth/usersocialauth",
            "sentry/apitoken",
            *(f"sentry_backup/{s}" for s in STAGES),
        ]
    )


def test_the_core_and_the_demo_data_never_import_dagster():
    code = (
        "import importlib, pkgutil, sys, backup_assets.core as core, backup_assets.demo as demo\n"
        "names = [m.name for m in pkgutil.iter_modules(core.__path__)]\n"
        "for n in names: importlib.import_module('backup_assets.core.' + n)\n"
        "for m in pkgutil.iter_modules(demo.__path__): importlib.import_module('backup_assets.demo.' + m.name)\n"
        "assert len(names) >= 8 and 'synthetic' in sys.modules['backup_assets.demo'].__dict__, names\n"
        "bad = sorted(m for m in sys.modules if m == 'dagster' or m.startswith('dagster.'))\n"
        "print(len(names), bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("[]"), out.stdout


def test_the_resources_import_nothing_of_the_dagster_layer():
    code = (
        "import importlib, json, pkgutil, sys, backup_assets.resources as res\n"
        "names = [m.name for m in pkgutil.iter_modules(res.__path__)]\n"
        "for n in names: importlib.import_module('backup_assets.resources.' + n)\n"
        "bad = sorted(m for m in sys.modules if m.startswith('backup_assets.')\n"
        "             and m.split('.')[1] not in ('core', 'resources'))\n"
        "print(json.dumps([sorted(names), bad]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    names, bad = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"backup_source", "decryptor", "postgres", "settings", "staging"} <= set(names)
    assert bad == []


def test_a_user_module_named_resources_does_not_shadow_ours(tmp_path):
    # `dagster dev` puts the working directory first on sys.path, where a project may have its own `resources`
    (tmp_path / "resources.py").write_text("MINE = True\n")
    code = (
        "import sys; from backup_assets.definitions import defs; import resources\n"
        f"assert sys.path[0] in ('', {str(tmp_path)!r}), sys.path[0]\n"
        "print(resources.MINE, len(defs.resolve_asset_graph().get_all_asset_keys()) > 6)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "True True"


def test_partition_keys_are_readable_stable_import_ids(tmp_path):
    digest = "ab" * 32
    assert partition_key("sentry-2024-06-01.tar", digest) == "sentry-2024-06-01-abababab"
    assert partition_key("weird name (copy).json", digest) == "weird-name-copy-abababab"
    assert key_stem("__.tar") == "backup"
    for name in ("ü.tar", "a" * 300 + ".json", ".hidden.tar", "x y/z.tar"):
        check_import_id(partition_key(name, digest))
    f = tmp_path / "b.json"
    f.write_text("[]")
    k1 = partition_key_for_file(f)
    f.write_text("[ ]")
    assert partition_key_for_file(f) != k1 and partition_key_for_file(f).startswith("b-")


def test_the_backup_source_lists_and_resolves_keys(tmp_path):
    (tmp_path / "one.json").write_text("[]")
    (tmp_path / "two.tar").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("no")
    source = BackupSourceResource(folder=str(tmp_path))
    listed = source.list_backups()
    assert [b.path.name for b in listed] == ["one.json", "two.tar"]
    assert source.resolve(listed[0].key).path == tmp_path / "one.json"
    (tmp_path / "one.json").write_text("[ ]")  # rewritten: the old key no longer resolves
    with pytest.raises(ConfigurationError, match="has partition key"):
        source.resolve(listed[0].key)
    pinned = BackupSourceResource(folder=str(tmp_path), glob="*.json", pinned={"my-id": str(tmp_path / "two.tar")})
    assert pinned.resolve("my-id").path.name == "two.tar"
    assert [b.path.name for b in pinned.list_backups()] == ["one.json"]


def test_import_settings_resource_round_trips_and_validates():
    from backup_assets.core.settings import ImportSettings

    s = ImportSettings(scope="organizations", merge_users=True, filter_org_slugs=frozenset({"acme"}))
    assert ImportSettingsResource.from_settings(s).to_settings() == s
    assert ImportSettingsResource().to_settings() == ImportSettings()
    with pytest.raises(ConfigurationError):
        ImportSettingsResource(scope="users", replace_existing=True).to_settings()
