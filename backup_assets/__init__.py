"""backup-assets: restore Sentry backups into PostgreSQL as Dagster assets.

``backup_assets.core`` is the pure engine (no Dagster import); the modules beside it are the thin
Dagster layer (``definitions``, ``translator``, ``assets``...), and ``backup_assets.cli`` the command line.
"""

__version__ = "0.1.0"
