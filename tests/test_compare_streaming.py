"""The comparison in bounded memory: inputs in any order, late rows and fields, the spill, the pk runs, and
the peak memory of ``backup compare`` on an export where the in-memory comparison held several hundred MB."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from backup_assets.core.compare import PkOrdinals, compare, compare_sources
from backup_assets.core.manifest import Manifest
from backup_assets.core.roundtrip import canonical_datetimes
from backup_assets.core.spill import CHUNK_ROWS, RowSpill
from backup_assets.demo import synthetic

from .test_compare import MANIFEST, _fields, export, regenerated

BUILTIN = Manifest.builtin()
ROOT = Path(__file__).resolve().parent.parent


def _pairs(findings) -> list[tuple]:
    return [(f.kind_name, f.on.model, f.on.ordinal, f.left_pk, f.right_pk, f.reason) for f in findings]


def _planted(rows: list[dict]) -> list[dict]:
    """A pk-shifted copy with a renamed organization, a project key moved to another project, a changed member."""
    by_model: dict[str, list[dict]] = {}
    for row in rows:
        by_model.setdefault(row["model"], []).append(row)
    by_model["sentry.organization"][3]["fields"]["name"] = "Renamed"
    keys, projects = by_model["sentry.projectkey"], by_model["sentry.project"]
    keys[5]["fields"]["project"] = projects[-1]["pk"]
    by_model["sentry.organizationmember"][1200]["fields"]["role"] = "admin"
    return rows


def _models_reversed(rows: list[dict]) -> list[dict]:
    order = list(dict.fromkeys(r["model"] for r in rows))
    return [r for model in reversed(order) for r in rows if r["model"] == model]


def test_inputs_in_other_orders_give_the_same_findings():
    left = list(synthetic.generate_rows(scale=15))
    right = _planted(list(synthetic.generate_rows(scale=15, pk_offset=1000)))
    assert max(sum(1 for r in right if r["model"] == m) for m in {r["model"] for r in right}) > CHUNK_ROWS
    expected = _pairs(compare(left, right, BUILTIN))
    kinds = {k for k, *_ in expected}
    assert {"UnequalJSON", "ForeignKeyComparator"} <= kinds  # the planted ones, and dangling inviters
    # the right side's models in reverse order: whole models wait in the spill before their turn
    assert _pairs(compare(left, _models_reversed(right), BUILTIN)) == expected
    # both sides reversed: children come before the rows their foreign keys point at (models are reported in
    # the order the left side names them)
    assert sorted(_pairs(compare(_models_reversed(left), _models_reversed(right), BUILTIN))) == sorted(expected)


def test_foreign_keys_to_rows_not_read_yet_are_compared_at_the_end():
    def parents_last(rows):
        return [r for r in rows if r["model"] != "sentry.organization"] + [
            r for r in rows if r["model"] == "sentry.organization"
        ]

    assert compare(parents_last(export()), parents_last(regenerated()), MANIFEST) == []
    right = regenerated()
    _fields(right, "sentry.project", 1)["organization"] = 2
    findings = compare(parents_last(export()), parents_last(right), MANIFEST)
    assert [(f.kind_name, f.on.model, f.on.ordinal) for f in findings] == [
        ("ForeignKeyComparator", "sentry.project", 1)
    ]


def test_a_datetime_field_seen_late_gets_its_comparator_on_every_row():
    # sentry.user has comparators, so its datetime fields get the datetime comparator; here the first user's
    # `date_confirmed` is no datetime, and only the second user's tells that the field holds datetimes.
    left, right = export(), regenerated()
    for rows in (left, right):
        _fields(rows, "sentry.user", 1)["date_confirmed"] = "soon"
        _fields(rows, "sentry.user", 2)["date_confirmed"] = "2023-03-01T00:00:00.000Z"
    findings = compare(left, right, MANIFEST)
    assert [(f.kind_name, f.on.ordinal) for f in findings] == [("DatetimeEqualityComparator", 1)]
    assert "not an ISO-8601 datetime" in findings[0].reason
    # null on one side and absent on the other: a difference for the JSON diff, none for the comparator
    _fields(left, "sentry.user", 1)["date_confirmed"] = None
    del _fields(right, "sentry.user", 1)["date_confirmed"]
    assert compare(left, right, MANIFEST) == []


def test_each_side_is_read_once_unless_a_model_must_be_compared_again():
    reads = {"left": 0, "right": 0}

    def source(name, rows):
        def read():
            reads[name] += 1
            return iter(rows)

        return read

    assert compare_sources(source("left", export()), source("right", regenerated()), MANIFEST) == []
    assert reads == {"left": 1, "right": 1}
    reads.update(left=0, right=0)
    left, right = export(), regenerated()
    for rows in (left, right):
        _fields(rows, "sentry.user", 1)["date_confirmed"] = None
        _fields(rows, "sentry.user", 2)["date_confirmed"] = "2023-03-01T00:00:00.000Z"
    assert compare_sources(source("left", left), source("right", right), MANIFEST) == []
    assert reads == {"left": 2, "right": 2}


def test_the_spill_is_first_in_first_out_and_keeps_values_exactly():
    values = [
        {"i": i, "big": 2**70 + i, "f": i / 3, "s": "caf\u00e9 \ud800" if i % 7 == 0 else "x", "n": None}
        for i in range(5 * CHUNK_ROWS + 17)
    ]
    out = []
    with RowSpill() as spill:
        for i, value in enumerate(values):
            spill.push(value)
            if i % 3 == 0:
                out.append(spill.pop())
        assert spill.spilled_chunks >= 2 and len(spill) == len(values) - len(out)
        out.extend(spill.drain())
        with pytest.raises(IndexError):
            spill.pop()
    assert out == values


def test_the_spill_file_is_unlinked_and_encrypted():
    marker = "plaintext-marker-0123456789"
    with RowSpill(chunk_rows=10) as spill:
        for i in range(25):
            spill.push({"secret": marker, "i": i})
        fd = spill._file.fileno()
        assert os.readlink(f"/proc/self/fd/{fd}").endswith("(deleted)")
        raw = Path(f"/proc/self/fd/{fd}").read_bytes()
        assert len(raw) > 200 and marker.encode() not in raw
        assert [row["i"] for row in spill.drain()] == list(range(25))


def test_pk_ordinals_are_runs_of_integers():
    pks = PkOrdinals()
    for pk in [3, 4, 5, 10, 11, 20, 2**62]:
        pks.append(pk)
    assert [pks.get(p) for p in (3, 5, 10, 11, 20, 2**62)] == [1, 3, 4, 5, 6, 7]
    assert [pks.get(p) for p in (2, 6, 9, 12, 21, "3", None, 2**62 + 1)] == [None] * 8
    assert list(pks) == [3, 4, 5, 10, 11, 20, 2**62] and len(pks) == 7 and pks[10] == 4
    assert len(pks._starts) == 4  # one run per gap, not one entry per row
    pks.append(2**64)  # past 64 bits: kept too
    assert pks.get(2**64) == 8 and pks.get(4) == 2
    with pytest.raises(KeyError):
        pks[7]


def test_backup_compare_of_a_large_export_holds_a_bounded_amount_of_memory(tmp_path):
    """About 100k rows, where the comparison that held both sides peaked at 320 MB; streamed it stays near
    the interpreter's own size. Peak RSS of the CLI in a child process, with a generous margin."""
    rows = canonical_datetimes(synthetic.generate_rows(scale=synthetic.scale_for_rows(100_000)))
    left, right = tmp_path / "left.json", tmp_path / "right.json"
    synthetic.write_export(left, rows)
    synthetic.write_export(
        right,
        canonical_datetimes(synthetic.generate_rows(scale=synthetic.scale_for_rows(100_000), pk_offset=10_000_000)),
    )
    assert left.stat().st_size > 20_000_000
    # VmHWM: the peak of this process's own address space (ru_maxrss would carry the forking parent's
    # pages over the exec when the suite's process is large)
    code = (
        "import json, re, sys\nfrom pathlib import Path\nfrom backup_assets.cli import main\n"
        "code = main(sys.argv[1:], standalone_mode=False)\n"
        "hwm = int(re.search(r'VmHWM:\\s+(\\d+)', Path('/proc/self/status').read_text()).group(1))\n"
        "print(json.dumps({'exit': code or 0, 'rss': hwm}))"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "backup",
            "compare",
            str(left),
            str(right),
            "--findings-file",
            str(tmp_path / "f.json"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    findings = json.loads((tmp_path / "f.json").read_text())
    assert result["exit"] == 1 and {f["kind"] for f in findings} == {"ForeignKeyComparator"}  # dangling inviters
    assert result["rss"] / 1024 < 160, f"peak RSS {result['rss'] / 1024:.0f} MB"  # the child's own peak, kB
