"""Dagster's cost per model asset, and a fresh-install-size export through Sentry's full manifest graph.

    .venv/bin/python benchmarks/dagster_overhead.py [--repeat 3] [--manifest ../shared/conformance/model_dependencies/detailed.json]

One small generated export (~40 rows: one user, one organization, one project, as after a fresh
install), restored in this process into a fresh database of a dedicated embedded PostgreSQL (fsync
off) per measurement, twice per manifest:

* **engine** (baseline) - ``backup_assets.core.restore.run_restore``: stage, prepare, load and verify
  every model, no Dagster;
* **Dagster** - ``backup_assets.run.materialize_restore``: the same input through the asset graph of
  that manifest, in-process (a test instance on disk, console logging off).

Overhead per step = (Dagster wall - engine wall) / steps of the run (stages + models + restore_complete).
Both manifests are measured: the built-in "core" subset (43 models, ``Manifest.builtin("core")``) and Sentry's full ``detailed.json`` (95 relocatable
models). Median of ``--repeat`` runs each; imports and graph building are outside the timings (the
definitions-load benchmark measures those). Results go to the "Dagster overhead" section of
``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import dagster as dg  # noqa: E402

from backup_assets.core.manifest import Manifest  # noqa: E402
from backup_assets.core.postgres import EmbeddedPostgres, ensure_database  # noqa: E402
from backup_assets.core.restore import run_restore  # noqa: E402
from backup_assets.core.settings import ImportSettings  # noqa: E402
from backup_assets.core.source import open_backup  # noqa: E402
from backup_assets.demo.synthetic import count_rows, generate_rows, write_export  # noqa: E402
from backup_assets.run import failure_message, materialize_restore  # noqa: E402
from benchmarks.reliability import machine, replace_section  # noqa: E402

SHAPE = dict(orgs=1, users=1, projects_per_org=1, teams_per_org=1, members_per_org=1, options=1)
SETTINGS = ImportSettings(create_schema=True)
SENTRY_MANIFEST = ROOT.parent / "shared" / "conformance" / "model_dependencies" / "detailed.json"


class Target:
    """Fresh databases on one dedicated server."""

    def __init__(self, folder: Path) -> None:
        self.server = EmbeddedPostgres(folder / "pg", durable=False).start()
        self.n = 0

    def fresh(self) -> str:
        self.n += 1
        ensure_database(self.server.dsn("postgres"), f"bench_{self.n}")
        return self.server.dsn(f"bench_{self.n}")


def engine_once(target: Target, backup: Path, manifest: Manifest) -> float:
    dsn = target.fresh()
    start = time.perf_counter()
    run_restore(dsn, open_backup(backup), manifest, SETTINGS, workers=1)  # one at a time, as the graph loads
    return time.perf_counter() - start


def dagster_once(target: Target, backup: Path, manifest: Manifest, home: Path) -> tuple[float, int]:
    dsn = target.fresh()
    with dg.instance_for_test(temp_dir=tempfile.mkdtemp(dir=home)) as instance:
        start = time.perf_counter()
        result = materialize_restore(backup, dsn, SETTINGS, manifest=manifest, instance=instance, log_level="CRITICAL")
        seconds = time.perf_counter() - start
        if not result.success:
            raise SystemExit(failure_message(result))
        steps = len({e.step_key for e in result.all_events if e.event_type_value == "STEP_SUCCESS"})
    return seconds, steps


def measure(target: Target, backup: Path, manifest: Manifest, repeat: int, home: Path) -> dict:
    engine_once(target, backup, manifest)  # warm-up: caches, catalog
    engine = [engine_once(target, backup, manifest) for _ in range(repeat)]
    runs = [dagster_once(target, backup, manifest, home) for _ in range(repeat)]
    dagster = [s for s, _ in runs]
    steps = runs[0][1]
    e, d = statistics.median(engine), statistics.median(dagster)
    return {
        "models": len(manifest.relocatable()),
        "steps": steps,
        "engine_s": e,
        "dagster_s": d,
        "per_step_ms": (d - e) / steps * 1000,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--manifest", type=Path, default=SENTRY_MANIFEST)
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ba-overhead-"))
    backup = folder / "fresh-install.json"
    write_export(backup, generate_rows(**SHAPE))
    rows = sum(count_rows(**SHAPE).values())
    target = Target(folder)
    try:
        results = {"built-in (core)": measure(target, backup, Manifest.builtin("core"), args.repeat, folder)}
        if args.manifest.exists():
            results["Sentry detailed.json"] = measure(target, backup, Manifest.load(args.manifest), args.repeat, folder)
    finally:
        target.server.destroy()
        shutil.rmtree(folder, ignore_errors=True)
    lines = [
        "| manifest | models | steps | engine `run_restore` (s, baseline) | Dagster graph (s) | ratio | "
        "overhead per step (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        print(name, r)
        lines.append(
            f"| {name} | {r['models']} | {r['steps']} | {r['engine_s']:.2f} | {r['dagster_s']:.2f} | "
            f"{r['dagster_s'] / r['engine_s']:.1f}x | {r['per_step_ms']:.0f} |"
        )
    replace_section(
        "Dagster overhead",
        textwrap.dedent(f"""
        `.venv/bin/python benchmarks/dagster_overhead.py --repeat {args.repeat}` — a generated export of {rows} rows
        (the size of a fresh install: one user, one organization, one project, their options and keys),
        restored in-process into a fresh database of a dedicated embedded PostgreSQL (fsync off) by the
        engine alone (`run_restore`, baseline) and by the asset graph (`materialize_restore`, in-process
        executor, a test instance on disk, console logging off), with `Manifest.builtin("core")` (43 models) and with
        Sentry's full `model_dependencies/detailed.json`. Median of {args.repeat}; graph building and imports
        are not timed. Overhead per step = (Dagster - engine) / steps.

        - {machine()}
        """)
        + "\n"
        + "\n".join(lines),
    )


if __name__ == "__main__":
    main()
