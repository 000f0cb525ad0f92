"""The user's paths beside the engine, measured in one run: the same encrypted backup restored by
``run_restore``, by ``backup-assets import global`` and by the sensor -> ``restore_backup_job`` run,
next to a raw COPY of the same rows and the naive Sentry-style import.

    .venv/bin/python benchmarks/paths.py [--sizes 100000,1000000] [--manifests builtin,full] [--repeat 1]

For each manifest (``builtin``: the built-in one; ``full``: Sentry's whole ``model_dependencies/
detailed.json`` from the conformance folder, 95 relocatable models) and each size, it generates the
benchmark's export (``backup_assets.demo.synthetic``), encrypts it with a fresh key pair, and measures
each path in a fresh subprocess against a fresh database of one embedded PostgreSQL (fsync off), create
mode, scope global:

* **run_restore** - the engine's API (2 workers), the baseline of the 1.1x target;
* **CLI** - ``backup-assets import global TAR --decrypt-with KEY --no-prompt --create-schema``: the
  console script's wall time, process start included, and its peak RSS;
* **job** - a fresh process that loads the code location (``backup_assets.definitions``, environment as a
  deployment sets it), evaluates the backup folder sensor twice (a file is requested once it is stable),
  adds the partition and executes the ``restore_backup_job`` run it requested on a persistent instance
  (``$DAGSTER_HOME``, made beforehand, as a deployment's exists before a backup arrives): what the
  daemon's run worker does. Its ``seconds`` is the process's wall time;
  ``defs_s`` (the code location's load), ``sensor_s`` (opening the instance, the two sensor ticks, the
  partition added) and ``run_s`` (the run, ``execute_in_process``, and reading its row counts) split it. With each storage of ``--storages``: ``shipped``, the event log
  the repository's ``dagster.yaml`` names (``backup_assets.event_log``: Dagster's sqlite files through
  connections kept open, its batches in one transaction); ``sqlite``, Dagster's default (a connection
  per statement, each event committed); ``postgres``, a database of the same server through the block
  ``dagster.yaml`` ships commented out (``backup_assets.postgres_event_log``: dagster-postgres's event log
  on a kept connection); ``dagster-postgres``, the same database through dagster-postgres's own
  ``storage: postgres:`` (a connection per statement);
* **Dagster alone** - Dagster's own cost of the job's run: the restore graph's assets, checks, deps and
  partitions in a run whose steps do nothing but yield what the real ones yield (a materialization per
  asset, the four checks of each model with rows), on the shipped instance storage; its ``seconds`` is
  the run's alone (add the definitions' load and the sensor for the job's fixed cost);
* **raw COPY** - the rows the restore wrote, already shaped, copied into the same schema with its
  constraints, in one transaction (``benchmarks/restore.py``'s);
* **naive** - one ``INSERT ... RETURNING id`` per row through psycopg2 (``benchmarks/restore.py``'s), at
  the size of ``--naive-rows`` and the built-in manifest only.

``--tiny`` adds the fresh-install export of the conformance folder (34 rows, plain JSON, full
manifest): the definitions' load time alone, the job's run after it, and the CLI end to end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backup_assets.core import keys  # noqa: E402
from backup_assets.core.postgres import EmbeddedPostgres, ensure_database  # noqa: E402
from benchmarks.restore import (  # noqa: E402
    KEY_ENV,
    NAIVE,
    RAW_COPY,
    child,
    dump_rows,
    load_schema,
    make_backup,
    ordered_tables,
    pg_tool,
    psycopg_rows,
)

DAGSTER_ALONE = "Dagster alone (the graph's run, doing nothing)"
FULL_MANIFEST = Path("/work/shared/conformance/model_dependencies/detailed.json")
FRESH_INSTALL = Path("/work/shared/conformance/exports/fresh-install.json")

ENGINE = textwrap.dedent(
    """
    import json, resource, sys, time
    from backup_assets.core.decryptors import PemDecryptor
    from backup_assets.core.manifest import Manifest
    from backup_assets.core.restore import run_restore
    from backup_assets.core.settings import ImportSettings
    from backup_assets.core.source import open_backup
    t = time.perf_counter()
    decryptor = PemDecryptor.from_env("%s") if sys.argv[2].endswith(".tar") else None
    r = run_restore(sys.argv[1], open_backup(sys.argv[2], decryptor), Manifest.load(sys.argv[3] or None),
                    ImportSettings(create_schema=True, replace_existing=True), workers=2)
    print(json.dumps({"seconds": time.perf_counter() - t, "rows": r.stage.rows,
                      "models": sorted(m for m, n in r.stage.rows_per_model.items() if n),
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
    % KEY_ENV
)

#: Dagster alone: a run of the restore graph's assets, checks, deps and partitions whose steps do nothing
#: but yield what the real ones yield (a materialization per asset; the checks of the stages and of the
#: models with rows).
#: Its ``seconds`` is the run's (``execute_in_process``) on the shipped instance storage, after the
#: definitions' load, which the ``definitions load`` row measures.
FLOOR = textwrap.dedent("""
    import json, resource, sys, time
    import dagster as dg
    from backup_assets.assets import build_restore_graph
    from backup_assets.core.manifest import Manifest
    from backup_assets.translator import MODEL_METADATA_KEY
    manifest, with_rows = Manifest.load(sys.argv[1] or None), set(json.loads(sys.argv[2]))

    def idle(real):
        keys = [spec.key for spec in real.specs]  # in dependency order, as the real step yields them
        # a model's checks when it has rows; a stage's (parsed_export's) always
        checked = {k for k in keys if real.metadata_by_key[k].get(MODEL_METADATA_KEY) in with_rows | {None}}

        @dg.multi_asset(name=real.op.name, specs=list(real.specs), check_specs=list(real.check_specs),
                        can_subset=True)
        def step(context):
            for key in keys:
                if key in context.selected_asset_keys:
                    yield dg.MaterializeResult(asset_key=key, metadata={"rows_read": 0})
                    for c in real.check_specs:
                        if c.asset_key == key and key in checked:
                            yield dg.AssetCheckResult(asset_key=key, check_name=c.name, passed=True)
        return step

    defs = dg.Definitions(assets=[idle(a) for a in build_restore_graph(manifest)],
                          executor=dg.in_process_executor)
    job = dg.define_asset_job("idle").resolve(asset_graph=defs.resolve_asset_graph())
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("sentry_backups", ["floor"])
        t = time.perf_counter()
        assert job.execute_in_process(instance=instance, partition_key="floor").success
        secs = time.perf_counter() - t
    print(json.dumps({"seconds": secs, "rows": 0,
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")

#: Times a command as a whole (process start included): wall time and the child's peak RSS.
COMMAND = textwrap.dedent("""
    import json, resource, subprocess, sys, time
    t = time.perf_counter()
    out = subprocess.run(sys.argv[2:], capture_output=True, text=True)
    secs = time.perf_counter() - t
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    print(json.dumps({"seconds": secs, "rows": int(sys.argv[1]),
                      "rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
""")

JOB = textwrap.dedent("""
    import time
    t0 = time.perf_counter()
    import json, resource, sys
    import dagster as dg
    from backup_assets.definitions import build_definitions
    defs = build_definitions()
    job = defs.resolve_job_def("restore_backup_job")
    t_defs = time.perf_counter()
    with dg.DagsterInstance.get() as instance:
        sensor = defs.get_sensor_def("backup_folder_sensor")
        resources = {k: v for k, v in defs.resources.items() if k in ("backup_source", "target")}
        cursor, requests = None, []
        for _ in range(2):  # the first tick sees the file, the second finds it stable and requests it
            result = sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources))
            cursor = result.cursor
            for add in result.dynamic_partitions_requests or []:
                instance.add_dynamic_partitions(add.partitions_def_name, list(add.partition_keys))
            requests += result.run_requests or []
        [request] = requests
        from backup_assets.core import backup_key
        backup_key.forget_digests()  # the daemon's sensor hashed the file in another process than the run's
        t_run = time.perf_counter()
        run = job.execute_in_process(instance=instance, partition_key=request.partition_key, tags=request.tags,
                                     run_config={"resources": {"import_settings": {"config": {
                                         "create_schema": True, "replace_existing": True}}}})
        assert run.success
        rows = sum(e.materialization.metadata["rows_read"].value for e in run.get_asset_materialization_events()
                   if e.asset_key.path[0] != "sentry_backup" and "rows_read" in e.materialization.metadata)
    end = time.perf_counter()
    print(json.dumps({"seconds": end - t0, "defs_s": t_defs - t0, "sensor_s": t_run - t_defs, "run_s": end - t_run,
                      "rows": rows,
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")

#: Makes the instance of a home (its storage's files or tables), as a deployment's exists before a backup
#: arrives: the job's figures then leave out a cost no run of a deployment pays.
INSTANCE = textwrap.dedent("""
    import json
    import dagster as dg
    with dg.DagsterInstance.get() as instance:
        instance.get_runs(limit=1)
    print(json.dumps({}))
""")

DEFS = textwrap.dedent("""
    import time
    t0 = time.perf_counter()
    import json
    from backup_assets.definitions import build_definitions
    build_definitions().resolve_job_def("restore_backup_job")
    print(json.dumps({"seconds": time.perf_counter() - t0, "rows": 0, "rss_mb": 0}))
""")


def postgres_storage(url: str, *, pooled: bool) -> str:
    """``dagster.yaml``'s storage in PostgreSQL: the block it ships (dagster-postgres's run and schedule
    storages, ``backup_assets.postgres_event_log``'s event log), or dagster-postgres's ``storage:`` alone."""
    if not pooled:
        return f'storage:\n  postgres:\n    postgres_url: "{url}"\n'
    storages = [
        ("run_storage", "dagster_postgres.run_storage", "PostgresRunStorage"),
        ("schedule_storage", "dagster_postgres.schedule_storage", "PostgresScheduleStorage"),
        ("event_log_storage", "backup_assets.postgres_event_log", "PooledPostgresEventLogStorage"),
    ]
    return "".join(
        f'{name}:\n  module: {module}\n  class: {cls}\n  config:\n    postgres_url: "{url}"\n'
        for name, module, cls in storages
    )


class Bench:
    """One embedded server; each measurement in a fresh subprocess against a fresh database."""

    def __init__(self, work: Path, private_pem: bytes) -> None:
        self.work, self.server = work, EmbeddedPostgres(work / "pg", durable=False).start()
        self.key_file = work / "bench-key.pem"
        self.key_file.write_bytes(private_pem)
        self.key_file.chmod(0o600)
        self.env = {KEY_ENV: private_pem.decode()}
        self.results: list[tuple[str, str, int, dict]] = []
        self.storages = ["shipped", "sqlite"]
        self._n = 0

    def fresh_db(self, schema: str | None = None) -> str:
        self._n += 1
        db = f"run_{self._n}"
        ensure_database(self.server.dsn(), db)
        if schema is not None:
            load_schema(self.server.dsn(db), schema)
        psycopg_rows(self.server.dsn(), "CHECKPOINT")
        return db

    def drop(self, db: str) -> None:
        psycopg_rows(self.server.dsn(), f'DROP DATABASE "{db}" WITH (FORCE)')

    def measure(
        self,
        kind: str,
        manifest: str,
        size: int,
        code: str,
        *args: str,
        env: dict | None = None,
        schema: str | None = None,
        keep: bool = False,
    ) -> str:
        db = self.fresh_db(schema)
        r = child(code, self.server.dsn(db), *args, env={**self.env, **(env or {})})
        print(f"{kind} [{manifest}] {size}: {r}", file=sys.stderr)
        self.results.append((kind, manifest, size, r))
        if not keep:
            self.drop(db)
        return db

    def cli(self, manifest: str, size: int, backup: Path, manifest_path: str) -> None:
        db = self.fresh_db()
        args = [
            str(Path(sys.executable).parent / "backup-assets"),
            "import",
            "global",
            str(backup),
            "--no-prompt",
            "--create-schema",
            "--silent",
            "--dsn",
            self.server.dsn(db),
        ]
        if backup.suffix == ".tar":
            args += ["--decrypt-with", str(self.key_file)]
        if manifest_path:
            args += ["--manifest", manifest_path]
        r = child(COMMAND, str(size), *args)
        print(f"CLI [{manifest}] {size}: {r}", file=sys.stderr)
        self.results.append(("CLI", manifest, size, r))
        self.drop(db)

    def home(self, storage: str) -> Path:
        """A Dagster home whose instance stores with ``storage`` (see ``--storages``), its storage made
        before any measurement, as a deployment's exists before a backup arrives."""
        home = Path(tempfile.mkdtemp(prefix="home-", dir=self.work))
        config = "telemetry:\n  enabled: false\n"
        if storage == "shipped":  # the event log dagster.yaml ships (backup_assets.event_log)
            config += "event_log_storage:\n  module: backup_assets.event_log\n  class: KeptOpenSqliteEventLogStorage\n"
        if storage in ("postgres", "dagster-postgres"):  # Dagster's runs and events in PostgreSQL
            events = self.fresh_db()
            url = self.server.dsn(events).replace("postgresql://", "postgresql+psycopg2://", 1)
            config += postgres_storage(url, pooled=storage == "postgres")
        (home / "dagster.yaml").write_text(config)
        child(INSTANCE, env={"DAGSTER_HOME": str(home)})
        return home

    def job(self, manifest: str, size: int, backup: Path, manifest_path: str, storage: str = "sqlite") -> None:
        folder = Path(tempfile.mkdtemp(prefix="inbox-", dir=self.work))
        (folder / backup.name).symlink_to(backup)
        home = self.home(storage)
        db = self.fresh_db()
        env = {
            "DAGSTER_HOME": str(home),
            "BACKUP_ASSETS_DSN": self.server.dsn(db),
            "BACKUP_ASSETS_BACKUPS": str(folder),
            "BACKUP_ASSETS_PRIVATE_KEY": self.env[KEY_ENV],
            "BACKUP_ASSETS_MANIFEST": manifest_path,
        }
        r = child(JOB, env={**self.env, **env})
        kind = "job (shipped dagster.yaml)" if storage == "shipped" else f"job ({storage} instance)"
        print(f"{kind} [{manifest}] {size}: {r}", file=sys.stderr)
        self.results.append((kind, manifest, size, r))
        self.drop(db)

    def floor(self, manifest: str, size: int, manifest_path: str) -> None:
        """Dagster alone on the shipped storage: the graph's run doing nothing (``FLOOR``), with the checks
        of the models the last ``run_restore`` of this size staged rows of."""
        engine = next(r for k, m, n, r in reversed(self.results) if (k, m, n) == ("run_restore", manifest, size))
        home = self.home("shipped")
        r = child(FLOOR, manifest_path, json.dumps(engine["models"]), env={"DAGSTER_HOME": str(home)})
        print(f"Dagster alone [{manifest}] {size}: {r}", file=sys.stderr)
        self.results.append((DAGSTER_ALONE, manifest, size, r))

    def raw_copy(self, manifest: str, size: int, restored: str) -> None:
        dsn = self.server.dsn(restored)
        tables = [
            r[0]
            for r in psycopg_rows(dsn, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
        ]
        order = ordered_tables(tables)
        folder = self.work / f"copy-{manifest}-{size}"
        folder.mkdir()
        dump_rows(dsn, order, folder)
        schema = pg_tool(self.server, "pg_dump", "-s", "-n", "public", dsn)
        self.measure("raw COPY", manifest, size, RAW_COPY, json.dumps(order), str(folder), schema=schema)
        subprocess.run(["rm", "-rf", str(folder)])


def run_size(
    bench: Bench, size: int, manifests: dict[str, str], repeat: int, naive_rows: int, public_pem: bytes
) -> None:
    backup, _ = make_backup(bench.work, size, public_pem)
    for name, path in manifests.items():
        for rep in range(repeat):  # interleaved, so that a slow spell of the machine hits every path
            restored = bench.measure("run_restore", name, size, ENGINE, str(backup), path, keep=rep == 0)
            bench.cli(name, size, backup, path)
            for storage in bench.storages:
                bench.job(name, size, backup, path, storage)
            bench.floor(name, size, path)
            if rep == 0:
                bench.raw_copy(name, size, restored)
                bench.drop(restored)
    if size == naive_rows:
        db = bench.fresh_db()
        child(ENGINE, bench.server.dsn(db), str(backup), "", env=bench.env)
        schema = pg_tool(bench.server, "pg_dump", "-s", "-n", "public", bench.server.dsn(db))
        bench.drop(db)
        bench.measure("naive", "builtin", size, NAIVE, str(backup), "psycopg2", schema=schema)
    backup.unlink()


def run_tiny(bench: Bench, repeat: int) -> None:
    path = str(FULL_MANIFEST)
    for _ in range(repeat):
        r = child(DEFS, env={"BACKUP_ASSETS_MANIFEST": path})
        print(f"definitions load [full]: {r}", file=sys.stderr)
        bench.results.append(("definitions load", "full", 0, r))
        bench.measure("run_restore", "full", 34, ENGINE, str(FRESH_INSTALL), path)
        bench.cli("full", 34, FRESH_INSTALL, path)
        bench.floor("full", 34, path)
        for storage in bench.storages:
            bench.job("full", 34, FRESH_INSTALL, path, storage)


def best(results: list[tuple[str, str, int, dict]]) -> dict[tuple[str, str, int], dict]:
    out: dict[tuple[str, str, int], dict] = {}
    for kind, manifest, size, r in results:
        if (kind, manifest, size) not in out or r["seconds"] < out[kind, manifest, size]["seconds"]:
            out[kind, manifest, size] = r
    return out


def report(results: list[tuple[str, str, int, dict]]) -> None:
    b = best(results)
    naive_size, naive = next(((size, r) for (k, _, size), r in b.items() if k == "naive"), (0, None))
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    print(f"\nMachine: {os.cpu_count()} cores ({cpu}); date {time.strftime('%Y-%m-%d %H:%M')} UTC; best of the runs\n")
    print(
        "| path | manifest | rows | seconds | rows/s | peak RSS (MB) | vs run_restore (time) | vs raw COPY (rate) "
        "| vs naive (rate) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for (kind, manifest, size), r in sorted(b.items(), key=lambda kv: (kv[0][2], kv[0][1], kv[0][0])):
        engine = b.get(("run_restore", manifest, size))
        raw = b.get(("raw COPY", manifest, size))
        rate = size / r["seconds"] if size and kind != DAGSTER_ALONE else 0.0  # Dagster alone moves no row
        extra = (
            f" (defs {r['defs_s']:.1f} + sensor {r['sensor_s']:.1f} + run {r['run_s']:.1f})" if "defs_s" in r else ""
        )
        vs_engine = f"{r['seconds'] / engine['seconds']:.2f}x" if engine and kind != "definitions load" else "-"
        vs_raw = f"{rate / (size / raw['seconds']):.2f}x" if raw and rate else "-"
        vs_naive = f"{rate / (naive_size / naive['seconds']):.1f}x" if naive and rate and size == naive_size else "-"
        print(
            f"| {kind} | {manifest} | {size:,} | {r['seconds']:.2f}{extra} | {f'{rate:,.0f}' if rate else '-'} | "
            f"{r['rss_mb']:.0f} | "
            f"{vs_engine} | {vs_raw} | {vs_naive} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000", help="comma-separated row counts (0 for none)")
    ap.add_argument("--manifests", default="builtin,full", help="builtin and/or full")
    ap.add_argument("--naive-rows", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=1, help="runs of each path per size; the best counts")
    ap.add_argument("--tiny", action="store_true", help="also the fresh-install export (see the module doc)")
    ap.add_argument(
        "--storages",
        default="shipped,sqlite",
        help="Dagster instance storage(s) of the job: shipped (the repository's dagster.yaml), sqlite "
        "(Dagster's default), postgres (dagster.yaml's PostgreSQL block), dagster-postgres (dagster-postgres's own)",
    )
    a = ap.parse_args()
    manifests = {m: ("" if m == "builtin" else str(FULL_MANIFEST)) for m in a.manifests.split(",")}
    private_pem, public_pem = keys.generate_key_pair()
    work = Path(tempfile.mkdtemp(prefix="bench-paths-"))
    bench = Bench(work, private_pem)
    bench.storages = a.storages.split(",")
    try:
        if a.tiny:
            run_tiny(bench, a.repeat)
        for size in sorted({int(s) for s in a.sizes.split(",") if int(s)}):
            run_size(bench, size, manifests, a.repeat, a.naive_rows, public_pem)
    finally:
        bench.server.destroy()
        subprocess.run(["rm", "-rf", str(work)])
    report(bench.results)


if __name__ == "__main__":
    main()
