"""The parse's client CPU: ``stage_export`` of a generated export against a stand-in connection that
swallows the COPY, so that no server (and none of its noise on a shared machine) is measured.

    .venv/bin/python benchmarks/parse_cpu.py [--rows 200000] [--repeat 5] [--baseline DIR]

Each run is a fresh subprocess that stages the export three times through each path (orjson's fast path
from a seekable file, ijson's from a pipe) and keeps the least CPU time of each. With ``--baseline DIR``
(a checkout of an older commit, e.g. ``git worktree add --detach DIR REF``), the same runs of that code
are interleaved with today's: the ratio is the figure, and the COPY streams' digests must match when the
change is meant to preserve behaviour.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backup_assets.demo import synthetic  # noqa: E402

CHILD = textwrap.dedent("""
    import contextlib, hashlib, io, json, sys, time
    from backup_assets.core.manifest import Manifest
    from backup_assets.core.parse import stage_export

    class Copy:
        digest, size = hashlib.sha256(), 0
        def write(self, b):
            Copy.size += len(b)
            Copy.digest.update(b)

    class Cursor:
        def __enter__(self): return self
        def __exit__(self, *exc): return False
        @contextlib.contextmanager
        def copy(self, statement): yield Copy()

    class Connection:
        def execute(self, *args, **kwargs): return None
        def cursor(self): return Cursor()
        def transaction(self): return contextlib.nullcontext()

    class Pipe(io.RawIOBase):
        def __init__(self, f): self.f = f
        def readable(self): return True
        def readinto(self, b):
            data = self.f.read(len(b)); b[:len(data)] = data; return len(data)

    manifest, data, out = Manifest.builtin("core"), open(sys.argv[1], "rb").read(), {}
    for path in ("orjson", "ijson"):
        for _ in range(3):
            stream = io.BytesIO(data) if path == "orjson" else io.BufferedReader(Pipe(io.BytesIO(data)))
            cpu = time.process_time()
            rows = stage_export(Connection(), "bench", stream, manifest).rows
            out[path] = min(out.get(path, 1e9), time.process_time() - cpu)
    out.update(rows=rows, copy_bytes=Copy.size, copy_sha256=Copy.digest.hexdigest()[:16])
    print(json.dumps(out))
""")


def run(root: Path, export: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(export)],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    if out.returncode:
        raise SystemExit(f"the run of {root} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--baseline", type=Path, help="a checkout of older code, run interleaved with today's")
    a = ap.parse_args()
    sides = {"today": ROOT, **({"baseline": a.baseline.resolve()} if a.baseline else {})}
    with tempfile.TemporaryDirectory(prefix="bench-parse-cpu-") as tmp:
        export = Path(tmp) / "export.json"
        synthetic.write_export(export, synthetic.generate_rows(scale=synthetic.scale_for_rows(a.rows)))
        runs: dict[str, list[dict]] = {side: [] for side in sides}
        for _ in range(a.repeat):  # interleaved, so that a slow spell of the machine hits both sides
            for side, root in sides.items():
                runs[side].append(run(root, export))
                print(side, runs[side][-1], file=sys.stderr)
    print("| code | rows | orjson path CPU (s) | ijson path CPU (s) | COPY stream |\n|---|---:|---:|---:|---|")
    for side, rs in runs.items():
        print(
            f"| {side} | {rs[0]['rows']:,} | {min(r['orjson'] for r in rs):.3f} | {min(r['ijson'] for r in rs):.3f} "
            f"| {rs[0]['copy_bytes']:,} bytes, sha256 {rs[0]['copy_sha256']} |"
        )


if __name__ == "__main__":
    main()
