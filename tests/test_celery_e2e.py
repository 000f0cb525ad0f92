"""Restores whose steps run on Celery workers, end to end: Debian's redis-server as broker and result
backend, two ``dagster-celery worker`` processes with their own queues (one per target database), a
persistent Dagster instance, encrypted generated backups of the faults manifest, and runs of
``celery_restore_job`` started by launcher processes (:mod:`tests.celery_cluster`).

Worker w1 serves targets a, c and e; w2 serves b and d. The kill test runs last: it kills w1.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil

import dagster as dg
import psycopg
import pytest

pytest.importorskip("dagster_celery", reason="the celery extra is not installed (pip install -e '.[celery]')")
if shutil.which("redis-server") is None:
    pytest.skip(
        "redis-server is not installed (tests/run installs Debian's redis-server as root)", allow_module_level=True
    )

from backup_assets.celery import target_queue
from backup_assets.core import keys
from backup_assets.core.postgres import ensure_database
from backup_assets.demo.synthetic import write_export
from backup_assets.partitions import backups_partitions, partition_key_for_file
from backup_assets.run import target_tag
from tests.celery_cluster import Cluster
from tests.crypto_helpers import OAEP, make_key_pair, sentry_encrypt, tar_of
from tests.fault_helpers import FKS, TABLES, UNIQUE, assert_exact, counts, rows, table_counts, write_manifest
from tests.secret_scan import scan_tree, secret_forms

TARGETS = "abcde"
WORKERS = {"w1": "ace", "w2": "bd"}
_files = itertools.count()


@pytest.fixture(scope="module")
def cluster(pg_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("celery")
    (root / "backups").mkdir()
    private, public = make_key_pair()
    dbs = {t: f"celery_{os.getpid()}_{t}" for t in TARGETS}
    for name in dbs.values():
        ensure_database(pg_server.dsn("postgres"), name)
    env = {
        "BACKUP_ASSETS_MANIFEST": str(write_manifest(root / "manifest.json")),
        "BACKUP_ASSETS_BACKUPS": str(root / "backups"),
        "BACKUP_ASSETS_GLOB": "*.tar",
        "BACKUP_ASSETS_PRIVATE_KEY": private.decode(),
        **{_dsn_env(t): pg_server.dsn(name) for t, name in dbs.items()},
    }
    c = Cluster(root, env)
    c.public_pem, c.private_pem, c.data_keys = public, private, []
    c.dsns = {t: pg_server.dsn(name) for t, name in dbs.items()}
    try:
        c.start_redis()
        for name, targets in WORKERS.items():
            c.start_worker(name, [c.queue_of(c.dsns[t]) for t in targets])
        yield c
    finally:
        c.stop()
        with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as conn:
            for name in dbs.values():
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _dsn_env(target: str) -> str:
    return f"CELERY_TEST_TARGET_{target.upper()}"


def _backup(c: Cluster, prefix: str, items: int) -> tuple[str, dict[str, int]]:
    """An encrypted backup whose unique values start with ``prefix``; its partition added."""
    plain = c.root / f"plain-{next(_files)}.json"
    write_export(plain, (_prefixed(r, prefix) for r in rows(orgs=3, items=items, tags=items // 3, notes=20)))
    path = c.root / "backups" / f"{prefix}nightly.tar"
    token, wrapped, key_pub = sentry_encrypt(plain.read_bytes(), c.public_pem)
    path.write_bytes(tar_of([("export.json", token), ("data.key", wrapped), ("key.pub", key_pub)]))
    plain.unlink()
    c.data_keys.append(keys.load_private_key(c.private_pem).decrypt(wrapped, OAEP))
    key = partition_key_for_file(path)
    with c.instance() as instance:
        instance.add_dynamic_partitions(backups_partitions.name, [key])
    return key, counts(3, items, items // 3, 20)


def _prefixed(row: dict, prefix: str) -> dict:
    fields = dict(row["fields"])
    for name in ("slug", "name", "label"):
        if name in fields:
            fields[name] = prefix + fields[name]
    return {**row, "fields": fields}


def _finish(proc) -> dict:
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, f"launcher exited {proc.returncode}"
    return json.loads(out.decode().strip().splitlines()[-1])


def _step_events(instance: dg.DagsterInstance, run_id: str) -> list:
    return [e for e in instance.all_logs(run_id) if e.is_dagster_event and e.dagster_event.step_key]


def _step_pids(instance: dg.DagsterInstance, run_id: str) -> set[int]:
    return {
        e.dagster_event.pid for e in _step_events(instance, run_id) if e.dagster_event.event_type_value == "STEP_START"
    }


def _intervals(instance: dg.DagsterInstance, run_id: str) -> list[tuple[float, float]]:
    """(start, end) of every step of the run."""
    start, end = {}, {}
    for e in _step_events(instance, run_id):
        kind, key = e.dagster_event.event_type_value, e.dagster_event.step_key
        if kind == "STEP_START":
            start[key] = e.timestamp
        elif kind in ("STEP_SUCCESS", "STEP_FAILURE"):
            end[key] = e.timestamp
    assert start and set(start) == set(end)
    return [(start[k], end[k]) for k in start]


def test_three_backups_restore_on_the_workers_of_their_targets(cluster):
    """Three targets, three concurrent runs, two workers: every row and FK exact, steps ran on the workers."""
    launched = {t: _backup(cluster, f"{t}-", items=2_000) for t in "abc"}
    procs = {t: cluster.launch(key, cluster.dsns[t], _dsn_env(t)) for t, (key, _) in launched.items()}
    launchers = {t: p.pid for t, p in procs.items()}
    results = {t: _finish(p) for t, p in procs.items()}
    assert all(r["success"] for r in results.values()), results
    with cluster.instance() as instance:
        for t, (key, expected) in launched.items():
            assert_exact(cluster.dsns[t], expected, key)
            pids = _step_pids(instance, results[t]["run_id"])
            worker = next(w for w, targets in WORKERS.items() if t in targets)
            assert pids and pids <= cluster.worker_pids(worker), (t, pids)
            assert launchers[t] not in pids and os.getpid() not in pids
            run = instance.get_run_by_id(results[t]["run_id"])
            assert run.tags["backup_assets/target"] == target_tag(cluster.dsns[t])
    queues = {
        e.dagster_event.message
        for r in results.values()
        for e in _step_events(instance, r["run_id"])
        if "Submitting celery task" in (e.dagster_event.message or "")
    }
    assert {q.rsplit('"', 2)[1] for q in queues} == {target_queue(target_tag(cluster.dsns[t])) for t in "abc"}


def test_two_backups_for_one_target_never_load_at_the_same_time(cluster):
    """Two runs into target d at once: their steps go one at a time through d's queue; both exact."""
    (k1, e1), (k2, e2) = _backup(cluster, "d1-", items=2_000), _backup(cluster, "d2-", items=2_000)
    # organizations scope: a global import refuses a database that already holds the other's rows
    procs = [cluster.launch(k, cluster.dsns["d"], _dsn_env("d"), scope="organizations") for k in (k1, k2)]
    r1, r2 = (_finish(p) for p in procs)
    assert r1["success"] and r2["success"]
    with cluster.instance() as instance:
        first, second = _intervals(instance, r1["run_id"]), _intervals(instance, r2["run_id"])
    assert max(e for _, e in first) > min(s for s, _ in second) and max(e for _, e in second) > min(
        s for s, _ in first
    ), "the two runs did not run at the same time: the test proves nothing"
    overlaps = [(a, b) for a in first for b in second if a[0] < b[1] and b[0] < a[1]]
    assert overlaps == []
    assert table_counts(cluster.dsns["d"]) == {m: e1[m] + e2[m] for m in e1}
    _assert_sound(cluster.dsns["d"], {k1: e1, k2: e2})


