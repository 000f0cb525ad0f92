"""Dagster resources of backup-assets: thin ConfigurableResource wrappers over the pure core.

Resources import only the core of ``backup_assets`` and its lowest Dagster floor,
:mod:`backup_assets.partitions`; never definitions, assets, stages or sensors.
"""
