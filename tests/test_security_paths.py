"""No credential at rest, on every path that starts a restore: the CLI with ``$DAGSTER_HOME`` set, the code
location's job requested by its sensor (through ``dagster dev``: webserver, daemon, run worker, compute logs),
the Component's job and the restore drill. Each target is a role of its own whose password the server
checks (``scram-sha-256`` on loopback), so a run that succeeds has used it. Afterwards the DSN passwords, the
private key, the data keys and the known plaintext are looked for, decompressed (see ``secret_scan``), in
every file and SQLite value under ``$DAGSTER_HOME`` and in what the webserver's GraphQL returns for each run
(``runConfigYaml``, the job snapshot's config defaults) and for the resources of the code location.

A positive control rides along: a run whose target was configured the old way, with a planted password.
The same scans must find that one, in the compressed snapshot and in GraphQL.
"""

from __future__ import annotations

import io
import json
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from backup_assets.cli import main
from backup_assets.component import SentryRestoreComponent
from backup_assets.core import keys
from backup_assets.core.decryptors import PemEncryptor
from backup_assets.core.manifest import Manifest
from backup_assets.core.source import encrypt_export
from backup_assets.core.tarball import read_tarball
from backup_assets.definitions import build_definitions
from backup_assets.demo.synthetic import generate_rows, write_export
from backup_assets.resources.backup_source import BackupSourceResource
from backup_assets.resources.postgres import PostgresTargetResource
from backup_assets.run import failure_message
from backup_assets.schedules import DRILL_JOB_NAME
from tests.dagster_dev import LOCATION, REPO, REPOSITORY, DagsterDev
from tests.secret_scan import scan_tree, secret_forms, sqlite_tables
from tests.test_security import MARKER, closure

MANIFEST = closure(Manifest.builtin(), "sentry.organizationmember")
SMALL = dict(orgs=1, users=3, members_per_org=2)
SELECTOR = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY}


@dataclass
class Role:
    """A login role with a password, owning one database; ``dsn`` carries the password."""

    name: str
    password: str
    dsn: str


@dataclass
class Paths:
    root: Path
    home: Path
    key_file: Path
    needles: dict[str, bytes]
    planted: dict[str, bytes]
    runs: dict[str, str] = field(default_factory=dict)  #: path -> run id
    outputs: dict[str, str] = field(default_factory=dict)  #: what the CLI printed
    graphql: dict[str, str] = field(default_factory=dict)  #: query -> JSON answer


def backup(path: Path, private_pem: bytes, public_pem: bytes, seed: int) -> bytes:
    """An encrypted generated backup with the known plaintext as a username; returns its data key."""
    # only the manifest's models: the drill is strict, and refuses rows of models its manifest does not know
    rows = [r for r in generate_rows(**SMALL, seed=seed, pk_offset=1000 * seed) if r["model"] in MANIFEST.models]
    next(r for r in rows if r["model"] == "sentry.user")["fields"]["username"] = f"{MARKER}-{seed}"
    plain = io.BytesIO()
    write_export(plain, rows)
    plain.seek(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    encrypt_export(plain, path, PemEncryptor(public_pem))  # the plaintext never touches the disk
    return keys.unwrap_data_key(keys.load_private_key(private_pem), read_tarball(path).data_key)


@pytest.fixture(scope="module")
def roles(pg_server) -> Iterator[dict[str, Role]]:
    """Three roles (target, component, standby), each with its database and a password the server checks."""
    admin = pg_server.dsn("postgres")
    made = {
        p: Role(f"sec_{p}_{secrets.token_hex(3)}", f"pw{secrets.token_hex(12)}", "")
        for p in ("target", "component", "standby")
    }
    hba = pg_server.data_dir / "pg_hba.conf"
    before = hba.read_text()
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            for role in made.values():
                conn.execute(
                    sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                        sql.Identifier(role.name), sql.Literal(role.password)
                    )
                )
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(role.name), sql.Identifier(role.name))
                )
                role.dsn = f"postgresql://{role.name}:{role.password}@127.0.0.1:{pg_server.port}/{role.name}"
            hba.write_text("".join(f"host all {r.name} 127.0.0.1/32 scram-sha-256\n" for r in made.values()) + before)
            conn.execute("SELECT pg_reload_conf()")
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(made["target"].dsn.replace(made["target"].password, "wrong")).close()
        yield made
    finally:
        hba.write_text(before)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")
            for role in made.values():
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(role.name)))
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role.name)))