def _assert_sound(dsn: str, imports: dict[str, dict[str, int]]) -> None:
    """No duplicate, no orphan, each import's load records exact (several imports in one database)."""
    with psycopg.connect(dsn) as conn:
        for table, column in UNIQUE.items():
            assert conn.execute(f'SELECT count(*) - count(DISTINCT "{column}") FROM "{table}"').fetchone()[0] == 0
        for child, column, parent in FKS:
            assert (
                conn.execute(
                    f'SELECT count(*) FROM "{child}" c WHERE NOT EXISTS '
                    f'(SELECT 1 FROM "{parent}" p WHERE p.id = c."{column}")'
                ).fetchone()[0]
                == 0
            )
        for key, expected in imports.items():
            records = dict(
                conn.execute(
                    "SELECT model, (result->>'rows_written')::int FROM backup_assets.load_record WHERE import_id = %s",
                    (key,),
                ).fetchall()
            )
            assert records == expected


def test_a_runs_queue_follows_its_target_resource_and_a_wrong_tag_is_refused(cluster):
    """No target tag: the steps go to the queue of the database the run config names. A tag naming
    another database than the resource's fails the run before any step runs."""
    key, expected = _backup(cluster, "b-untagged-", items=300)
    untagged = _finish(cluster.launch(key, None, _dsn_env("b"), scope="organizations"))  # b holds test 1's rows
    wrong = _finish(cluster.launch(key, cluster.dsns["a"], _dsn_env("b"), scope="organizations"))
    assert untagged["success"] and not wrong["success"]
    with cluster.instance() as instance:
        assert _step_pids(instance, untagged["run_id"]) <= cluster.worker_pids("w2")
        assert _step_pids(instance, wrong["run_id"]) == set()  # no step started
        logs = " ".join(repr(e) for e in instance.all_logs(wrong["run_id"]))
    assert "names another database than the run's target resource" in logs
    _assert_sound(cluster.dsns["b"], {key: expected})  # test 1's import, if it ran, is checked there


