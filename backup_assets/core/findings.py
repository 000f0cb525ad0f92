"""Findings: what a comparison (or an import) found wrong with one row or one model, in Sentry's JSON shape.

A findings file is a JSON list of objects, each with exactly these keys::

    {"finding": "ComparatorFinding", "kind": "UnequalJSON",
     "left_pk": 3, "on": {"model": "sentry.user", "ordinal": 2}, "reason": "...", "right_pk": 7}

``finding`` names the class of finding (``ComparatorFinding``, ``RpcImportError``, ``RpcExportError``),
``kind`` the name of its kind, ``on`` the model and the 1-based ordinal of the row concerned (``null``
when the finding is about a whole model), ``left_pk``/``right_pk`` the primary keys on each side
(``null`` when not applicable). The file is written with sorted keys, an indent of 2 and ASCII only
(non-ASCII characters escaped), and holds ``[]`` when there is nothing to report.
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, TextIO


class ComparatorFindingKind(enum.Enum):
    """Every kind of difference the comparator reports (names as Sentry's validator spells them)."""

    Unknown = 0
    UnorderedInput = enum.auto()
    DuplicateCustomOrdinal = enum.auto()
    UnequalCounts = enum.auto()
    UnequalJSON = enum.auto()
    AutoSuffixComparator = enum.auto()
    AutoSuffixComparatorExistenceCheck = enum.auto()
    DatetimeEqualityComparator = enum.auto()
    DatetimeEqualityComparatorExistenceCheck = enum.auto()
    DateUpdatedComparator = enum.auto()
    DateUpdatedComparatorExistenceCheck = enum.auto()
    EmailObfuscatingComparator = enum.auto()
    EmailObfuscatingComparatorExistenceCheck = enum.auto()
    EqualOrRemovedComparator = enum.auto()
    EqualOrRemovedComparatorExistenceCheck = enum.auto()
    HashObfuscatingComparator = enum.auto()
    HashObfuscatingComparatorExistenceCheck = enum.auto()
    ForeignKeyComparator = enum.auto()
    ForeignKeyComparatorExistenceCheck = enum.auto()
    IgnoredComparator = enum.auto()
    SecretHexComparator = enum.auto()
    SecretHexComparatorExistenceCheck = enum.auto()
    SubscriptionIDComparator = enum.auto()
    SubscriptionIDComparatorExistenceCheck = enum.auto()
    UnorderedListComparator = enum.auto()
    UnorderedListComparatorExistenceCheck = enum.auto()
    UUID4Comparator = enum.auto()
    UUID4ComparatorExistenceCheck = enum.auto()
    UserPasswordObfuscatingComparator = enum.auto()
    UserPasswordObfuscatingComparatorExistenceCheck = enum.auto()


@dataclass(frozen=True)
class InstanceID:
    """The row a finding is about: its model and its 1-based ordinal (``None``: the model as a whole)."""

    model: str
    ordinal: int | None = None

    def to_json(self) -> dict:
        return {"model": self.model, "ordinal": self.ordinal}

    def pretty(self) -> str:
        return self.model if self.ordinal is None else f"{self.model} #{self.ordinal}"


@dataclass(frozen=True)
class Finding:
    """One problem found. Subclasses only change the class name written as ``finding``.

    ``kind`` is an enum member (written by name) or, for finding classes whose kinds are defined
    elsewhere (import errors), a plain string.
    """

    kind: enum.Enum | str
    on: InstanceID
    left_pk: int | None = None
    right_pk: int | None = None
    reason: str = ""

    finding_name: ClassVar[str] = "Finding"

    @property
    def kind_name(self) -> str:
        return self.kind.name if isinstance(self.kind, enum.Enum) else str(self.kind)

    def to_json(self) -> dict:
        return {
            "finding": self.finding_name,
            "kind": self.kind_name,
            "on": self.on.to_json(),
            "left_pk": self.left_pk,
            "right_pk": self.right_pk,
            "reason": self.reason,
        }

    def pretty(self) -> str:
        """A readable multi-line rendering for terminals."""
        pks = []
        if self.left_pk is not None:
            pks.append(f"left pk {self.left_pk}")
        if self.right_pk is not None:
            pks.append(f"right pk {self.right_pk}")
        head = f"{self.finding_name} {self.kind_name} on {self.on.pretty()}"
        if pks:
            head += f" ({', '.join(pks)})"
        reason = "\n".join("    " + line for line in self.reason.splitlines())
        return f"{head}\n{reason}" if reason else head


@dataclass(frozen=True)
class ComparatorFinding(Finding):
    """A difference between two exports found by :func:`backup_assets.core.compare.compare`."""

    finding_name: ClassVar[str] = "ComparatorFinding"


@dataclass(frozen=True)
class RpcImportError(Finding):
    """A row (or model) an import could not take; ``kind`` names the reason (a string)."""

    finding_name: ClassVar[str] = "RpcImportError"


@dataclass(frozen=True)
class RpcExportError(Finding):
    """A row (or model) an export could not write."""

    finding_name: ClassVar[str] = "RpcExportError"


def findings_to_json(findings: Iterable[Finding]) -> str:
    """The findings file text: a JSON list, sorted keys, indent 2, ASCII only (``[]`` when empty)."""
    return json.dumps([f.to_json() for f in findings], sort_keys=True, indent=2, ensure_ascii=True)


def write_findings(findings: Iterable[Finding], dest: str | os.PathLike[str] | TextIO) -> None:
    """Write the findings file to a path or an open text stream (a path is replaced as a whole)."""
    text = findings_to_json(findings)
    if hasattr(dest, "write"):
        dest.write(text)
        return
    path = Path(dest)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text, encoding="ascii")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
