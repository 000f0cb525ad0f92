"""The Dagster UI as a person sees it: a real ``dagster dev`` with a restored backup, driven by headless
Chromium (Debian's ``chromium`` through Playwright; no browser is ever downloaded). Screenshots go to
``tests/artifacts/``.

What must be on screen: the model assets with their check status and partition, their lineage (the
parents and the stages around them), and the rows-written metadata of the latest materialization,
with no first-visit dialog in the way (``nux: {enabled: false}`` in dagster.yaml).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from backup_assets.core.manifest import Manifest
from backup_assets.core.postgres import EmbeddedPostgres
from backup_assets.demo.synthetic import count_rows, generate_rows, write_export
from backup_assets.partitions import partition_key_for_file
from tests.dagster_dev import REPO, DagsterDev

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
MODELS = ("sentry.organization", "sentry.user", "sentry.organizationmember")
SMALL = dict(orgs=1, users=3, members_per_org=3)
ALL_ASSETS = [
    ["sentry_backup", s] for s in ("backup_file", "unwrapped_tarball", "data_key", "parsed_export", "restore_complete")
] + [m.split(".") for m in MODELS]
TIMEOUT_MS = 30_000

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
if shutil.which("chromium") is None and not CHROMIUM.exists():
    pytest.skip(
        "Debian's chromium is not installed (apt-get install -y chromium; tests/run does it as root)",
        allow_module_level=True,
    )


@pytest.fixture
def restored(tmp_path, pg_dsn):
    """``dagster dev`` with one generated backup restored through a GraphQL-launched run."""
    (tmp_path / "backups").mkdir()
    backup = tmp_path / "backups" / "acme.json"
    write_export(backup, generate_rows(**SMALL))
    (tmp_path / "detailed.json").write_text(json.dumps(Manifest.builtin().restrict(MODELS).to_json()))
    server = DagsterDev(
        tmp_path / "home",
        {
            "BACKUP_ASSETS_DSN": pg_dsn,
            "BACKUP_ASSETS_BACKUPS": str(tmp_path / "backups"),
            "BACKUP_ASSETS_MANIFEST": str(tmp_path / "detailed.json"),
        },
    )
    try:
        server.start()
        key = partition_key_for_file(backup)
        server.add_partition(key)
        run = server.launch_run(
            key, ALL_ASSETS, {"resources": {"import_settings": {"config": {"create_schema": True}}}}, {}
        )
        assert server.wait_runs([run], timeout=90)[run]["status"] == "SUCCESS", server.tail()
        yield server, key, run
    finally:
        server.stop()


@pytest.fixture
def page():
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 900})
        finally:
            browser.close()


def no_dialog(page) -> None:
    assert page.get_by_role("dialog").count() == 0, "a dialog covers the page"
    assert page.get_by_text("Join the Dagster community").count() == 0


def test_the_asset_graph_lineage_and_rows_written_are_on_screen(restored, page):
    server, key, _run = restored

    # the asset graph of the organization group: both model assets, their checks and partition
    page.goto(f"{server.url}/locations/backup_assets/asset-groups/organization")
    graph = page.locator("body")
    for name in ("organization", "organizationmember"):
        page.get_by_text(name, exact=True).first.wait_for(timeout=TIMEOUT_MS)
    page.get_by_text("4 / 4 Passed").first.wait_for(timeout=TIMEOUT_MS)
    page.wait_for_timeout(500)  # let the edges settle before the screenshot
    page.screenshot(path=str(ARTIFACTS / "ui-asset-graph.png"))
    no_dialog(page)
    text = graph.inner_text()
    assert text.count("4 / 4 Passed") == 2 and text.count("1 partition") >= 2
    assert "parsed_export" in text and "restore_complete" in text and "user" in text  # neighbours of the group

    # lineage of the member model: its parents (organization, user) and the stages before them
    page.goto(f"{server.url}/assets/sentry/organizationmember?view=lineage&lineageScope=upstream&lineageDepth=4")
    page.get_by_text("parsed_export", exact=True).first.wait_for(timeout=TIMEOUT_MS)
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / "ui-member-lineage.png"))
    upstream = page.locator("body").inner_text()
    for name in ("organization", "user", "parsed_export", "data_key", "unwrapped_tarball"):
        assert name in upstream, name
    assert page.locator("svg path").count() >= 4  # the edges are drawn

    # the latest materialization of the member model, with its rows-written metadata
    page.goto(f"{server.url}/assets/sentry/organizationmember?view=events&partition={key}")
    page.get_by_text("rows_written", exact=True).wait_for(timeout=TIMEOUT_MS)
    page.screenshot(path=str(ARTIFACTS / "ui-member-materialization.png"), full_page=True)
    no_dialog(page)
    assert page.get_by_text(f"Partition {key} materialized in run").count() == 1
    row = page.locator("tr", has=page.get_by_text("rows_written", exact=True))
    assert row.locator("td").nth(1).inner_text().strip() == str(count_rows(**SMALL)["sentry.organizationmember"])
    dropped = page.locator("tr", has=page.get_by_text("rows_dropped", exact=True))
    assert dropped.locator("td").nth(1).inner_text().strip() == "0"


def test_one_run_of_the_models_step_shows_a_materialization_and_checks_per_model(restored, page):
    server, key, run = restored
    # the run's steps: the stages, ONE step for every model, restore_complete; each model materialized
    # by that step, each with its four checks evaluated there
    data = server.graphql(
        """query($id: ID!) { runOrError(runId: $id) { ... on Run {
          stepStats { stepKey status materializations { assetKey { path } } } } } }""",
        {"id": run},
    )
    steps = {s["stepKey"]: s for s in data["runOrError"]["stepStats"]}
    assert set(steps) == {"sentry_models", *(f"sentry_backup__{s[1]}" for s in ALL_ASSETS[:5])}
    assert {s["status"] for s in steps.values()} == {"SUCCESS"}
    models = steps["sentry_models"]
    assert sorted(m["assetKey"]["path"] for m in models["materializations"]) == sorted(m.split(".") for m in MODELS)
    checks = server.graphql(
        """query($id: ID!) { logsForRun(runId: $id) { ... on EventConnection { events {
          __typename ... on AssetCheckEvaluationEvent { stepKey evaluation { assetKey { path } checkName success } }
          } } } }""",
        {"id": run},
    )["logsForRun"]["events"]
    evaluations = [
        e
        for e in checks
        if e["__typename"] == "AssetCheckEvaluationEvent" and e["evaluation"]["assetKey"]["path"][0] == "sentry"
    ]  # parsed_export's check has its step
    assert {e["stepKey"] for e in evaluations} == {"sentry_models"}
    assert sorted(
        (tuple(e["evaluation"]["assetKey"]["path"]), e["evaluation"]["success"]) for e in evaluations
    ) == sorted((tuple(m.split(".")), True) for m in MODELS for _ in range(4))

    # on screen: the run's page lists the models' step, and the member's checks come from this run
    page.goto(f"{server.url}/runs/{run}")
    page.get_by_text("sentry_models").first.wait_for(timeout=TIMEOUT_MS)
    page.wait_for_timeout(1000)
    page.screenshot(path=str(ARTIFACTS / "ui-run-models-step.png"))
    no_dialog(page)
    text = page.locator("body").inner_text()
    assert "sentry_models" in text and "restore_complete" in text
    page.goto(f"{server.url}/assets/sentry/organizationmember?view=checks")
    page.get_by_text("no_dangling_fk", exact=True).first.wait_for(timeout=TIMEOUT_MS)
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / "ui-member-checks.png"))
    checks_text = page.locator("body").inner_text()
    for name in ("counts_reconcile", "no_dangling_fk", "sequence_past_max", "no_rows_dropped"):
        assert name in checks_text, name


def test_the_readme_flow_demo_then_ui_shows_the_demo_restore(tmp_path, page):
    """The README's flow as written, from a fresh folder: `backup-assets demo`, then `backup-assets ui`.
    The UI's first look is the demo's restore (its partition materialized, a model's four checks passed),
    although the test launches no run of its own."""
    shutil.copy(REPO / "dagster.yaml", tmp_path / "dagster.yaml")  # the README runs from the repository root
    embedded = Path(tempfile.mkdtemp(prefix="ba-ui-demo-"))  # the embedded server of this test only (not
    env = {"BACKUP_ASSETS_HOME": str(embedded)}  # under pytest's 0700 folders: its user reads it)
    cli = Path(sys.executable).with_name("backup-assets")
    demo_env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "BACKUP_ASSETS_DSN")}
    server = DagsterDev(None, env, cwd=tmp_path)
    try:
        demo = subprocess.run(
            [str(cli), "demo"], cwd=tmp_path, env={**demo_env, **env}, capture_output=True, text=True, timeout=280
        )
        assert demo.returncode == 0, demo.stderr[-3000:]
        key = partition_key_for_file(tmp_path / "backups" / "demo-sentry-export.tar")
        server.start()
        [run] = server.runs()  # the demo's, recorded in the shared home
        assert run["status"] == "SUCCESS" and {"key": "dagster/partition", "value": key} in run["tags"]

        # the model's page: its latest materialization is the demo's partition, its four checks passed
        page.goto(f"{server.url}/assets/sentry/organization")
        page.get_by_text("Latest materialization").wait_for(timeout=TIMEOUT_MS)
        page.get_by_text(key).first.wait_for(timeout=TIMEOUT_MS)
        page.wait_for_timeout(500)
        page.screenshot(path=str(ARTIFACTS / "ui-demo-first-look.png"))
        no_dialog(page)
        assert "Never materialized" not in page.locator("body").inner_text()
        page.goto(f"{server.url}/assets/sentry/organization?view=checks")
        page.get_by_text("Checks (4)").wait_for(timeout=TIMEOUT_MS)
        page.get_by_text("Succeeded").nth(3).wait_for(timeout=TIMEOUT_MS)
        page.screenshot(path=str(ARTIFACTS / "ui-demo-checks.png"))
        assert page.get_by_text("Succeeded", exact=True).count() == 4
        for name in ("counts_reconcile", "no_dangling_fk", "sequence_past_max", "no_rows_dropped"):
            assert page.get_by_text(name, exact=True).count() >= 1, name

        page.goto(f"{server.url}/assets/sentry/organization?view=events&partition={key}")
        page.get_by_text("rows_written", exact=True).wait_for(timeout=TIMEOUT_MS)
        assert page.get_by_text(f"Partition {key} materialized in run").count() == 1
        assert [r["runId"] for r in server.runs()] == [run["runId"]]  # nothing was launched to get here
    finally:
        server.stop()
        EmbeddedPostgres(embedded / "postgres").destroy()
        shutil.rmtree(embedded, ignore_errors=True)
