"""Where backups come from: a folder, a glob, and a stable partition key per file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from pydantic import Field

from backup_assets.core.backup_key import file_sha256, key_stem, partition_key, split_partition_key
from backup_assets.core.errors import ConfigurationError

DEFAULT_GLOB = "*.tar,*.json"


@dataclass(frozen=True)
class BackupFile:
    key: str  #: partition key: safe stem + "-" + SHA-256 prefix
    path: Path
    size: int
    mtime_ns: int
    sha256: str


class BackupSourceResource(dg.ConfigurableResource):
    """A folder of backups (encrypted tarballs from ``sentry export --encrypt-with`` or plain JSON exports).

    ``glob`` is one pattern or several separated by commas (``"*.tar,*.json"``). ``pinned``
    maps partition keys to files explicitly (one-off imports of a file with an id of your choosing);
    any other key is resolved by scanning the folder for the file whose key it is.
    """

    folder: str = Field(default=".", description="Folder holding the backups (not searched recursively).")
    glob: str = Field(default=DEFAULT_GLOB, description="Pattern(s) of backup files, comma-separated.")
    pinned: dict[str, str] = Field(default_factory=dict, description="Partition key -> file path, checked first.")

    def patterns(self) -> list[str]:
        pats = [p.strip() for p in self.glob.split(",") if p.strip()]
        if not pats:
            raise ConfigurationError("backup source: the glob is empty")
        return pats

    def candidate_paths(self) -> list[Path]:
        """Regular files of the folder matching a pattern, sorted by name."""
        root = Path(self.folder).expanduser()
        if not root.is_dir():
            raise ConfigurationError(f"backup source: folder {root} does not exist or is not a directory")
        found = {p for pat in self.patterns() for p in root.glob(pat) if p.is_file()}
        return sorted(found, key=lambda p: p.name)

    def describe(self, path: str | Path) -> BackupFile:
        """Size, mtime, SHA-256 and partition key of one file."""
        p = Path(path)
        try:
            st = p.stat()
            digest = file_sha256(p)  # read once per process while the file is unchanged
        except OSError as e:
            raise ConfigurationError(f"backup source: cannot read {p}: {e.strerror or e}") from None
        return BackupFile(partition_key(p.name, digest), p, st.st_size, st.st_mtime_ns, digest)

    def list_backups(self) -> list[BackupFile]:
        """Every backup of the folder with its key (hashes each new or changed file)."""
        return [self.describe(p) for p in self.candidate_paths()]

    def resolve(self, key: str) -> BackupFile:
        """The backup file whose partition key is ``key``.

        A pinned key wins. Otherwise the folder is scanned; only files whose stem matches the key are
        hashed. A key whose file changed since the partition was added no longer resolves.
        """
        if key in self.pinned:
            return self.describe(self.pinned[key])
        parts = split_partition_key(key)
        if parts is not None:
            for p in self.candidate_paths():
                if key_stem(p.name) != parts[0]:
                    continue
                bf = self.describe(p)
                if bf.key == key:
                    return bf
        raise ConfigurationError(
            f"backup source: no file in {os.fspath(Path(self.folder).expanduser())} matching "
            f"{', '.join(self.patterns())} has partition key {key!r} (was the file removed or rewritten?)"
        )
