"""Dagster resources of backup-assets: thin ConfigurableResource wrappers over the pure core.

Resources never import the Dagster layer of ``backup_assets`` (definitions, assets, sensors), only its core.
"""
