"""Dagster resources of backup-assets: thin ConfigurableResource wrappers over the pure core.

The folder ``resources/`` installs as ``backup_assets.resources`` (see setup.py), so a user's own
``resources`` module cannot shadow it. Resources import only ``backup_assets.core`` and each other;
never the Dagster layer (definitions, assets, stages, sensors, partitions).
"""
