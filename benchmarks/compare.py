"""The round-trip proof at several sizes: ``backup compare`` and the round trip beside the CLI restore, one run.

    .venv/bin/python benchmarks/compare.py [--sizes 100000,1000000,5000000] [--planted 1000000]
                                           [--baseline-ref REF --baseline-sizes 100000]

For each size it generates a Sentry-format export (``backup_assets.demo.synthetic``, its datetimes all
spelled with milliseconds, as a re-export writes them: else every datetime written without them by an old
Sentry is a finding, as in Sentry's validator, and the comparison would not be of a clean round trip), encrypts it into
Sentry's tarball with a fresh key pair, then measures, each in a fresh subprocess against a fresh database of
one embedded PostgreSQL (fsync off), wall-clock seconds and the child's peak RSS (``ru_maxrss``):

* **restore** - ``backup-assets import global TAR --create-schema`` (the baseline of the time ratios);
* **export** - ``backup-assets export global --encrypt-with`` of what the restore wrote;
* **compare** - ``backup-assets backup compare TAR REEXPORT.tar`` (both encrypted, both in Sentry's order);
* **compare, unordered** - the same against the re-export with its models in reverse order (rows of whole
  models wait in the encrypted spill): the fallback's cost;
* **round trip** - ``verify_round_trip`` of the restore (what the ``round_trip`` asset runs); its peak RSS is
  the larger of the comparing process's and its re-export child's.

At the ``--planted`` sizes, three copies of the re-export each get one planted difference (a changed field,
a missing row, a foreign key pointing at another row) and are compared with the backup: the findings' kinds
are printed and must be UnequalJSON, UnequalCounts and ForeignKeyComparator. With ``--baseline-ref``, the
comparison of the commit ``REF`` (the code before streaming) runs on the same files at ``--baseline-sizes``:
its time, its peak RSS, and whether its findings equal today's (they must).

The private key never touches the disk: it lives in a memfd the children inherit (``/proc/self/fd/N``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backup_assets.core import keys  # noqa: E402
from backup_assets.core.compare import iter_rows  # noqa: E402
from backup_assets.core.decryptors import PemEncryptor  # noqa: E402
from backup_assets.core.postgres import EmbeddedPostgres, ensure_database  # noqa: E402
from backup_assets.core.roundtrip import canonical_datetimes  # noqa: E402
from backup_assets.core.source import encrypt_export, open_backup  # noqa: E402
from backup_assets.demo import synthetic  # noqa: E402

CLI = textwrap.dedent("""
    import json, resource, sys, time
    from backup_assets.cli import main
    t = time.perf_counter()
    code = main(sys.argv[1:], standalone_mode=False, prog_name="backup-assets")
    print(json.dumps({"seconds": time.perf_counter() - t, "exit": code or 0,
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")

ROUND_TRIP = textwrap.dedent("""
    import json, resource, sys, time
    from backup_assets.core.decryptors import LocalFileDecryptor
    from backup_assets.core.manifest import Manifest
    from backup_assets.core.roundtrip import verify_round_trip
    from backup_assets.core.source import open_backup
    dsn, tar, key, import_id = sys.argv[1:]
    t = time.perf_counter()
    found = verify_round_trip(dsn, open_backup(tar, LocalFileDecryptor(key)), Manifest.builtin(), import_id)
    rss = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    print(json.dumps({"seconds": time.perf_counter() - t, "findings": [f.kind_name for f in found],
                      "rss_mb": rss / 1024}))
""")


def child(code: str, *args: str, pythonpath: Path = ROOT, fds: tuple[int, ...] = ()) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=pythonpath,
        env={**os.environ, "PYTHONPATH": str(pythonpath)},
        pass_fds=fds,
    )
    if out.returncode:
        raise SystemExit(f"child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def memfd(name: str, data: bytes) -> tuple[int, str]:
    fd = os.memfd_create(name, 0)
    os.write(fd, data)
    return fd, f"/proc/self/fd/{fd}"


def planted(src: Path, key: str, kind: str) -> Iterator[Any]:
    """The re-export's rows with one difference: ``field`` (a project renamed), ``row`` (the last project key
    missing) or ``fk`` (the first project key pointing at the last project)."""
    projects = [
        r["pk"] for r in iter_rows(open_backup(src, _decryptor(key)).open_plaintext) if r["model"] == "sentry.project"
    ]
    keys_seen = 0
    last_key = sum(
        1 for r in iter_rows(open_backup(src, _decryptor(key)).open_plaintext) if r["model"] == "sentry.projectkey"
    )
    for row in iter_rows(open_backup(src, _decryptor(key)).open_plaintext):
        if row["model"] == "sentry.project" and row["pk"] == projects[0] and kind == "field":
            row["fields"]["name"] += " (edited)"
        if row["model"] == "sentry.projectkey":
            keys_seen += 1
            if kind == "row" and keys_seen == last_key:
                continue
            if kind == "fk" and keys_seen == 1:
                row["fields"]["project"] = projects[-1]
        yield row


def reordered(src: Path, key: str, folder: Path) -> Path:
    """The re-export with its models in reverse order (rows of a model keep their order); one file per model
    on the way (synthetic data)."""
    parts: dict[str, Any] = {}
    try:
        for row in iter_rows(open_backup(src, _decryptor(key)).open_plaintext):
            out = parts.get(row["model"])
            if out is None:
                out = parts[row["model"]] = open(folder / f"part-{len(parts)}.jsonl", "w+b")  # noqa: SIM115 - closed below
            out.write(orjson.dumps(row) + b"\n")

        def rows() -> Iterator[Any]:
            for out in reversed(parts.values()):
                out.seek(0)
                yield from map(orjson.loads, out)

        dest = folder / "reexport-reversed.json"
        synthetic.write_export(dest, rows())
        return dest
    finally:
        for out in parts.values():
            out.close()
            os.unlink(out.name)


def _decryptor(key: str):
    from backup_assets.core.decryptors import LocalFileDecryptor

    return LocalFileDecryptor(Path(key))


def baseline_tree(ref: str, folder: Path) -> Path:
    """The package as of ``ref`` (``git archive``), to run the old comparison."""
    dest = folder / f"baseline-{ref}"
    dest.mkdir()
    archive = subprocess.run(
        ["git", "archive", ref, "backup_assets", "resources"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000,5000000")
    ap.add_argument("--planted", default="1000000", help="sizes at which differences are planted")
    ap.add_argument("--baseline-ref", help="commit whose comparison runs beside today's (e.g. the one before)")
    ap.add_argument("--baseline-sizes", default="100000")
    ap.add_argument("--no-unordered", action="store_true", help="skip the compare of reordered input")
    a = ap.parse_args()
    sizes = sorted(int(s) for s in a.sizes.split(","))
    planted_at = {int(s) for s in a.planted.split(",") if s}
    baseline_at = {int(s) for s in a.baseline_sizes.split(",") if s} if a.baseline_ref else set()
    private_pem, public_pem = keys.generate_key_pair()
    key_fd, key = memfd("bench-private-key", private_pem)
    pub_fd, pub = memfd("bench-public-key", public_pem)
    work = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    server = EmbeddedPostgres(work / "pg").start()
    old = baseline_tree(a.baseline_ref, work) if a.baseline_ref else None
    table: list[tuple[int, str, dict]] = []
    try:
        for size in sizes:
            table.extend(
                measure_size(
                    size,
                    work,
                    server,
                    key,
                    pub,
                    (key_fd, pub_fd),
                    size in planted_at,
                    old if size in baseline_at else None,
                    not a.no_unordered,
                )
            )
            subprocess.run(["rm", "-rf", *map(str, work.glob("export-*")), *map(str, work.glob("reexport*"))])
    finally:
        server.destroy()
        subprocess.run(["rm", "-rf", str(work)])
        os.close(key_fd)
        os.close(pub_fd)
    report(table)


def measure_size(
    size: int,
    work: Path,
    server: EmbeddedPostgres,
    key: str,
    pub: str,
    fds: tuple[int, ...],
    plant: bool,
    old: Path | None,
    unordered: bool,
) -> list[tuple[int, str, dict]]:
    plain = work / f"export-{size}.json"
    scale = synthetic.scale_for_rows(size)
    synthetic.write_export(plain, canonical_datetimes(synthetic.generate_rows(scale=scale)))
    rows = sum(synthetic.count_rows(scale=scale).values())
    tar = work / f"export-{size}.tar"
    encrypt_export(plain, tar, PemEncryptor(Path(f"/proc/self/fd/{fds[1]}").read_bytes()))
    plain.unlink()
    db = f"size_{size}"
    ensure_database(server.dsn(), db)
    dsn = server.dsn(db)
    out: list[tuple[int, str, dict]] = []

    def run(kind: str, code: str, *args: str, pythonpath: Path = ROOT) -> dict:
        r = child(code, *args, pythonpath=pythonpath, fds=fds)
        r["rows"] = rows
        print(f"{kind} {size}: {r}", file=sys.stderr)
        out.append((size, kind, r))
        return r

    run(
        "restore",
        CLI,
        "import",
        "global",
        str(tar),
        "--decrypt-with",
        key,
        "--dsn",
        dsn,
        "--create-schema",
        "--no-prompt",
        "--silent",
        "--import-id",
        f"bench-{size}",
    )
    reexport = work / f"reexport-{size}.tar"
    run("export", CLI, "export", "global", str(reexport), "--encrypt-with", pub, "--dsn", dsn, "--silent")
    both_keys = ("--decrypt-left-with", key, "--decrypt-right-with", key)
    r = run("compare", CLI, "backup", "compare", str(tar), str(reexport), *both_keys)
    assert r["exit"] == 0, "the round trip of a clean restore must compare equal"
    if unordered:
        reversed_json = reordered(reexport, key, work)
        r = run(
            "compare, unordered", CLI, "backup", "compare", str(tar), str(reversed_json), "--decrypt-left-with", key
        )
        assert r["exit"] == 0
        reversed_json.unlink()
    r = run("round trip", ROUND_TRIP, dsn, str(tar), key, f"bench-{size}")
    assert r["findings"] == [], r["findings"]
    if old is not None:
        r = run("compare (before)", CLI, "backup", "compare", str(tar), str(reexport), *both_keys, pythonpath=old)
        assert r["exit"] == 0
    if plant:
        for kind, expected in (("field", "UnequalJSON"), ("row", "UnequalCounts"), ("fk", "ForeignKeyComparator")):
            out.extend(plant_and_compare(size, rows, work, tar, reexport, key, fds, kind, expected, old))
    server_drop(server, db)
    return out


def plant_and_compare(
    size: int,
    rows: int,
    work: Path,
    tar: Path,
    reexport: Path,
    key: str,
    fds: tuple[int, ...],
    kind: str,
    expected: str,
    old: Path | None,
) -> list[tuple[int, str, dict]]:
    changed = work / f"reexport-{kind}.json"
    synthetic.write_export(changed, planted(reexport, key, kind))
    results = []
    texts = []
    for label, path in (("", ROOT), (" (before)", old)):
        if path is None:
            continue
        findings = work / f"findings-{kind}.json"
        r = child(
            CLI,
            "backup",
            "compare",
            str(tar),
            str(changed),
            "--decrypt-left-with",
            key,
            "--findings-file",
            str(findings),
            pythonpath=path,
            fds=fds,
        )
        texts.append(findings.read_text())
        r["rows"], r["findings"] = rows, [f["kind"] for f in json.loads(texts[-1])]
        print(f"planted {kind}{label} {size}: {r}", file=sys.stderr)
        assert r["findings"] == [expected], (kind, r["findings"])
        results.append((size, f"compare, planted {kind}{label}", r))
    if len(texts) == 2:
        assert texts[0] == texts[1], f"planted {kind}: the findings differ from the baseline's"
    changed.unlink()
    return results


def server_drop(server: EmbeddedPostgres, db: str) -> None:
    import psycopg

    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{db}"')


def report(table: list[tuple[int, str, dict]]) -> None:
    restore = {size: r["seconds"] for size, kind, r in table if kind == "restore"}
    smallest = min(restore)
    rss0 = {kind: r["rss_mb"] for size, kind, r in table if size == smallest}
    print("| rows | step | seconds | x restore | peak RSS (MB) | RSS vs smallest size | findings |")
    print("|---:|---|---:|---:|---:|---:|---|")
    for size, kind, r in table:
        findings = (
            ", ".join(r["findings"]) if r.get("findings") else ("0" if "exit" not in r or r["exit"] == 0 else "?")
        )
        vs = f"{r['rss_mb'] / rss0[kind]:.2f}x" if kind in rss0 else ""
        print(
            f"| {size:,} | {kind} | {r['seconds']:.1f} | {r['seconds'] / restore[size]:.2f}x | {r['rss_mb']:.0f} "
            f"| {vs} | {findings} |"
        )


if __name__ == "__main__":
    main()
