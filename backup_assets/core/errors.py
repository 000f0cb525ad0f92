"""The project's error types: one base class, and messages that name what was wrong and where.

Every failure the core can diagnose is raised as a subclass of :class:`BackupAssetsError`, so callers
(the CLI, the Dagster layer) can tell "the input or the configuration is wrong" from a bug.
Messages never contain key material or decrypted export data.
"""

from __future__ import annotations


class BackupAssetsError(Exception):
    """Base class of every error this project raises on purpose."""


class BackupFormatError(BackupAssetsError):
    """The backup file is not a well-formed Sentry export or export tarball.

    ``member`` names the tarball member concerned, when there is one; ``offset`` is a byte offset
    into the file or member, when known.
    """

    def __init__(
        self, message: str, *, path: str | None = None, member: str | None = None, offset: int | None = None
    ) -> None:
        where = []
        if path:
            where.append(str(path))
        if member:
            where.append(f"member {member!r}")
        if offset is not None:
            where.append(f"byte {offset}")
        super().__init__(f"{': '.join(where)}: {message}" if where else message)
        self.path, self.member, self.offset = path, member, offset


class DecryptionError(BackupAssetsError):
    """The backup could not be decrypted: wrong key, mismatched ``key.pub``, tampered or truncated token."""


class EncryptionError(BackupAssetsError):
    """A backup could not be encrypted (for example, the public key is not a usable RSA key)."""


class ManifestError(BackupAssetsError):
    """The model-dependency manifest is malformed or inconsistent (for example, a dependency cycle)."""


class ExportParseError(BackupAssetsError):
    """The export JSON is malformed, or one of its rows is.

    ``row`` is the 0-based index of the row in the export's top-level list, ``offset`` the byte offset
    in the (decrypted) JSON where the problem was seen.
    """

    def __init__(
        self,
        message: str,
        *,
        row: int | None = None,
        offset: int | None = None,
        model: str | None = None,
        field: str | None = None,
    ) -> None:
        where = []
        if row is not None:
            where.append(f"row {row}")
        if offset is not None:
            where.append(f"byte {offset}")
        if model:
            where.append(f"model {model}")
        if field:
            where.append(f"field {field!r}")
        super().__init__(f"export JSON ({', '.join(where)}): {message}" if where else f"export JSON: {message}")
        self.row, self.offset, self.model, self.field = row, offset, model, field


class TargetError(BackupAssetsError):
    """The target database cannot take this restore (missing table or column, taken keys, no confirmation...)."""


class StagingMissingError(TargetError):
    """The import's staged rows are gone (the restore finished or failed, or the server lost them): stage again."""


class LoadError(BackupAssetsError):
    """A model's load failed; nothing of that model was written."""

    def __init__(self, model: str, message: str) -> None:
        super().__init__(f"{model}: {message}")
        self.model = model


class UniqueViolationError(LoadError):
    """Rows of a model collide on a unique key with each other or with rows already in the database."""

    def __init__(self, model: str, fields: tuple[str, ...], values: tuple, message: str | None = None) -> None:
        shown = ", ".join(f"{f}={v!r}" for f, v in zip(fields, values))
        super().__init__(model, message or f"unique key ({', '.join(fields)}) collides: {shown}")
        self.fields, self.values = fields, values


class MissingParentError(LoadError):
    """A model's load needs the primary-key map of a parent model that was never loaded for this import."""


class ConfigurationError(BackupAssetsError):
    """A setting is missing or contradictory (no DSN reachable, a key file that is not a key...)."""


class UnknownModelsError(BackupAssetsError):
    """A strict restore met rows of models the manifest does not know; ``models``: model -> row count."""

    def __init__(self, models: dict[str, int]) -> None:
        named = ", ".join(f"{m} ({n} row{'s' if n != 1 else ''})" for m, n in sorted(models.items()))
        super().__init__(
            f"strict: the export holds rows of {len(models)} model(s) the manifest does not know: "
            f"{named}; nothing was written (pass the manifest of the export's Sentry release with "
            f"--manifest, or restore without --strict to skip them)"
        )
        self.models = dict(models)


class ImportFailed(BackupAssetsError):
    """A restore run failed: ``message`` holds one line per failed step, ``kind`` the type name of the
    first step's error (the finding kind of Sentry's ``--findings-file``)."""

    def __init__(self, message: str, kind: str = "ImportFailed") -> None:
        super().__init__(message)
        self.kind = kind
