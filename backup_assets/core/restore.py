"""One import, stage by stage: the API the CLI and the Dagster layer drive.

    restore = Restore(dsn, manifest, import_id, settings)
    restore.stage(backup)            # parse the (decrypted) export into the staging area
    restore.prepare()                # create schema / global replace / filters; records the import
    for model in restore.plan():     # relocatable, in-scope models in dependency order
        restore.load_model(model)    # one transaction per model: rows + pk map + load record
        restore.verify_model(model)  # counts reconcile, no dangling FK, sequence past max(id)
    restore.finish()                 # drop the staging area

Every method opens its own connections, so each may run in a different process or machine (a
Dagster step each); what they share lives in the target database (schema ``backup_assets``).
"""
from __future__ import annotations

from .manifest import Manifest
from .settings import CheckOutcome, ImportSettings, LoadResult, RestoreResult, StageResult


class Restore:
    def __init__(self, dsn: str, manifest: Manifest, import_id: str, settings: ImportSettings | None = None) -> None:
        self.dsn = dsn
        self.manifest = manifest
        self.import_id = import_id
        self.settings = settings or ImportSettings()

    def plan(self) -> list[str]:
        """The models this import loads, in dependency order."""
        raise NotImplementedError

    def is_staged(self) -> bool:
        raise NotImplementedError

    def stage(self, backup, progress=None) -> StageResult:
        """Parse ``backup`` (a :class:`backup_assets.core.source.Backup`) into the staging area."""
        raise NotImplementedError

    def prepare(self) -> None:
        raise NotImplementedError

    def load_model(self, model: str, progress=None) -> LoadResult:
        raise NotImplementedError

    def verify_model(self, model: str) -> list[CheckOutcome]:
        raise NotImplementedError

    def finish(self) -> None:
        raise NotImplementedError


def run_restore(dsn: str, backup, manifest: Manifest, settings: ImportSettings | None = None,
                import_id: str | None = None, progress=None) -> RestoreResult:
    """Stage, prepare, load and verify every model of the plan, then drop the staging area."""
    raise NotImplementedError
