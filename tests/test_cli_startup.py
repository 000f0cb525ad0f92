"""The command line pays at start-up only for what a command uses: help, key generation and the
backup file commands never import Dagster (checked in a fresh interpreter, as the console script runs);
the console script leaves without the interpreter's teardown and collects cyclic garbage less often."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

from backup_assets.cli import COLLECT_AFTER

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


#: The console script's entry, with an atexit handler of the kind a library registers; it prints into the
#: block-buffered pipe of stdout, which only a flush at exit sends.
_CONSOLE = """
import atexit, sys
atexit.register(lambda: print("atexit handler ran"))
sys.argv = ["backup-assets", *sys.argv[1:]]
from backup_assets.cli import run
run()
"""


def test_the_console_script_exits_fast_with_its_code_its_output_and_the_atexit_handlers():
    """``run`` leaves without the interpreter's teardown, yet as ``sys.exit`` would: the exit status, the
    whole output (block-buffered into a pipe), the atexit handlers."""
    [script] = [e for e in entry_points(group="console_scripts") if e.name == "backup-assets"]
    assert script.value == "backup_assets.cli:run"

    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    ok = subprocess.run(
        [sys.executable, "-c", _CONSOLE, "--help"], cwd=REPO, capture_output=True, text=True, env=buffered
    )
    assert ok.returncode == 0
    assert ok.stdout.startswith("Usage: backup-assets") and ok.stdout.splitlines()[-2].split()[0] == "ui"
    assert ok.stdout.splitlines()[-1] == "atexit handler ran"

    bad = subprocess.run(
        [sys.executable, "-c", _CONSOLE, "bogus"], cwd=REPO, capture_output=True, text=True, env=buffered
    )
    assert bad.returncode == 2
    assert "No such command 'bogus'" in bad.stderr and bad.stdout == "atexit handler ran\n"


def test_the_console_script_collects_cyclic_garbage_less_often_than_a_library_process():
    """``run`` raises the youngest generation's collector threshold for its one command (the other two
    thresholds as they were); a process that only imports the package keeps Python's."""
    show = "import atexit, gc; atexit.register(lambda: print(*gc.get_threshold()))"
    console = subprocess.run(
        [sys.executable, "-c", show + _CONSOLE, "--version"], cwd=REPO, capture_output=True, text=True, check=True
    )
    library = subprocess.run(
        [sys.executable, "-c", show + "\nimport backup_assets.cli"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    python_default = [int(t) for t in library.stdout.split()]
    assert len(python_default) == 3 and python_default[0] < COLLECT_AFTER
    assert [int(t) for t in console.stdout.splitlines()[-1].split()] == [COLLECT_AFTER, *python_default[1:]]
