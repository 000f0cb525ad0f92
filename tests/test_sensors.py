"""The backup folder sensor, tick by tick, against a real Dagster instance and a real folder."""

from __future__ import annotations

import os
import re
from pathlib import Path

import dagster as dg
import pytest

from backup_assets import sensors
from backup_assets.core.errors import ConfigurationError
from backup_assets.partitions import backups_partitions, partition_key_for_file, split_partition_key
from backup_assets.resources.backup_source import BackupSourceResource
from backup_assets.resources.postgres import PostgresTargetResource
from backup_assets.run import BACKUP_TAG, TARGET_TAG
from backup_assets.sensors import build_backup_sensor, parse_cursor
from tests.instances import instance_for_test

DSN = "host=db.example port=5433 dbname=sentry user=restore password=not-in-tags"


class Ticker:
    """Evaluates a sensor tick after tick as the daemon would: cursor carried over, partition requests applied."""

    def __init__(
        self, instance: dg.DagsterInstance, folder: Path, max_runs_per_tick: int = 2, glob: str = "*.tar,*.json"
    ):
        self.instance = instance
        self.sensor = build_backup_sensor("restore_backup_job", max_runs_per_tick=max_runs_per_tick)
        self.resources = {
            "backup_source": BackupSourceResource(folder=str(folder), glob=glob),
            "target": PostgresTargetResource(dsn=DSN),
        }
        self.cursor: str | None = None
        self.run_keys: list[str] = []

    def tick(self) -> dg.SensorResult:
        ctx = dg.build_sensor_context(instance=self.instance, cursor=self.cursor, resources=self.resources)
        result = self.sensor(ctx)
        assert isinstance(result, dg.SensorResult)
        self.cursor = result.cursor
        for req in result.dynamic_partitions_requests or []:
            assert req.partitions_def_name == backups_partitions.name
            self.instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
        requests = result.run_requests or []
        for r in requests:  # what the daemon does with run keys: each is launched once
            assert r.run_key not in self.run_keys
            self.run_keys.append(r.run_key)
        return result

    def keys(self) -> list[str]:
        """One tick; the partition keys it requested."""
        return [r.partition_key for r in (self.tick().run_requests or [])]


@pytest.fixture
def instance():
    with instance_for_test() as inst:
        yield inst


@pytest.fixture
def hashed(monkeypatch) -> list[str]:
    """Names of the files the sensor hashed (the real hash runs; the calls are only counted)."""
    calls: list[str] = []
    real = sensors.file_sha256

    def counting(path, *a, **kw):
        calls.append(Path(path).name)
        return real(path, *a, **kw)

    monkeypatch.setattr(sensors, "file_sha256", counting)
    return calls


def write(path: Path, data: bytes, mtime: int = 1_700_000_000) -> Path:
    path.write_bytes(data)
    os.utime(path, ns=(mtime * 10**9, mtime * 10**9))
    return path


def test_a_new_backup_is_requested_once_after_it_has_settled(tmp_path, instance, hashed):
    backup = write(tmp_path / "nightly 2024-06-01.json", b'[{"model": "sentry.user"}]')
    write(tmp_path / "notes.txt", b"not a backup")
    t = Ticker(instance, tmp_path)

    first = t.tick()
    assert first.run_requests in (None, []) and "nightly 2024-06-01.json" in first.skip_reason.skip_message
    assert hashed == []  # a file seen once may still be being written: not hashed yet

    second = t.tick()
    key = partition_key_for_file(backup)
    [request] = second.run_requests
    assert request.partition_key == request.run_key == key
    assert split_partition_key(key)[0] == "nightly-2024-06-01"
    assert request.tags == {BACKUP_TAG: backup.name, TARGET_TAG: "db.example:5433/sentry"}
    assert instance.get_dynamic_partitions(backups_partitions.name) == [key]

    third = t.tick()
    assert not third.run_requests and third.skip_reason.skip_message == "no new backup"
    assert hashed == [backup.name]  # hashed once, when it first stood still
    assert parse_cursor(t.cursor)[backup.name].requested


