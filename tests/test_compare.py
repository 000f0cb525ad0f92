"""Sentry-style comparison of two exports: every finding kind on hand-made pairs, and the CLI."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from backup_assets.cli import main
from backup_assets.core.compare import compare, iter_export
from backup_assets.core.decryptors import LocalFileEncryptor
from backup_assets.core.errors import ExportParseError
from backup_assets.core.findings import (
    ComparatorFinding,
    ComparatorFindingKind,
    InstanceID,
    RpcImportError,
    findings_to_json,
    write_findings,
)
from backup_assets.core.manifest import Manifest
from backup_assets.core.source import encrypt_export
from tests.corpus import manifest_entry


def _model(table: str, **fks: str) -> dict:
    return {
        "foreign_keys": {f: {"kind": "FlexibleForeignKey", "model": m, "nullable": True} for f, m in fks.items()},
        "relocation_scope": "Global",
        "table_name": table,
    }


MANIFEST = Manifest.from_json(
    {
        "sentry.user": _model("sentry_user"),
        "sentry.email": _model("sentry_email"),
        "sentry.useremail": _model("sentry_useremail", user="sentry.user"),
        "sentry.useroption": _model("sentry_useroption", user="sentry.user"),
        "sentry.organization": _model("sentry_organization"),
        "sentry.organizationmember": _model(
            "sentry_organizationmember",
            organization="sentry.organization",
            user_id="sentry.user",
            inviter_id="sentry.user",
        ),
        "sentry.project": _model("sentry_project", organization="sentry.organization"),
        "sentry.projectkey": _model("sentry_projectkey", project="sentry.project"),
        "sentry.apitoken": _model("sentry_apitoken", user="sentry.user"),
        "sentry.monitor": _model("sentry_monitor"),
        "sentry.querysubscription": _model("sentry_querysubscription", project="sentry.project"),
    },
    source="test manifest",
)

#: One model, ``sentry.option``, in Sentry's manifest format (a Control-silo Config model, unique by key).
OPTION_MANIFEST = Manifest.from_json(
    {
        "sentry.option": {
            **manifest_entry("sentry.option", "sentry_option", scope="Config", uniques=(("key",),)),
            "silos": ["Control"],
        }
    }
)
FKS = {name: {fk.field: fk.model for fk in spec.foreign_keys} for name, spec in MANIFEST.models.items()}
HEX32 = "0123456789abcdef" * 2


def _row(model: str, pk: int, **fields) -> dict:
    return {"model": model, "pk": pk, "fields": fields}


def _user(pk: int, username: str, **extra) -> dict:
    fields = dict(
        username=username,
        email=f"{username}@example.com",
        password="pbkdf2$abc",
        is_unclaimed=False,
        is_password_expired=False,
        last_password_change="2023-01-01T00:00:00.000Z",
        date_joined="2023-01-01T10:00:00.123Z",
        last_active="2023-02-01T00:00:00.000Z",
        name=username,
    )
    fields.update(extra)
    return _row("sentry.user", pk, **fields)


def export() -> list[dict]:
    """A small export covering every comparator of the default table these tests exercise."""
    return [
        _user(1, "alice"),
        _user(2, "bob"),
        _row("sentry.email", 1, email="alice@example.com", date_added="2023-01-01T00:00:00.000Z"),
        _row("sentry.email", 2, email="bob@example.com", date_added="2023-01-01T00:00:00.000Z"),
        _row(
            "sentry.useremail",
            1,
            user=1,
            email="alice@example.com",
            is_verified=True,
            validation_hash="x",
            date_hash_added="2023-01-01T00:00:00.000Z",
        ),
        _row(
            "sentry.useremail",
            2,
            user=2,
            email="bob@example.com",
            is_verified=False,
            validation_hash="y",
            date_hash_added="2023-01-01T00:00:00.000Z",
        ),
        _row("sentry.useroption", 1, user=1, organization_id=None, project_id=None, key="theme", value="dark"),
        _row("sentry.organization", 1, slug="acme", name="Acme", date_added="2023-01-01T00:00:00.000Z"),
        _row("sentry.organization", 2, slug="other", name="Other", date_added="2023-01-01T00:00:00.000Z"),
        _row(
            "sentry.organizationmember",
            1,
            organization=1,
            user_id=1,
            inviter_id=None,
            role="owner",
            email=None,
            token=None,
        ),
        _row(
            "sentry.organizationmember",
            2,
            organization=1,
            user_id=2,
            inviter_id=1,
            role="member",
            email=None,
            token="secret-invite-token",
        ),
        _row("sentry.project", 1, organization=1, slug="web", date_added="2023-01-01T00:00:00.000Z"),
        _row("sentry.project", 2, organization=2, slug="api", date_added="2023-01-01T00:00:00.000Z"),
        _row("sentry.projectkey", 1, project=1, public_key=HEX32, secret_key=HEX32[::-1], label="Default"),
        _row(
            "sentry.apitoken",
            1,
            user=1,
            token="tok-1",
            refresh_token="ref-1",
            hashed_token="h1",
            hashed_refresh_token="h2",
            token_last_characters="ok-1",
            scope_list="['org:read', 'project:write']",
        ),
        _row("sentry.monitor", 1, guid="6f1e2a3b-8c4d-4e5f-9a6b-7c8d9e0f1a2b", name="cron"),
        _row(
            "sentry.querysubscription",
            1,
            project=1,
            subscription_id=f"1/{HEX32}",
            date_updated="2023-01-01T00:00:00.000Z",
        ),
    ]


def regenerated() -> list[dict]:
    """The export as an import would write it back: UUID4s and subscription ids are new."""
    rows = export()
    _fields(rows, "sentry.monitor", 1)["guid"] = "11111111-2222-4333-8444-555555555555"
    _fields(rows, "sentry.querysubscription", 1)["subscription_id"] = f"7/{'f' * 32}"
    return rows


def _fields(rows: list[dict], model: str, pk: int) -> dict:
    return next(r for r in rows if r["model"] == model and r["pk"] == pk)["fields"]


def _shift_pks(rows: list[dict], by: int) -> list[dict]:
    """Every pk moved by ``by``, and every foreign key rewritten to match (a consistent remap)."""
    for row in rows:
        row["pk"] += by
        for field in FKS.get(row["model"], {}):
            if row["fields"].get(field) is not None:
                row["fields"][field] += by
    return rows


def _kinds(findings: list[ComparatorFinding]) -> list[str]:
    return [f.kind.name for f in findings]


def _diff(change) -> list[ComparatorFinding]:
    """Findings of export() against a regenerated copy changed by ``change(rows)``."""
    right = regenerated()
    change(right)
    return compare(export(), right, MANIFEST)


def _set(model: str, pk: int, **values):
    return lambda rows: _fields(rows, model, pk).update(values)


# -- no findings -------------------------------------------------------------------------------------


def test_regenerated_copy_has_no_findings():
    assert compare(export(), regenerated(), MANIFEST) == []


def test_pk_remapped_copy_has_no_findings():
    right = _shift_pks(regenerated(), 100)
    assert compare(export(), right, MANIFEST) == []


def test_custom_ordinal_matches_rows_by_username_and_email_not_by_position():
    right = regenerated()
    emails = [r for r in right if r["model"] == "sentry.useremail"]
    emails[0]["fields"], emails[1]["fields"] = emails[1]["fields"], emails[0]["fields"]
    assert compare(export(), right, MANIFEST) == []


def test_allowed_changes_have_no_findings():
    def change(rows):
        _fields(rows, "sentry.organization", 1)["slug"] = "acme-x7k2"  # auto-suffixed
        _fields(rows, "sentry.user", 2)["last_active"] = "2024-01-01T00:00:00Z"  # moved forward
        _fields(rows, "sentry.user", 1)["date_joined"] = "2023-01-01T10:00:00.123000+00:00"  # same instant
        _fields(rows, "sentry.useremail", 1).update(validation_hash="new", is_verified=False)  # ignored
        _fields(rows, "sentry.apitoken", 1)["scope_list"] = "['project:write', 'org:read']"  # reordered

    assert _diff(change) == []


# -- ordinal and count findings --------------------------------------------------------------------


def test_unordered_input():
    def change(rows):
        projects = [r for r in rows if r["model"] == "sentry.project"]
        projects[0]["pk"], projects[1]["pk"] = 9, 3
        for r in rows:
            if r["model"] in ("sentry.projectkey", "sentry.querysubscription"):
                r["fields"]["project"] = 9

    findings = _diff(change)
    assert _kinds(findings) == ["UnorderedInput"]
    assert findings[0].on == InstanceID("sentry.project", 2) and findings[0].right_pk == 3
    assert findings[0].left_pk is None


def test_duplicate_custom_ordinal():
    def dup(rows):
        _fields(rows, "sentry.email", 2)["email"] = "alice@example.com"

    left = export()
    dup(left)
    findings = compare(left, copy.deepcopy(left), MANIFEST)
    assert _kinds(findings) == ["DuplicateCustomOrdinal", "DuplicateCustomOrdinal"]
    assert findings[0].on.model == "sentry.email" and "alice@example.com" in findings[0].reason


def test_useroption_duplicates_are_renumbered_not_reported():
    extra = _row("sentry.useroption", 2, user=1, organization_id=None, project_id=None, key="theme", value="light")
    left, right = export() + [extra], regenerated() + [copy.deepcopy(extra)]
    assert compare(left, right, MANIFEST) == []
    right[-1]["fields"]["value"] = "blue"
    assert _kinds(compare(left, right, MANIFEST)) == ["UnequalJSON"]


def test_unequal_counts_stop_the_comparison():
    def change(rows):
        rows.remove(next(r for r in rows if r["model"] == "sentry.monitor"))
        _fields(rows, "sentry.organization", 1)["name"] = "Changed"  # not reported: counts come first

    findings = _diff(change)
    assert _kinds(findings) == ["UnequalCounts"]
    assert findings[0].on == InstanceID("sentry.monitor", None) and findings[0].left_pk is None


def test_model_missing_on_one_side_is_unequal_counts():
    findings = compare(export(), [r for r in regenerated() if r["model"] != "sentry.monitor"], MANIFEST)
    assert _kinds(findings) == ["UnequalCounts"] and "1 left rows, 0 right rows" in findings[0].reason


# -- per-row findings ------------------------------------------------------------------------------


def test_unequal_json_has_a_unified_diff():
    findings = _diff(_set("sentry.project", 2, slug="renamed"))
    assert _kinds(findings) == ["UnequalJSON"]
    f = findings[0]
    assert (f.on, f.left_pk, f.right_pk) == (InstanceID("sentry.project", 2), 2, 2)
    assert '-  "slug": "api"' in f.reason and '+  "slug": "renamed"' in f.reason
    assert '"date_added"' in f.reason  # context lines
    assert '"organization"' not in f.reason  # compared by the foreign-key comparator, then scrubbed


def test_field_absent_versus_null_is_an_unequal_json():
    left = export()
    _fields(left, "sentry.project", 1)["platform"] = None
    findings = compare(left, regenerated(), MANIFEST)
    assert _kinds(findings) == ["UnequalJSON"] and '-  "platform": null' in findings[0].reason


def test_auto_suffix():
    assert _kinds(_diff(_set("sentry.organization", 1, slug="acmex"))) == ["AutoSuffixComparator"]
    assert _kinds(_diff(_set("sentry.user", 1, username="alicex"))) == ["AutoSuffixComparator"]
    findings = _diff(_set("sentry.organization", 1, slug=None))
    assert _kinds(findings) == ["AutoSuffixComparatorExistenceCheck"]
    assert "right value of `slug` is missing" in findings[0].reason


def test_date_updated_may_not_move_backwards():
    findings = _diff(_set("sentry.user", 1, last_active="2023-01-31T23:59:59.999Z"))
    assert _kinds(findings) == ["DateUpdatedComparator"] and "last_active" in findings[0].reason
    assert _kinds(_diff(_set("sentry.user", 1, last_active=None))) == ["DateUpdatedComparatorExistenceCheck"]


def test_datetime_equality_on_models_with_comparators():
    findings = _diff(_set("sentry.user", 1, date_joined="2023-01-01T10:00:00.124Z"))
    assert _kinds(findings) == ["DatetimeEqualityComparator"] and "date_joined" in findings[0].reason
    assert _kinds(_diff(_set("sentry.user", 1, date_joined="yesterday"))) == ["DatetimeEqualityComparator"]
    assert _kinds(_diff(_set("sentry.user", 1, date_joined=None))) == ["DatetimeEqualityComparatorExistenceCheck"]


def test_datetime_spelling_matters_on_models_without_comparators():
    # As in Sentry: only models with a comparator get the datetime-equality one.
    assert _kinds(_diff(_set("sentry.project", 1, date_added="2023-01-01T00:00:00Z"))) == ["UnequalJSON"]


def test_foreign_key_pointing_at_another_row():
    findings = _diff(_set("sentry.project", 1, organization=2))
    assert _kinds(findings) == ["ForeignKeyComparator"]
    assert "sentry.organization #1" in findings[0].reason and "sentry.organization #2" in findings[0].reason


def test_foreign_key_rewired_in_a_pk_remapped_copy():
    right = _shift_pks(regenerated(), 10)
    _fields(right, "sentry.organizationmember", 12)["user_id"] = 11  # should be 12 (bob)
    findings = compare(export(), right, MANIFEST)
    assert _kinds(findings) == ["ForeignKeyComparator"]
    assert (findings[0].on, findings[0].left_pk, findings[0].right_pk) == (
        InstanceID("sentry.organizationmember", 2),
        2,
        12,
    )


def test_foreign_key_to_a_missing_row_and_to_null():
    findings = _diff(_set("sentry.project", 2, organization=77))
    assert _kinds(findings) == ["ForeignKeyComparator"] and "(77)" in findings[0].reason
    assert _kinds(_diff(_set("sentry.organizationmember", 2, inviter_id=None))) == [
        "ForeignKeyComparatorExistenceCheck"
    ]


def test_dangling_foreign_key_may_be_dropped_by_the_import():
    left = export()
    _fields(left, "sentry.organizationmember", 2)["inviter_id"] = 99  # a user who was not exported
    right = regenerated()
    _fields(right, "sentry.organizationmember", 2)["inviter_id"] = None
    assert compare(left, right, MANIFEST) == []
    _fields(right, "sentry.organizationmember", 2)["inviter_id"] = 1
    findings = compare(left, right, MANIFEST)
    assert _kinds(findings) == ["ForeignKeyComparator"] and "left value (99)" in findings[0].reason


def test_hash_obfuscating_hides_the_secret():
    findings = _diff(_set("sentry.organizationmember", 2, token="another-secret"))
    assert _kinds(findings) == ["HashObfuscatingComparator"]
    assert "secret" not in findings[0].reason and "sha256:" in findings[0].reason


def test_email_obfuscating_hides_the_address():
    findings = _diff(_set("sentry.user", 2, email="robert@example.org"))
    assert _kinds(findings) == ["EmailObfuscatingComparator"]
    assert "robert" not in findings[0].reason and "example" not in findings[0].reason


def test_secret_hex():
    findings = compare(*[_with_key(rows) for rows in (export(), regenerated())], MANIFEST)
    assert _kinds(findings) == ["SecretHexComparator"]
    assert "left and right values of `public_key` are not 32 lowercase hex digits" in findings[0].reason


def _with_key(rows: list[dict]) -> list[dict]:
    _fields(rows, "sentry.projectkey", 1)["public_key"] = "not-hex"
    return rows


def test_uuid4_must_be_valid_and_regenerated():
    findings = compare(export(), export(), MANIFEST)  # the same guid and subscription id on both sides
    assert sorted(_kinds(findings)) == ["SubscriptionIDComparator", "UUID4Comparator"]
    not_v4 = "11111111-2222-1333-8444-555555555555"
    findings = _diff(_set("sentry.monitor", 1, guid=not_v4))
    assert _kinds(findings) == ["UUID4Comparator"] and "right value of `guid` is not a UUID4" in findings[0].reason


def test_subscription_id_must_look_right():
    assert _kinds(_diff(_set("sentry.querysubscription", 1, subscription_id="oops"))) == ["SubscriptionIDComparator"]


def test_unordered_list():
    findings = _diff(_set("sentry.apitoken", 1, scope_list="['org:read']"))
    assert _kinds(findings) == ["UnorderedListComparator"]
    assert _kinds(_diff(_set("sentry.apitoken", 1, scope_list=["project:write", "org:read"]))) == []
    assert _kinds(_diff(_set("sentry.apitoken", 1, scope_list=None))) == ["UnorderedListComparatorExistenceCheck"]


def test_ignored_fields_are_not_compared():
    assert _diff(_set("sentry.apitoken", 1, hashed_token="zz", token_last_characters="zzzz")) == []


def test_claimed_user_keeps_the_password():
    findings = _diff(_set("sentry.user", 1, password="pbkdf2$new"))
    assert _kinds(findings) == ["UserPasswordObfuscatingComparator"] and "pbkdf2" not in findings[0].reason


def test_unclaimed_user_needs_a_new_password():
    left = export()
    _fields(left, "sentry.user", 1)["is_unclaimed"] = True
    right = regenerated()
    _fields(right, "sentry.user", 1).update(
        is_unclaimed=True, password="pbkdf2$new", last_password_change="2024-01-01T00:00:00.000Z"
    )
    assert compare(left, right, MANIFEST) == []
    _fields(right, "sentry.user", 1).update(
        password="pbkdf2$abc", last_password_change="2022-01-01T00:00:00.000Z", is_password_expired=True
    )
    findings = compare(left, right, MANIFEST)
    assert _kinds(findings) == ["UserPasswordObfuscatingComparator"] * 3


def test_an_import_never_claims_a_user():
    left = export()
    _fields(left, "sentry.user", 2)["is_unclaimed"] = True
    findings = compare(left, regenerated(), MANIFEST)
    assert _kinds(findings) == ["UserPasswordObfuscatingComparator"] and "never claims" in findings[0].reason


# -- malformed input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rows, row, message",
    [
        ([1], 0, "must be an object"),
        ([_row("sentry.user", 1), {"pk": 2, "fields": {}}], 1, "no 'model'"),
        ([{"model": "sentry.user", "pk": "1", "fields": {}}], 0, "'pk' must be an integer"),
        ([{"model": "sentry.user", "pk": True, "fields": {}}], 0, "'pk' must be an integer"),
        ([{"model": "sentry.user", "pk": 1, "fields": []}], 0, "'fields' must be an object"),
    ],
)
def test_malformed_rows(rows, row, message):
    with pytest.raises(ExportParseError, match=message) as info:
        compare(export(), rows, MANIFEST)
    assert info.value.row == row and "right" in str(info.value)


@pytest.mark.parametrize(
    "text, row, message",
    [
        (b"", None, "empty"),
        (b'  {"model": 1}', None, "JSON list"),
        (b'[{"model": "sentry.user"}, {"a": ', 1, "not valid JSON"),
        (b"[1, 2] trailing", 2, "not valid JSON"),
    ],
)
def test_iter_export_errors(text, row, message):
    with pytest.raises(ExportParseError, match=message) as info:
        list(iter_export(io.BytesIO(text), "x.json"))
    assert info.value.row == row and "x.json" in str(info.value)


def test_iter_export_streams_rows():
    text = b"\xef\xbb\xbf \n" + json.dumps(export()).encode()
    assert list(iter_export(io.BytesIO(text))) == export()


# -- findings JSON ---------------------------------------------------------------------------------


def test_findings_json_shape():
    findings = [
        ComparatorFinding(
            kind=ComparatorFindingKind.UnequalJSON,
            on=InstanceID("sentry.user", 2),
            left_pk=2,
            right_pk=5,
            reason="caf\u00e9",
        ),
        RpcImportError(kind="IntegrityError", on=InstanceID("sentry.team"), reason="x"),
    ]
    text = findings_to_json(findings)
    assert text.isascii() and "caf\\u00e9" in text
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2)
    first, second = json.loads(text)
    assert first == {
        "finding": "ComparatorFinding",
        "kind": "UnequalJSON",
        "left_pk": 2,
        "right_pk": 5,
        "on": {"model": "sentry.user", "ordinal": 2},
        "reason": "caf\u00e9",
    }
    assert second["finding"] == "RpcImportError" and second["on"] == {"model": "sentry.team", "ordinal": None}
    assert findings_to_json([]) == "[]"
    out = io.StringIO()
    write_findings(findings, out)
    assert out.getvalue() == text


# -- CLI -------------------------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    paths = {
        "manifest": tmp_path / "manifest.json",
        "left": tmp_path / "left.json",
        "same": tmp_path / "same.json",
        "changed": tmp_path / "changed.json",
        "findings": tmp_path / "f.json",
    }
    paths["manifest"].write_text(json.dumps(MANIFEST.to_json()))
    paths["left"].write_text(json.dumps(export(), indent=2))
    paths["same"].write_text(json.dumps(regenerated()))
    changed = regenerated()
    _fields(changed, "sentry.organization", 2)["name"] = "Renamed"
    _fields(changed, "sentry.project", 1)["organization"] = 2
    paths["changed"].write_text(json.dumps(changed))
    return paths


def _run(*args: object):
    return CliRunner().invoke(main, ["backup", "compare", *map(str, args)])


def test_cli_no_differences(files):
    result = _run(files["left"], files["same"], "--manifest", files["manifest"], "--findings-file", files["findings"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "Done, found 0 differences"
    assert files["findings"].read_text() == "[]"


def test_cli_differences(files):
    result = _run(
        files["left"], files["changed"], "--manifest", files["manifest"], "--findings-file", files["findings"]
    )
    assert result.exit_code == 1
    assert "Done, found 2 differences" in result.output
    assert "UnequalJSON on sentry.organization #2" in result.output
    findings = json.loads(files["findings"].read_text())
    assert [f["kind"] for f in findings] == ["UnequalJSON", "ForeignKeyComparator"]
    assert all(sorted(f) == ["finding", "kind", "left_pk", "on", "reason", "right_pk"] for f in findings)


def test_cli_malformed_input(files, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"model": "sentry.user", "pk": "one", "fields": {}}]')
    result = _run(files["left"], bad, "--manifest", files["manifest"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and "row 0" in result.output and "bad.json" in result.output
    assert "Done" not in result.output


def test_cli_encrypted_left(files, tmp_path):
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "key.pem").write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (tmp_path / "key.pub").write_bytes(
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    encrypt_export(files["left"], tmp_path / "left.tar", LocalFileEncryptor(tmp_path / "key.pub"))
    result = _run(
        tmp_path / "left.tar",
        files["same"],
        "--manifest",
        files["manifest"],
        "--decrypt-left-with",
        tmp_path / "key.pem",
    )
    assert result.exit_code == 0, result.output
    assert "Done, found 0 differences" in result.output
    result = _run(tmp_path / "left.tar", files["same"], "--manifest", files["manifest"])
    assert result.exit_code == 1 and "encrypted" in result.output


def test_option_timestamps_without_milliseconds_are_one_unequal_json_as_in_sentrys_snapshot_test():
    # Sentry's validator has no comparator for sentry.option: an input timestamp without milliseconds differs
    # from the re-export's ".000Z" spelling, and that is exactly one UnequalJSON finding.
    manifest = OPTION_MANIFEST
    left = [
        {"model": "sentry.option", "pk": 1, "fields": {"key": "a", "last_updated": "2023-06-22T00:00:00.000Z"}},
        {"model": "sentry.option", "pk": 2, "fields": {"key": "b", "last_updated": "2023-06-22T00:00:00Z"}},
    ]
    right = [{**r, "fields": {**r["fields"], "last_updated": "2023-06-22T00:00:00.000Z"}} for r in left]
    findings = compare(left, right, manifest)
    assert [(f.kind_name, f.on.ordinal, f.left_pk) for f in findings] == [("UnequalJSON", 2, 2)]


def test_models_the_manifest_does_not_know_are_not_compared_but_reported():
    manifest = OPTION_MANIFEST
    option = {"model": "sentry.option", "pk": 1, "fields": {"key": "a", "value": 1}}
    left = [{"model": "sites.site", "pk": 1, "fields": {"domain": "example.com"}}, option]
    skipped: dict = {}
    assert compare(left, [option], manifest, skipped=skipped) == []
    assert skipped == {"sites.site": (1, 0)}
    # a model the manifest knows is compared as ever
    assert [f.kind_name for f in compare([option], [], manifest)] == ["UnequalCounts"]
