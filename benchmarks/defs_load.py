"""Time to load the Dagster definitions in a fresh process, with the default (built-in) manifest.

    .venv/bin/python benchmarks/defs_load.py [--runs 5] [--manifest PATH]

Each run is a new interpreter that imports ``backup_assets.definitions`` (building every asset) and
resolves the asset graph and the restore job, as a code server does. The baseline, measured in the same
run, is a fresh interpreter that only does ``import dagster``; the difference is what this project adds.
The default is the built-in manifest (every model Sentry relocates: 95); ``--manifest`` loads another
(``BACKUP_ASSETS_MANIFEST``), e.g. ``../shared/conformance/model_dependencies/detailed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

LOAD = """
import json, time
t0 = time.perf_counter()
from backup_assets.definitions import defs
graph = defs.resolve_asset_graph()
defs.resolve_job_def("restore_backup_job")
keys = list(graph.get_all_asset_keys())
checks = sum(len(list(graph.get(k).check_keys)) for k in keys)
print(json.dumps({"seconds": time.perf_counter() - t0, "assets": len(keys), "checks": checks}))
"""
BASELINE = "import time; t0 = time.perf_counter(); import dagster; print(time.perf_counter() - t0)"


def fresh(code: str, env: dict[str, str]) -> tuple[float, str]:
    """Wall time of a new interpreter running ``code``, and its last line of output."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - t0, out.stdout.strip().splitlines()[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--manifest", type=Path, default=None, help="default: the built-in manifest")
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "BACKUP_ASSETS_MANIFEST"}
    if args.manifest:
        env["BACKUP_ASSETS_MANIFEST"] = str(args.manifest)
    load, base, info = [], [], {}
    for _ in range(args.runs):
        wall, _line = fresh(BASELINE, env)
        base.append(wall)
        wall, line = fresh(LOAD, env)
        load.append(wall)
        info = json.loads(line)
    med_load, med_base = statistics.median(load), statistics.median(base)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"manifest: {args.manifest or 'built-in'} -> {info['assets']} assets, {info['checks']} checks")
    print(
        f"fresh process, import dagster only (baseline): median {med_base:.2f} s  (runs: "
        f"{', '.join(f'{x:.2f}' for x in base)})"
    )
    print(
        f"fresh process, load definitions + resolve graph/job: median {med_load:.2f} s  (runs: "
        f"{', '.join(f'{x:.2f}' for x in load)}); in-process part {info['seconds']:.2f} s"
    )
    print(f"ratio load/baseline: {med_load / med_base:.2f}x; project's own cost {med_load - med_base:.2f} s")


if __name__ == "__main__":
    main()