def restore_cli(paths: Paths, src: Path, role: Role, manifest_file: Path) -> None:
    """``backup-assets import global`` with ``$DAGSTER_HOME`` set, as the README suggests."""
    result = CliRunner().invoke(
        main,
        [
            "import",
            "global",
            str(src),
            "--decrypt-with",
            str(paths.key_file),
            "--dsn",
            role.dsn,
            "--no-prompt",
            "--create-schema",
            "--manifest",
            str(manifest_file),
        ],
        env={"DAGSTER_HOME": str(paths.home)},
    )
    assert result.exit_code == 0, result.output
    paths.outputs["cli"] = result.output


def restore_component(
    paths: Paths,
    instance: dg.DagsterInstance,
    folder: Path,
    manifest_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    role: Role,
    pem: bytes,
) -> None:
    """The Component from YAML, its sensor ticked twice (the file must settle), its request run in-process."""
    monkeypatch.setenv("SECURITY_COMPONENT_DSN", role.dsn)
    monkeypatch.setenv("SECURITY_COMPONENT_KEY", pem.decode())
    component = SentryRestoreComponent.resolve_from_yaml(
        f"backups_folder: {folder}\nmanifest_path: {manifest_file}\ntarget_dsn_env: SECURITY_COMPONENT_DSN\n"
        "private_key_env: SECURITY_COMPONENT_KEY\ncreate_schema: true\n"
    )
    defs = dg.build_defs_for_component(component)
    sensor = defs.resolve_sensor_def("backup_folder_sensor")
    cursor = None
    for _ in range(2):
        result = sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources=component.resources()))
        cursor = result.cursor
    [request] = result.run_requests
    instance.add_dynamic_partitions("sentry_backups", [request.partition_key])
    run = defs.resolve_job_def("restore_backup_job").execute_in_process(
        instance=instance, partition_key=request.partition_key, tags=request.tags, raise_on_error=False
    )
    assert run.success, failure_message(run)
    paths.runs["component"] = run.run_id


