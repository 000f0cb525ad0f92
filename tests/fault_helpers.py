"""Shared by the fault and re-execution tests: a tiny manifest with one big model, backups of it, the
restore graph and job built from it, and the exactness checks (counts, duplicates, orphans, staging).

The job factory :func:`restore_job` is module-level so that ``reconstructable`` can rebuild it in
another process (``execute_job`` in a subprocess, the multiprocess executor): its resources read the
target DSN and the backup folder from the environment when a run starts (:data:`DSN_ENV`,
:data:`FOLDER_ENV`, as ``dg.EnvVar``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import psycopg

from backup_assets.assets import build_restore_graph
from backup_assets.core.manifest import Manifest
from backup_assets.demo.synthetic import write_export
from backup_assets.resources.backup_source import BackupSourceResource
from backup_assets.resources.decryptor import DecryptorResource
from backup_assets.resources.postgres import PostgresTargetResource
from backup_assets.resources.settings import ImportSettingsResource
from backup_assets.resources.staging import StagingResource
from tests.corpus import manifest_entry

DSN_ENV = "FAULTS_TARGET_DSN"
FOLDER_ENV = "FAULTS_BACKUP_FOLDER"
#: Old pks start past this, so a foreign key left unrewritten shows (new ids start at 1).
PK_OFFSET = 10_000_000


def _entry(name: str, table: str, fks: dict[str, str], uniques: list[list[str]]) -> dict:
    """A manifest model whose foreign keys, field -> model, are all NOT NULL."""
    return manifest_entry(name, table, tuple((f, m, False) for f, m in fks.items()), uniques=tuple(map(tuple, uniques)))


#: organization <- item <- tag (+ note): each item and note belongs to an organization, each tag to an item.
MANIFEST_JSON = {
    "sentry.organization": _entry("sentry.organization", "sentry_organization", {}, [["slug"]]),
    "faults.item": _entry("faults.item", "faults_item", {"organization": "sentry.organization"}, [["name"]]),
    "faults.tag": _entry("faults.tag", "faults_tag", {"item": "faults.item"}, [["label"]]),
    "faults.note": _entry("faults.note", "faults_note", {"organization": "sentry.organization"}, []),
}
TABLES = {
    "sentry.organization": "sentry_organization",
    "faults.item": "faults_item",
    "faults.tag": "faults_tag",
    "faults.note": "faults_note",
}
#: (child table, fk column, parent table) of every foreign key, for the orphan check.
FKS = [
    ("faults_item", "organization_id", "sentry_organization"),
    ("faults_tag", "item_id", "faults_item"),
    ("faults_note", "organization_id", "sentry_organization"),
]
UNIQUE = {"sentry_organization": "slug", "faults_item": "name", "faults_tag": "label"}


def manifest() -> Manifest:
    return Manifest.from_json(MANIFEST_JSON, source="faults manifest")


def write_manifest(path: Path) -> Path:
    path.write_text(json.dumps(MANIFEST_JSON))
    return path


def counts(orgs: int, items: int, tags: int, notes: int) -> dict[str, int]:
    return {"sentry.organization": orgs, "faults.item": items, "faults.tag": tags, "faults.note": notes}


def rows(orgs: int, items: int, tags: int = 1, notes: int = 1) -> Iterator[dict]:
    """A Sentry-format export of the faults manifest (models in dependency order)."""
    for i in range(orgs):
        yield {
            "model": "sentry.organization",
            "pk": PK_OFFSET + i + 1,
            "fields": {"slug": f"org-{i}", "name": f"Organization {i}", "date_added": "2024-01-01T00:00:00Z"},
        }
    for i in range(items):
        yield {
            "model": "faults.item",
            "pk": PK_OFFSET + i + 1,
            "fields": {
                "organization": PK_OFFSET + i % orgs + 1,
                "name": f"item-{i:07d}",
                "n": i,
                "payload": {"k": i % 97, "text": "x" * 24},
            },
        }
    for i in range(tags):
        yield {
            "model": "faults.tag",
            "pk": PK_OFFSET + i + 1,
            "fields": {"item": PK_OFFSET + i % items + 1, "label": f"tag-{i}"},
        }
    for i in range(notes):
        yield {
            "model": "faults.note",
            "pk": PK_OFFSET + i + 1,
            "fields": {"organization": PK_OFFSET + i % orgs + 1, "body": f"note {i}"},
        }


def write_backup(path: Path, orgs: int, items: int, tags: int = 1, notes: int = 1) -> dict[str, int]:
    """Write the export at ``path``; returns its rows per model."""
    write_export(path, rows(orgs, items, tags, notes))
    return counts(orgs, items, tags, notes)


def resources(dsn: str, folder: str | Path) -> dict[str, object]:
    return {
        "target": PostgresTargetResource(dsn=dsn),
        "backup_source": BackupSourceResource(folder=str(folder), glob="*.json"),
        "decryptor": DecryptorResource(),
        "staging": StagingResource(),
        "import_settings": ImportSettingsResource(create_schema=True),
    }


FAST_RETRY = dg.RetryPolicy(max_retries=4, delay=0.5)


def graph(retry_policy: dg.RetryPolicy | None = FAST_RETRY) -> list[dg.AssetsDefinition]:
    return build_restore_graph(manifest(), retry_policy=retry_policy)


def materialize(
    instance: dg.DagsterInstance,
    key: str,
    dsn: str,
    folder: Path,
    selection=None,
    retry_policy: dg.RetryPolicy | None = FAST_RETRY,
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        graph(retry_policy),
        instance=instance,
        partition_key=key,
        selection=selection,
        resources=resources(dsn, folder),
        raise_on_error=False,
    )


def _job(executor: dg.ExecutorDefinition) -> dg.JobDefinition:
    env_resources = resources("", "")
    # EnvVar: read when a run starts, so a job definition cached by ``reconstructable`` serves every test
    env_resources["target"] = PostgresTargetResource(dsn=dg.EnvVar(DSN_ENV))
    env_resources["backup_source"] = BackupSourceResource(folder=dg.EnvVar(FOLDER_ENV), glob="*.json")
    defs = dg.Definitions(
        assets=graph(),
        jobs=[dg.define_asset_job("faults_restore", selection=dg.AssetSelection.all(), executor_def=executor)],
        resources=env_resources,
    )
    return defs.resolve_job_def("faults_restore")


def restore_job() -> dg.JobDefinition:
    """The whole graph of the faults manifest as a job, in-process (module-level, for ``reconstructable``)."""
    return _job(dg.in_process_executor)


def restore_job_multiprocess() -> dg.JobDefinition:
    """The same job with the multiprocess executor: each step in its own process."""
    return _job(dg.multiprocess_executor)


# -- exactness -------------------------------------------------------------------------------------
def table_counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return {
            m: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]
            for m, t in TABLES.items()
            if conn.execute("SELECT to_regclass(%s)", (t,)).fetchone()[0]
        }


def assert_exact(dsn: str, expected: dict[str, int], import_id: str) -> None:
    """Exact rows per table, no duplicate (by unique key), no orphan, one load record per model, no staging."""
    assert table_counts(dsn) == expected
    with psycopg.connect(dsn) as conn:
        for table, column in UNIQUE.items():
            dupes = conn.execute(f'SELECT count(*) - count(DISTINCT "{column}") FROM "{table}"').fetchone()[0]
            assert dupes == 0, table
        for child, column, parent in FKS:
            orphans = conn.execute(
                f'SELECT count(*) FROM "{child}" c WHERE NOT EXISTS '
                f'(SELECT 1 FROM "{parent}" p WHERE p.id = c."{column}")'
            ).fetchone()[0]
            assert orphans == 0, (child, column)
            unrewritten = conn.execute(
                f'SELECT count(*) FROM "{child}" WHERE "{column}" > %s', (PK_OFFSET,)
            ).fetchone()[0]
            assert unrewritten == 0, (child, column)
        records = dict(
            conn.execute(
                "SELECT model, (result->>'rows_written')::int FROM backup_assets.load_record WHERE import_id = %s",
                (import_id,),
            ).fetchall()
        )
        assert records == {m: n for m, n in expected.items()}
        mapped = dict(
            conn.execute(
                "SELECT model, count(*) FROM backup_assets.pk_map WHERE import_id = %s GROUP BY model", (import_id,)
            ).fetchall()
        )
        assert mapped == {m: n for m, n in expected.items() if n}
        staging = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'backup_assets' AND tablename LIKE 'stage\\_%'"
        ).fetchone()[0]
        assert staging == 0


def wait_for(predicate: Callable[[], object], timeout: float, what: str, every: float = 0.02) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def active_query(admin_dsn: str, dbname: str, like: str) -> int | None:
    """The pid of a backend of ``dbname`` running a statement matching ``like`` (ILIKE), if any."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND state = 'active' "
            "AND query ILIKE %s AND pid <> pg_backend_pid() LIMIT 1",
            (dbname, like),
        ).fetchone()
    return row[0] if row else None


