"""Run the fault, re-execution and hostile-input test suites and publish a "Reliability" table.

    .venv/bin/python benchmarks/reliability.py [--no-run] [--junit /tmp/reliability.xml]

Runs pytest on every suite of :data:`SUITES` that exists (one process, ``--junitxml``), then writes
the section ``## Reliability`` of ``benchmarks/README.md``: one line per test (parametrized cases
counted together), with the fault or input it injects (the first line of the test's docstring, or its
name), the outcome it proves (by suite: recovered with exact counts, rejected with a clear error, ...;
a few words of the test override it, see :data:`_OVERRIDES`; ``FAILED`` when the test failed) and its id.
Other sections of the README are left as they are (see :func:`replace_section`, which the other
benchmark scripts share).
"""

from __future__ import annotations

import argparse
import ast
import datetime as _dt
import os
import platform
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "benchmarks" / "README.md"
#: The suites of the report, in the order of the table.
SUITES = (
    "tests/test_faults.py",
    "tests/test_dagster_reexecution.py",
    "tests/test_hostile_inputs.py",
    "tests/test_fuzz.py",
    "tests/test_security.py",
)
#: Outcome of a passing test, by suite; the first matching override (words of its name or docstring) wins.
_DEFAULT_OUTCOME = {
    "test_faults": "recovered with exact counts",
    "test_dagster_reexecution": "recovered with exact counts",
    "test_hostile_inputs": "rejected with a clear error",
    "test_fuzz": "valid result or the project's own error (property test)",
    "test_security": "nothing found (no key, no plaintext)",
}
_OVERRIDES = [
    (
        re.compile(r"\b(positive control|control|start from valid|is valid|are in the corpus|finds what)\b", re.I),
        "control (proves the other checks can fail)",
    ),
    (re.compile(r"\b(disk full|fails clearly|commits nothing)\b", re.I), "rejected with a clear error"),
    (re.compile(r"\b(restores?|restored|harmless)\b", re.I), "accepted and restored exactly"),
    (re.compile(r"\b(leaves no plaintext|writes only)\b", re.I), "nothing left on disk"),
]


def replace_section(heading: str, body: str, readme: Path = README) -> None:
    """Put ``## heading`` + ``body`` into ``readme``: replace that section (up to the next ``## ``) when
    present, else append it. Nothing else of the file changes."""
    text = readme.read_text() if readme.exists() else "# Benchmarks\n"
    block = f"## {heading}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + block
    readme.write_text(text)


def machine() -> str:
    """One line describing the machine and the date, for every section."""
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    return (
        f"Machine: `nproc` = {os.cpu_count()}, {mem_gb:.0f} GB, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}; shared with other jobs. Date: {_dt.date.today().isoformat()}."
    )


def docstrings(path: Path) -> dict[str, str]:
    """Test function name -> first line of its docstring (empty when it has none)."""
    tree = ast.parse(path.read_text())
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            doc = ast.get_docstring(node) or ""
            out[node.name] = doc.strip().splitlines()[0] if doc.strip() else ""
    return out


def run_suites(junit: Path, suites: list[str]) -> int:
    cmd = [sys.executable, "-m", "pytest", *suites, "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    print("$", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT).returncode


def outcome(suite: str, name: str, doc: str, status: str) -> str:
    if status == "skipped":
        return "**skipped / expected failure (a known gap, see the test)**"
    if status != "passed":
        return f"**{status.upper()}**"
    words = f"{name.replace('_', ' ')} {doc}"
    for pattern, label in _OVERRIDES:
        if pattern.search(words):
            return label
    return _DEFAULT_OUTCOME.get(suite, "passed")


def table(junit: Path) -> tuple[str, dict[str, int]]:
    """The Markdown table: one line per test function (its parametrized cases counted together)."""
    totals = {"passed": 0, "failed": 0, "skipped": 0}
    docs: dict[Path, dict[str, str]] = {}
    lines: dict[tuple[Path, str], dict] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        path = ROOT / (case.get("classname", "").replace(".", "/") + ".py")
        if path not in docs:
            docs[path] = docstrings(path) if path.exists() else {}
        name = case.get("name", "").split("[")[0]
        status = (
            "failed"
            if case.find("failure") is not None or case.find("error") is not None
            else "skipped"
            if case.find("skipped") is not None
            else "passed"
        )
        totals[status] += 1
        line = lines.setdefault((path, name), {"cases": 0, "seconds": 0.0, "status": set()})
        line["cases"] += 1
        line["seconds"] += float(case.get("time", 0))
        line["status"].add(status)
    rows = []
    for (path, name), line in lines.items():
        doc = docs[path].get(name, "")
        what = doc or name.removeprefix("test_").replace("_", " ")
        status = "failed" if "failed" in line["status"] else "passed" if "passed" in line["status"] else "skipped"
        cases = f" ({line['cases']} cases)" if line["cases"] > 1 else ""
        rows.append(
            f"| {what}{cases} | {outcome(path.stem, name, doc, status)} | `{path.relative_to(ROOT)}::{name}` | "
            f"{line['seconds']:.1f} |"
        )
    head = "| fault / input | outcome | test | s |\n|---|---|---|---:|"
    return head + "\n" + "\n".join(rows), totals


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--junit", type=Path, default=Path("/tmp/backup-assets-reliability.xml"))
    ap.add_argument("--no-run", action="store_true", help="only rebuild the table from an existing --junit file")
    args = ap.parse_args()
    suites = [s for s in SUITES if (ROOT / s).exists()]
    rc = 0 if args.no_run else run_suites(args.junit, suites)
    body, totals = table(args.junit)
    missing = [s for s in SUITES if s not in suites]
    intro = (
        f"`.venv/bin/python benchmarks/reliability.py` runs {', '.join(f'`{s}`' for s in suites)} "
        "(real PostgreSQL, real Dagster instance) and rewrites this table from pytest's JUnit report. "
        '"Recovered": the fault was injected and the restore finished with exact row counts, no '
        'duplicates and no orphans; "rejected": the input or fault ended in the project\'s own error '
        "naming the problem, with nothing committed.\n\n"
        f"- {machine()}\n- Result: {totals['passed']} passed, {totals['failed']} failed, "
        f"{totals['skipped']} skipped."
        + (f"\n- Not present yet (skipped by the script): {', '.join(missing)}." if missing else "")
    )
    replace_section("Reliability", intro + "\n\n" + body)
    print(f"wrote the Reliability section of {README.relative_to(ROOT)}: {totals}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
