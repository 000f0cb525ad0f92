"""The staging area of a restore: where parsed rows wait between the parse stage and the model loads.

Staging lives **inside the target PostgreSQL**, in schema ``backup_assets`` (beside the primary-key
maps and load records of each import). Each step of the asset graph opens its own connections, so
steps share nothing but that database:

* With Dagster's Kubernetes (``K8sRunLauncher`` / ``k8s_job_executor``) or Celery
  (``celery_executor`` / ``celery_k8s_job_executor``) launchers, a step may run in any pod or worker:
  any worker that can reach the target database also reaches the staging. No shared volume is needed;
  the backup file itself is read only by the parse stage (and re-opened in memory by the crypto
  stages), so only the worker that runs those needs the backup folder mounted.
* A run's steps (the stage assets, the models' one step, ``restore_complete``) may therefore each run
  on another machine, and several backups (partitions) run as independent runs, one import id each.
* ``unlogged`` staging tables skip PostgreSQL's write-ahead log: staging is faster and produces no
  WAL for replicas, but a crash of the database server empties them. That is harmless: a model asset
  that finds its import's staging gone stages the backup again before loading (see
  :mod:`backup_assets.assets`). Keep ``unlogged`` off when the target
  is a primary whose replicas must be able to take over mid-restore.

The staged rows hold decrypted export data: they are as sensitive as the target database itself, and
:meth:`Restore.finish` (the ``restore_complete`` asset) drops them.
"""

from __future__ import annotations

import dagster as dg
from pydantic import Field


class StagingResource(dg.ConfigurableResource):
    """Options of the staging area inside the target database (schema ``backup_assets``)."""

    unlogged: bool = Field(
        default=True, description="Create staging tables UNLOGGED (no WAL; emptied by a server crash)."
    )
    keep_after_restore: bool = Field(
        default=False, description="Keep the staged rows after restore_complete (for re-running model assets later)."
    )
