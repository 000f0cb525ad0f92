"""One import, step by step: the API the CLI and the Dagster layer drive.

    restore = Restore(dsn, manifest, import_id, settings)
    restore.stage(backup)            # parse the (decrypted) export into the staging area
    restore.prepare()                # create schema / global replace / key checks; records the import
    for model in restore.plan():     # relocatable, in-scope models in dependency order
        restore.load_model(model)    # one transaction per model: rows + pk map + load record
        restore.verify_model(model)  # counts reconcile, no dangling FK, sequence past max(id), drops
    restore.finish()                 # drop the staging area

Every method opens its own connection, so each may run in a different process or machine (a Dagster
step each); what they share lives in the target database (schema ``backup_assets``). Models that do not
depend on each other may load at the same time: :func:`run_restore` loads two at once (each load is one
server backend at work, so the second core does the second load).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from typing import BinaryIO

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from . import constraints, locks
from . import load as loader
from .errors import ConfigurationError, DecryptionError, StagingMissingError, TargetError, UnknownModelsError
from .fernet_stream import CHUNK_SIZE, FernetDecryptingReader
from .heap import heap_frozen
from .manifest import Manifest
from .parse import ProgressFn, stage_export
from .progress import emit
from .query import one_row
from .results import CheckOutcome, LoadResult, RestoreResult, StageResult
from .retry import QUICK_RETRIES
from .scheduler import ModelOutcome, load_models
from .schema import ensure_tables, find_table, tables_to_change
from .semantics import rules_for
from .settings import ImportSettings, check_import_id, new_import_id
from .source import Backup
from .staging import drop_staging, staging_exists, staging_ident
from .state import IMPORT, ensure_state, lock_import
from .verify import verify_model
from .wipe import replace_existing_data


class Restore:
    def __init__(
        self,
        dsn: str,
        manifest: Manifest,
        import_id: str,
        settings: ImportSettings | None = None,
        *,
        unlogged_staging: bool = True,
        run_id: str | None = None,
    ) -> None:
        self.dsn = dsn
        self.run_id = run_id  #: the Dagster run driving this import, if any (named to other imports)
        self.manifest = manifest
        self.import_id = check_import_id(import_id)
        self.settings = settings or ImportSettings()
        self.unlogged_staging = unlogged_staging
        self._local = threading.local()  # the session connection of each thread (see :meth:`session`)
        self._counts: dict[str, int] | None = None
        self._fields: dict[str, dict[str, str]] | None = None

    @contextmanager
    def session(self) -> Iterator[Restore]:
        """Share one connection between the calls this thread makes inside this block (one process doing
        every step); other threads open sessions of their own. Inside :meth:`hold`, its connection."""
        with self.connect() as conn, self._bound(conn):
            yield self

    @contextmanager
    def _bound(self, conn: psycopg.Connection | None) -> Iterator[None]:
        """``conn`` as this thread's session connection for the block, unless the thread has one."""
        if conn is None or getattr(self._local, "conn", None) is not None:
            yield
            return
        self._local.conn = conn
        try:
            yield
        finally:
            self._local.conn = None

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Hold the import lock for the block, on a connection of its own (see :func:`.locks.hold_imports`),
        which is also this thread's session connection (:meth:`session`) in the block: a global import runs
        alone, waiting for the imports running and making the later ones wait; while a global import's
        marker stands, any other import is refused (:class:`.locks.GlobalImportUnfinished`)."""
        with (
            locks.hold_imports(
                self.open_connection, self.import_id, self.run_id, exclusive=self.settings.scope == "global"
            ) as conn,
            self._bound(conn),
        ):
            yield

    # -- plumbing ------------------------------------------------------------------------------------
    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        """A connection to the target: this thread's session's (see :meth:`session`), else a new one for this call."""
        shared = getattr(self._local, "conn", None)
        if shared is not None and not shared.closed:
            yield shared
            return
        with self.open_connection() as conn:
            yield conn

    def bind_thread_connection(self) -> psycopg.Connection | None:
        """Give this thread a session connection of its own, unless it has one; returns the connection
        opened (the caller closes it when the thread's work is done), else None."""
        if getattr(self._local, "conn", None) is not None:
            return None
        self._local.conn = self.open_connection()
        return self._local.conn

    def unbind_thread_connection(self) -> psycopg.Connection | None:
        """Take this thread's session connection away (the caller closes it); None when it had none."""
        conn, self._local.conn = getattr(self._local, "conn", None), None
        return conn

    def open_connection(self) -> psycopg.Connection:
        """A new autocommit connection to the target, the project's state schema ensured."""
        try:
            conn = psycopg.connect(self.dsn, autocommit=True, application_name="backup-assets")
        except psycopg.OperationalError as e:
            raise ConfigurationError(f"cannot connect to the target database: {str(e).strip()}") from None
        try:
            # the loads' candidate tables stay in memory (the default, 8 MB, spills them); settable only before
            # the session's first temporary table
            conn.execute("SET temp_buffers = '128MB'")
            ensure_state(conn)
            locks.register_session(conn, self.import_id)
        except BaseException:
            conn.close()
            raise
        return conn

    def plan(self) -> list[str]:
        """The models this import loads: relocatable, in the import's scope, in dependency order."""
        return [m for m in self.manifest.relocatable() if self.manifest[m].in_scope(self.settings.scope)]

    def is_staged(self) -> bool:
        """Whether the import's staged rows are there to load from."""
        with self.connect() as conn:
            return self._staging_usable(conn)

    def _staging_usable(self, conn: psycopg.Connection) -> bool:
        """The staging table exists and, when the parse recorded rows, still holds some: a server crash
        resets an UNLOGGED table to empty rather than dropping it, and an empty staging must not pass
        for a backup without rows."""
        if not staging_exists(conn, self.import_id):
            return False
        if any(self._stage_info(conn)[0].values()):
            return one_row(
                conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(staging_ident(self.import_id)))
            )[0]
        return True

    # -- steps --------------------------------------------------------------------------------------
    def stage(self, backup, progress: ProgressFn | None = None, *, if_missing: bool = False) -> StageResult:
        """Parse ``backup`` (a :class:`backup_assets.core.source.Backup`) into the staging area, in one
        transaction: on any error nothing is staged. With ``if_missing``, an import whose staging is
        already usable is left as it is (several steps finding it gone stage it once).

        An encrypted export is decrypted and authenticated in one pass while it is parsed: the stream is read
        to EOF, where the MAC is verified, before the transaction commits, and when the parse fails the rest
        of the token is still authenticated, so that a tampered token is reported as the
        :class:`DecryptionError` it is, not as the parse error its garbled plaintext caused."""
        with self.connect() as conn, conn.transaction():
            lock_import(conn, self.import_id)
            self._counts = None
            if if_missing and self._staging_usable(conn):
                staged = self._read_stage(conn)
                if staged is not None:
                    return staged
            total = _plaintext_estimate(backup)

            def report(done: int, rows: int) -> None:
                emit("parse", "export", done, total)
                if progress is not None:
                    progress(done, rows)

            with heap_frozen():
                result = self._parse_authenticated(conn, backup, report)
            if self.settings.strict and result.unknown_models:  # rolls the staging back: nothing written
                raise UnknownModelsError(result.unknown_models)
            emit("parse", "export", result.bytes, result.bytes, finished=True)
            self._record_stage(conn, result)
            self._check_settings(conn)
        return result

    def _parse_authenticated(self, conn: psycopg.Connection, backup, report: ProgressFn) -> StageResult:
        """Parse the export into the staging table, then read each plaintext stream opened to its end, so
        that an encrypted export's MAC is verified before anything commits; a bad MAC found after a parse
        error is reported instead of that error."""
        with ExitStack() as opened:
            streams: list[BinaryIO] = []

            def reopen() -> BinaryIO:  # the export from the start, should the parse need a second pass
                streams.append(opened.enter_context(backup.open_plaintext(authenticate_first=False)))
                return streams[-1]

            try:
                result = stage_export(
                    conn,
                    self.import_id,
                    reopen(),
                    self.manifest,
                    unlogged=self.unlogged_staging,
                    progress=report,
                    reopen=reopen,
                )
            except DecryptionError:
                raise
            except Exception:
                try:
                    _read_to_eof(streams)  # a bad MAC explains the error: report it instead
                except DecryptionError as bad:
                    raise bad from None
                raise
            _read_to_eof(streams)  # the MAC verified before anything commits
        return result

    def _record_stage(self, conn: psycopg.Connection, result: StageResult) -> None:
        """Report the plan and record the import's settings, models and staging result in its state row."""
        plan = self.plan()
        emit("plan", "all models", 0, sum(result.rows_per_model.get(m, 0) for m in plan))
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (import_id, settings, models, stage) VALUES (%s, %s, %s, %s) ON CONFLICT (import_id) "
                "DO UPDATE SET stage = EXCLUDED.stage"
            ).format(IMPORT),
            (
                self.import_id,
                Jsonb(self.settings.to_json()),
                Jsonb({m: self.manifest[m].table_name for m in plan}),
                Jsonb(result.to_json()),
            ),
        )

    def _check_settings(self, conn: psycopg.Connection) -> None:
        row = conn.execute(
            sql.SQL("SELECT settings FROM {} WHERE import_id = %s").format(IMPORT), (self.import_id,)
        ).fetchone()
        if row and row[0] != json.loads(json.dumps(self.settings.to_json())):
            raise ConfigurationError(
                f"import {self.import_id} was started with other settings ({row[0]}); "
                "use a new import id for different settings"
            )

    def staged_result(self) -> StageResult | None:
        """What the staging of this import recorded (None before it is staged)."""
        with self.connect() as conn:
            return self._read_stage(conn)

    def _read_stage(self, conn: psycopg.Connection) -> StageResult | None:
        row = conn.execute(
            sql.SQL("SELECT stage FROM {} WHERE import_id = %s").format(IMPORT), (self.import_id,)
        ).fetchone()
        return StageResult(**row[0]) if row and row[0] else None

    def prepare(self) -> None:
        """Before the first model loads: in a global import, empty the relocatable tables that hold data
        (only when ``settings.replace_existing`` confirms it; refused otherwise), create missing tables
        (create mode) and check that kept primary keys are free. Idempotent; destructive steps run once
        per import."""
        with self.connect() as conn, conn.transaction():
            lock_import(conn, self.import_id)
            self._check_settings(conn)
            row = conn.execute(
                sql.SQL("SELECT prepared_at FROM {} WHERE import_id = %s").format(IMPORT), (self.import_id,)
            ).fetchone()
            if row is None or not staging_exists(conn, self.import_id):
                raise StagingMissingError(f"import {self.import_id} is not staged; stage the backup first")
            if row[0] is not None:
                return
            staging = staging_ident(self.import_id)
            plan = self.plan()
            self._counts = None
            counts, fields = self._stage_info(conn)
            # DDL and a wipe wait for every other import's running load, and the loads starting meanwhile wait
            locks.lock_database(
                conn,
                exclusive=self.settings.scope == "global"
                or (self.settings.create_schema and tables_to_change(conn, self.manifest, plan, fields)),
            )
            if self.settings.scope == "global":
                replace_existing_data(conn, self.manifest, confirmed=self.settings.replace_existing)
                locks.mark_global(conn, self.import_id, self.run_id)  # cleared by finish()
            if self.settings.create_schema:
                self._create_tables(conn, plan, staging, counts, fields)
            self._check_kept_keys(conn, plan, staging)
            conn.execute(
                sql.SQL("UPDATE {} SET prepared_at = now() WHERE import_id = %s").format(IMPORT), (self.import_id,)
            )

    def _create_tables(
        self,
        conn: psycopg.Connection,
        plan: list[str],
        staging: sql.Composable,
        counts: dict[str, int],
        fields: dict[str, dict[str, str]] | None,
    ) -> None:
        """Create mode: the missing tables and columns, the constraints of the big tables left for their loads."""
        big = {m for m in plan if counts.get(m, 0) >= DEFER_CONSTRAINTS_AT}
        try:
            with conn.transaction():
                for table, wanted in ensure_tables(conn, self.manifest, plan, staging, fields, defer=big).values():
                    constraints.defer(conn, table.schema, table.name, wanted)  # built by the model's load
        except (
            psycopg.errors.DuplicateTable,
            psycopg.errors.DuplicateColumn,
            psycopg.errors.DuplicateObject,
            psycopg.errors.UniqueViolation,
        ) as e:  # a session that takes no lock of ours made them meanwhile
            raise TargetError(
                f"create mode: another session created the same table or column at the same time "
                f"({_first_line(e)}); nothing was created: run the import again"
            ) from None

    def _check_kept_keys(self, conn: psycopg.Connection, plan: list[str], staging: sql.Composable) -> None:
        """Where keys are kept (--preserve-pks, project ids in a global import), none may be taken already."""
        for model in plan:
            spec = self.manifest[model]
            if not rules_for(spec, self.settings).keep_pks:
                continue
            table = find_table(conn, spec.table_name)
            if table is None:
                continue
            taken = [
                r[0]
                for r in conn.execute(
                    sql.SQL(
                        "SELECT t.id FROM {t} t JOIN {s} s ON s.model = %s AND s.pk = t.id ORDER BY t.id LIMIT 5"
                    ).format(t=table.ident, s=staging),
                    (model,),
                )
            ]
            if taken:
                raise TargetError(
                    f"{model}: primary keys {', '.join(map(str, taken))} are already taken in "
                    f"{spec.table_name}; keys are kept in this import, so it cannot proceed "
                    "(restore into an empty database, or without --preserve-pks)"
                )

    def load_model(self, model: str) -> LoadResult:
        spec = self.manifest[model]
        ctx = loader.LoadContext(self.import_id, staging_ident(self.import_id), self.plan())
        with self.connect() as conn:
            done = loader.recorded_result(conn, self.import_id, model)
            if done is not None:
                done.already_loaded = True
                return done
            if not self._staging_usable(conn):
                raise StagingMissingError(
                    f"{model}: the staged rows of import {self.import_id} are gone (the "
                    "restore finished or failed, or a server crash emptied them); stage "
                    "the backup again"
                )
            counts, fields = self._stage_info(conn)
            staged = counts.get(model, 0)
            if fields is not None:
                ctx.fields = list(fields.get(model, {}))
                ctx.staged_rows = staged
            emit("load", model, 0, staged)
            result = loader.load_model(conn, ctx, spec, rules_for(spec, self.settings, self.manifest))
            emit("load", model, result.rows_read, staged, finished=True)
            return result

    def _stage_info(self, conn: psycopg.Connection) -> tuple[dict[str, int], dict[str, dict[str, str]] | None]:
        """Rows staged per model, and per model the fields (and their value types) the parse saw."""
        if self._counts is None:
            row = conn.execute(
                sql.SQL("SELECT stage -> 'rows_per_model', stage -> 'fields' FROM {} WHERE import_id = %s").format(
                    IMPORT
                ),
                (self.import_id,),
            ).fetchone()
            self._counts = (row[0] if row else None) or {}
            self._fields = row[1] if row else None
        return self._counts, self._fields

    def staged_counts(self) -> dict[str, int]:
        """Rows staged per model (empty before the import is staged)."""
        with self.connect() as conn:
            return dict(self._stage_info(conn)[0])

    def load_result(self, model: str) -> LoadResult | None:
        with self.connect() as conn:
            return loader.recorded_result(conn, self.import_id, model)

    def verify_model(self, model: str) -> list[CheckOutcome]:
        with self.connect() as conn:
            result = loader.recorded_result(conn, self.import_id, model)
            if result is None:
                return [CheckOutcome("counts_reconcile", False, f"{model} was not loaded for import {self.import_id}")]
            return verify_model(conn, self.import_id, self.manifest[model], self.manifest, result)

    def finish(self, *, keep_staging: bool = False) -> None:
        """Mark the import finished (a global import's marker cleared: other imports may run) and drop the
        staging area (every staged byte) unless ``keep_staging``."""
        with self.connect() as conn, conn.transaction():
            if not keep_staging:
                drop_staging(conn, self.import_id)
            conn.execute(
                sql.SQL("UPDATE {} SET finished_at = now() WHERE import_id = %s").format(IMPORT), (self.import_id,)
            )
            locks.end_global(conn, self.import_id)

    def discard_staging(self) -> None:
        """Drop the staging area after a failure, leaving the import resumable from the backup."""
        with self.connect() as conn:
            drop_staging(conn, self.import_id)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _read_to_eof(streams: list[BinaryIO]) -> None:
    """Read the last stream opened (the one the parse read last) to its end, discarding what is left: for an
    encrypted export, the token's MAC is verified there (:class:`DecryptionError` otherwise). Cheap after a
    parse that read it all; a plain JSON file is left alone (it has no MAC)."""
    if streams and isinstance(streams[-1], FernetDecryptingReader):
        while streams[-1].read(CHUNK_SIZE):
            pass


