"""The Dagster instance the command line records its runs in, shared with the UI.

``backup-assets demo`` and ``backup-assets ui`` make a home in the working directory, ``.dagster_home/``
(the repository's ``dagster.yaml`` copied into it), so the restore the demo ran is what the UI shows
first. Which instance a command uses:

* ``$DAGSTER_HOME`` when it is set (a deployment's own instance);
* else ``./.dagster_home`` when it exists (made by ``demo`` or ``ui``);
* else none: an ephemeral instance, gone when the command ends.

The home holds Dagster's run and event storage only: targets reach runs as ``EnvVar`` names or as
DSNs without a password, so no credential is written there.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

HOME_ENV = "DAGSTER_HOME"
#: The shared home's folder name, in the working directory (git-ignored in the repository).
SHARED_HOME = ".dagster_home"
#: The code location ``backup-assets ui`` serves (the name ``workspace.yaml`` gives it too).
LOCATION_NAME = "backup_assets"

#: Instance settings of a home made outside the repository (no ``dagster.yaml`` to copy): no telemetry,
#: no first-visit dialog, the event log of :mod:`backup_assets.event_log`.
_MINIMAL_INSTANCE = (
    "telemetry:\n  enabled: false\nnux:\n  enabled: false\n"
    "event_log_storage:\n  module: backup_assets.event_log\n  class: KeptOpenSqliteEventLogStorage\n"
)
_WORKSPACE = (
    "load_from:\n  - python_module:\n      module_name: backup_assets.definitions\n"
    "      working_directory: {cwd}\n      location_name: " + LOCATION_NAME + "\n"
)


def shared_home(cwd: Path | None = None) -> Path:
    """The shared home of the working directory (it may not exist yet)."""
    return (cwd or Path.cwd()).absolute() / SHARED_HOME


def cli_home() -> Path | None:
    """The home the command line records its runs in (see the module doc), or None for an ephemeral one."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).absolute()
    home = shared_home()
    return home if (home / "dagster.yaml").is_file() else None


def ensure_home(home: Path | None = None) -> Path:
    """``home`` (default: ``$DAGSTER_HOME``, else the shared home) with an instance config and a workspace
    file for ``dagster dev``; existing files are left as they are."""
    home = (home or cli_home() or shared_home()).absolute()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        repo_config = Path.cwd() / "dagster.yaml"
        if repo_config.is_file():
            shutil.copyfile(repo_config, config)
        else:
            config.write_text(_MINIMAL_INSTANCE)
    workspace = home / "workspace.yaml"
    if not workspace.exists():
        workspace.write_text(_WORKSPACE.format(cwd=Path.cwd().absolute()))
    return home
