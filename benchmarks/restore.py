"""End-to-end restore of a generated, encrypted export, beside its two baselines, measured in one run.

    .venv/bin/python benchmarks/restore.py [--rows 1000000] [--small 100000] [--naive-rows 100000]

For each size it generates a Sentry-format export (``backup_assets.demo.synthetic``, several models
with FK chains), encrypts it into Sentry's tarball with a fresh key pair (the private key stays in
memory and reaches the child processes through an environment variable), then measures, each in a
fresh subprocess against a fresh database of one embedded PostgreSQL (fsync off):

* **ours** - ``run_restore`` of the tarball: authenticate + decrypt + ijson parse + stage + per-model
  load with pk remapping, FK rewrite and checks (create mode, built-in manifest), independent models
  loading two at a time (the default on 2+ cores); and **ours, 1 worker**: the same, one model at a time
  (what a Dagster run with the in-process executor does);
* **raw COPY** (the limit the issue names) - the same tables (schema copied with ``pg_dump -s`` from the
  restored database, same FKs and uniques) filled by ``COPY`` from the rows already shaped (ids final,
  FKs rewritten), in dependency order, in one transaction;
* **raw COPY, constraints after** - the same COPY into the tables without their unique and foreign-key
  constraints, which are added afterwards (``pg_dump --section=pre-data``, data, ``--section=post-data``:
  what ``pg_restore`` does, and what create mode does per model);
* **naive** (Sentry-style, the baseline of "vs naive") - the whole file decrypted with ``Fernet.decrypt``
  and parsed with ``json.loads`` in memory, one ``INSERT ... RETURNING id`` per row through psycopg2
  (Sentry's driver under Django: parameters bound client-side, no prepared statements), a commit every
  20 rows, the pk map in a dict (on the small export only: it is slow); and **naive, psycopg 3
  prepared**: the same import through psycopg 3, which binds server-side and prepares each repeated
  INSERT (faster than anything Sentry runs; shown for comparison).

Rates are rows of the export per wall-clock second of the child; peak RSS is the child's ``ru_maxrss``.
Ours and raw COPY run ``--repeat`` times each, interleaved, after a CHECKPOINT and into a fresh database;
the fastest run of each counts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backup_assets.core import keys  # noqa: E402
from backup_assets.core.decryptors import PemEncryptor  # noqa: E402
from backup_assets.core.postgres import EmbeddedPostgres, _bin_dir, ensure_database  # noqa: E402
from backup_assets.core.source import encrypt_export  # noqa: E402
from backup_assets.demo import synthetic  # noqa: E402

KEY_ENV = "BENCH_PRIVATE_KEY_PEM"

OURS = textwrap.dedent(
    """
    import json, resource, sys, time
    from backup_assets.core.decryptors import PemDecryptor
    from backup_assets.core.manifest import Manifest
    from backup_assets.core.restore import run_restore
    from backup_assets.core.settings import ImportSettings
    from backup_assets.core.source import open_backup
    t = time.perf_counter()
    r = run_restore(sys.argv[1], open_backup(sys.argv[2], PemDecryptor.from_env("%s")), Manifest.builtin("core"),
                    ImportSettings(create_schema=True), workers=int(sys.argv[3]))
    secs = time.perf_counter() - t
    assert all(c.passed or c.severity != "ERROR" for cs in r.checks.values() for c in cs
               if c.name != "no_rows_dropped"), r.checks
    print(json.dumps({"seconds": secs, "rows": r.stage.rows,
                      "written": sum(l.rows_written for l in r.loads.values()),
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
    % KEY_ENV
)

RAW_COPY = textwrap.dedent("""
    import json, resource, sys, time, psycopg
    dst, tables, folder = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    post = open(sys.argv[4]).read() if len(sys.argv) > 4 else None  # constraints to add after the data
    with psycopg.connect(dst, autocommit=True) as conn:
        t = time.perf_counter()
        n = 0
        with conn.transaction():
            for table in tables:
                with open(f"{folder}/{table}.copy", "rb") as f, conn.cursor() as cur:
                    with cur.copy(f'COPY "{table}" FROM STDIN') as copy:
                        while chunk := f.read(1 << 20):
                            copy.write(chunk)
                    n += conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
            if post:
                conn.execute(post)
        secs = time.perf_counter() - t
    print(json.dumps({"seconds": secs, "rows": n,
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")

NAIVE = textwrap.dedent(
    """
    import json, os, resource, sys, tarfile, time, psycopg, psycopg2, psycopg2.extras
    from cryptography.fernet import Fernet
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding
    from psycopg.types.json import Jsonb
    sentry_driver = sys.argv[3] == "psycopg2"
    if sentry_driver:
        connect, Jsonb = psycopg2.connect, psycopg2.extras.Json
    else:
        connect = psycopg.connect
    from backup_assets.core.manifest import Manifest
    t = time.perf_counter()
    with tarfile.open(sys.argv[2]) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    key = serialization.load_pem_private_key(os.environ["%s"].encode(), None)
    dek = key.decrypt(members["data.key"], padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(),
                                                        label=None))
    rows = json.loads(Fernet(dek).decrypt(members["export.json"]))
    del members
    manifest = Manifest.builtin("core")
    pk_map = {}
    n = 0
    conn = connect(sys.argv[1])
    cur = conn.cursor()
    # column types, once per table (Django knows its fields' types; so does this importer)
    cur.execute("SELECT table_name, column_name FROM information_schema.columns "
                "WHERE table_schema = 'public' AND data_type IN ('json', 'jsonb')")
    json_cols = {(t, c) for t, c in cur.fetchall()}
    for i, row in enumerate(rows):
        spec = manifest.models.get(row["model"])
        if spec is None:
            continue
        cols, vals, ok = [], [], True
        for field, value in row["fields"].items():
            fk = spec.fk_by_field.get(field)
            if fk is not None:
                if value is not None:
                    value = pk_map.get((fk.model, value))
                    if value is None:
                        ok = False
                        break
                cols.append(fk.column)
            else:
                cols.append(field)
                if (spec.table_name, field) in json_cols and value is not None:
                    value = Jsonb(value)
            vals.append(value)
        if not ok:
            continue
        q = 'INSERT INTO "%%s" (%%s) VALUES (%%s) RETURNING id' %% (
            spec.table_name, ", ".join(f'"{c}"' for c in cols), ", ".join(["%%s"] * len(vals)))
        cur.execute(q, vals)
        pk_map[(row["model"], row["pk"])] = cur.fetchone()[0]
        n += 1
        if n %% 20 == 0:
            conn.commit()
    conn.commit()
    conn.close()
    secs = time.perf_counter() - t
    print(json.dumps({"seconds": secs, "rows": len(rows), "written": n,
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
    % KEY_ENV
)


def child(code: str, *args: str, env: dict | None = None) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )
    if out.returncode:
        raise SystemExit(f"child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def pg_tool(server: EmbeddedPostgres, tool: str, *args: str) -> str:
    return subprocess.run([str(_bin_dir() / tool), *args], check=True, capture_output=True, text=True).stdout


def make_backup(folder: Path, rows: int, public_pem: bytes) -> tuple[Path, int]:
    scale = synthetic.scale_for_rows(rows)
    plain = folder / f"export-{rows}.json"
    n = synthetic.write_export(plain, synthetic.generate_rows(scale=scale))
    tar = folder / f"export-{rows}.tar"
    encrypt_export(plain, tar, PemEncryptor(public_pem))
    plain.unlink()
    return tar, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--small", type=int, default=100_000)
    ap.add_argument("--naive-rows", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=2, help="runs of ours and raw COPY per size; the best counts")
    ap.add_argument(
        "--durable",
        action="store_true",
        help="run the server as PostgreSQL ships (fsync, synchronous_commit, full_page_writes on) instead of fsync off",
    )
    a = ap.parse_args()
    private_pem, public_pem = keys.generate_key_pair()
    env = {KEY_ENV: private_pem.decode()}
    work = Path(tempfile.mkdtemp(prefix="bench-restore-"))
    server = EmbeddedPostgres(work / "pg", durable=a.durable).start()
    best: dict[tuple[str, int], dict] = {}
    runs = iter(range(1_000_000))

    def measure(kind: str, size: int, code: str, *args: str, schema: str | None = None, keep: bool = False) -> str:
        """Run ``code`` in a fresh subprocess against a fresh database (after a CHECKPOINT, so that no run
        pays for the previous one's writes); keep the fastest run of each kind and size."""
        db = f"run_{next(runs)}"
        ensure_database(server.dsn(), db)
        if schema is not None:
            load_schema(server.dsn(db), schema)
        psycopg_rows(server.dsn(), "CHECKPOINT")
        r = child(code, server.dsn(db), *args, env=env)
        print(f"{kind} {size}: {r}", file=sys.stderr)
        if (kind, size) not in best or r["seconds"] < best[kind, size]["seconds"]:
            best[kind, size] = r
        if not keep:
            psycopg_rows(server.dsn(), f'DROP DATABASE "{db}"')
        return db

    try:
        for size in sorted({a.small, a.rows}):
            tar, _ = make_backup(work, size, public_pem)
            restored = None
            for rep in range(a.repeat):  # interleaved, so that a slow spell of the machine hits every kind
                db = measure("ours", size, OURS, str(tar), "2", keep=rep == 0)
                restored = db if rep == 0 else restored
                measure("ours, 1 worker", size, OURS, str(tar), "1")
                if size == a.rows:
                    if rep == 0:  # the rows the restore wrote, shaped, and the schema it made
                        tables = [
                            r[0]
                            for r in psycopg_rows(
                                server.dsn(restored),
                                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
                            )
                        ]
                        order = ordered_tables(tables)
                        folder = work / "copy"
                        folder.mkdir(exist_ok=True)
                        dump_rows(server.dsn(restored), order, folder)
                        schema = pg_tool(server, "pg_dump", "-s", "-n", "public", server.dsn(restored))
                        pre = pg_tool(
                            server, "pg_dump", "-s", "-n", "public", "--section=pre-data", server.dsn(restored)
                        )
                        post = work / "post-data.sql"
                        post.write_text(
                            pg_tool(
                                server, "pg_dump", "-s", "-n", "public", "--section=post-data", server.dsn(restored)
                            )
                        )
                    # raw COPY of the same rows, already shaped, into the same schema
                    measure("raw COPY", size, RAW_COPY, json.dumps(order), str(folder), schema=schema)
                    # pg_restore-style: tables first, data, then the indexes and constraints
                    measure(
                        "raw COPY, constraints after",
                        size,
                        RAW_COPY,
                        json.dumps(order),
                        str(folder),
                        str(post),
                        schema=pre,
                    )
            if size == a.naive_rows:
                schema = pg_tool(server, "pg_dump", "-s", "-n", "public", server.dsn(restored))
                for driver, kind in (("psycopg2", "naive"), ("psycopg", "naive, psycopg 3 prepared")):
                    measure(kind, size, NAIVE, str(tar), driver, schema=schema)
    finally:
        server.destroy()
        subprocess.run(["rm", "-rf", str(work)])
    order_of = [
        "ours",
        "ours, 1 worker",
        "naive",
        "naive, psycopg 3 prepared",
        "raw COPY",
        "raw COPY, constraints after",
    ]
    report(
        [
            (kind, size, best[kind, size], None)
            for size in sorted({a.small, a.rows})
            for kind in order_of
            if (kind, size) in best
        ]
    )


def load_schema(dsn: str, schema: str) -> None:
    schema = "\n".join(line for line in schema.splitlines() if not line.startswith("CREATE SCHEMA public"))
    r = subprocess.run(
        [str(_bin_dir() / "psql"), "-q", "-X", "-v", "ON_ERROR_STOP=1", dsn],
        input=schema,
        text=True,
        capture_output=True,
    )
    if r.returncode:
        raise SystemExit(f"psql failed: {r.stderr[-2000:]}")


def psycopg_rows(dsn: str, q: str) -> list[tuple]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(q)
        return cur.fetchall() if cur.description else []


def ordered_tables(tables: list[str]) -> list[str]:
    from backup_assets.core.manifest import Manifest

    m = Manifest.builtin()
    by_table = {m[n].table_name: n for n in m.relocatable()}
    order = [m[n].table_name for n in m.relocatable()]
    return [t for t in order if t in tables and t in by_table]


def dump_rows(dsn: str, tables: list[str], folder: Path) -> None:
    import psycopg

    with psycopg.connect(dsn) as conn:
        for t in tables:
            with (
                open(folder / f"{t}.copy", "wb") as f,
                conn.cursor() as cur,
                cur.copy(f'COPY (SELECT * FROM "{t}" ORDER BY id) TO STDOUT') as copy,
            ):
                for chunk in copy:
                    f.write(chunk)


def report(results: list) -> None:
    def rate(r: dict) -> float:
        return r["rows"] / r["seconds"]

    raw = next(r for kind, _, r, _ in results if kind == "raw COPY")
    naive = next((r for kind, _, r, _ in results if kind == "naive"), None)
    ours_sizes = {size: r for kind, size, r, _ in results if kind == "ours"}
    small, big = min(ours_sizes), max(ours_sizes)
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    print(
        f"\nMachine: {os.cpu_count()} cores ({cpu}), {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GB, "
        f"Python {platform.python_version()}; date {time.strftime('%Y-%m-%d')}\n"
    )
    print("| run | rows | seconds | rows/s | peak RSS (MB) | vs raw COPY | vs naive |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for kind, _size, r, _ in results:
        vs_naive = f"{rate(r) / rate(naive):.1f}x" if naive else "-"
        print(
            f"| {kind} | {r['rows']:,} | {r['seconds']:.1f} | {rate(r):,.0f} | {r['rss_mb']:.0f} | "
            f"{rate(r) / rate(raw):.2f}x | {vs_naive} |"
        )
    print(
        f"\nPeak RSS of ours grows {100 * (ours_sizes[big]['rss_mb'] / ours_sizes[small]['rss_mb'] - 1):+.0f}% "
        f"from {ours_sizes[small]['rows']:,} to {ours_sizes[big]['rows']:,} rows."
    )


if __name__ == "__main__":
    main()
