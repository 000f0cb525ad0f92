"""The synthetic export generator: rows that conform to the built-in manifest, streamed in constant memory."""

import io
import json
import re
import tracemalloc
from collections import Counter, defaultdict

import pytest

from backup_assets.core.errors import ConfigurationError
from backup_assets.core.manifest import Manifest
from backup_assets.demo.synthetic import count_rows, demo_rows, generate_rows, scale_for_rows, write_export

MANIFEST = Manifest.builtin()
SHAPES = [
    {},
    {"scale": 3, "seed": 7},
    {"orgs": 3, "users": 2, "members_per_org": 7, "projects_per_org": 5, "teams_per_org": 1, "options": 7},
    {"orgs": 0, "users": 3},
    {"teams_per_org": 0, "projects_per_org": 1, "pk_offset": 1000},
]
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z$")


def fk_values(rows):
    """(model, field, target, value) for every non-null foreign key the manifest lists."""
    for row in rows:
        for fk in MANIFEST[row["model"]].foreign_keys:
            value = row["fields"][fk.field]
            if value is not None:
                yield row["model"], fk.field, fk.model, value


@pytest.mark.parametrize("kwargs", SHAPES)
def test_rows_conform_to_the_built_in_manifest(kwargs):
    rows = list(generate_rows(**kwargs))
    pks = defaultdict(set)
    for row in rows:
        assert set(row) == {"model", "pk", "fields"}
        assert row["model"] in MANIFEST
        assert isinstance(row["pk"], int) and isinstance(row["fields"], dict)
        missing = {fk.field for fk in MANIFEST[row["model"]].foreign_keys} - set(row["fields"])
        assert not missing, (row["model"], missing)
        pks[row["model"]].add(row["pk"])
    dangling = [(m, f, v) for m, f, target, v in fk_values(rows) if v not in pks[target]]
    # The only reference to a row not in the export is the deliberate one: an inviter who is not exported.
    assert {(m, f) for m, f, _ in dangling} <= {("sentry.organizationmember", "inviter_id")}
    if kwargs.get("orgs", 2) > 1:
        assert dangling


@pytest.mark.parametrize("kwargs", SHAPES)
def test_unique_constraints_of_the_manifest_hold(kwargs):
    seen = defaultdict(set)
    for row in generate_rows(**kwargs):
        for unique in MANIFEST[row["model"]].uniques:
            key = tuple(row["fields"][f] for f in unique)
            if None in key:  # NULLs never collide in PostgreSQL's unique indexes
                continue
            assert key not in seen[row["model"], unique], (row["model"], unique, key)
            seen[row["model"], unique].add(key)
    assert seen


@pytest.mark.parametrize("kwargs", SHAPES)
def test_grouped_in_dependency_order_with_ascending_pks(kwargs):
    rows = list(generate_rows(**kwargs))
    groups = [m for i, m in enumerate(r["model"] for r in rows) if i == 0 or rows[i - 1]["model"] != m]
    assert len(groups) == len(set(groups)), "each model appears as one contiguous group"
    order = MANIFEST.sorted_models()
    assert groups == sorted(groups, key=order.index)
    for model in groups:
        pks = [r["pk"] for r in rows if r["model"] == model]
        assert pks == sorted(pks) and len(pks) == len(set(pks))
        assert pks[0] == 1 + kwargs.get("pk_offset", 0)


@pytest.mark.parametrize("kwargs", SHAPES)
def test_count_rows_matches_the_rows_generated(kwargs):
    assert count_rows(**kwargs) == dict(Counter(r["model"] for r in generate_rows(**kwargs)))


def test_deterministic_for_a_seed_and_seeds_differ():
    assert list(generate_rows(seed=3)) == list(generate_rows(seed=3))
    a, b = list(generate_rows(seed=3)), list(generate_rows(seed=4))
    assert [(r["model"], r["pk"]) for r in a] == [(r["model"], r["pk"]) for r in b]
    assert a != b


def test_pk_offset_shifts_every_pk_and_foreign_key():
    plain, shifted = list(generate_rows()), list(generate_rows(pk_offset=500))
    assert len(plain) == len(shifted)
    for p, s in zip(plain, shifted):
        assert s["pk"] == p["pk"] + 500
        fields = MANIFEST[p["model"]].fk_by_field
        for name, value in p["fields"].items():
            if name in fields and value is not None:
                assert s["fields"][name] == value + 500, (p["model"], name)
            elif name not in fields:
                assert s["fields"][name] == value, (p["model"], name)


def test_the_deep_chains_are_there():
    counts = count_rows()
    for model in (
        "sentry.organization",
        "sentry.project",
        "sentry.projectkey",
        "sentry.projectoption",
        "sentry.environmentproject",
        "sentry.team",
        "sentry.projectteam",
        "sentry.organizationmemberteam",
        "sentry.useremail",
        "sentry.email",
        "sentry.useroption",
        "sentry.userip",
        "sentry.authenticator",
        "sentry.dashboardwidgetquery",
        "sentry.userroleuser",
        "sentry.relayusage",
        "sentry.rule",
    ):
        assert counts.get(model, 0) > 0, model