def empty_tables(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        names = [MANIFEST[m].table_name for m in MANIFEST.relocatable()]
        present = [n for n in names if conn.execute("SELECT to_regclass(%s)", (n,)).fetchone()[0]]
        assert present, "the CLI created the target's tables"
        conn.execute(sql.SQL("TRUNCATE {} CASCADE").format(sql.SQL(", ").join(map(sql.Identifier, present))))


def plant_old_style_run(paths: Paths, instance: dg.DagsterInstance) -> None:
    """The positive control: a target configured with a DSN value (what the CLI did), planted password."""
    dsn = f"postgresql://planted:{paths.planted['planted password'].decode()}@127.0.0.1:5999/nowhere"

    @dg.asset
    def old_style_target(target: PostgresTargetResource) -> int:
        return len(target.dsn or "")

    run = dg.materialize([old_style_target], instance=instance, resources={"target": PostgresTargetResource(dsn=dsn)})
    paths.runs["planted"] = run.run_id


def launch_drill(server: DagsterDev, instance: dg.DagsterInstance, inbox: Path) -> str:
    """The drill schedule evaluated as the daemon would, its request launched through the webserver."""
    defs = build_definitions(MANIFEST)
    schedule = defs.resolve_schedule_def("restore_drill_schedule")
    request = schedule(
        dg.build_schedule_context(
            instance=instance, resources={"backup_source": BackupSourceResource(folder=str(inbox))}
        )
    )
    assert isinstance(request, dg.RunRequest), request
    tags = {**request.tags, "dagster/partition": request.partition_key}
    data = server.graphql(
        """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
          __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
          ... on RunConfigValidationInvalid { errors { message } } } }""",
        {
            "p": {
                "selector": {**SELECTOR, "jobName": DRILL_JOB_NAME},
                "runConfigData": request.run_config,
                "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
            }
        },
    )
    assert data["launchRun"]["__typename"] == "LaunchRunSuccess", data
    return data["launchRun"]["run"]["runId"]


def start_sensor(server: DagsterDev) -> None:
    data = server.graphql(
        """mutation($s: SensorSelector!) { startSensor(sensorSelector: $s) {
          __typename ... on PythonError { message } } }""",
        {"s": {**SELECTOR, "sensorName": "backup_folder_sensor"}},
    )
    assert data["startSensor"]["__typename"] == "Sensor", data


def wait_sensor_run(server: DagsterDev, timeout: float) -> str:
    """The run the daemon's sensor requested (it needs two ticks: the file must settle first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = server.graphql("""{ runsOrError(filter: {tags: [{key: "dagster/sensor_name",
              value: "backup_folder_sensor"}]}) { ... on Runs { results { runId } } } }""")
        runs = data["runsOrError"]["results"]
        if runs:
            return runs[0]["runId"]
        time.sleep(2)
    raise TimeoutError(f"no sensor run after {timeout}s\n{server.tail()}")


RUN_QUERY = """query($id: ID!) { runOrError(runId: $id) { ... on Run { status runConfigYaml pipelineSnapshotId
    tags { key value } } } }"""
SNAPSHOT_QUERY = """query($id: String!) { pipelineSnapshotOrError(snapshotId: $id) { ... on PipelineSnapshot {
    modes { resources { name description configField { defaultValueAsJson
      configType { ... on CompositeConfigType { fields { name defaultValueAsJson } } } } } } } } }"""
RESOURCES_QUERY = """query($r: RepositorySelector!) { allTopLevelResourceDetailsOrError(repositorySelector: $r) {
    ... on ResourceDetailsList { results { name description configuredValues { key value type } } } } }"""


def ask_graphql(server: DagsterDev, paths: Paths) -> None:
    """What the UI shows of each run (its run config, its job's config defaults) and of the resources."""
    for path, run_id in paths.runs.items():
        run = server.graphql(RUN_QUERY, {"id": run_id})["runOrError"]
        paths.graphql[f"run {path}"] = json.dumps(run)
        snapshot = server.graphql(SNAPSHOT_QUERY, {"id": run["pipelineSnapshotId"]})
        paths.graphql[f"snapshot {path}"] = json.dumps(snapshot)
    paths.graphql["resources"] = json.dumps(server.graphql(RESOURCES_QUERY, {"r": SELECTOR}))


@pytest.fixture(scope="module")
def paths(tmp_path_factory, roles: dict[str, Role]) -> Iterator[Paths]:
    root = tmp_path_factory.mktemp("security_paths")
    private_pem, public_pem = keys.generate_key_pair()
    (root / "key.pem").write_bytes(private_pem)
    data_keys = {
        n: backup(root / folder / f"{n}.tar", private_pem, public_pem, seed)
        for n, folder, seed in (("cli", "cli", 1), ("nightly", "inbox", 2), ("component", "component", 3))
    }
    manifest_file = root / "detailed.json"
    manifest_file.write_text(json.dumps(MANIFEST.to_json()))
    needles = {
        **secret_forms(private_pem, data_keys["cli"]),
        **{f"data key of {n}": k for n, k in data_keys.items()},
        **{f"{p} DSN password": r.password.encode() for p, r in roles.items()},
        "known plaintext": MARKER.encode(),
    }
    planted = {"planted password": f"pw{secrets.token_hex(12)}".encode()}
    out = Paths(root, root / "home", root / "key.pem", needles, planted)
    out.home.mkdir()
    shutil.copy(REPO / "dagster.yaml", out.home / "dagster.yaml")
    restore_cli(out, root / "cli" / "cli.tar", roles["target"], manifest_file)
    empty_tables(roles["target"].dsn)  # the sensor's global import wants an empty target with tables
    server = DagsterDev(
        out.home,
        {
            "BACKUP_ASSETS_DSN": roles["target"].dsn,
            "BACKUP_ASSETS_STANDBY_DSN": roles["standby"].dsn,
            "BACKUP_ASSETS_BACKUPS": str(root / "inbox"),
            "BACKUP_ASSETS_MANIFEST": str(manifest_file),
            "BACKUP_ASSETS_PRIVATE_KEY_PATH": str(out.key_file),
            "BACKUP_ASSETS_SENSOR_INTERVAL": "3",  # the file settles on the second tick
        },
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DAGSTER_HOME", str(out.home))
        mp.setenv("BACKUP_ASSETS_STANDBY_DSN", roles["standby"].dsn)  # only the tag is read here
        with dg.DagsterInstance.get() as instance:
            try:
                server.start()
                start_sensor(server)  # its second tick requests the run: meanwhile, the Component
                restore_component(out, instance, root / "component", manifest_file, mp, roles["component"], private_pem)
                plant_old_style_run(out, instance)
                out.runs["sensor"] = wait_sensor_run(server, timeout=180)
                out.runs["drill"] = launch_drill(server, instance, root / "inbox")  # after: it adds the partition
                done = server.wait_runs([out.runs["drill"], out.runs["sensor"]], timeout=240)
                assert {r["status"] for r in done.values()} == {"SUCCESS"}, [
                    e.dagster_event.step_failure_data.error.message
                    for r in done
                    for e in instance.all_logs(r)
                    if e.is_dagster_event and e.dagster_event.is_step_failure
                ]
                out.runs["cli"] = instance.get_run_records(dg.RunsFilter(tags={"backup_assets/backup": "cli.tar"}))[
                    0
                ].dagster_run.run_id
                ask_graphql(server, out)
            finally:
                server.stop()
    yield out


def test_each_path_ran_against_a_password_checked_target(paths: Paths, roles: dict[str, Role]) -> None:
    for role in roles.values():  # rows arrived, so each path connected with its password
        with psycopg.connect(role.dsn) as conn:
            assert conn.execute("SELECT count(*) FROM sentry_organization").fetchone()[0] >= 1, role.name
    assert set(paths.runs) == {"cli", "sensor", "drill", "component", "planted"}


def test_nothing_under_dagster_home_holds_a_secret_even_decompressed(paths: Paths) -> None:
    assert {"snapshots", "runs", "event_logs", "job_ticks"} <= sqlite_tables(paths.home)
    logs = [p for p in (paths.home / "storage").rglob("*") if p.suffix in (".err", ".out") and p.stat().st_size]
    assert logs, "the scan covers the run workers' compute logs"
    assert scan_tree(paths.home, paths.needles) == []
    assert scan_tree(paths.root, paths.needles, skip=frozenset({paths.key_file})) == []


def test_the_scan_finds_the_planted_config_default_in_the_compressed_snapshot(paths: Paths) -> None:
    found = scan_tree(paths.home, paths.planted)
    assert any("history/runs.db snapshots.snapshot_body" in f and f.endswith("[zlib]") for f in found), found


def test_the_webserver_shows_no_secret_and_would_show_a_planted_one(paths: Paths, roles: dict[str, Role]) -> None:
    for query, answer in paths.graphql.items():
        assert [n for n, v in paths.needles.items() if v in answer.encode()] == [], query
    assert paths.planted["planted password"] in paths.graphql["snapshot planted"].encode()
    assert f"{roles['target'].name}@127.0.0.1:" in paths.graphql["snapshot cli"]  # user@host:port/db at most
    assert "BACKUP_ASSETS_DSN" in paths.graphql["resources"]  # the location's target: a variable name


def test_the_cli_printed_no_secret(paths: Paths) -> None:
    assert [n for n, v in paths.needles.items() if v in paths.outputs["cli"].encode()] == []
