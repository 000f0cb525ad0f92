"""The manifest shipped with the project: complete, consistent and true to Sentry's facts (that it is exactly
what ``backup_assets.manifests.derive`` makes of Sentry's ``detailed.json`` is tested in test_default_manifest)."""

import json
from importlib import resources

import pytest

from backup_assets.core.manifest import FK_KINDS, Manifest

REQUIRED = {
    "sentry.user",
    "sentry.email",
    "sentry.useremail",
    "sentry.useroption",
    "sentry.userip",
    "sentry.userpermission",
    "sentry.userrole",
    "sentry.userroleuser",
    "sentry.authenticator",
    "sentry.organization",
    "sentry.organizationmember",
    "sentry.organizationmemberteam",
    "sentry.organizationoption",
    "sentry.team",
    "sentry.project",
    "sentry.projectkey",
    "sentry.projectoption",
    "sentry.projectteam",
    "sentry.environment",
    "sentry.environmentproject",
    "sentry.rule",
    "sentry.option",
    "sentry.controloption",
    "sentry.relay",
    "sentry.relayusage",
}


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return Manifest.builtin()


def test_the_file_is_in_sentry_detailed_json_layout():
    raw = resources.files("backup_assets").joinpath("manifests/builtin.json").read_text()
    data = json.loads(raw)
    assert raw == json.dumps(data, indent=2, sort_keys=True), "indent 2, sorted keys, no trailing newline"
    keys = [
        "dangling",
        "foreign_keys",
        "model",
        "relocation_dependencies",
        "relocation_scope",
        "silos",
        "table_name",
        "uniques",
    ]
    for name, entry in data.items():
        assert sorted(entry) == keys, name
        assert entry["model"] == name
        assert entry["silos"] and set(entry["silos"]) <= {"Region", "Control", "Monolith"}, name
        assert entry["relocation_dependencies"] == sorted(entry["relocation_dependencies"]), name
        for unique in entry["uniques"]:
            assert unique == sorted(unique), (name, unique)


def test_loads_and_round_trips(manifest):
    assert set(manifest.models) >= REQUIRED
    assert Manifest.from_json(manifest.to_json()).to_json() == manifest.to_json()


#: Foreign keys of relocatable models that point at models Sentry never relocates (Excluded scope): a row
#: that sets one is dropped, as Sentry's importer drops it (its parent is never imported).
OUTSIDE = {
    ("sentry.incident", "activation"): "sentry.alertruleactivations",
    ("workflow_engine.workflowgroupstatus", "group"): "sentry.group",
}


def test_every_foreign_key_targets_a_model_of_the_manifest_but_two_sentry_never_relocates(manifest):
    outside = {}
    for spec in manifest.models.values():
        for fk in spec.foreign_keys:
            if fk.model not in manifest:
                outside[(spec.name, fk.field)] = fk.model
            assert fk.kind in FK_KINDS, (spec.name, fk.field, fk.kind)
        for dep in spec.relocation_dependencies:
            assert dep in manifest, (spec.name, dep)
    assert outside == OUTSIDE


def test_dependency_order_puts_every_model_after_its_dependencies(manifest):
    order = manifest.sorted_models()
    assert sorted(order) == sorted(manifest.models)
    position = {name: i for i, name in enumerate(order)}
    for name in order:
        for dep in manifest[name].dependencies - set(OUTSIDE.values()):
            assert position[dep] < position[name], (dep, name)
    # Every model is relocatable (the built-in manifest lists only models a restore can take).
    assert manifest.relocatable() == order


@pytest.mark.parametrize(
    "scope, models",
    [
        ("User", ["sentry.user", "sentry.email", "sentry.useremail", "sentry.useroption"]),
        (
            "Config",
            [
                "sentry.option",
                "sentry.controloption",
                "sentry.relay",
                "sentry.relayusage",
                "sentry.userrole",
                "sentry.userroleuser",
                "sentry.userpermission",
            ],
        ),
        ("Global", ["sentry.authenticator", "sentry.userip", "sentry.apiapplication", "sentry.apikey"]),
        (
            "Organization",
            [
                "sentry.organization",
                "sentry.organizationmember",
                "sentry.organizationmemberteam",
                "sentry.organizationoption",
                "sentry.project",
                "sentry.projectkey",
                "sentry.projectoption",
                "sentry.projectteam",
                "sentry.team",
                "sentry.environment",
                "sentry.environmentproject",
                "sentry.rule",
            ],
        ),
    ],
)
def test_relocation_scopes_are_sentrys(manifest, scope, models):
    for name in models:
        assert manifest[name].relocation_scopes == {scope}, name


def test_multi_scope_models(manifest):
    for name in ("sentry.apitoken", "sentry.apiauthorization"):
        assert manifest[name].relocation_scopes == {"Config", "Global"}
        assert manifest[name].in_scope("config") and not manifest[name].in_scope("organizations")