def step_events(result_or_events, kind: str) -> list[str]:
    events = getattr(result_or_events, "all_events", result_or_events)
    return [e.step_key for e in events if e.event_type_value == kind]


def fingerprints(dsn: str) -> dict[str, str]:
    """Per table: an md5 of every row (ids and foreign keys included), in id order."""
    with psycopg.connect(dsn) as conn:
        return {
            t: conn.execute(f"SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM \"{t}\" t").fetchone()[0]
            for t in TABLES.values()
        }


REPO = Path(__file__).resolve().parent.parent
_CHILD = """
import sys
import dagster as dg
from tests.fault_helpers import restore_job
dg.execute_job(dg.reconstructable(restore_job), dg.DagsterInstance.get(), tags={"dagster/partition": sys.argv[1]})
"""


def set_job_env(monkeypatch, dsn: str, folder: Path, home: Path) -> None:
    """The environment :func:`restore_job` reads, here and in the processes started from here."""
    monkeypatch.setenv(DSN_ENV, dsn)
    monkeypatch.setenv(FOLDER_ENV, str(folder))
    monkeypatch.setenv("DAGSTER_HOME", str(home))


def spawn_run(partition_key: str) -> subprocess.Popen[bytes]:
    """A process running :func:`restore_job` for one partition against ``$DAGSTER_HOME``'s instance."""
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, partition_key],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
