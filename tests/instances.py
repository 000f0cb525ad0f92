"""Dagster instances of the tests: ``dg.instance_for_test`` with the event log the repository's
``dagster.yaml`` ships, so the tests run on the storage users run on."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

REPO = Path(__file__).resolve().parent.parent
#: The ``event_log_storage`` block of the repository's ``dagster.yaml``.
SHIPPED_EVENT_LOG = {"event_log_storage": yaml.safe_load((REPO / "dagster.yaml").read_text())["event_log_storage"]}


@contextmanager
def instance_for_test(overrides: dict[str, Any] | None = None, **kwargs: Any) -> Iterator[dg.DagsterInstance]:
    """``dg.instance_for_test`` (a temporary ``DAGSTER_HOME``) on the shipped event log."""
    with dg.instance_for_test(overrides={**SHIPPED_EVENT_LOG, **(overrides or {})}, **kwargs) as instance:
        yield instance
