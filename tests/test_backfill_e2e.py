"""Backfills and run coordination, end to end: a real ``dagster dev`` (webserver + daemon) driven through
GraphQL, the repository's dagster.yaml, a real PostgreSQL target, generated backups.

The scenario: two backups become partitions; a run per backup restores everything but the member model
(the queue lets one restore at a time into the target: the runs must not overlap); then ONE asset-level
backfill over both partitions selects ``organization`` (loaded already: it must return its recorded
result, not write twice), ``organizationmember`` (a child never loaded: it must load through the
persisted pk maps of its parents) and ``restore_complete``.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import dagster as dg
import psycopg
import pytest
import yaml

from backup_assets.core.manifest import Manifest
from backup_assets.core.restore import Restore
from backup_assets.core.settings import ImportSettings
from backup_assets.demo.synthetic import count_rows, generate_rows, write_export
from backup_assets.partitions import partition_key_for_file
from backup_assets.run import TARGET_TAG, failure_message, materialize_restore, target_tag
from tests.dagster_dev import REPO, DagsterDev
from tests.instances import instance_for_test

MODELS = ("sentry.organization", "sentry.user", "sentry.organizationmember")
SMALL = dict(orgs=1, users=2, members_per_org=2)
SETTINGS = ImportSettings(scope="organizations", create_schema=True)
RUN_CONFIG = {"resources": {"import_settings": {"config": {"scope": "organizations", "create_schema": True}}}}
ORG, USER, MEMBER = (["sentry", m] for m in ("organization", "user", "organizationmember"))
STAGES = [["sentry_backup", s] for s in ("backup_file", "unwrapped_tarball", "data_key", "parsed_export")]
COMPLETE = ["sentry_backup", "restore_complete"]


@pytest.fixture
def manifest() -> Manifest:
    return Manifest.builtin().restrict(MODELS)


def make_backups(folder: Path, seeds: tuple[int, ...]) -> list[Path]:
    folder.mkdir()
    paths = []
    for seed in seeds:
        path = folder / f"nightly-{seed}.json"
        write_export(path, generate_rows(**SMALL, seed=seed))
        paths.append(path)
    return paths


def scalar(dsn: str, query: str) -> object:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchone()[0]


def wait_backfill(server: DagsterDev, backfill_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        data = server.graphql(
            """query($id: String!) { partitionBackfillOrError(backfillId: $id) {
              __typename ... on PartitionBackfill { status runs(limit: 10) { runId status } } } }""",
            {"id": backfill_id},
        )
        backfill = data["partitionBackfillOrError"]
        if backfill["status"] in ("COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED", "COMPLETED"):
            return backfill
        if time.monotonic() > deadline:
            raise TimeoutError(f"backfill {backfill_id} still {backfill['status']} after {timeout}s\n{server.tail()}")
        time.sleep(2)


def test_an_asset_backfill_over_both_partitions_reruns_only_the_selection(tmp_path, pg_dsn, manifest, monkeypatch):
    backups = make_backups(tmp_path / "backups", (1, 2))
    keys = [partition_key_for_file(p) for p in backups]
    (tmp_path / "detailed.json").write_text(json.dumps(manifest.to_json()))
    server = DagsterDev(
        tmp_path / "home",
        {
            "BACKUP_ASSETS_DSN": pg_dsn,
            "BACKUP_ASSETS_BACKUPS": str(tmp_path / "backups"),
            "BACKUP_ASSETS_MANIFEST": str(tmp_path / "detailed.json"),
        },
    )
    try:
        server.start()
        for key in keys:
            server.add_partition(key)
        target = {TARGET_TAG: target_tag(pg_dsn)}
        runs = [server.launch_run(key, STAGES + [ORG, USER], RUN_CONFIG, target) for key in keys]
        done = server.wait_runs(runs, timeout=90)
        assert [r["status"] for r in done.values()] == ["SUCCESS", "SUCCESS"], server.tail()
        first, second = sorted(done.values(), key=lambda r: r["startTime"])
        assert first["endTime"] <= second["startTime"]  # one restore at a time into one target (dagster.yaml)

        expected = [count_rows(**SMALL, seed=s) for s in (1, 2)]
        orgs_before = scalar(pg_dsn, "SELECT count(*) FROM sentry_organization")
        assert orgs_before == sum(e["sentry.organization"] for e in expected)
        assert scalar(pg_dsn, "SELECT count(*) FROM sentry_organizationmember") == 0

        data = server.graphql(
            """mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) {
              __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }""",
            {
                "p": {
                    "partitionNames": keys,
                    "assetSelection": [{"path": k} for k in (ORG, MEMBER, COMPLETE)],
                    "runConfigData": RUN_CONFIG,
                    "title": "members of both backups",
                    "tags": [{"key": k, "value": v} for k, v in target.items()],
                }
            },
        )
        launched = data["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        backfill = wait_backfill(server, launched["backfillId"], timeout=150)
        assert backfill["status"] == "COMPLETED_SUCCESS", (backfill, server.tail())
        assert {r["status"] for r in backfill["runs"]} == {"SUCCESS"} and len(backfill["runs"]) == 2
    finally:
        server.stop()

    # the database: organizations not written twice, members loaded and pointing at the new ids
    assert scalar(pg_dsn, "SELECT count(*) FROM sentry_organization") == orgs_before
    assert scalar(pg_dsn, "SELECT count(*) FROM sentry_organizationmember") == sum(
        e["sentry.organizationmember"] for e in expected
    )
    assert (
        scalar(
            pg_dsn,
            "SELECT count(*) FROM sentry_organizationmember m LEFT JOIN sentry_organization o "
            "ON o.id = m.organization_id WHERE o.id IS NULL",
        )
        == 0
    )
    for key in keys:
        assert not Restore(pg_dsn, manifest, key, SETTINGS).is_staged()  # restore_complete dropped staging

    # the instance: the backfill materialized only the selection, and organization returned its record
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    with dg.DagsterInstance.get() as instance:
        for key in keys:

            def events(asset: list[str], key: str = key):
                return instance.fetch_materializations(
                    dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[key]), limit=10
                ).records

            assert len(events(USER)) == 1 and len(events(ORG)) == 2 and len(events(MEMBER)) == 1
            latest_org = events(ORG)[0].asset_materialization.metadata
            assert latest_org["already_loaded"].value is True
            assert (
                events(MEMBER)[0].asset_materialization.metadata["rows_written"].value
                == expected[keys.index(key)]["sentry.organizationmember"]
            )
    shutil.rmtree(tmp_path / "home", ignore_errors=True)


# -- run coordination ---------------------------------------------------------------------------------
def test_the_shipped_dagster_yaml_queues_runs_with_one_restore_per_target(tmp_path, monkeypatch):
    shutil.copy(REPO / "dagster.yaml", tmp_path / "dagster.yaml")
    raw = yaml.safe_load((REPO / "dagster.yaml").read_text())
    assert "run_queue" not in raw  # the concurrency: runs: form only (the two cannot be mixed)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.get() as instance:
        queue = instance.get_concurrency_config().run_queue_config
        assert queue.max_concurrent_runs == 2
        assert queue.tag_concurrency_limits == [
            {"key": TARGET_TAG, "limit": 1, "value": {"applyLimitPerUniqueValue": True}}
        ]
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 4
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert instance.get_settings("nux") == {"enabled": False}


def restore_in_process(backup: str, dsn: str, start_at: float) -> dict:
    """One in-process materialization of the backup's partition, started at ``start_at`` (wall clock), in a
    process of its own (Dagster's in-process execution is not meant to share one interpreter between threads)."""
    manifest = Manifest.builtin().restrict(MODELS)
    with instance_for_test() as instance:
        time.sleep(max(0.0, start_at - time.time()))
        result = materialize_restore(backup, dsn, SETTINGS, manifest=manifest, instance=instance)
        return {
            "error": failure_message(result),
            "already_loaded": {
                e.asset_key.to_user_string(): e.materialization.metadata["already_loaded"].value
                for e in result.get_asset_materialization_events()
                if "already_loaded" in e.materialization.metadata
            },
        }


def test_two_runs_of_one_partition_at_once_write_each_row_once(tmp_path, pg_dsn, manifest):
    [backup] = make_backups(tmp_path / "backups", (7,))
    start_at = time.time() + 8  # both processes have imported Dagster by then
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(restore_in_process, str(backup), pg_dsn, start_at) for _ in range(2)]
        outcomes = [f.result(timeout=120) for f in futures]
    assert [o["error"] for o in outcomes] == [None, None]

    expected = count_rows(**SMALL, seed=7)
    for model in MODELS:
        assert scalar(pg_dsn, f'SELECT count(*) FROM "{manifest[model].table_name}"') == expected[model], model
        key = "/".join(model.split("."))
        # one run wrote the model, the other waited for the lock and found the load record
        assert sorted(o["already_loaded"][key] for o in outcomes) == [False, True], (model, outcomes)
