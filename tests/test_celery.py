"""The Celery extra's pure parts: the queue a run's steps go to, and the default install staying free of Celery.
The end-to-end behaviour (workers, broker, a killed worker) is in ``tests/test_celery_e2e.py``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("dagster_celery", reason="the celery extra is not installed (pip install -e '.[celery]')")

from backup_assets.celery import QUEUE_TAG, run_queue, target_queue
from backup_assets.run import TARGET_TAG, target_tag

REPO = Path(__file__).resolve().parent.parent


def test_a_target_has_one_queue_named_without_credentials():
    dsn = "postgresql://restorer:s3cret@db-7.internal:6432/sentry_eu"
    queue = target_queue(target_tag(dsn))
    assert queue == "restore-db-7.internal-6432-sentry_eu"
    assert "s3cret" not in queue and "restorer" not in queue
    assert target_queue(target_tag("host=db-8.internal dbname=sentry_eu")) != queue


def test_a_run_goes_to_its_explicit_queue_else_its_targets_else_the_default():
    assert run_queue({QUEUE_TAG: "big-machines", TARGET_TAG: "h:5432/db"}) == "big-machines"
    assert run_queue({TARGET_TAG: "h:5432/db"}) == "restore-h-5432-db"
    assert run_queue({}) is None


def test_the_default_code_location_does_not_import_celery():
    code = (
        "import sys, backup_assets.definitions, backup_assets.cli; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('celery', 'dagster_celery', 'kombu')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
