"""The command line pays at start-up only for what a command uses: help, key generation and the
backup file commands never import Dagster (checked in a fresh interpreter, as the console script runs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: Runs the CLI with the arguments given, then prints whether any dagster module was imported.
_PROBE = """
import json, sys
from backup_assets.cli import main
try:
    main(sys.argv[1:], prog_name="backup-assets")
except SystemExit as e:
    code = e.code
else:
    code = 0
print(json.dumps({"code": code, "dagster": sorted(m for m in sys.modules if m.split(".")[0] == "dagster")[:3]}))
"""


def _run(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, *args], cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_help_keygen_and_backup_encrypt_decrypt_never_import_dagster(tmp_path):
    private, public = tmp_path / "key.pem", tmp_path / "key.pub"
    export = tmp_path / "export.json"
    export.write_text('[{"model": "sentry.option", "pk": 1, "fields": {"key": "a", "value": 1}}]')
    runs = {
        "help": _run("--help"),
        "import help": _run("import", "global", "--help"),
        "keygen": _run("keygen", str(private), str(public)),
        "encrypt": _run(
            "backup", "encrypt", str(tmp_path / "b.tar"), "--src", str(export), "--encrypt-with", str(public)
        ),
        "decrypt": _run(
            "backup",
            "decrypt",
            str(tmp_path / "plain.json"),
            "--src",
            str(tmp_path / "b.tar"),
            "--decrypt-with",
            str(private),
        ),
    }
    assert {name: r["code"] for name, r in runs.items()} == dict.fromkeys(runs, 0)
    assert {name: r["dagster"] for name, r in runs.items()} == dict.fromkeys(runs, [])
    assert json.loads((tmp_path / "plain.json").read_text()) == json.loads(export.read_text())
