"""What a Celery deployment runs, started on this machine: Debian's ``redis-server`` on a loopback port (broker
and result backend), ``dagster-celery worker`` processes with their own queues, a persistent Dagster
instance, and launcher processes running ``celery_restore_job`` (:mod:`backup_assets.celery_definitions`).

Shared by ``tests/test_celery_e2e.py`` and ``benchmarks/celery_workers.py``. Every process gets its whole
environment from :class:`Cluster` (the target DSNs as variables the runs name, the private key's PEM in
a variable): nothing reaches a step through the launcher's memory.
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
from collections.abc import Iterable, Mapping
from pathlib import Path

import dagster as dg
import psutil

from backup_assets.celery import BACKEND_ENV, BROKER_ENV, target_queue
from backup_assets.run import TARGET_TAG, target_tag

REPO = Path(__file__).resolve().parent.parent
CELERY_YAML = REPO / "celery.yaml"
_LAUNCH = """
import json, sys
import dagster as dg
from backup_assets.celery_definitions import restore_job
args = json.loads(sys.argv[1])
with dg.DagsterInstance.get() as instance:
    options = dg.ReexecutionOptions.from_failure(args["parent"], instance) if args.get("parent") else None
    result = dg.execute_job(dg.reconstructable(restore_job), instance, tags=args["tags"],
                            run_config=args["run_config"], reexecution_options=options)
    print(json.dumps({"run_id": result.run_id, "success": result.success}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_config(dsn_env: str, worker_lost_seconds: float = 30.0, scope: str = "global") -> dict:
    """A run's config: its target named by a variable (read on the worker), tables created in an empty
    target, the import scope, how long a worker may stay silent."""
    return {
        "resources": {
            "target": {"config": {"dsn": {"env": dsn_env}}},
            "import_settings": {"config": {"create_schema": True, "scope": scope}},
        },
        "execution": {"config": {"worker_lost_seconds": worker_lost_seconds}},
    }


class Cluster:
    """redis + workers + a Dagster home under ``root``; ``env`` is every process's environment."""

    def __init__(self, root: Path, env: Mapping[str, str]) -> None:
        self.root = root
        self.home = root / "dagster_home"
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        self.port = free_port()
        url = f"redis://127.0.0.1:{self.port}"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("BACKUP_ASSETS_", "DAGSTER_"))}
        self.env = {
            **base,
            **env,
            "DAGSTER_HOME": str(self.home),
            BROKER_ENV: f"{url}/0",
            BACKEND_ENV: f"{url}/1",
            "PYTHONPATH": str(REPO),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}",
        }
        self.redis: subprocess.Popen | None = None
        self.workers: dict[str, subprocess.Popen] = {}
        self._app = None

    # -- processes ---------------------------------------------------------------------------------
    def start_redis(self) -> None:
        self.redis = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.root),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.wait(lambda: self._redis_up(), 20, "redis-server")

    def _redis_up(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start_worker(self, name: str, queues: Iterable[str]) -> None:
        """``dagster-celery worker start`` listening on ``queues``, one step at a time."""
        cmd = [
            str(Path(sys.executable).with_name("dagster-celery")),
            "worker",
            "start",
            "-A",
            "dagster_celery.app",
            "-y",
            str(CELERY_YAML),
            "-n",
            name,
            "-l",
            "WARNING",
            "-q",
            ",".join(queues),
        ]  # one list: Celery 5 keeps only the last of several -Q
        log = open(self.root / f"worker-{name}.log", "wb")  # noqa: SIM115 - the worker writes it until stopped
        self.workers[name] = subprocess.Popen(
            cmd + ["--", "--concurrency=1"], cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        proc = self.workers[name]
        self.wait(
            lambda: proc.poll() is None and self.app().control.ping(destination=[self.hostname(name)], timeout=0.5),
            90,
            f"worker {name}",
        )
        assert proc.poll() is None, f"worker {name} exited: see {log.name}"

    def hostname(self, name: str) -> str:
        return f"{name}@{socket.gethostname()}"

    def worker_pids(self, name: str) -> set[int]:
        """The worker's processes: the CLI, Celery's main process and its pool child."""
        proc = psutil.Process(self.workers[name].pid)
        return {proc.pid, *(c.pid for c in proc.children(recursive=True))}

    def kill_worker(self, name: str) -> None:
        """SIGKILL every process of the worker, as when its machine dies."""
        for pid in sorted(self.worker_pids(name), reverse=True):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.workers.pop(name).wait(30)

    def add_queue(self, name: str, queue: str) -> None:
        """Make a running worker consume ``queue`` too, with the command the README gives."""
        out = subprocess.run(
            [
                str(Path(sys.executable).with_name("celery")),
                "-A",
                "dagster_celery.app",
                "-b",
                self.env[BROKER_ENV],
                "control",
                "-d",
                self.hostname(name),
                "add_consumer",
                queue,
            ],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0 and f"add consumer {queue}" in out.stdout, out.stdout + out.stderr

    def app(self):
        if self._app is None:
            from celery import Celery

            self._app = Celery(broker=self.env[BROKER_ENV], backend=self.env[BACKEND_ENV])
        return self._app

    def stop(self) -> None:
        for name in list(self.workers):
            proc = self.workers.pop(name)
            proc.send_signal(signal.SIGTERM)  # dagster-celery's CLI: Celery's warm shutdown follows
            for pid in self._tree(proc.pid):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self._app is not None:
            self._app.close()
        if self.redis is not None:
            self.redis.terminate()
            self.redis.wait(10)

    @staticmethod
    def _tree(pid: int) -> list[int]:
        try:
            return [c.pid for c in psutil.Process(pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    # -- runs --------------------------------------------------------------------------------------
    def launch(
        self,
        partition: str,
        dsn: str | None,
        dsn_env: str,
        parent: str | None = None,
        worker_lost_seconds: float = 30.0,
        scope: str = "global",
    ) -> subprocess.Popen:
        """A launcher process running one restore (or a re-execution from failure of ``parent``) into the
        database named by ``dsn_env``, tagged with the target of ``dsn`` (no tag when None)."""
        tags = {"dagster/partition": partition, **({TARGET_TAG: target_tag(dsn)} if dsn else {})}
        args = {"tags": tags, "run_config": run_config(dsn_env, worker_lost_seconds, scope), "parent": parent}
        return subprocess.Popen(
            [sys.executable, "-c", _LAUNCH, json.dumps(args)],
            cwd=REPO,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=open(self.root / "launch.log", "ab"),
        )

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_config(str(self.home))

    @staticmethod
    def queue_of(dsn: str) -> str:
        return target_queue(target_tag(dsn))

    @staticmethod
    def wait(predicate, timeout: float, what: str, every: float = 0.2):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = predicate()
            except Exception:  # noqa: BLE001 - not up yet
                value = None
            if value:
                return value
            time.sleep(every)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")
