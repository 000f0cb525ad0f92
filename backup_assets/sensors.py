"""The backup sensor: every new backup in the source folder becomes a partition and a restore run.

Each tick lists the files of the ``backup_source`` resource (its folder and comma-separated glob) and
compares each file's ``(size, mtime)`` with what the cursor remembers:

* seen for the first time, or changed since the last tick: the file may still be being written, so
  it is only remembered, and looked at again on the next tick;
* unchanged since the last tick (stable): it is hashed (once: the digest is kept in the cursor) and
  becomes the partition ``<stem>-<sha256 prefix>`` (:func:`backup_assets.partitions.partition_key`);
  a partition that does not exist yet is added and a run of the restore job requested for it;
* already requested with this ``(size, mtime)``: nothing to do, and it is not hashed again.

A file rewritten under the same name changes size or mtime, settles again, and - when its bytes
differ - gets a new key, hence a new partition and a new run. At most ``max_runs_per_tick`` runs are
requested per tick (oldest files first); the rest stay stable in the cursor and are requested on the
following ticks, so a first tick over a full folder does not start dozens of restores at once.

The sensor ticks every ``minimum_interval_seconds``: explicit, else ``$BACKUP_ASSETS_SENSOR_INTERVAL``, else
30 s. A file is requested on the second tick that finds it unchanged, so a backup waits one interval at least.

The cursor is JSON: ``{"files": {name: [size, mtime_ns, sha256 | null, requested]}}``. It only names
files present at the last tick, so it stays as small as the folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import dagster as dg

from backup_assets.core.errors import BackupAssetsError, ConfigurationError
from backup_assets.core.postgres import DSN_ENV
from backup_assets.partitions import backups_partitions, file_sha256, partition_key, partitions_name
from backup_assets.resources.backup_source import BackupSourceResource
from backup_assets.resources.postgres import PostgresTargetResource
from backup_assets.run import BACKUP_TAG, TARGET_TAG, target_tag

DEFAULT_SENSOR_NAME = "backup_folder_sensor"
DEFAULT_MAX_RUNS_PER_TICK = 2
DEFAULT_INTERVAL_SECONDS = 30
INTERVAL_ENV = "BACKUP_ASSETS_SENSOR_INTERVAL"
#: The job the sensor requests by default (``backup_assets.definitions.JOB_NAME`` is this name).
RESTORE_JOB_NAME = "restore_backup_job"


@dataclass
class FileState:
    """What the cursor remembers of one file."""

    size: int
    mtime_ns: int
    sha256: str | None = None
    requested: bool = False

    def same_as(self, size: int, mtime_ns: int) -> bool:
        return self.size == size and self.mtime_ns == mtime_ns

    def to_json(self) -> list:
        return [self.size, self.mtime_ns, self.sha256, self.requested]


def parse_cursor(cursor: str | None) -> dict[str, FileState]:
    """The cursor's files; an empty or unreadable cursor (an older format) starts afresh."""
    if not cursor:
        return {}
    try:
        files = json.loads(cursor)["files"]
        return {name: FileState(int(v[0]), int(v[1]), v[2], bool(v[3])) for name, v in files.items()}
    except (ValueError, KeyError, TypeError, IndexError):
        return {}


def dump_cursor(files: Mapping[str, FileState]) -> str:
    return json.dumps({"files": {n: s.to_json() for n, s in sorted(files.items())}}, separators=(",", ":"))


@dataclass(frozen=True)
class Scan:
    """The outcome of one tick over the folder."""

    files: dict[str, FileState]  #: the next cursor
    to_request: list[tuple[str, str]]  #: (file name, partition key) to add and run, oldest first
    waiting: list[str]  #: files seen for the first time or still changing
    deferred: int  #: stable new backups left for later ticks by the cap


def scan_folder(
    source: BackupSourceResource, previous: Mapping[str, FileState], existing_key: Callable[[str], bool], max_runs: int
) -> Scan:
    """Compare the folder with the previous cursor (see the module doc). ``existing_key(key)`` says
    whether a partition exists already (then the file is marked requested without a new run)."""
    files: dict[str, FileState] = {}
    ready: list[tuple[int, str, str]] = []  # (mtime_ns, name, key)
    waiting: list[str] = []
    for path in source.candidate_paths():
        try:
            st = path.stat()
        except FileNotFoundError:  # removed between the listing and now
            continue
        before = previous.get(path.name)
        if before is None or not before.same_as(st.st_size, st.st_mtime_ns):
            files[path.name] = FileState(st.st_size, st.st_mtime_ns)
            waiting.append(path.name)
            continue
        state = files[path.name] = FileState(before.size, before.mtime_ns, before.sha256, before.requested)
        if state.requested:
            continue
        try:
            state.sha256 = state.sha256 or file_sha256(path)
        except OSError:  # removed or unreadable since it was listed: look again next tick
            files.pop(path.name, None)
            waiting.append(path.name)
            continue
        key = partition_key(path.name, state.sha256)
        if existing_key(key):
            state.requested = True  # a partition of these bytes exists (an earlier name, or added by hand)
            continue
        ready.append((st.st_mtime_ns, path.name, key))
    ready.sort()
    chosen = ready[:max_runs]
    for _, name, _ in chosen:
        files[name].requested = True
    return Scan(files, [(name, key) for _, name, key in chosen], waiting, len(ready) - len(chosen))


