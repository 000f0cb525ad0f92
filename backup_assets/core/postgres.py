"""Where the target database is: a configured DSN, or an embedded PostgreSQL started on demand.

The embedded server runs the PostgreSQL binaries shipped in the ``pgserver`` wheel (a real
PostgreSQL 16, no system package needed; as root it runs the server as an unprivileged system user,
which ``initdb`` requires). It listens on loopback only, in a data directory of ours, and is left
running between commands so that Dagster's run workers, ``psql`` and later commands can reach the
restored data; ``backup-assets embedded stop`` stops it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigurationError

DSN_ENV = "BACKUP_ASSETS_DSN"
HOME_ENV = "BACKUP_ASSETS_HOME"
DEFAULT_PORT = 55432


def default_home() -> Path:
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".backup-assets")


def _bin_dir() -> Path:
    try:
        with warnings.catch_warnings():  # pgserver's import warns when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            from pgserver._commands import POSTGRES_BIN_PATH
    except ImportError:  # pragma: no cover - pgserver is a dependency
        raise ConfigurationError(
            "no DSN configured and the 'pgserver' package (embedded PostgreSQL) is not installed; "
            f"set {DSN_ENV} or pass --dsn"
        ) from None
    return Path(POSTGRES_BIN_PATH)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server in ``data_dir``, listening on 127.0.0.1:``port`` with trust authentication.

    ``start()`` is idempotent: a server already running in ``data_dir`` is reused (its port is read
    from ``postmaster.pid``). ``durable=False`` turns fsync off, for tests and benchmarks.
    """

    data_dir: Path
    port: int = 0
    durable: bool = True
    user: str = "postgres"
    fixed_port: bool = False  #: fail rather than move to a free port when ``port`` is taken

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).absolute()
        self._as_root = hasattr(os, "geteuid") and os.geteuid() == 0
        self._system_user = "pgserver" if self._as_root else None  #: runs the server when we are root

    # -- process control ----------------------------------------------------------------------------
    def _run(self, exe: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [str(_bin_dir() / exe), *args]
        # Files, not pipes: a server started by pg_ctl inherits them and would keep a pipe open forever.
        with tempfile.TemporaryFile("w+") as out:
            r = subprocess.run(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                timeout=timeout,
                user=self._system_user,
                cwd="/",
            )
            out.seek(0)
            text = out.read()
        if r.returncode:
            raise ConfigurationError(f"embedded PostgreSQL: {exe} failed ({r.returncode}): {text.strip()[-2000:]}")
        return r

    def _prepare_permissions(self) -> None:
        if self._system_user is None:  # not root: the server runs as we do
            return
        _bin_dir()  # imports pgserver quietly
        import pwd
        import stat

        from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

        ensure_user_exists(self._system_user)
        bins = _bin_dir()
        ensure_prefix_permissions(self.data_dir)
        ensure_prefix_permissions(bins)
        ensure_folder_permissions(bins, stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH)
        ensure_folder_permissions(bins.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
        pw = pwd.getpwnam(self._system_user)
        for root, _dirs, _files in os.walk(self.data_dir):
            os.chown(root, pw.pw_uid, pw.pw_gid)
        os.chown(self.data_dir, pw.pw_uid, pw.pw_gid)

    def running_port(self) -> int | None:
        """The port of the server running in ``data_dir``, or None."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return port

    def start(self) -> EmbeddedPostgres:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        port = self.running_port()
        if port:
            self.port = port
            return self
        self._prepare_permissions()
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(
                "initdb", "-D", str(self.data_dir), "--auth=trust", "--encoding=UTF8", "--locale=C", "-U", self.user
            )
        if not self.port or (not self.fixed_port and not _port_free(self.port)):
            self.port = _free_port()  # the preferred port is taken (another server): any free one
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data_dir} -c max_connections=200"
        if not self.durable:
            opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._pg_ctl("start", "-o", opts)
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise ConfigurationError(
                        f"embedded PostgreSQL did not accept connections on port {self.port}"
                    ) from None
                time.sleep(0.1)

    def stop(self, mode: str = "fast") -> None:
        if self.running_port():
            self._pg_ctl("stop", "-m", mode)

    def restart(self) -> None:
        """Restart the server (``pg_ctl restart``): every open connection is cut."""
        self._pg_ctl("restart", "-m", "fast")
        self._wait_ready()

    def _pg_ctl(self, action: str, *options: str) -> None:
        """``pg_ctl ACTION`` on this server's data folder (its log in ``server.log``), waiting up to 60 s."""
        log = str(self.data_dir / "server.log")
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", log, "-w", "-t", "60", *options, action)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)

    # -- connection strings -------------------------------------------------------------------------
    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"


def embedded_default() -> EmbeddedPostgres:
    """The embedded server used when no DSN is configured (``$BACKUP_ASSETS_HOME/postgres``)."""
    port = os.environ.get("BACKUP_ASSETS_PORT")
    return EmbeddedPostgres(default_home() / "postgres", port=int(port or DEFAULT_PORT), fixed_port=bool(port))


def resolve_dsn(dsn: str | None = None) -> str:
    """The DSN to restore into: ``dsn`` if given, else ``$BACKUP_ASSETS_DSN``, else the embedded server
    (started when it is not running), database ``sentry``, created when missing."""
    dsn = dsn or os.environ.get(DSN_ENV)
    if dsn:
        return dsn
    server = embedded_default().start()
    ensure_database(server.dsn("postgres"), "sentry")
    return server.dsn("sentry")


def redacted_dsn(dsn: str | None) -> str:
    """``user@host:port/dbname`` of a DSN (URI or key=value form): what may be shown or stored; never a
    password. ``embedded`` for no DSN, ``<unreadable DSN>`` when libpq cannot parse it."""
    if not dsn:
        return "embedded"
    from psycopg.conninfo import conninfo_to_dict

    try:
        d = conninfo_to_dict(dsn)
    except Exception:  # noqa: BLE001 - the connection attempt reports the DSN's problem
        return "<unreadable DSN>"
    user = f"{d['user']}@" if d.get("user") else ""
    return f"{user}{d.get('host') or 'localhost'}:{d.get('port') or 5432}/{d.get('dbname') or ''}"


def ensure_database(admin_dsn: str, name: str) -> None:
    """Create database ``name`` through ``admin_dsn`` unless it exists."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