def _plaintext_estimate(backup: Backup) -> int | None:
    """About how many bytes of JSON the backup holds (a Fernet token is base64: 4 bytes per 3)."""
    members = getattr(backup, "members", None)
    if getattr(backup, "kind", None) == "tarball" and members:
        return members.get("export.json", 0) * 3 // 4
    return getattr(backup, "size", None)


LoadHook = Callable[[str, LoadResult], None]


#: Staged rows from which a table create mode makes gets its constraints after its rows, not with the table
#: (below, building them later costs more statements than it saves).
DEFER_CONSTRAINTS_AT = 1000


def run_restore(
    dsn: str,
    backup: Backup,
    manifest: Manifest,
    settings: ImportSettings | None = None,
    import_id: str | None = None,
    progress: ProgressFn | None = None,
    on_load: LoadHook | None = None,
    workers: int | None = None,
) -> RestoreResult:
    """Stage, prepare, load and verify every model of the plan; the staging area is dropped at the end,
    whether the restore succeeded or failed. The models load through :func:`~backup_assets.core.scheduler.
    load_models`: up to ``workers`` at once (default :func:`~backup_assets.core.scheduler.default_workers`),
    a model only after the models it depends on, transient errors retried (:data:`QUICK_RETRIES`). When
    a model fails, the models that do not depend on it still load; then the first error is raised."""
    restore = Restore(dsn, manifest, import_id or new_import_id(), settings)
    try:
        with restore.hold(), restore.session():  # one connection, unless the import lock is held already
            return _run(restore, backup, progress, on_load, workers)
    except BaseException:
        with suppress(Exception):  # the load's error is the news, not a failed cleanup after it
            restore.discard_staging()
        raise


def _run(
    restore: Restore, backup: Backup, progress: ProgressFn | None, on_load: LoadHook | None, workers: int | None
) -> RestoreResult:
    stage = restore.stage(backup, progress=progress)
    restore.prepare()
    out = RestoreResult(import_id=restore.import_id, stage=stage)
    plan = restore.plan()
    done: dict[str, ModelOutcome] = {}
    failure: BaseException | None = None
    for outcome in load_models(restore, plan, workers=workers, retry=QUICK_RETRIES):
        done[outcome.model] = outcome
        if outcome.error is not None:
            failure = failure or outcome.error
        elif outcome.loaded and on_load and outcome.result is not None:
            on_load(outcome.model, outcome.result)
    if failure is not None:
        raise failure
    for model in plan:
        out.loads[model], out.checks[model] = done[model].result, done[model].checks  # type: ignore[assignment]
    restore.finish()
    return out
