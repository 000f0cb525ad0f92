"""Derive the built-in manifest from a Sentry release's ``model_dependencies/detailed.json``.

    python -m backup_assets.manifests.derive DETAILED.json [OUT.json]

Keeps every relocatable model (relocation scope other than ``Excluded``) with exactly the keys the
:class:`~backup_assets.core.manifest.Manifest` reads, validated by it, and writes them in Sentry's layout
(indent 2, sorted keys), by default over ``backup_assets/manifests/builtin.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..core.errors import ManifestError
from ..core.manifest import Manifest

BUILTIN = Path(__file__).with_name("builtin.json")


def derive(detailed: object, source: str = "<memory>") -> dict:
    """The built-in manifest's JSON from the parsed ``detailed.json`` (relocatable models only)."""
    full = Manifest.from_json(detailed, source=source)
    return Manifest(models={n: s for n, s in full.models.items() if s.relocatable}, source=source).to_json()


def render(manifest_json: dict) -> str:
    return json.dumps(manifest_json, indent=2, sort_keys=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    src, out = Path(args[0]), Path(args[1]) if len(args) == 2 else BUILTIN
    try:
        data = json.loads(src.read_bytes())
        derived = derive(data, source=str(src))
    except ManifestError as e:  # its message names the file
        print(e, file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        print(f"{src}: {e}", file=sys.stderr)
        return 1
    out.write_text(render(derived))
    print(f"{out}: {len(derived)} relocatable models from {src}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
