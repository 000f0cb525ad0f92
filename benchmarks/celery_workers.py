"""Restores spread over Celery workers: 4 backups into 4 databases with 1 worker, then with 2.

    .venv/bin/python benchmarks/celery_workers.py [--rows 250000] [--backups 4]

Needs the ``celery`` extra and Debian's ``redis-server``. One generated export
(``backup_assets.demo.synthetic``, built-in manifest) copied under ``--backups`` names, one embedded
PostgreSQL (fsync off) with a fresh database per backup and per measurement, then the deployment of
``tests/celery_cluster.py``: redis on a loopback port, ``dagster-celery worker`` processes (concurrency 1,
the targets' queues split between them), one launcher process per backup running ``celery_restore_job``.
All runs are launched at once; wall = launch to the last run's end. Step seconds = sum over the runs of
each step's STEP_START -> STEP_SUCCESS. Results go to the "Celery" section of ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from backup_assets.core.postgres import EmbeddedPostgres, ensure_database  # noqa: E402
from backup_assets.demo import synthetic  # noqa: E402
from backup_assets.partitions import backups_partitions, partition_key_for_file  # noqa: E402
from tests.celery_cluster import Cluster  # noqa: E402


def make_backups(folder: Path, rows: int, count: int) -> tuple[list[Path], int]:
    folder.mkdir(parents=True)
    first = folder / "backup-0.json"
    synthetic.write_export(first, synthetic.generate_rows(scale=synthetic.scale_for_rows(rows)))
    paths = [first]
    for i in range(1, count):
        paths.append(folder / f"backup-{i}.json")
        shutil.copyfile(first, paths[-1])
    return paths, sum(synthetic.count_rows(scale=synthetic.scale_for_rows(rows)).values())


def measure(work: Path, server: EmbeddedPostgres, backups: list[Path], workers: int, label: str) -> dict:
    """Restore every backup into its own new database with ``workers`` workers; wall and step seconds."""
    dbs = [f"celery_bench_{label}_{i}" for i in range(len(backups))]
    for db in dbs:
        ensure_database(server.dsn("postgres"), db)
    env = {
        "BACKUP_ASSETS_BACKUPS": str(backups[0].parent),
        "BACKUP_ASSETS_GLOB": "*.json",
        **{f"BENCH_TARGET_{i}": server.dsn(db) for i, db in enumerate(dbs)},
    }
    cluster = Cluster(work / label, env)
    pg_before, ours_before = pg_cpu(server), children_cpu()
    try:
        cluster.start_redis()
        queues = [cluster.queue_of(server.dsn(db)) for db in dbs]
        for w in range(workers):
            cluster.start_worker(f"w{w}", queues[w::workers])
        keys = [partition_key_for_file(p) for p in backups]
        with cluster.instance() as instance:
            instance.add_dynamic_partitions(backups_partitions.name, keys)
        start = time.perf_counter()
        procs = [cluster.launch(k, server.dsn(db), f"BENCH_TARGET_{i}") for i, (k, db) in enumerate(zip(keys, dbs))]
        results = [p.communicate()[0] for p in procs]
        wall = time.perf_counter() - start
        ok = all(p.returncode == 0 and b'"success": true' in out for p, out in zip(procs, results))
        steps = step_seconds(cluster)
    finally:
        cluster.stop()
    pg, ours = pg_cpu(server) - pg_before, children_cpu() - ours_before
    return {
        "workers": workers,
        "wall_s": round(wall, 1),
        "ok": ok,
        "step_s": round(steps, 1),
        "postgres_cpu_s": round(pg, 1),
        "dagster_celery_cpu_s": round(ours, 1),
        "cores_busy": round((pg + ours) / wall, 2),
    }


def pg_cpu(server: EmbeddedPostgres) -> float:
    """CPU seconds of the PostgreSQL server: the postmaster, its live children and those it reaped."""
    pid = int((Path(server.data_dir) / "postmaster.pid").read_text().split()[0])
    main = psutil.Process(pid)
    t = main.cpu_times()
    live = sum(sum(c.cpu_times()[:2]) for c in main.children() if c.is_running())
    return t.user + t.system + t.children_user + t.children_system + live


def children_cpu() -> float:
    """CPU seconds of this process's reaped descendants: workers, launchers, redis."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def step_seconds(cluster: Cluster) -> float:
    total = 0.0
    with cluster.instance() as instance:
        for run in instance.get_runs():
            start = {}
            for e in instance.all_logs(run.run_id):
                ev = e.dagster_event
                if ev is None or not ev.step_key:
                    continue
                if ev.event_type_value == "STEP_START":
                    start[ev.step_key] = e.timestamp
                elif ev.event_type_value == "STEP_SUCCESS" and ev.step_key in start:
                    total += e.timestamp - start[ev.step_key]
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=250_000)
    parser.add_argument("--backups", type=int, default=4)
    a = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ba-bench-celery-"))
    server = EmbeddedPostgres(work / "pg", durable=False).start()
    try:
        backups, rows = make_backups(work / "backups", a.rows, a.backups)
        print(f"{a.backups} backups of {rows} rows each")
        results = [measure(work, server, backups, n, f"w{n}") for n in (1, 2)]
        for r in results:
            print(r)
        print(f"1 worker / 2 workers wall: {results[0]['wall_s'] / results[1]['wall_s']:.2f}x")
    finally:
        server.destroy()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
