"""The backup partitions: one dynamic partition per backup file, so one partition is one import.

A partition key is readable and stable: the file's stem, made safe, then ``-`` and the first 8 hex
digits of the file's SHA-256 (``sentry-2024-06-01-3fa9c2d1``); :mod:`backup_assets.core.backup_key`
makes it, and this module re-exports its functions for the Dagster layer.
"""

from __future__ import annotations

import dagster as dg

from backup_assets.core.backup_key import (
    HASH_PREFIX_LEN,
    file_sha256,
    key_stem,
    partition_key,
    partition_key_for_file,
    split_partition_key,
)
from backup_assets.core.errors import ConfigurationError

__all__ = [
    "HASH_PREFIX_LEN",
    "backups_partitions",
    "file_sha256",
    "key_stem",
    "partition_key",
    "partition_key_for_file",
    "partitions_name",
    "split_partition_key",
]

#: The dynamic partitions every asset of the restore graph shares.
backups_partitions = dg.DynamicPartitionsDefinition(name="sentry_backups")


def partitions_name(partitions_def: dg.DynamicPartitionsDefinition) -> str:
    """The name under which the instance stores the partitions of ``partitions_def``."""
    if partitions_def.name is None:
        raise ConfigurationError("the backup partitions must be a named DynamicPartitionsDefinition")
    return partitions_def.name
