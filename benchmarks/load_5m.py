"""A large generated export through the Dagster graph, and several backups restored at once.

    .venv/bin/python benchmarks/load_5m.py [--rows 1000000 5000000] [--concurrent 3 --concurrent-rows 50000]

**Size.** For each ``--rows`` value (ascending; the first is the baseline) a plain JSON export of that
many rows is generated (``backup_assets.demo.synthetic``, the built-in "core" manifest), then restored by
``backup_assets.run.materialize_restore`` (the asset graph in-process, as ``backup-assets import``
does) in a fresh subprocess into a fresh database of a dedicated embedded PostgreSQL (fsync off).
Reported: wall time, rows/s, and the child's peak RSS (``ru_maxrss``), as a ratio to the first size:
memory is flat when the ratio stays near 1 while the rows grow 5x.

**Concurrency.** ``--concurrent`` small backups (different seeds), each restored by its own
subprocess (its own run) into its own database of the same server, at most ``max_concurrent_runs``
(read from ``dagster.yaml``) at a time; baseline: the same restores one after another, in the same
script run.

Results go to the sections "Load: size" and "Load: concurrent runs" of ``benchmarks/README.md``;
``--json`` keeps the raw numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402  (a Dagster dependency)

from backup_assets.core.postgres import EmbeddedPostgres, ensure_database  # noqa: E402
from backup_assets.demo import synthetic  # noqa: E402
from benchmarks.reliability import machine, replace_section  # noqa: E402

CHILD = textwrap.dedent("""
    import json, resource, sys, time
    import dagster as dg
    from backup_assets.core.manifest import Manifest
    from backup_assets.core.settings import ImportSettings
    from backup_assets.run import failure_message, materialize_restore
    t = time.perf_counter()
    with dg.instance_for_test() as instance:
        r = materialize_restore(sys.argv[2], sys.argv[1], ImportSettings(create_schema=True), instance=instance,
                                manifest=Manifest.builtin("core"), log_level="ERROR")
        assert r.success, failure_message(r)
        done = [e for e in r.get_asset_materialization_events() if e.asset_key.path[-1] == "restore_complete"]
        md = done[0].materialization.metadata
        steps = len({e.step_key for e in r.all_events if e.step_key})
    secs = time.perf_counter() - t
    print(json.dumps({"seconds": secs, "rows_read": md["rows_read"].value, "rows_written": md["rows_written"].value,
                      "steps": steps, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")


def restore_in_child(dsn: str, backup: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, dsn, str(backup)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if out.returncode:
        raise SystemExit(f"restore of {backup.name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def generate(folder: Path, rows: int, seed: int = 0) -> tuple[Path, int]:
    scale = synthetic.scale_for_rows(rows)
    path = folder / f"export-{rows}-{seed}.json"
    total = sum(synthetic.count_rows(scale=scale, seed=seed).values())
    if not path.exists():
        synthetic.write_export(path, synthetic.generate_rows(scale=scale, seed=seed))
    return path, total


def fresh_db(server: EmbeddedPostgres, name: str) -> str:
    ensure_database(server.dsn("postgres"), name)
    return server.dsn(name)


def size_runs(server: EmbeddedPostgres, folder: Path, sizes: list[int]) -> list[dict]:
    results = []
    for rows in sorted(sizes):
        backup, total = generate(folder, rows)
        print(f"restoring {total:,} rows ({backup.stat().st_size / 1e6:.0f} MB) ...", flush=True)
        r = restore_in_child(fresh_db(server, f"size_{rows}"), backup)
        r.update(rows=total, mb=backup.stat().st_size / 1e6)
        print(json.dumps(r), flush=True)
        results.append(r)
    return results


def run_cap() -> int:
    conf = yaml.safe_load((ROOT / "dagster.yaml").read_text()) or {}
    return int(conf.get("concurrency", {}).get("runs", {}).get("max_concurrent_runs", 1))


def concurrent_runs(server: EmbeddedPostgres, folder: Path, n: int, rows: int) -> dict:
    backups = [generate(folder, rows, seed=i)[0] for i in range(n)]
    start = time.perf_counter()
    sequential = [restore_in_child(fresh_db(server, f"seq_{i}"), b) for i, b in enumerate(backups)]
    seq_wall = time.perf_counter() - start
    cap = run_cap()
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=cap) as pool:
        parallel = list(
            pool.map(lambda ib: restore_in_child(fresh_db(server, f"par_{ib[0]}"), ib[1]), enumerate(backups))
        )
    par_wall = time.perf_counter() - start
    assert [p["rows_written"] for p in parallel] == [s["rows_written"] for s in sequential], (parallel, sequential)
    return {
        "backups": n,
        "rows_each": sequential[0]["rows_read"],
        "cap": cap,
        "sequential_s": seq_wall,
        "concurrent_s": par_wall,
        "runs": parallel,
    }


def report(sizes: list[dict], conc: dict | None) -> None:
    if sizes:
        base = sizes[0]
        lines = [
            "| rows | export MB | wall (s) | rows/s | peak RSS (MB) | RSS vs first | rows vs first |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in sizes:
            lines.append(
                f"| {r['rows']:,} | {r['mb']:.0f} | {r['seconds']:.1f} | {r['rows'] / r['seconds']:,.0f} | "
                f"{r['rss_mb']:.0f} | {r['rss_mb'] / base['rss_mb']:.2f}x | {r['rows'] / base['rows']:.1f}x |"
            )
        replace_section(
            "Load: size",
            textwrap.dedent(f"""
            `.venv/bin/python benchmarks/load_5m.py --rows {" ".join(str(r["rows"]) for r in sizes)}` — a generated
            plain JSON export (`Manifest.builtin("core")`, {sizes[0]["steps"]} steps) restored through the asset graph in-process
            (`materialize_restore`, create mode) in a fresh subprocess, into a fresh database of a dedicated
            embedded PostgreSQL (fsync off). Peak RSS is the child's `ru_maxrss` (Dagster + the engine; the
            server's memory is not included). Baseline: the first size, in the same run.

            - {machine()}
            """)
            + "\n"
            + "\n".join(lines),
        )
    if conc:
        per = ", ".join(f"{r['seconds']:.1f}" for r in conc["runs"])
        replace_section(
            "Load: concurrent runs",
            textwrap.dedent(f"""
            `.venv/bin/python benchmarks/load_5m.py --concurrent {conc["backups"]} --concurrent-rows {conc["rows_each"]}` —
            {conc["backups"]} different generated backups of {conc["rows_each"]:,} rows, each restored by its own
            subprocess (its own Dagster run, in-process executor) into its own database of ONE embedded
            PostgreSQL, at most {conc["cap"]} at a time (`max_concurrent_runs` of `dagster.yaml`). Baseline: the
            same restores one after another, in the same run. Every concurrent run wrote exactly the rows of
            its sequential twin.

            - {machine()}

            | mode | wall (s) | vs sequential |
            |---|---:|---:|
            | sequential (baseline) | {conc["sequential_s"]:.1f} | 1.00x |
            | concurrent, cap {conc["cap"]} (per run: {per} s) | {conc["concurrent_s"]:.1f} | {conc["concurrent_s"] / conc["sequential_s"]:.2f}x |
            """),
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="*", default=[1_000_000, 5_000_000])
    ap.add_argument("--concurrent", type=int, default=3)
    ap.add_argument("--concurrent-rows", type=int, default=50_000)
    ap.add_argument("--workdir", type=Path, default=None, help="keep generated exports here (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    folder = args.workdir or Path(tempfile.mkdtemp(prefix="ba-load-"))
    folder.mkdir(parents=True, exist_ok=True)
    server = EmbeddedPostgres(folder / "pg", durable=False).start()
    try:
        sizes = size_runs(server, folder, args.rows) if args.rows else []
        conc = concurrent_runs(server, folder, args.concurrent, args.concurrent_rows) if args.concurrent else None
    finally:
        server.destroy()
        if args.workdir is None:  # the generated exports (GBs at 5M rows) and the server's data
            shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps({"sizes": sizes, "concurrent": conc}, indent=2))
    report(sizes, conc)


if __name__ == "__main__":
    main()
