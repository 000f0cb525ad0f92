"""Several imports of one backup at once into one database, against the same imports one after another.

    .venv/bin/python benchmarks/concurrent_imports.py [--imports 3] [--rows 20000] [--repeat 2]

A generated plain JSON export (``backup_assets.demo.synthetic``, built-in manifest) is imported
``--imports`` times in organizations scope, create mode, each import by ``run_restore`` in a process of
its own, into a fresh database of a dedicated embedded PostgreSQL (fsync off): first one after another
(the baseline), then all at once into another fresh database. Both must end with the same number of
rows per table (renamed slugs and usernames included). The ratio tells what the locks that serialise
each table's collision checks and insert (and create mode's DDL) cost against running imports apart.

Results go to the section "Concurrent imports into one database" of ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from backup_assets.core.manifest import Manifest  # noqa: E402
from backup_assets.core.postgres import EmbeddedPostgres, ensure_database  # noqa: E402
from backup_assets.demo import synthetic  # noqa: E402
from benchmarks.reliability import machine, replace_section  # noqa: E402

CHILD = (
    "import sys; from backup_assets.core.manifest import Manifest; from backup_assets.core.restore import "
    "run_restore; from backup_assets.core.settings import ImportSettings; from backup_assets.core.source import "
    "open_backup; run_restore(sys.argv[1], open_backup(sys.argv[2]), Manifest.builtin(), "
    "ImportSettings(scope='organizations', create_schema=True))"
)


def imports(dsn: str, export: Path, n: int, at_once: bool) -> float:
    """Wall time of ``n`` imports of ``export`` into ``dsn``, each in a child process."""
    start = time.perf_counter()
    children: list[subprocess.Popen] = []
    for _ in range(n):
        children.append(subprocess.Popen([sys.executable, "-c", CHILD, dsn, str(export)], cwd=ROOT))
        if not at_once:
            children[-1].wait()
    codes = [c.wait() for c in children]
    assert codes == [0] * n, codes
    return time.perf_counter() - start


def rows_per_table(dsn: str) -> dict[str, int]:
    tables = sorted({Manifest.builtin()[m].table_name for m in Manifest.builtin().relocatable()})
    with psycopg.connect(dsn) as conn:
        return {
            t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]
            for t in tables
            if conn.execute("SELECT to_regclass(%s)", (f'public."{t}"',)).fetchone()[0]
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--imports", type=int, default=3)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ba-conc-") as tmp:
        server = EmbeddedPostgres(Path(tmp) / "pg", durable=False).start()
        try:
            export = Path(tmp) / "export.json"
            synthetic.write_export(export, synthetic.generate_rows(scale=synthetic.scale_for_rows(args.rows)))
            runs = []
            for i in range(args.repeat):
                dbs = {}
                for mode in ("sequential", "at_once"):
                    ensure_database(server.dsn("postgres"), f"{mode}_{i}")
                    dbs[mode] = server.dsn(f"{mode}_{i}")
                seq = imports(dbs["sequential"], export, args.imports, at_once=False)
                par = imports(dbs["at_once"], export, args.imports, at_once=True)
                assert rows_per_table(dbs["at_once"]) == rows_per_table(dbs["sequential"])
                runs.append((seq, par))
                print(f"run {i + 1}: one after another {seq:.1f} s, at once {par:.1f} s ({par / seq:.2f}x)")
            rows = sum(rows_per_table(dbs["at_once"]).values())
        finally:
            server.destroy()
    table = "\n".join(f"| {i + 1} | {s:.1f} | {p:.1f} | {p / s:.2f}x |" for i, (s, p) in enumerate(runs))
    replace_section(
        "Concurrent imports into one database",
        textwrap.dedent(f"""
        `.venv/bin/python benchmarks/concurrent_imports.py --imports {args.imports} --rows {args.rows} --repeat {args.repeat}`
        — {args.imports} imports of one generated export (organizations scope, create mode), each `run_restore` in a
        process of its own, into one database of a dedicated embedded PostgreSQL (fsync off): one after another
        (baseline), then at once. Both end with the same rows per table ({rows:,} rows in all). {machine()}

        | run | one after another (s) | at once (s) | at once vs one after another |
        |---:|---:|---:|---:|
        """)
        + table
        + "\n",
    )


if __name__ == "__main__":
    main()
