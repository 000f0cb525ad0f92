"""Import settings: Sentry's scope, filters and ``ImportFlags``, plus ours; and the import id's form."""

from __future__ import annotations

import re
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from .errors import ConfigurationError
from .manifest import IMPORT_SCOPES

_IMPORT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,199}$")


def new_import_id() -> str:
    """A fresh import id, as Sentry makes its ``import_uuid``."""
    return uuid.uuid4().hex


def check_import_id(import_id: str) -> str:
    if not isinstance(import_id, str) or not _IMPORT_ID.match(import_id):
        raise ConfigurationError(f"import id {import_id!r} must be 1-200 characters of letters, digits and ._:@+=-")
    return import_id


@dataclass(frozen=True)
class ImportSettings:
    """How to import: what Sentry's CLI flags say, plus this project's own options.

    ``filter_usernames`` / ``filter_org_slugs`` are allow-lists: ``None`` means no filter, an empty
    set imports nothing (as in Sentry).
    """

    scope: str = "global"
    merge_users: bool = False
    overwrite_configs: bool = False
    hide_organizations: bool = False
    filter_usernames: frozenset[str] | None = None
    filter_org_slugs: frozenset[str] | None = None
    preserve_pks: bool = False  #: keep every primary key (disaster recovery into an empty database)
    create_schema: bool = False  #: create missing tables from the manifest and the export
    replace_existing: bool = False  #: global scope: confirmed wipe of every relocatable table first
    strict: bool = False  #: refuse an export holding rows of models the manifest does not know

    def __post_init__(self) -> None:
        if self.scope not in IMPORT_SCOPES:
            raise ConfigurationError(f"scope {self.scope!r} is not one of {', '.join(IMPORT_SCOPES)}")
        for name in ("filter_usernames", "filter_org_slugs"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, frozenset):
                object.__setattr__(self, name, frozenset(v))
        if self.filter_usernames is not None and self.filter_org_slugs is not None:
            raise ConfigurationError("filter by usernames or by organization slugs, not both")
        if self.replace_existing and self.scope != "global":
            raise ConfigurationError("replacing existing data is only possible in a global import")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("filter_usernames", "filter_org_slugs"):
            if d[k] is not None:
                d[k] = sorted(d[k])
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ImportSettings:
        fields: dict[str, Any] = {
            k: (frozenset(v) if k.startswith("filter_") and v is not None else v) for k, v in d.items()
        }
        return cls(**fields)
