"""Decrypt benchmark: our two-pass streaming Fernet against whole-buffer ``cryptography.fernet.Fernet.decrypt``.

    .venv/bin/python benchmarks/decrypt.py [--size-mb 320] [--repeat 2] [--workdir DIR]

Generates a JSON-ish export of ``--size-mb`` MB (10^6 bytes), encrypts it with the streaming encryptor, then
decrypts the token file, each run in a fresh subprocess (so peak RSS is that run's own):

* ``stream``  -- ``fernet_stream.decrypt_to`` into a null sink (what ``backup decrypt`` does minus the disk write);
* ``reader``  -- ``FernetDecryptingReader.read(65536)`` to EOF (what the JSON parser does);
* ``fernet``  -- ``Fernet(key).decrypt(open(token).read())``, the whole-buffer baseline.

Every run includes reading the token from the (page-cached) file.  MB/s are plaintext MB per wall-clock second;
peak RSS is the child's ``ru_maxrss``.  The best of ``--repeat`` runs per mode is reported (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MB = 10**6


def generate(path: Path, size: int) -> int:
    """Write a JSON list of Sentry-like rows of about ``size`` bytes; returns its size."""
    row = (
        '{"model":"sentry.user","pk":%d,"fields":{"username":"user%d@example.com","email":"user%d@example.com",'
        '"name":"User Number %d","is_active":true,"is_staff":false,"date_joined":"2024-01-01T00:00:00.000Z",'
        '"password":"pbkdf2_sha256$150000$%016x$abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG="}}'
    )
    written = 0
    with open(path, "wb") as f:
        f.write(b"[")
        i = 0
        while written < size:
            batch = ",".join(row % (n, n, n, n, n * 2654435761 % 2**64) for n in range(i, i + 5000)).encode()
            f.write(batch if i == 0 else b"," + batch)
            written += len(batch) + 1
            i += 5000
        f.write(b"]")
    return path.stat().st_size


def child(mode: str, token_path: str, key_path: str) -> None:
    """One timed decryption; prints a JSON line."""
    from cryptography.fernet import Fernet

    from backup_assets.core.fernet_stream import FernetDecryptingReader, decrypt_to

    key = Path(key_path).read_bytes()

    class Sink:
        n = 0

        def write(self, data: bytes) -> None:
            self.n += len(data)

    start = time.perf_counter()
    if mode == "stream":
        sink = Sink()
        with open(token_path, "rb") as f:
            decrypt_to(f, key, sink)
        n = sink.n
    elif mode == "reader":
        n = 0
        with open(token_path, "rb") as f:
            reader = FernetDecryptingReader(f, key)
            while chunk := reader.read(65536):
                n += len(chunk)
    else:
        with open(token_path, "rb") as f:
            n = len(Fernet(key).decrypt(f.read()))
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"mode": mode, "seconds": seconds, "plaintext": n, "peak_rss_mb": peak_kb / 1024}))


def run_child(mode: str, token: Path, key: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(token), str(key)], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout)


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem = subprocess.run(["free", "-g"], capture_output=True, text=True).stdout.splitlines()[1].split()[1]
    return f"{os.cpu_count()} CPUs ({cpu}), {mem} GB RAM, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=320)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--child", nargs=3, metavar=("MODE", "TOKEN", "KEY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    from cryptography.fernet import Fernet

    from backup_assets.core.fernet_stream import encrypt_to

    work = Path(tempfile.mkdtemp(prefix="ba-bench-decrypt-", dir=args.workdir))
    try:
        plain, token, key = work / "export.json", work / "export.token", work / "data.key"
        t = time.perf_counter()
        size = generate(plain, args.size_mb * MB)
        key.write_bytes(Fernet.generate_key())
        t_gen = time.perf_counter() - t
        t = time.perf_counter()
        with open(plain, "rb") as src, open(token, "wb") as dst:
            encrypt_to(src, key.read_bytes(), dst)
        t_enc = time.perf_counter() - t
        plain.unlink()
        print(f"machine: {machine()}")
        print(
            f"plaintext {size / MB:.1f} MB (generated in {t_gen:.1f}s), token {token.stat().st_size / MB:.1f} MB, "
            f"streaming encrypt {size / MB / t_enc:.0f} MB/s"
        )
        best: dict[str, dict] = {}
        for _ in range(args.repeat):
            for mode in ("fernet", "stream", "reader"):
                r = run_child(mode, token, key)
                assert r["plaintext"] == size, r
                print(
                    f"  {mode:7s} {r['seconds']:6.2f}s {size / MB / r['seconds']:7.1f} MB/s "
                    f"peak RSS {r['peak_rss_mb']:7.1f} MB"
                )
                if mode not in best or r["seconds"] < best[mode]["seconds"]:
                    best[mode] = r
        base = best["fernet"]
        print("\n| decryptor | MB/s | peak RSS (MB) | throughput vs Fernet.decrypt | RSS vs Fernet.decrypt |")
        print("|---|---:|---:|---:|---:|")
        for mode in ("fernet", "stream", "reader"):
            r = best[mode]
            print(
                f"| {mode} | {size / MB / r['seconds']:.0f} | {r['peak_rss_mb']:.0f} | "
                f"{base['seconds'] / r['seconds']:.2f}x | {r['peak_rss_mb'] / base['peak_rss_mb']:.3f}x |"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