def test_no_key_and_no_plaintext_reach_the_instance_or_the_broker(cluster):
    """After the runs above: Dagster's home (workers' config, compute logs, sqlite storage) and every
    value the broker and result backend hold are free of the private key, the data keys and backup rows."""
    if not cluster.data_keys:  # run alone: restore one backup first
        key, _ = _backup(cluster, "scan-", items=300)
        assert _finish(cluster.launch(key, cluster.dsns["c"], _dsn_env("c"), scope="organizations"))["success"]
    needles = secret_forms(cluster.private_pem, cluster.data_keys[0])
    for i, key in enumerate(cluster.data_keys[1:]):
        needles.update(
            {
                f"data key {i + 1} {k}": v
                for k, v in secret_forms(cluster.private_pem, key).items()
                if k.startswith(("data", "signing", "encryption"))
            }
        )
    needles["a backup row"] = b"-item-0000001"  # an item's name in every backup
    assert scan_tree(cluster.home, needles) == []
    assert scan_tree(cluster.home, {"control": b"faults__item"})  # the scan reads what the runs wrote
    assert _in_redis(cluster, needles) == []
    assert _in_redis(cluster, {"control": b"faults__item"})  # the step results are there to scan


def _redis_values(client, name: bytes) -> list:
    """The values held at one key of any of the kinds the broker and the result backend use."""
    kind = client.type(name)
    if kind == b"string":
        return [client.get(name)]
    if kind == b"list":
        return client.lrange(name, 0, -1)
    if kind == b"hash":
        return list(client.hgetall(name).values())
    return list(client.smembers(name)) if kind == b"set" else []


def _in_redis(cluster: Cluster, needles: dict[str, bytes]) -> list[str]:
    """Where a needle occurs in a value of the broker's or the result backend's keys."""
    import redis

    found = []
    for db in (0, 1):
        client = redis.Redis(port=cluster.port, db=db)
        for name in client.scan_iter():
            values = _redis_values(client, name)
            found += [
                f"redis db {db} {name!r}: {n}" for v in values for n, needle in needles.items() if needle in (v or b"")
            ]
        client.close()
    return found


def test_a_killed_worker_fails_the_run_and_the_survivor_finishes_it(cluster, pg_server):
    """w1 SIGKILLed mid-run: the run fails with the lost worker named; re-executed on w2, rows exact."""
    key, expected = _backup(cluster, "e-", items=120_000)
    dsn = cluster.dsns["e"]
    proc = cluster.launch(key, dsn, _dsn_env("e"), worker_lost_seconds=3)
    cluster.wait(lambda: _model_loading(dsn), 180, "a model load of target e", every=0.05)
    cluster.kill_worker("w1")
    failed = _finish(proc)
    assert not failed["success"]
    with cluster.instance() as instance:
        logs = " ".join(repr(e) for e in instance.all_logs(failed["run_id"]))
        assert "stopped answering while running step" in logs and "w1@" in logs
        assert instance.get_run_by_id(failed["run_id"]).status == dg.DagsterRunStatus.FAILURE
    partial = table_counts(dsn)
    assert all(partial.get(m) in (None, 0, n) for m, n in expected.items()), partial  # no half-written model

    cluster.add_queue("w2", cluster.queue_of(dsn))
    again = _finish(cluster.launch(key, dsn, _dsn_env("e"), parent=failed["run_id"]))
    assert again["success"]
    assert_exact(dsn, expected, key)
    with cluster.instance() as instance:
        assert _step_pids(instance, again["run_id"]) <= cluster.worker_pids("w2")


def _model_loading(dsn: str) -> bool:
    """True once the first model (organization) is committed: the loads of the others are under way."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        if not conn.execute("SELECT to_regclass('backup_assets.load_record')").fetchone()[0]:
            return False
        return bool(
            conn.execute("SELECT 1 FROM backup_assets.load_record WHERE model = 'sentry.organization'").fetchone()
        )


assert set(TABLES) == set(counts(1, 1, 1, 1))  # the faults manifest's models, as counts() names them
