import json

import pytest

from backup_assets.core.errors import ManifestError
from backup_assets.core.manifest import Manifest, column_name


def entry(name, fks=(), deps=(), scope="Organization", table=None, uniques=()):
    return {
        "dangling": False,
        "foreign_keys": {f: {"kind": "FlexibleForeignKey", "model": m, "nullable": n} for f, m, n in fks},
        "model": name,
        "relocation_dependencies": list(deps),
        "relocation_scope": scope,
        "silos": ["Region"],
        "table_name": table or name.replace(".", "_"),
        "uniques": [list(u) for u in uniques],
    }


def test_column_names_follow_django():
    assert column_name("organization") == "organization_id"
    assert column_name("user_id") == "user_id"
    assert column_name("inviter_id") == "inviter_id"


def test_every_model_comes_after_its_dependencies_and_self_references_are_ignored():
    m = Manifest.from_json(
        {
            "a.child": entry("a.child", fks=[("parent", "a.parent", False), ("self_ref", "a.child", True)]),
            "a.parent": entry("a.parent", fks=[("root_id", "a.root", True)]),
            "a.root": entry("a.root"),
            "a.late": entry("a.late", deps=["a.child"]),
            "a.excluded": entry("a.excluded", scope="Excluded"),
        }
    )
    order = m.sorted_models()
    assert order.index("a.root") < order.index("a.parent") < order.index("a.child") < order.index("a.late")
    assert "a.excluded" not in m.relocatable()
    assert set(m.relocatable()) == {"a.root", "a.parent", "a.child", "a.late"}


def test_a_cycle_names_the_models_on_it():
    m = Manifest.from_json(
        {
            "x.a": entry("x.a", fks=[("b", "x.b", False)]),
            "x.b": entry("x.b", fks=[("c", "x.c", False)]),
            "x.c": entry("x.c", fks=[("a", "x.a", True)]),
            "x.free": entry("x.free"),
        }
    )
    with pytest.raises(ManifestError) as e:
        m.sorted_models()
    msg = str(e.value)
    assert "cycle" in msg and "x.a" in msg and "x.b" in msg and "x.c" in msg and "x.free" not in msg


def test_multi_scope_models_and_scope_membership():
    m = Manifest.from_json({"sentry.apitoken": entry("sentry.apitoken", scope=["Config", "Global"])})
    spec = m["sentry.apitoken"]
    assert spec.in_scope("config") and spec.in_scope("global")
    assert not spec.in_scope("users") and not spec.in_scope("organizations")


@pytest.mark.parametrize(
    "bad, words",
    [
        ([], "JSON object"),
        ({"nodot": entry("nodot")}, "model name"),
        ({"a.b": {"foreign_keys": {}, "relocation_scope": "Global"}}, "table_name"),
        ({"a.b": entry("a.b", scope="Sometimes")}, "relocation_scope"),
        ({"a.b": {**entry("a.b"), "foreign_keys": {"x": 3}}}, "foreign key 'x'"),
    ],
)
def test_malformed_manifests_are_named(bad, words):
    with pytest.raises(ManifestError, match=words):
        Manifest.from_json(bad, source="m.json")


def test_round_trips_through_sentry_format(tmp_path):
    data = {"a.root": entry("a.root", scope=["Organization", "Global"], uniques=[["slug"]])}
    p = tmp_path / "detailed.json"
    p.write_text(json.dumps(data))
    m = Manifest.load(p)
    assert m.to_json() == data
    with pytest.raises(ManifestError, match="not valid JSON"):
        (tmp_path / "broken.json").write_text("{")
        Manifest.load(tmp_path / "broken.json")
