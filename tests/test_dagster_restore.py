"""The asset graph run for real: a Dagster instance, the embedded PostgreSQL, generated backups."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import psycopg
import pytest

from backup_assets.assets import build_restore_graph
from backup_assets.core import keys
from backup_assets.core.decryptors import LocalFileDecryptor, LocalFileEncryptor
from backup_assets.core.manifest import Manifest
from backup_assets.core.postgres import ensure_database
from backup_assets.core.restore import Restore, run_restore
from backup_assets.core.settings import ImportSettings
from backup_assets.core.source import encrypt_export, open_backup
from backup_assets.demo.synthetic import count_rows, generate_rows, write_export
from backup_assets.partitions import backups_partitions, partition_key_for_file
from backup_assets.resources.backup_source import BackupSourceResource
from backup_assets.resources.decryptor import DecryptorResource
from backup_assets.resources.postgres import PostgresTargetResource
from backup_assets.resources.settings import ImportSettingsResource
from backup_assets.resources.staging import StagingResource
from backup_assets.run import TARGET_TAG, failure_message, materialize_restore
from backup_assets.stages import _latest_metadata
from backup_assets.translator import PARSED_EXPORT_KEY, RESTORE_COMPLETE_KEY
from tests.instances import instance_for_test

SETTINGS = ImportSettings(create_schema=True)
#: Old pks start at 1001, so a foreign key left unmapped would be visible (new ids start at 1).
ROWS = dict(pk_offset=1000)
MEMBER = dg.AssetKey(["sentry", "organizationmember"])
ORG = dg.AssetKey(["sentry", "organization"])


def closure(manifest: Manifest, *models: str) -> Manifest:
    """``manifest`` restricted to ``models`` and everything they depend on."""
    todo, keep = list(models), set()
    while todo:
        m = todo.pop()
        if m not in keep and m in manifest:
            keep.add(m)
            todo.extend(manifest[m].dependencies)
    return manifest.restrict(keep)


@pytest.fixture(scope="module")
def small_manifest() -> Manifest:
    return closure(Manifest.builtin(), "sentry.organizationmember")


@pytest.fixture
def instance():
    with instance_for_test() as inst:
        yield inst


@pytest.fixture
def json_backup(tmp_path) -> Path:
    path = tmp_path / "acme backup.json"
    write_export(path, generate_rows(**ROWS))
    return path


def metadata(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dict:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == key]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def table_count(dsn: str, table: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]


def test_the_whole_graph_restores_an_encrypted_backup_like_the_engine(tmp_path, pg_server, pg_dsn, instance):
    private_pem, public_pem = keys.generate_key_pair()
    (tmp_path / "key.pem").write_bytes(private_pem)
    (tmp_path / "key.pub").write_bytes(public_pem)
    plain = tmp_path / "plain.json"
    write_export(plain, generate_rows(**ROWS))
    backup = tmp_path / "nightly.tar"
    encrypt_export(plain, backup, LocalFileEncryptor(tmp_path / "key.pub"))
    key = partition_key_for_file(backup)
    instance.add_dynamic_partitions(backups_partitions.name, [key])
    manifest = Manifest.builtin()

    result = dg.materialize(
        build_restore_graph(manifest),
        instance=instance,
        partition_key=key,
        resources={
            "target": PostgresTargetResource(dsn=pg_dsn),
            "backup_source": BackupSourceResource(folder=str(tmp_path), glob="*.tar"),
            "decryptor": DecryptorResource(private_key_path=str(tmp_path / "key.pem")),
            "staging": StagingResource(),
            "import_settings": ImportSettingsResource(create_schema=True),
        },
    )
    assert result.success

    expected = count_rows(**ROWS)
    total = sum(expected.values())
    assert metadata(result, dg.AssetKey(["sentry_backup", "backup_file"]))["size_bytes"] == backup.stat().st_size
    assert metadata(result, dg.AssetKey(["sentry_backup", "unwrapped_tarball"]))["kind"] == "tarball"
    assert metadata(result, dg.AssetKey(["sentry_backup", "data_key"]))["key_pub_fingerprint"] == keys.fingerprint(
        public_pem
    )
    parsed = metadata(result, PARSED_EXPORT_KEY)
    assert parsed["rows"] == total and parsed["skipped_unknown_rows"] == 0
    org = metadata(result, ORG)
    assert org["rows_read"] == org["rows_written"] == org["dagster/row_count"] == expected["sentry.organization"]
    assert org["new_id_range"] == f"1..{expected['sentry.organization']}"
    complete = metadata(result, RESTORE_COMPLETE_KEY)
    assert complete["rows_read"] == total
    assert complete["rows_written"] + complete["rows_merged"] + complete["rows_dropped"] == total
    evaluations = result.get_asset_check_evaluations()
    # checked: every model with rows (a model without rows is materialized with nothing to verify), and
    # parsed_export's no_unknown_models
    with_rows = [m for m in manifest.relocatable() if expected.get(m)]
    assert {e.asset_key for e in evaluations} == {dg.AssetKey(m.split(".")) for m in with_rows} | {PARSED_EXPORT_KEY}
    assert len(evaluations) == 4 * len(with_rows) + 1
    for model in set(manifest.relocatable()) - set(with_rows):
        assert metadata(result, dg.AssetKey(model.split(".")))["skipped"].startswith("no row of this model")
    assert [(e.asset_key, e.check_name) for e in evaluations if not e.passed and e.severity.value == "ERROR"] == []
    # the key never shows up in events (the tarball's data key cannot be listed: it is never stored)
    pem_line = private_pem.decode().splitlines()[1]
    assert not any(pem_line in str(e) for e in instance.all_logs(result.run_id))
    assert not Restore(pg_dsn, manifest, key, SETTINGS).is_staged()

    # the engine alone (the CLI's path), same input, another database: the same rows per table
    other_db = pg_dsn.rsplit("/", 1)[1] + "_engine"
    ensure_database(pg_server.dsn("postgres"), other_db)
    other = pg_server.dsn(other_db)
    engine = run_restore(other, open_backup(backup, LocalFileDecryptor(tmp_path / "key.pem")), manifest, SETTINGS)
    for model in manifest.relocatable():
        table = manifest[model].table_name
        assert table_count(pg_dsn, table) == table_count(other, table), model
        md = metadata(result, dg.AssetKey(model.split(".")))
        assert md["rows_written"] == engine.loads[model].rows_written, model


def test_a_subset_run_loads_a_child_through_its_parents_persisted_pk_maps(
    json_backup, pg_dsn, instance, small_manifest
):
    parents = dg.AssetSelection.assets(MEMBER).upstream() - dg.AssetSelection.assets(MEMBER)
    first = materialize_restore(
        json_backup, pg_dsn, SETTINGS, manifest=small_manifest, instance=instance, selection=parents
    )
    assert first.success, failure_message(first)
    assert not any(e.asset_key == MEMBER for e in first.get_asset_materialization_events())
    parsed = metadata(first, PARSED_EXPORT_KEY)
    assert parsed["skipped_unknown_rows"] > 0  # rows of models this manifest does not know: named, and red
    unknown = [e for e in first.get_asset_check_evaluations() if e.asset_key == PARSED_EXPORT_KEY]
    assert [(e.check_name, e.passed, e.severity) for e in unknown] == [
        ("no_unknown_models", False, dg.AssetCheckSeverity.ERROR)
    ]
    assert sum(unknown[0].metadata["unknown_models"].value.values()) == parsed["skipped_unknown_rows"]
    assert first.dagster_run.tags[TARGET_TAG].endswith("/" + pg_dsn.rsplit("/", 1)[1])

    second = materialize_restore(
        json_backup, pg_dsn, SETTINGS, manifest=small_manifest, instance=instance, selection=[MEMBER]
    )
    assert second.success, failure_message(second)
    members = count_rows(**ROWS)["sentry.organizationmember"]
    md = metadata(second, MEMBER)
    assert md["rows_read"] == members and md["rows_written"] + md["rows_dropped"] == members
    with psycopg.connect(pg_dsn) as conn:
        orgs = {r[0] for r in conn.execute("SELECT id FROM sentry_organization")}
        member_orgs = {r[0] for r in conn.execute("SELECT organization_id FROM sentry_organizationmember")}
    assert member_orgs and member_orgs <= orgs and max(orgs) < 1000  # rewritten to the new ids
    assert all(e.passed for e in second.get_asset_check_evaluations() if e.check_name == "no_dangling_fk")

    # the rest, including restore_complete: totals over both runs, staging dropped
    rest = materialize_restore(json_backup, pg_dsn, SETTINGS, manifest=small_manifest, instance=instance)
    assert rest.success, failure_message(rest)
    assert metadata(rest, MEMBER)["already_loaded"] is True
    assert metadata(rest, RESTORE_COMPLETE_KEY)["staging_dropped"] is True


def test_a_child_whose_parent_was_never_loaded_fails_naming_the_parent(json_backup, pg_dsn, instance, small_manifest):
    stages = dg.AssetSelection.assets(PARSED_EXPORT_KEY).upstream()
    assert materialize_restore(
        json_backup, pg_dsn, SETTINGS, manifest=small_manifest, instance=instance, selection=stages
    ).success
    result = materialize_restore(
        json_backup, pg_dsn, SETTINGS, manifest=small_manifest, instance=instance, selection=[MEMBER]
    )
    assert not result.success
    message = failure_message(result)
    assert message.startswith("sentry_models: 1 model(s) failed:\n  sentry.organizationmember: MissingParentError")
    assert "parent model(s) sentry.organization, sentry.user were not loaded" in message
    # a data error is not retried
    retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert retries == []


def test_a_connection_killed_mid_load_is_retried_to_exact_counts(json_backup, pg_dsn, instance, small_manifest):
    key = partition_key_for_file(json_backup)
    stages = dg.AssetSelection.assets(PARSED_EXPORT_KEY).upstream()
    assert materialize_restore(
        json_backup, pg_dsn, SETTINGS, manifest=small_manifest, instance=instance, selection=stages
    ).success
    # The first insert into sentry_organization terminates its own backend (a sequence is not rolled back).
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE SEQUENCE kill_once")
        conn.execute(
            "CREATE FUNCTION kill_once() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF nextval('kill_once') = 1 THEN PERFORM pg_terminate_backend(pg_backend_pid()); "
            "PERFORM pg_sleep(5); END IF; RETURN NEW; END $$"
        )
        conn.execute(
            "CREATE TRIGGER kill_once BEFORE INSERT ON sentry_organization FOR EACH ROW EXECUTE FUNCTION kill_once()"
        )
    assets = build_restore_graph(small_manifest, retry_policy=dg.RetryPolicy(max_retries=2, delay=0.1))
    result = dg.materialize(
        assets,
        instance=instance,
        partition_key=key,
        selection=[ORG],
        resources={
            "target": PostgresTargetResource(dsn=pg_dsn),
            "backup_source": BackupSourceResource(folder=str(json_backup.parent)),
            "decryptor": DecryptorResource(),
            "staging": StagingResource(),
            "import_settings": ImportSettingsResource.from_settings(SETTINGS),
        },
    )
    assert result.success, failure_message(result)
    # retried inside the models' step (the step itself is not retried), and said so in the run's log
    assert [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"] == []
    logged = [e.message for e in instance.all_logs(result.run_id) if "loaded again in" in (e.message or "")]
    assert len(logged) == 1 and "sentry.organization: transient database error" in logged[0], logged
    md = metadata(result, ORG)
    orgs = count_rows(**ROWS)["sentry.organization"]
    assert md["attempt"] == 2 and md["step_attempt"] == 1
    assert md["rows_written"] == orgs and md["already_loaded"] is False
    assert table_count(pg_dsn, "sentry_organization") == orgs
    assert all(e.passed for e in result.get_asset_check_evaluations())


def test_restore_complete_reads_each_models_materialization_of_its_own_partition():
    """One query reads every model's latest materialization; a model whose latest is another backup's
    (two restores interleaved) is read for this partition on its own."""
    a, b, c = dg.AssetKey("a"), dg.AssetKey("b"), dg.AssetKey("never")
    with instance_for_test() as instance:
        for key, partition, rows in [(a, "p1", 1), (b, "p1", 2), (a, "p2", 10), (b, "p2", 20), (a, "p1", 3)]:
            instance.report_runless_asset_event(
                dg.AssetMaterialization(key, partition=partition, metadata={"rows_read": rows})
            )
        for partition, expected in [("p1", {a: 3, b: 2}), ("p2", {a: 10, b: 20}), ("p3", {})]:
            context = dg.build_asset_context(instance=instance, partition_key=partition)
            latest = _latest_metadata(context, [a, b, c])
            assert {k: md["rows_read"] for k, md in latest.items() if md} == expected
            assert latest[c] is None