def by_model(rows):
    out = defaultdict(list)
    for row in rows:
        out[row["model"]].append(row["fields"])
    return out


def test_values_are_typed_like_real_exports():
    rows = by_model(generate_rows(scale=2))
    stamps = [f["date_joined"] for f in rows["sentry.user"]] + [f["date_added"] for f in rows["sentry.project"]]
    assert all(ISO.match(s) for s in stamps)
    assert any("." in s for s in stamps) and any("." not in s for s in stamps)
    assert all(f["flags"] == "0" for f in rows["sentry.user"])
    assert {f["flags"] for f in rows["sentry.project"]} == {"10"}
    assert all(isinstance(f["data"], dict) for f in rows["sentry.projectkey"])
    values = [f["value"] for f in rows["sentry.option"]]
    assert any(isinstance(v, str) and v.startswith('"') for v in values)  # JSON held in a string
    assert any(isinstance(v, float) for v in values)  # a raw number
    assert all(json.loads(v) is not None for v in values if isinstance(v, str))
    assert all(isinstance(f["is_active"], bool) for f in rows["sentry.user"])
    assert all(isinstance(f["type"], int) for f in rows["sentry.authenticator"])
    assert all(isinstance(json.loads(f["data"]), dict) for f in rows["sentry.rule"])


@pytest.mark.parametrize(
    "model, field",
    [
        ("sentry.project", "template"),
        ("sentry.rule", "environment_id"),
        ("sentry.rule", "owner_team"),
        ("sentry.rule", "owner_user_id"),
        ("sentry.useroption", "project_id"),
        ("sentry.useroption", "organization_id"),
        ("sentry.savedsearch", "organization"),
        ("sentry.organizationmember", "user_id"),
        ("sentry.organizationmember", "inviter_id"),
    ],
)
def test_nullable_foreign_keys_are_sometimes_null(model, field):
    values = [f[field] for f in by_model(generate_rows())[model]]
    assert None in values and any(v is not None for v in values)


def test_pending_invites_have_an_email_and_no_user():
    members = by_model(generate_rows(scale=2))["sentry.organizationmember"]
    pending = [m for m in members if m["user_id"] is None]
    assert pending and all(m["email"] and m["user_email"] is None for m in pending)
    assert all(m["email"] is None and m["user_email"] for m in members if m["user_id"] is not None)


@pytest.mark.parametrize("indent", [None, 2])
def test_write_export_streams_valid_json(tmp_path, indent):
    rows = list(generate_rows(scale=2))
    path = tmp_path / "export.json"
    written = write_export(path, iter(rows), indent=indent)
    assert written == path.stat().st_size
    with open(path, "rb") as f:
        assert json.load(f) == rows
    text = path.read_text()
    assert ("\n" in text) == (indent is not None)
    if indent:
        assert text.startswith('[\n  {\n    "model": ')


def test_write_export_to_a_binary_file_and_an_empty_export():
    buf = io.BytesIO()
    assert write_export(buf, []) == 2 and buf.getvalue() == b"[]"
    buf = io.BytesIO()
    rows = demo_rows()
    assert write_export(buf, rows, indent=2) == len(buf.getvalue())
    assert json.loads(buf.getvalue()) == rows


def test_demo_is_small_and_friendly():
    rows = by_model(demo_rows())
    assert sum(map(len, rows.values())) < 200
    assert [o["slug"] for o in rows["sentry.organization"]] == ["acme", "globex"]
    assert rows["sentry.user"][0]["username"] == "alice@example.com"
    assert {p["slug"] for p in rows["sentry.project"]} == {"web", "api"}


def test_scale_200_is_about_a_million_rows_and_scale_for_rows_inverts_the_count():
    assert 900_000 <= sum(count_rows(scale=200).values()) <= 1_200_000
    s = scale_for_rows(100_000)
    assert sum(count_rows(scale=s).values()) >= 100_000 > sum(count_rows(scale=s - 1).values())


def test_generation_streams_in_constant_memory():
    rows = generate_rows(scale=50)
    tracemalloc.start()
    try:
        n = sum(1 for _ in rows)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == sum(count_rows(scale=50).values()) > 60_000
    assert peak < 20 * 1024 * 1024


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"scale": 0}, "scale"),
        ({"users": -1}, "users"),
        ({"orgs": 1, "users": 0}, "owner"),
        ({"pk_offset": 1.5}, "pk_offset"),
    ],
)
def test_bad_arguments_are_named(kwargs, words):
    with pytest.raises(ConfigurationError, match=words):
        generate_rows(**kwargs)
    with pytest.raises(ConfigurationError, match=words):
        count_rows(**kwargs)