def test_relocation_dependencies_and_dangling(manifest):
    assert manifest["sentry.email"].relocation_dependencies == ("sentry.user",)
    assert manifest["sentry.useremail"].relocation_dependencies == ("sentry.email",)
    assert manifest["sentry.snubaquery"].relocation_dependencies == ("sentry.organization", "sentry.project")
    assert manifest["sentry.timeseriessnapshot"].relocation_dependencies == ("sentry.incident",)
    assert {n for n, s in manifest.models.items() if s.relocation_dependencies} == {
        "sentry.email",
        "sentry.useremail",
        "sentry.snubaquery",
        "sentry.timeseriessnapshot",
    }
    assert {n for n, s in manifest.models.items() if s.dangling} == {
        "sentry.email",
        "sentry.snubaquery",
        "sentry.timeseriessnapshot",
        "workflow_engine.detector",
        "workflow_engine.alertruledetector",
    }


@pytest.mark.parametrize(
    "model, unique",
    [
        ("sentry.user", ("username",)),
        ("sentry.email", ("email",)),
        ("sentry.useremail", ("email", "user")),
        ("sentry.organization", ("slug",)),
        ("sentry.option", ("key",)),
        ("sentry.controloption", ("key",)),
        ("sentry.relay", ("relay_id",)),
        ("sentry.relayusage", ("relay_id", "version")),
        ("sentry.userrole", ("name",)),
        ("sentry.userpermission", ("permission", "user")),
        ("sentry.team", ("organization", "slug")),
        ("sentry.project", ("organization", "slug")),
        ("sentry.projectkey", ("public_key",)),
        ("sentry.projectkey", ("secret_key",)),
        ("sentry.organizationmember", ("organization", "user_id")),
        ("sentry.organizationmember", ("email", "organization")),
        ("sentry.organizationmember", ("token",)),
        ("sentry.environment", ("name", "organization_id")),
        ("sentry.useroption", ("key", "organization_id", "user")),
    ],
)
def test_uniques_the_import_semantics_rely_on(manifest, model, unique):
    assert unique in manifest[model].uniques


@pytest.mark.parametrize(
    "model, field, column, target, nullable, kind",
    [
        ("sentry.organizationmember", "user_id", "user_id", "sentry.user", True, "HybridCloudForeignKey"),
        ("sentry.organizationmember", "inviter_id", "inviter_id", "sentry.user", True, "HybridCloudForeignKey"),
        (
            "sentry.organizationmember",
            "organization",
            "organization_id",
            "sentry.organization",
            False,
            "FlexibleForeignKey",
        ),
        ("sentry.useremail", "user", "user_id", "sentry.user", False, "FlexibleForeignKey"),
        ("sentry.userroleuser", "role", "role_id", "sentry.userrole", False, "FlexibleForeignKey"),
        (
            "sentry.environment",
            "organization_id",
            "organization_id",
            "sentry.organization",
            False,
            "ImplicitForeignKey",
        ),
        ("sentry.rule", "environment_id", "environment_id", "sentry.environment", True, "ImplicitForeignKey"),
        ("sentry.rule", "owner_team", "owner_team_id", "sentry.team", True, "FlexibleForeignKey"),
        ("sentry.project", "template", "template_id", "sentry.projecttemplate", True, "FlexibleForeignKey"),
        (
            "sentry.organizationmemberteam",
            "organizationmember",
            "organizationmember_id",
            "sentry.organizationmember",
            False,
            "FlexibleForeignKey",
        ),
    ],
)
def test_foreign_keys_are_named_as_in_exports(manifest, model, field, column, target, nullable, kind):
    fk = manifest[model].fk_by_field[field]
    assert (fk.column, fk.model, fk.nullable, fk.kind) == (column, target, nullable, kind)


@pytest.mark.parametrize(
    "model, table",
    [
        ("sentry.user", "auth_user"),
        ("sentry.authenticator", "auth_authenticator"),
        ("sentry.userroleuser", "sentry_userrole_users"),
        ("sentry.organizationmemberteam", "sentry_organizationmember_teams"),
        ("sentry.organizationoption", "sentry_organizationoptions"),
        ("sentry.projectoption", "sentry_projectoptions"),
    ],
)
def test_table_names_that_differ_from_the_model_name(manifest, model, table):
    assert manifest[model].table_name == table


def test_config_and_root_models_have_no_foreign_keys(manifest):
    for name in (
        "sentry.user",
        "sentry.organization",
        "sentry.option",
        "sentry.controloption",
        "sentry.relay",
        "sentry.relayusage",
        "sentry.userrole",
        "sentry.email",
    ):
        assert manifest[name].foreign_keys == (), name
