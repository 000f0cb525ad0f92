"""The restore as a dg Component: YAML with {{ env.X }} templating, the same definitions as the code location,
and `dg check defs` over this repository's defs folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from backup_assets.component import SentryRestoreComponent
from backup_assets.core.manifest import Manifest
from backup_assets.definitions import build_definitions

REPO = Path(__file__).resolve().parent.parent
DEFS_YAML = REPO / "backup_assets" / "defs" / "restore" / "defs.yaml"
MODELS = ("sentry.organization", "sentry.user", "sentry.organizationmember")


def attributes_of(defs_yaml: Path) -> str:
    """The ``attributes:`` block of a defs.yaml, dedented (what resolve_from_yaml takes)."""
    lines = defs_yaml.read_text().splitlines()
    start = lines.index("attributes:") + 1
    return "\n".join(line[2:] for line in lines[start:] if line.startswith("  "))


def keys(defs: dg.Definitions) -> set[str]:
    return {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}


def test_the_yaml_component_resolves_env_templates_and_builds_the_same_definitions(tmp_path, monkeypatch):
    manifest_file = tmp_path / "detailed.json"
    manifest_file.write_text(json.dumps(Manifest.builtin().restrict(MODELS).to_json()))
    monkeypatch.setenv("BACKUP_ASSETS_BACKUPS", str(tmp_path / "inbox"))
    monkeypatch.setenv("BACKUP_ASSETS_MANIFEST", str(manifest_file))
    monkeypatch.setenv("BACKUP_ASSETS_DRILL_CRON", "15 2 * * *")
    monkeypatch.delenv("BACKUP_ASSETS_GLOB", raising=False)

    component = SentryRestoreComponent.resolve_from_yaml(attributes_of(DEFS_YAML))
    assert component.backups_folder == str(tmp_path / "inbox")
    assert component.manifest_path == str(manifest_file)
    assert component.glob == "*.tar,*.json" and component.drill_cron == "15 2 * * *"

    defs = dg.build_defs_for_component(component)
    expected = {"sentry/organization", "sentry/user", "sentry/organizationmember"} | {
        f"sentry_backup/{s}"
        for s in ("backup_file", "unwrapped_tarball", "data_key", "parsed_export", "restore_complete")
    }
    assert keys(defs) == keys(build_definitions(Manifest.load(manifest_file)))
    assert keys(defs) >= expected and not {k for k in keys(defs) if k.startswith("sentry/")} - expected
    assert defs.resolve_schedule_def("restore_drill_schedule").cron_schedule == "15 2 * * *"
    sensor = defs.resolve_sensor_def("backup_folder_sensor")
    assert sensor.job_name == "restore_backup_job" and sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert {j.name for j in defs.resolve_all_job_defs()} >= {"restore_backup_job", "restore_drill_job"}
    dg.Definitions.validate_loadable(defs)


def test_attributes_are_validated_and_secrets_stay_variable_names(monkeypatch):
    monkeypatch.setenv("MY_TARGET", "host=db password=hunter2 dbname=sentry")
    component = SentryRestoreComponent.resolve_from_yaml(
        "target_dsn_env: MY_TARGET\nprivate_key_env: MY_KEY\nmax_runs_per_tick: 5\nsensor_interval_seconds: 60\n"
    )
    resources = component.resources()
    assert "hunter2" not in repr(resources["target"])  # an EnvVar, resolved when a run starts
    assert resources["target"].dsn == dg.EnvVar("MY_TARGET")
    assert resources["decryptor"].private_key_env == "MY_KEY"
    sensor = dg.build_defs_for_component(component).resolve_sensor_def("backup_folder_sensor")
    assert sensor.minimum_interval_seconds == 60
    with pytest.raises(Exception, match="max_runs_per_tick"):  # pydantic's ValidationError, as dagster raises it
        SentryRestoreComponent.resolve_from_yaml("max_runs_per_tick: 0\n")


def test_dg_check_defs_passes_on_this_repository(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    dg_cli = Path(sys.executable).with_name("dg")
    proc = subprocess.run(
        [str(dg_cli), "check", "defs"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "All component YAML validated successfully" in out and "All definitions loaded successfully" in out
