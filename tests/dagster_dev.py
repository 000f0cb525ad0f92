"""A real ``dagster dev`` for end-to-end tests: loopback only, a temp DAGSTER_HOME, stopped cleanly.

``backup-assets ui`` too, run in a folder of the test's as the README runs it.

Used by ``test_backfill_e2e.py`` and ``test_ui_browser.py``. The server loads this repository's
``workspace.yaml`` (code location ``backup_assets``); the instance is the repository's ``dagster.yaml``
copied into the temp home, so the tests exercise the shipped run-queue settings.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
LOCATION = "backup_assets"
REPOSITORY = "__repository__"
JOB = "restore_backup_job"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DagsterDev:
    """``dagster dev -w workspace.yaml`` on 127.0.0.1, with ``env`` added to the environment; or, with
    ``cwd``, ``backup-assets ui`` run there as a user would (its own home: ``cwd/.dagster_home``)."""

    def __init__(self, home: Path | None, env: dict[str, str], cwd: Path | None = None):
        self.cwd = cwd
        self.home = home or (cwd / ".dagster_home")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.log_path = (cwd or self.home) / "dagster-dev.log"
        self.proc: subprocess.Popen | None = None

    def _command(self) -> tuple[list[str], dict[str, str]]:
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        if self.cwd is not None:  # the README's `backup-assets ui`, which picks its home itself
            env.pop("DAGSTER_HOME", None)
            return [str(Path(sys.executable).with_name("backup-assets")), "ui", "-p", str(self.port)], env
        self.home.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "dagster.yaml", self.home / "dagster.yaml")
        dagster = Path(sys.executable).with_name("dagster")
        env["DAGSTER_HOME"] = str(self.home)
        return [str(dagster), "dev", "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(self.port)], env

    def start(self, timeout: float = 90) -> DagsterDev:
        argv, env = self._command()
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - the server writes it until stop() closes it
        self.proc = subprocess.Popen(
            argv, cwd=self.cwd or REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self._wait_loaded(timeout)
        return self

    def _wait_loaded(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dagster dev exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                data = self.graphql(
                    "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
                    "locationOrLoadError { __typename ... on PythonError { message } } } } } }"
                )
                entries = {e["name"]: e for e in data["workspaceOrError"]["locationEntries"]}
                entry = entries.get(LOCATION)
                if entry and entry["loadStatus"] == "LOADED":
                    if entry["locationOrLoadError"]["__typename"] == "PythonError":
                        raise RuntimeError(f"code location failed to load: {entry['locationOrLoadError']['message']}")
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError, KeyError, TypeError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"dagster dev not loaded after {timeout}s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        req = urllib.request.Request(f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            payload = json.loads(resp.read())
        if payload.get("errors"):
            raise RuntimeError(f"GraphQL errors: {payload['errors']}")
        return payload["data"]

    # -- the calls the tests make ----------------------------------------------------------------------
    def add_partition(self, key: str) -> None:
        data = self.graphql(
            """mutation($r: RepositorySelector!, $k: String!) {
            addDynamicPartition(repositorySelector: $r, partitionsDefName: "sentry_backups", partitionKey: $k) {
              __typename ... on PythonError { message } ... on DuplicateDynamicPartitionError { partitionName } } }""",
            {"r": {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY}, "k": key},
        )
        assert data["addDynamicPartition"]["__typename"] == "AddDynamicPartitionSuccess", data

    def launch_run(self, partition: str, assets: list[list[str]], run_config: dict, tags: dict[str, str]) -> str:
        data = self.graphql(
            """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
              __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
              ... on RunConfigValidationInvalid { errors { message } } ... on InvalidSubsetError { message } } }""",
            {
                "p": {
                    "selector": {
                        "repositoryLocationName": LOCATION,
                        "repositoryName": REPOSITORY,
                        "jobName": JOB,
                        "assetSelection": [{"path": a} for a in assets],
                    },
                    "runConfigData": run_config,
                    "executionMetadata": {
                        "tags": [{"key": k, "value": v} for k, v in {**tags, "dagster/partition": partition}.items()]
                    },
                }
            },
        )
        result = data["launchRun"]
        assert result["__typename"] == "LaunchRunSuccess", result
        return result["run"]["runId"]

    def runs(self) -> list[dict[str, Any]]:
        """Every run of the instance: id, status and tags."""
        data = self.graphql("""{ runsOrError { __typename ... on Runs { results { runId status
              tags { key value } } } } }""")
        return data["runsOrError"]["results"]

    def run_status(self, run_id: str) -> dict[str, Any]:
        data = self.graphql(
            """query($id: ID!) { runOrError(runId: $id) { __typename
              ... on Run { status startTime endTime } } }""",
            {"id": run_id},
        )
        return data["runOrError"]

    def wait_runs(self, run_ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            runs = {r: self.run_status(r) for r in run_ids}
            if all(r["status"] in ("SUCCESS", "FAILURE", "CANCELED") for r in runs.values()):
                return runs
            if time.monotonic() > deadline:
                raise TimeoutError(f"runs not finished after {timeout}s: {runs}\n{self.tail()}")
            time.sleep(1)

    def stop(self) -> None:
        """SIGTERM to the process group (webserver, daemon, code servers, run workers), then SIGKILL."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # stragglers of the group, if any
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.wait(timeout=10)
        self.log.close()
        self.proc = None