def test_a_growing_file_waits_until_size_and_mtime_stop_changing(tmp_path, instance):
    path = write(tmp_path / "big.tar", b"x" * 100)
    t = Ticker(instance, tmp_path)
    assert t.keys() == []
    with open(path, "ab") as f:  # still being written: size changed
        f.write(b"y" * 100)
    assert t.keys() == []
    os.utime(path, ns=(1_700_000_100 * 10**9,) * 2)  # same size, new mtime: still changing
    assert t.keys() == []
    assert t.keys() == [partition_key_for_file(path)]
    assert t.keys() == []


def test_a_rewritten_file_under_the_same_name_becomes_a_new_partition(tmp_path, instance):
    path = write(tmp_path / "sentry.json", b"[1]")
    t = Ticker(instance, tmp_path)
    t.tick()
    [old] = t.keys()
    write(path, b"[2, 3]", mtime=1_700_000_500)
    assert t.keys() == []  # changed since the last tick: settles first
    [new] = t.keys()
    assert new != old and split_partition_key(new)[0] == split_partition_key(old)[0] == "sentry"
    assert sorted(instance.get_dynamic_partitions(backups_partitions.name)) == sorted([old, new])


def test_a_touched_file_with_the_same_bytes_is_not_restored_again(tmp_path, instance):
    path = write(tmp_path / "a.json", b"[]")
    t = Ticker(instance, tmp_path)
    t.tick()
    assert len(t.keys()) == 1
    os.utime(path, ns=(1_700_009_999 * 10**9,) * 2)
    assert t.keys() == [] and t.keys() == []
    assert len(instance.get_dynamic_partitions(backups_partitions.name)) == 1


def test_runs_per_tick_are_capped_and_every_backup_is_requested_exactly_once(tmp_path, instance, hashed):
    paths = [write(tmp_path / f"b{i:02d}.tar", f"backup {i}".encode(), mtime=1_700_000_000 + i) for i in range(7)]
    t = Ticker(instance, tmp_path, max_runs_per_tick=2)
    per_tick = [t.keys() for _ in range(6)]
    assert [len(k) for k in per_tick] == [0, 2, 2, 2, 1, 0]
    assert [k for keys in per_tick for k in keys] == [partition_key_for_file(p) for p in paths]  # oldest first
    assert sorted(hashed) == sorted(p.name for p in paths)  # each hashed once, although some waited 3 ticks
    assert len(t.run_keys) == len(set(t.run_keys)) == 7


def test_the_default_sensor_is_in_the_code_location_and_stopped():
    from backup_assets.definitions import defs

    sensor = defs.resolve_sensor_def(sensors.DEFAULT_SENSOR_NAME)
    assert sensor.job_name == "restore_backup_job"
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    with pytest.raises(ValueError, match="max_runs_per_tick"):
        build_backup_sensor(max_runs_per_tick=0)


def test_the_interval_comes_from_the_environment_and_a_bad_one_names_the_variable(monkeypatch):
    from backup_assets.definitions import build_definitions

    monkeypatch.delenv(sensors.INTERVAL_ENV, raising=False)
    assert build_backup_sensor().minimum_interval_seconds == sensors.DEFAULT_INTERVAL_SECONDS
    monkeypatch.setenv(sensors.INTERVAL_ENV, " 5 ")
    assert build_definitions().resolve_sensor_def(sensors.DEFAULT_SENSOR_NAME).minimum_interval_seconds == 5
    assert build_backup_sensor(minimum_interval_seconds=120).minimum_interval_seconds == 120  # explicit wins
    for bad in ("0", "-5", "1.5", "30s", "²"):
        monkeypatch.setenv(sensors.INTERVAL_ENV, bad)
        with pytest.raises(ConfigurationError, match=rf"\$BACKUP_ASSETS_SENSOR_INTERVAL .* not '{re.escape(bad)}'"):
            build_backup_sensor()