def _skip_reason(scan: Scan) -> str:
    """Why a tick that requests no run skips: files still changing, else nothing new."""
    if scan.waiting:
        return f"waiting for {len(scan.waiting)} file(s) to stop changing: {', '.join(scan.waiting[:5])}"
    return "no new backup"


def _request_runs(scan: Scan, tag: str, partitions_def: dg.DynamicPartitionsDefinition, cursor: str) -> dg.SensorResult:
    """Add a partition and request a run, tagged with its file and the target ``tag``, per file to request."""
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(partition_key=key, run_key=key, tags={BACKUP_TAG: name, TARGET_TAG: tag})
            for name, key in scan.to_request
        ],
        dynamic_partitions_requests=[partitions_def.build_add_request([k for _, k in scan.to_request])],
        cursor=cursor,
    )


def interval_from_env() -> int:
    """The sensor's interval in seconds from ``$BACKUP_ASSETS_SENSOR_INTERVAL`` (a whole number, at least 1),
    else the default; a value that is not one fails the code location's load, naming the variable."""
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL_SECONDS
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise ConfigurationError(f"${INTERVAL_ENV} must be a whole number of seconds, at least 1, not {raw!r}")
    return int(raw)


def build_backup_sensor(
    job: dg.UnresolvedAssetJobDefinition | dg.JobDefinition | str | None = None,
    *,
    name: str = DEFAULT_SENSOR_NAME,
    max_runs_per_tick: int = DEFAULT_MAX_RUNS_PER_TICK,
    minimum_interval_seconds: int | None = None,
    partitions_def: dg.DynamicPartitionsDefinition = backups_partitions,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
) -> dg.SensorDefinition:
    """A sensor over the ``backup_source`` resource's folder that adds one partition and requests one run
    of ``job`` (default: ``restore_backup_job``) per new, settled backup file (see the module doc).

    Runs are tagged with the file name and the target database (``host:port/dbname`` of the
    ``target`` resource, else of ``$BACKUP_ASSETS_DSN``), which ``dagster.yaml`` limits to one restore
    at a time. ``minimum_interval_seconds``: explicit, else ``$BACKUP_ASSETS_SENSOR_INTERVAL``, else 30.
    """
    if minimum_interval_seconds is None:
        minimum_interval_seconds = interval_from_env()
    if max_runs_per_tick < 1:
        raise ValueError(f"max_runs_per_tick must be at least 1, not {max_runs_per_tick}")
    job = RESTORE_JOB_NAME if job is None else job
    job_kwargs = {"job_name": job} if isinstance(job, str) else {"job": job}

    @dg.sensor(
        name=name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description=f"Adds a partition and requests a restore for each new backup file once it has "
        f"stopped changing; at most {max_runs_per_tick} runs per tick.",
        **job_kwargs,
    )
    def _sensor(
        context: dg.SensorEvaluationContext, backup_source: BackupSourceResource, target: PostgresTargetResource
    ) -> dg.SensorResult:
        previous = parse_cursor(context.cursor)
        try:
            scan = scan_folder(
                backup_source,
                previous,
                lambda k: context.instance.has_dynamic_partition(partitions_name(partitions_def), k),
                max_runs_per_tick,
            )
        except BackupAssetsError as e:
            return dg.SensorResult(skip_reason=f"backup folder unreadable: {e}", cursor=context.cursor)
        cursor = dump_cursor(scan.files)
        if scan.deferred:
            context.log.info(
                f"{scan.deferred} more new backup(s) left for the next ticks (max_runs_per_tick={max_runs_per_tick})"
            )
        if not scan.to_request:
            return dg.SensorResult(skip_reason=_skip_reason(scan), cursor=cursor)
        return _request_runs(scan, target_tag(target.dsn or os.environ.get(DSN_ENV)), partitions_def, cursor)

    return _sensor
