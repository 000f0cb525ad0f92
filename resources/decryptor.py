"""The Dagster resource that supplies the private key of encrypted backups.

Give exactly one of

* ``private_key_path`` -- a file holding the unencrypted PEM private key, or
* ``private_key_env`` -- the *name* of an environment variable holding the PEM itself (a secret injected by
  the deployment), so the key never sits in Dagster's config or run storage.

Either value can itself come from the environment with :class:`dagster.EnvVar`, which Dagster resolves at run
time and never stores::

    from dagster import Definitions, EnvVar
    from backup_assets.resources.decryptor import DecryptorResource

    defs = Definitions(..., resources={
        "decryptor": DecryptorResource(private_key_path=EnvVar("SENTRY_BACKUP_KEY_PATH")),
        # or: DecryptorResource(private_key_env="SENTRY_BACKUP_PRIVATE_KEY")
    })

Assets call :meth:`DecryptorResource.get_decryptor` and hand the result to ``open_backup``.
"""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field

from backup_assets.core.decryptors import Decryptor, LocalFileDecryptor, PemDecryptor
from backup_assets.core.errors import ConfigurationError

__all__ = ["DecryptorResource"]


class DecryptorResource(ConfigurableResource):
    """Where the RSA private key of encrypted Sentry backups comes from (a file, or an environment variable)."""

    private_key_path: str | None = Field(default=None, description="Path of the unencrypted PEM RSA private key file.")
    private_key_env: str | None = Field(
        default=None, description="Name of an environment variable whose value is the PEM RSA private key."
    )

    def get_decryptor(self) -> Decryptor:
        """A decryptor for the configured key; the key itself is read lazily, on first use."""
        if bool(self.private_key_path) == bool(self.private_key_env):
            raise ConfigurationError("DecryptorResource needs exactly one of private_key_path and private_key_env")
        if self.private_key_path:
            return LocalFileDecryptor(self.private_key_path)
        assert self.private_key_env is not None
        return PemDecryptor.from_env(self.private_key_env)
