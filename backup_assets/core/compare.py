"""Compare two Sentry exports the way Sentry's round-trip validator does, and report the differences.

The left export is the original, the right one the re-export after an import. The comparison:

1. groups each side's rows per model and numbers them 1..n. A model without a custom ordinal is
   numbered by position, and its pks must be strictly ascending (else ``UnorderedInput``). A model
   with a custom ordinal (:data:`CUSTOM_ORDINALS`) is sorted by the tuple of those fields, a
   ``user``/``user_id`` field standing for that user's username; two rows with the same tuple are a
   ``DuplicateCustomOrdinal`` (``sentry.useroption`` excepted: ties keep their file order);
2. reports every model whose row counts differ (``UnequalCounts``). If anything was found so far,
   the comparison stops there, as Sentry's does;
3. for every pair of rows with the same model and ordinal, runs each comparator's existence check
   and, if that passed, its check; then every comparator removes ("scrubs") the fields it handled;
   whatever fields remain must be equal, else ``UnequalJSON`` with a unified diff as the reason.

Comparators per model come from a table (:func:`default_comparators`, written from the facts of
Sentry's default table) plus two automatic ones: a :class:`ForeignKeyComparator` for the foreign
keys the manifest lists (values compared through the ordinals of the rows they point at, so a
pk-remapped copy compares equal; a reference that dangles on the left may be null on the right, an
allowance Sentry's validator does not make), and, for models that have any comparator in the table, a
:class:`DatetimeEqualityComparator` for their datetime fields not claimed by a
:class:`DateUpdatedComparator` or :class:`IgnoredComparator`. A manifest does not carry field types,
so datetime fields are recognised by their values (ISO-8601 strings with a time part).

Memory: bounded, whatever the size (:func:`compare_sources`). Both sides are read together, once: each
row is noted as it comes (per model a count, and the pks as runs of integers: :class:`PkOrdinals`) and
the n-th rows of a model on both sides are compared when they meet. Held until the end: the rows of the
custom-ordinal models (numbered only once all are seen; users' emails and options, options, relays), the
usernames, the findings. Right rows that arrive before their turn (inputs in different orders) and pairs
whose foreign keys point at rows not read yet wait in an encrypted spill (:mod:`.spill`); a model whose
datetime fields turn up only after pairs holding such a field were compared is compared again in a
second pass. Counts and ordering are known only at the end: when they fail, those findings are the
result and the pair findings are dropped, as Sentry's validator stops there.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import json
import re
import uuid
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO, ClassVar

import ijson
import orjson

from .errors import ExportParseError
from .findings import ComparatorFinding, InstanceID
from .findings import ComparatorFindingKind as Kind
from .manifest import Manifest
from .parse import _CountingReader, _Doubt, _fast_rows
from .spill import RowSpill

Fields = dict[str, Any]

#: Models matched by the values of these fields instead of by position (Sentry's custom ordinals).
CUSTOM_ORDINALS: Mapping[str, tuple[str, ...]] = {
    "sentry.email": ("email",),
    "sentry.useremail": ("user", "email"),
    "sentry.useroption": ("user", "organization_id", "project_id", "key"),
    "sentry.option": ("key",),
    "sentry.controloption": ("key",),
    "sentry.relay": ("relay_id",),
    "sentry.relayusage": ("relay_id", "version"),
    "sentry.userrole": ("name",),
}

#: Custom-ordinal models whose duplicate tuples are not an error (ties keep their file order).
RENUMBERED_ON_DUPLICATES = frozenset({"sentry.useroption"})

_USER_FIELDS = frozenset({"user", "user_id"})
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:?\d{2})?")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NO_PKS: Mapping[int, int] = {}


# -- matched rows ---------------------------------------------------------------------------------


@dataclass
class Match:
    """A left row and the right row with the same model and ordinal, as the comparators see them.

    ``left``/``right`` are copies of the rows' ``fields``; comparators remove the fields they handled.
    """

    on: InstanceID
    left_pk: int
    right_pk: int
    left: Fields
    right: Fields

    def finding(self, kind: Kind, reason: str) -> ComparatorFinding:
        return ComparatorFinding(kind=kind, on=self.on, left_pk=self.left_pk, right_pk=self.right_pk, reason=reason)


# -- comparators ----------------------------------------------------------------------------------


class Comparator:
    """Checks some fields of a matched pair, then scrubs them from the final JSON diff.

    Subclasses set :attr:`kind` and implement :meth:`check` (one field whose value is present on
    both sides -> a reason, or ``None`` when fine); a few override :meth:`existence`/:meth:`compare`.
    """

    kind: ClassVar[Kind] = Kind.Unknown
    #: Whether equal values (``==``) of every field are enough for this comparator to find nothing.
    equal_is_fine: ClassVar[bool] = False

    def __init__(self, *fields: str) -> None:
        if not fields:
            raise ValueError(f"{type(self).__name__} needs at least one field")
        self.fields: tuple[str, ...] = tuple(sorted(set(fields)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self.fields))})"

    @property
    def existence_kind(self) -> Kind:
        return Kind[f"{self.kind.name}ExistenceCheck"]

    def existence(self, m: Match) -> list[ComparatorFinding]:
        """A finding per field that is present (and not null) on one side only."""
        found = []
        for f in self.fields:
            on_left, on_right = m.left.get(f) is not None, m.right.get(f) is not None
            if on_left != on_right and not self.exempt(m, f):
                side = "right" if on_left else "left"
                found.append(m.finding(self.existence_kind, f"the {side} value of `{f}` is missing"))
        return found

    def compare(self, m: Match) -> list[ComparatorFinding]:
        found = []
        for f in self.fields:
            left, right = m.left.get(f), m.right.get(f)
            if (left is None and right is None) or self.exempt(m, f):
                continue
            reason = self.check(f, left, right)
            if reason:
                found.append(m.finding(self.kind, reason))
        return found

    def check(self, field: str, left: Any, right: Any) -> str | None:
        raise NotImplementedError

    def quick_ok(self, m: Match) -> bool:
        """A cheap test, true only when :meth:`existence` and :meth:`compare` would find nothing (false:
        run them to know)."""
        left, right = m.left, m.right
        return self.equal_is_fine and all(left.get(f) == right.get(f) for f in self.fields)

    def exempt(self, m: Match, field: str) -> bool:
        """Whether ``field`` of this pair is exempt from both the existence check and the check."""
        return False

    def scrub(self, m: Match) -> None:
        for f in self.fields:
            m.left.pop(f, None)
            m.right.pop(f, None)


def parse_datetime(value: Any) -> datetime | None:
    """An ISO-8601 datetime (with or without fraction, ``Z`` or offset; naive means UTC), else ``None``."""
    if not isinstance(value, str) or not _DATETIME.fullmatch(value):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class IgnoredComparator(Comparator):
    """No check at all: the fields are only left out of the diff."""

    kind = Kind.IgnoredComparator

    def quick_ok(self, m: Match) -> bool:
        return True

    def existence(self, m: Match) -> list[ComparatorFinding]:
        return []

    def check(self, field: str, left: Any, right: Any) -> str | None:
        return None


class AutoSuffixComparator(Comparator):
    """Equal, or the right value is the left one plus ``-<suffix>`` (a slug or username made unique)."""

    kind = Kind.AutoSuffixComparator
    equal_is_fine = True

    def check(self, field: str, left: Any, right: Any) -> str | None:
        if left == right or (isinstance(left, str) and isinstance(right, str) and right.startswith(left + "-")):
            return None
        return f"the left value ({left!r}) of `{field}` is neither equal to nor a dashed prefix of the right value ({right!r})"


class DatetimeEqualityComparator(Comparator):
    """Both values are the same instant (``.000`` milliseconds or ``Z`` spelled or not)."""

    kind = Kind.DatetimeEqualityComparator

    def quick_ok(self, m: Match) -> bool:
        left, right = m.left, m.right
        return all(
            left.get(f) == right.get(f) and (left.get(f) is None or parse_datetime(left.get(f)) is not None)
            for f in self.fields
        )

    def check(self, field: str, left: Any, right: Any) -> str | None:
        lt, rt = parse_datetime(left), parse_datetime(right)
        for side, raw, parsed in (("left", left, lt), ("right", right, rt)):
            if parsed is None:
                return f"the {side} value ({raw!r}) of `{field}` is not an ISO-8601 datetime"
        if lt != rt:
            return f"the left value ({left}) of `{field}` is not equal to the right value ({right})"
        return None


class DateUpdatedComparator(Comparator):
    """The right datetime is not earlier than the left one (an update may only move it forward)."""

    kind = Kind.DateUpdatedComparator
    equal_is_fine = True

    def check(self, field: str, left: Any, right: Any) -> str | None:
        lt, rt = parse_datetime(left) or _EPOCH, parse_datetime(right) or _EPOCH
        if lt > rt:
            return f"the left value ({left}) of `{field}` is later than the right value ({right})"
        return None


class _ObfuscatingComparator(Comparator):
    """Equality of private values; reasons show only an obfuscated form of them."""

    equal_is_fine = True

    def obfuscate(self, value: Any) -> str:
        raise NotImplementedError

    def check(self, field: str, left: Any, right: Any) -> str | None:
        if left == right:
            return None
        return (
            f"the left value ({self.obfuscate(left)}) of `{field}` is not equal to the right value "
            f"({self.obfuscate(right)})"
        )


class HashObfuscatingComparator(_ObfuscatingComparator):
    """Equality of secrets and tokens; a reason shows a short SHA-256 digest, never the value."""

    kind = Kind.HashObfuscatingComparator

    def obfuscate(self, value: Any) -> str:
        digest = hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
        return f"sha256:{digest[:12]}..."


class EmailObfuscatingComparator(_ObfuscatingComparator):
    """Equality of email addresses; a reason shows only their first characters."""

    kind = Kind.EmailObfuscatingComparator

    def obfuscate(self, value: Any) -> str:
        if not isinstance(value, str):
            return f"<{type(value).__name__}>"
        local, at, domain = value.partition("@")
        return f"{local[:1]}...{at}{domain[:1]}..." if at else f"{local[:1]}..."


class UserPasswordObfuscatingComparator(_ObfuscatingComparator):
    """A user's password: kept for a claimed user; changed (forward ``last_password_change``, not
    expired) for a user the import created unclaimed; and an import never claims a user."""

    kind = Kind.UserPasswordObfuscatingComparator
    obfuscate = HashObfuscatingComparator.obfuscate

    def __init__(self) -> None:
        super().__init__("password")

    def quick_ok(self, m: Match) -> bool:
        return (
            not m.left.get("is_unclaimed")
            and not m.right.get("is_unclaimed")
            and m.left.get("password") == m.right.get("password")
        )

    def compare(self, m: Match) -> list[ComparatorFinding]:
        found = []
        if m.left.get("is_unclaimed") and not m.right.get("is_unclaimed"):
            found.append(
                m.finding(
                    self.kind, "the left user is unclaimed but the right one is claimed; an import never claims a user"
                )
            )
        if not m.right.get("is_unclaimed"):
            return found + super().compare(m)
        if m.left.get("password") == m.right.get("password"):
            found.append(m.finding(self.kind, "`password` is unchanged, but an unclaimed user's must be new"))
        left_change, right_change = m.left.get("last_password_change"), m.right.get("last_password_change")
        if (parse_datetime(left_change) or _EPOCH) > (parse_datetime(right_change) or _EPOCH):
            found.append(
                m.finding(
                    self.kind,
                    f"the left value ({left_change}) of `last_password_change` is later "
                    f"than the right value ({right_change})",
                )
            )
        if m.right.get("is_password_expired"):
            found.append(m.finding(self.kind, "`is_password_expired` must be false for an unclaimed user"))
        return found


class _PatternComparator(Comparator):
    """Both values are strings matching :attr:`pattern`; :attr:`must_differ` also demands inequality."""

    pattern: re.Pattern[str]
    description: str
    must_differ: ClassVar[bool] = False

    def valid(self, value: Any) -> bool:
        return isinstance(value, str) and self.pattern.fullmatch(value) is not None

    def quick_ok(self, m: Match) -> bool:
        for f in self.fields:
            left, right = m.left.get(f), m.right.get(f)
            if (left is not None or right is not None) and not (
                self.valid(left) and self.valid(right) and not (self.must_differ and left == right)
            ):
                return False
        return True

    def check(self, field: str, left: Any, right: Any) -> str | None:
        bad = [side for side, v in (("left", left), ("right", right)) if not self.valid(v)]
        if bad:
            return f"the {' and '.join(bad)} value{'s' if len(bad) > 1 else ''} of `{field}` {'are' if len(bad) > 1 else 'is'} not {self.description}"
        if self.must_differ and left == right:
            return f"the left and right values of `{field}` are equal, but must have been regenerated"
        return None


class SecretHexComparator(_PatternComparator):
    """Both values are ``bytes`` lowercase hex digits (a secret of that many bytes)."""

    kind = Kind.SecretHexComparator

    def __init__(self, nbytes: int, *fields: str) -> None:
        super().__init__(*fields)
        self.pattern = re.compile(f"[0-9a-f]{{{2 * nbytes}}}")
        self.description = f"{2 * nbytes} lowercase hex digits"


class SubscriptionIDComparator(_PatternComparator):
    """Both values look like ``<digits>/<32 hex digits>`` and differ (subscriptions are recreated)."""

    kind = Kind.SubscriptionIDComparator
    pattern = re.compile(r"\d+/[0-9a-f]{32}")
    description = "a subscription id (<digits>/<32 hex digits>)"
    must_differ = True


class UUID4Comparator(_PatternComparator):
    """Both values are UUID4s and differ (the import generates new ones)."""

    kind = Kind.UUID4Comparator
    description = "a UUID4"
    must_differ = True

    def valid(self, value: Any) -> bool:
        try:
            return isinstance(value, str) and uuid.UUID(value).version == 4
        except ValueError:
            return False


class UnorderedListComparator(Comparator):
    """Both values are lists with the same items, in any order."""

    kind = Kind.UnorderedListComparator

    @staticmethod
    def as_list(value: Any) -> list | None:
        """A list, or a string spelling one (JSON, or the Python repr Sentry writes for array fields)."""
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                try:
                    value = ast.literal_eval(value)
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    return None
        return value if isinstance(value, list) else None

    def check(self, field: str, left: Any, right: Any) -> str | None:
        left_items, right_items = self.as_list(left), self.as_list(right)
        if left_items is None or right_items is None:
            bad = [side for side, v in (("left", left_items), ("right", right_items)) if v is None]
            return f"the {' and '.join(bad)} value of `{field}` is not a list"
        if sorted(left_items, key=_sort_key) != sorted(right_items, key=_sort_key):
            return f"the left value ({left!r}) of `{field}` does not hold the same items as the right value ({right!r})"
        return None


class EqualOrRemovedComparator(Comparator):
    """Equal, unless the right side no longer has the value (null or absent)."""

    kind = Kind.EqualOrRemovedComparator
    equal_is_fine = True

    def existence(self, m: Match) -> list[ComparatorFinding]:
        return [
            m.finding(self.existence_kind, f"the left value of `{f}` is missing but the right one is set")
            for f in self.fields
            if m.left.get(f) is None and m.right.get(f) is not None
        ]

    def check(self, field: str, left: Any, right: Any) -> str | None:
        if right is None or left == right:
            return None
        return f"the left value ({left!r}) of `{field}` is not equal to the right value ({right!r})"


class ForeignKeyComparator(Comparator):
    """Foreign keys point at rows with the same ordinal on both sides (the pks themselves may differ).

    One allowance Sentry's validator does not make: a left value that points at no row of the left
    export (a dangling reference, such as an organization member's inviter who was not exported) may
    be null on the right, since that is what an import does with it.
    """

    kind = Kind.ForeignKeyComparator

    def __init__(self, targets: Mapping[str, str]) -> None:
        super().__init__(*targets)
        self.targets = dict(targets)
        self._maps: tuple[Mapping[str, Mapping[int, int]], Mapping[str, Mapping[int, int]]] = ({}, {})

    def __repr__(self) -> str:
        return f"ForeignKeyComparator({self.targets!r})"

    def set_primary_key_maps(
        self, left: Mapping[str, Mapping[int, int]], right: Mapping[str, Mapping[int, int]]
    ) -> None:
        """Each side's model -> {pk: ordinal}; needed before :meth:`compare`."""
        self._maps = (left, right)

    def exempt(self, m: Match, field: str) -> bool:
        """The left value dangles and the right one is null: the import dropped the reference."""
        return m.right.get(field) is None and self._ordinal(0, field, m.left.get(field)) is None

    def quick_ok(self, m: Match) -> bool:
        left, right = m.left, m.right
        maps = self._maps
        for f, target in self.targets.items():
            lv, rv = left.get(f), right.get(f)
            if lv is None and rv is None:
                continue
            if type(lv) is not int or type(rv) is not int:
                return False
            ordinal = maps[0].get(target, _NO_PKS).get(lv)
            if ordinal is None or ordinal != maps[1].get(target, _NO_PKS).get(rv):
                return False
        return True

    def _ordinal(self, side: int, field: str, value: Any) -> int | None:
        return self._maps[side].get(self.targets[field], {}).get(value) if isinstance(value, int) else None

    def check(self, field: str, left: Any, right: Any) -> str | None:
        target = self.targets[field]
        ordinals = []
        for index, side, value in ((0, "left", left), (1, "right", right)):
            ordinal = self._ordinal(index, field, value)
            if ordinal is None:
                return f"the {side} value ({value!r}) of foreign key `{field}` is not the pk of any {target} row"
            ordinals.append(ordinal)
        if ordinals[0] != ordinals[1]:
            return (
                f"the left value of `{field}` points at {target} #{ordinals[0]}, the right value at "
                f"{target} #{ordinals[1]}"
            )
        return None


def default_comparators() -> dict[str, list[Comparator]]:
    """The per-model comparators of Sentry's validator (fresh instances at every call)."""

    def updated(*fields: str) -> list[Comparator]:
        return [DateUpdatedComparator(*fields)]

    return {
        "sentry.alertrule": updated("date_modified"),
        "sentry.apiapplication": [HashObfuscatingComparator("client_id", "client_secret")],
        "sentry.apitoken": [
            HashObfuscatingComparator("refresh_token", "token"),
            IgnoredComparator("hashed_token", "hashed_refresh_token", "token_last_characters"),
            UnorderedListComparator("scope_list"),
        ],
        "sentry.authidentity": [HashObfuscatingComparator("ident", "token")],
        "sentry.dashboardwidgetquery": updated("date_modified"),
        "sentry.dashboardwidgetqueryondemand": updated("date_modified"),
        "sentry.email": [DateUpdatedComparator("date_added"), EmailObfuscatingComparator("email")],
        "sentry.groupsearchview": updated("date_updated"),
        "sentry.incident": [UUID4Comparator("detection_uuid")],
        "sentry.incidentactivity": [UUID4Comparator("notification_uuid")],
        "sentry.incidenttrigger": updated("date_modified"),
        "sentry.integration": updated("date_updated"),
        "sentry.monitor": [UUID4Comparator("guid")],
        "sentry.organization": [AutoSuffixComparator("slug")],
        "sentry.organizationintegration": updated("date_updated"),
        "sentry.organizationmember": [HashObfuscatingComparator("token"), EmailObfuscatingComparator("email")],
        "sentry.orgauthtoken": [HashObfuscatingComparator("token_hashed", "token_last_characters")],
        "sentry.projectkey": [
            HashObfuscatingComparator("public_key", "secret_key"),
            SecretHexComparator(16, "public_key", "secret_key"),
        ],
        "sentry.projecttemplate": updated("date_updated"),
        "sentry.querysubscription": [
            DateUpdatedComparator("date_updated"),
            SubscriptionIDComparator("subscription_id"),
        ],
        "sentry.relay": [HashObfuscatingComparator("relay_id", "public_key")],
        "sentry.relayusage": [HashObfuscatingComparator("relay_id", "public_key")],
        "sentry.sentryapp": [DateUpdatedComparator("date_updated"), EmailObfuscatingComparator("creator_label")],
        "sentry.sentryappinstallation": updated("date_updated"),
        "sentry.servicehook": [HashObfuscatingComparator("secret")],
        "sentry.team": [IgnoredComparator("org_role")],
        "sentry.user": [
            AutoSuffixComparator("username"),
            DateUpdatedComparator("last_active"),
            IgnoredComparator("last_password_change", "is_unclaimed", "is_password_expired"),
            UserPasswordObfuscatingComparator(),
            EmailObfuscatingComparator("email"),
        ],
        "sentry.useremail": [
            DateUpdatedComparator("date_hash_added"),
            IgnoredComparator("validation_hash", "is_verified"),
            EmailObfuscatingComparator("email"),
        ],
        "sentry.userip": [
            DateUpdatedComparator("first_seen", "last_seen"),
            IgnoredComparator("country_code", "region_code"),
        ],
        "sentry.userrole": updated("date_updated"),
        "sentry.userroleuser": updated("date_updated"),
    }


# -- reading exports ------------------------------------------------------------------------------


class _HeadReader:
    """A binary stream whose first non-blank byte can be looked at before the JSON parser reads it."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw, self._head = raw, b""

    def first_byte(self) -> int | None:
        while True:
            self._head = self._head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
            if self._head:
                return self._head[0]
            chunk = self._raw.read(65536)
            if not chunk:
                return None
            self._head += chunk

    def read(self, n: int = -1) -> bytes:
        if not self._head:
            return self._raw.read(n)
        size = len(self._head) if n is None or n < 0 else n
        data, self._head = self._head[:size], self._head[size:]
        return data


def iter_export(stream: BinaryIO, source: str = "export") -> Iterator[Any]:
    """The items of an export's top-level JSON list, parsed as a stream (not checked as rows here).

    Raises :class:`ExportParseError` when the text is not JSON or not a list, naming ``source`` and the
    row index the parser had reached.
    """
    reader = _HeadReader(stream)
    first = reader.first_byte()
    if first is None:
        raise ExportParseError(f"{source}: empty; a Sentry export is a JSON list of rows")
    if first != ord("["):
        raise ExportParseError(
            f"{source}: a Sentry export is a JSON list of rows, but this one starts with {chr(first)!r}"
        )
    index = 0
    try:
        for item in ijson.items(reader, "item", use_float=True):
            yield item
            index += 1
    except ijson.JSONError as e:
        detail = (str(e).strip().splitlines() or ["unexpected end of input"])[0]
        raise ExportParseError(f"{source}: not valid JSON: {detail}", row=index) from None


def iter_rows(open_stream: Callable[[], AbstractContextManager[BinaryIO]], source: str = "export") -> Iterator[Any]:
    """The items of the export ``open_stream()`` gives, like :func:`iter_export` but faster: parsed by orjson a
    read at a time (the restore's fast path, :mod:`backup_assets.core.parse`). Whatever that path is not sure
    of makes the export be read again by :func:`iter_export`, which continues after the items already given
    (the fast path gives the same items ijson does) and reports errors exactly as it always does."""
    given = 0
    with open_stream() as stream:
        reader = _CountingReader(stream, surrogates=False)
        if reader.peek_start() == ord("["):
            try:
                for item in _fast_rows(reader):
                    yield item
                    given += 1
                return
            except (_Doubt, ExportParseError):
                pass
    with open_stream() as stream:
        for index, item in enumerate(iter_export(stream, source)):
            if index >= given:
                yield item


# -- the comparison -------------------------------------------------------------------------------

#: A way to read a side from the start: each call gives a fresh iterator over the export's rows.
RowSource = Callable[[], Iterable[Any]]


def _sort_key(value: Any) -> tuple:
    """A total order over JSON values (null first, then numbers, strings, everything else)."""
    if value is None:
        return (0, 0)
    if isinstance(value, (bool, int, float)):
        return (1, value)
    if isinstance(value, str):
        return (2, value)
    return (3, json.dumps(value, sort_keys=True, default=str))


def _checked(row: Any, index: int, side: str) -> tuple[str, int, Fields]:
    """A row's lower-cased model, pk and fields, or :class:`ExportParseError` naming what is wrong."""
    if type(row) is dict:
        model, pk, fields = row.get("model"), row.get("pk"), row.get("fields")
        if type(model) is str and model and type(pk) is int and type(fields) is dict:
            return model.lower(), pk, fields
    if not isinstance(row, dict):
        raise ExportParseError(f"{side}: a row must be an object, not {type(row).__name__}", row=index)
    model = row.get("model")
    if not isinstance(model, str) or not model:
        raise ExportParseError(f"{side}: the row has no 'model' string", row=index)
    model = model.lower()
    pk, fields = row.get("pk"), row.get("fields")
    if not isinstance(pk, int) or isinstance(pk, bool):
        raise ExportParseError(f"{side}: 'pk' must be an integer, not {pk!r}", row=index, model=model)
    if not isinstance(fields, dict):
        raise ExportParseError(f"{side}: 'fields' must be an object", row=index, model=model)
    return model, pk, fields


class PkOrdinals(Mapping[int, int]):
    """pk -> ordinal of a model whose pks ascend (ordinal = position + 1), kept as runs of consecutive pks in
    two integer arrays: a few bytes per gap in the pks, whatever the number of rows."""

    def __init__(self) -> None:
        self._starts, self._ordinals = array("q"), array("q")  # first pk and its ordinal, per run
        self._count = 0
        self._last: int | None = None
        self._big: dict[int, int] | None = None  # pks past 64 bits: a plain dict from then on

    def append(self, pk: int) -> None:
        """Add the next row's pk (greater than the last one)."""
        self._count += 1
        if self._big is not None:
            self._big[pk] = self._count
        elif self._last is None or pk != self._last + 1:
            try:
                self._starts.append(pk)
                self._ordinals.append(self._count)
            except OverflowError:
                self._big = {p: n for n, p in enumerate(self, 1)}
                self._big[pk] = self._count
        self._last = pk

    def get(self, pk: Any, default: Any = None) -> Any:
        if self._big is not None and pk in self._big:
            return self._big[pk]
        i = bisect_right(self._starts, pk) - 1 if isinstance(pk, int) else -1
        if i < 0:
            return default
        end = self._ordinals[i + 1] if i + 1 < len(self._ordinals) else self._count + 1
        ordinal = self._ordinals[i] + pk - self._starts[i]
        return ordinal if ordinal < end else default

    def __getitem__(self, pk: int) -> int:
        ordinal = self.get(pk)
        if ordinal is None:
            raise KeyError(pk)
        return ordinal

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[int]:
        if self._big is not None:
            yield from self._big
            return
        bounds = [*self._ordinals[1:], self._count + 1]
        for start, first, end in zip(self._starts, self._ordinals, bounds):
            yield from range(start, start + end - first)


@dataclass
class _Side:
    """What the pass learns of one side: per model its count, pks, ordering findings and datetime
    fields; the custom-ordinal models' key values; the usernames. Rows themselves are not kept."""

    label: str  # "left" or "right"
    counts: dict[str, int] = field(default_factory=dict)
    pks: dict[str, Mapping[int, int]] = field(default_factory=dict)
    unordered: dict[str, list[ComparatorFinding]] = field(default_factory=dict)
    custom: dict[str, list[tuple[tuple, int]]] = field(default_factory=dict)  # (key values, pk) in file order
    order: dict[str, list[int]] = field(default_factory=dict)  # custom model: file positions in ordinal order
    usernames: dict[int, Any] = field(default_factory=dict)
    dates: dict[str, set[str]] = field(default_factory=dict)
    dates_changed: set[str] = field(default_factory=set)  # models with datetime fields found since last looked at

    def note(self, model: str, pk: int, fields: Fields, dated: frozenset[str], previous: dict[str, int]) -> None:
        count = self.counts[model] = self.counts.get(model, 0) + 1
        custom = CUSTOM_ORDINALS.get(model)
        if custom is not None:
            self.custom.setdefault(model, []).append((tuple(fields.get(f) for f in custom), pk))
        else:
            last = previous.get(model)
            if last is not None and pk <= last:
                self.unordered.setdefault(model, []).append(
                    ComparatorFinding(
                        kind=Kind.UnorderedInput,
                        on=InstanceID(model, count),
                        **{f"{self.label}_pk": pk},
                        reason=f"{self.label}: pk {pk} does not follow pk {last} in ascending order",
                    )
                )
            else:
                pks = self.pks.get(model)
                if pks is None:
                    pks = self.pks[model] = PkOrdinals()
                pks.append(pk)  # type: ignore[attr-defined]
            previous[model] = pk
        if model == "sentry.user":
            self.usernames[pk] = fields.get("username")
        if model in dated:
            known = self.dates.setdefault(model, set())
            found = [
                f
                for f, v in fields.items()
                if type(v) is str and v[4:5] == "-" and f not in known and parse_datetime(v) is not None
            ]
            if found:
                known.update(found)
                self.dates_changed.add(model)

    def order_custom(self, model: str) -> list[ComparatorFinding]:
        """Number a custom-ordinal model's rows by their sorted key tuples; findings for duplicate tuples."""
        entries, custom = self.custom.get(model, []), CUSTOM_ORDINALS[model]

        def key(values: tuple) -> tuple:
            return tuple(
                _sort_key(self.usernames.get(v, v) if f in _USER_FIELDS and isinstance(v, int) else v)
                for f, v in zip(custom, values)
            )

        keys = sorted((key(values), i) for i, (values, _) in enumerate(entries))
        self.order[model] = [i for _, i in keys]
        self.pks[model] = {entries[i][1]: n for n, (_, i) in enumerate(keys, 1)}
        self.custom.pop(model, None)
        if model in RENUMBERED_ON_DUPLICATES:
            return []
        return [
            ComparatorFinding(
                kind=Kind.DuplicateCustomOrdinal,
                on=InstanceID(model, n + 1),
                **{f"{self.label}_pk": entries[keys[n][1]][1]},
                reason=f"{self.label}: ({', '.join(f'{f}={v[-1]!r}' for f, v in zip(custom, keys[n][0]))})"
                " appears more than once",
            )
            for n in range(1, len(keys))
            if keys[n][0] == keys[n - 1][0]
        ]


def _json_lines(fields: Fields) -> list[str]:
    return json.dumps(fields, sort_keys=True, indent=2, ensure_ascii=False, default=str).splitlines()


def _strictly_equal(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return a.keys() == b.keys() and all(_strictly_equal(v, b[k]) for k, v in a.items())
    if type(a) is list:
        return len(a) == len(b) and all(map(_strictly_equal, a, b))
    return a == b


def _same_json(a: Any, b: Any) -> bool:
    """Whether two parsed JSON values are written alike (``1``, ``1.0`` and ``true`` are not)."""
    if a != b:
        return False
    try:
        return orjson.dumps(a, option=orjson.OPT_SORT_KEYS) == orjson.dumps(b, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # an integer past 64 bits, say
        return _strictly_equal(a, b)


def _quick(m: Match, comparators: list[Comparator], handled: frozenset[str]) -> bool:
    """True only when the pair has no findings: every comparator's quick test passes and the fields no
    comparator handles are alike (the usual case, decided without copying the rows)."""
    return all(c.quick_ok(m) for c in comparators) and _same_json(
        {k: v for k, v in m.left.items() if k not in handled}, {k: v for k, v in m.right.items() if k not in handled}
    )


def _compare_pair(m: Match, comparators: list[Comparator]) -> list[ComparatorFinding]:
    """The findings of one pair: each comparator's existence check, else its check; then whatever fields no
    comparator handled must be written alike (``UnequalJSON`` with a unified diff)."""
    m.left, m.right = dict(m.left), dict(m.right)
    found: list[ComparatorFinding] = []
    for comparator in comparators:
        missing = comparator.existence(m)
        found.extend(missing if missing else comparator.compare(m))
    for comparator in comparators:
        comparator.scrub(m)
    if _same_json(m.left, m.right):
        return found
    diff = list(difflib.unified_diff(_json_lines(m.left), _json_lines(m.right), "left", "right", lineterm=""))
    if diff:
        found.append(m.finding(Kind.UnequalJSON, "\n".join(diff)))
    return found


def _model_comparators(
    model: str, table: Mapping[str, list[Comparator]], manifest: Manifest, dates: set[str]
) -> list[Comparator]:
    """The table's comparators for ``model`` plus the automatic datetime and foreign-key ones."""
    found = list(table.get(model, ()))
    if found:
        claimed = {f for c in found if isinstance(c, (DateUpdatedComparator, IgnoredComparator)) for f in c.fields}
        if dates - claimed:
            found.append(DatetimeEqualityComparator(*(dates - claimed)))
    spec = manifest.models.get(model)
    if spec is not None and spec.foreign_keys:
        found.append(ForeignKeyComparator({fk.field: fk.model for fk in spec.foreign_keys}))
    return found


def _pairs(
    left: Iterable[Any], right: Iterable[Any], compared: Mapping[str, int], names: tuple[str, str]
) -> Iterator[tuple[str, Any, Any]]:
    """(model, left row, right row): the n-th row of a model on the left with the n-th on the right, in the
    left's order. Right rows that come before their turn (inputs in different orders) wait in an encrypted
    spill queue; in Sentry's order none wait. Only ``compared`` models (model -> row count) are paired."""
    waiting: dict[str, RowSpill] = {}
    right_rows = iter(right)
    try:
        for row in left:
            model = row["model"].lower()
            if model not in compared:
                continue
            queue = waiting.get(model)
            if queue:
                yield model, row, queue.pop()
                continue
            for other in right_rows:
                other_model = other["model"].lower()
                if other_model == model:
                    yield model, row, other
                    break
                if other_model in compared:
                    waiting.setdefault(other_model, RowSpill()).push(other)
            else:
                raise ExportParseError(
                    f"{names[1]}: has fewer {model} rows than when it was first read "
                    "(it changed during the comparison)",
                    model=model,
                )
    finally:
        for queue in waiting.values():
            queue.close()


@dataclass
class _Row:
    pk: int
    fields: Fields


@dataclass
class _ModelPlan:
    """A model's comparators, the fields they handle, its foreign-key comparator, and the datetime fields
    the plan was made for."""

    comparators: list[Comparator]
    handled: frozenset[str]
    foreign_keys: ForeignKeyComparator | None
    dates: frozenset[str]


class _Comparison:
    """One comparison: a single pass over both sides together, and what is left to do after it.

    Each row is noted as it is read (count, pk, ordering, custom-ordinal key, datetime fields) and the n-th
    rows of a model on both sides are compared as they meet, when that can be decided now:

    * a pair whose foreign keys point at rows not seen yet (or at a custom-ordinal model, numbered only at
      the end) waits in an encrypted spill and is compared once everything was read;
    * rows of custom-ordinal models are held until the end (they are numbered by sorted keys);
    * a model whose datetime fields (which decide its comparators) grow after pairs holding such a field
      were compared is "dirty": it is compared again, alone, in a second pass over both sides.

    Pair findings are kept only if the pass finds no ordering problem and no unequal counts (else those
    are the findings, as in Sentry's validator, which stops there).
    """

    def __init__(self, manifest: Manifest, table: Mapping[str, list[Comparator]], names: tuple[str, str]) -> None:
        self.manifest, self.table, self.names = manifest, table, names
        self.dated = frozenset(model for model, found in table.items() if found)
        self.sides = (_Side("left"), _Side("right"))
        self.previous: tuple[dict[str, int], dict[str, int]] = ({}, {})
        self.plans: dict[str, _ModelPlan] = {}
        self.ordinals: dict[str, int] = {}
        self.used: dict[str, set[str]] = {}  # dated model -> fields of the pairs compared so far
        self.dirty: set[str] = set()
        self.held: dict[str, tuple[list[_Row], list[_Row]]] = {}
        self.deferred = RowSpill()
        self.findings: list[ComparatorFinding] = []

    def read(self, left: Iterable[Any], right: Iterable[Any]) -> None:
        """The pass: left rows in their order, each with the next right row of its model."""
        right_rows = self._noted(right, 1)
        waiting: dict[str, RowSpill] = {}
        short = False  # the right side ran out of a model's rows: counts differ, pairs no longer matter
        try:
            for model, pk, fields in self._noted(left, 0):
                if model not in self.manifest or short:
                    continue
                queue = waiting.get(model)
                other = queue.pop() if queue else self._next(model, right_rows, waiting)
                if other is None:
                    short = True
                    for queue in waiting.values():
                        queue.close()
                else:
                    self._pair(model, pk, fields, *other)
            for _ in right_rows:  # the rest of the right side is noted (counts)
                pass
        finally:
            for queue in waiting.values():
                queue.close()

    def _noted(self, rows: Iterable[Any], side: int) -> Iterator[tuple[str, int, Fields]]:
        noted, previous, name = self.sides[side], self.previous[side], self.names[side]
        for index, row in enumerate(rows):
            model, pk, fields = _checked(row, index, name)
            noted.note(model, pk, fields, self.dated, previous)
            yield model, pk, fields

    def _next(
        self, model: str, right_rows: Iterator[tuple[str, int, Fields]], waiting: dict[str, RowSpill]
    ) -> tuple[int, Fields] | None:
        """The next right row of ``model``; rows of other models read on the way wait in a spill queue."""
        for other, pk, fields in right_rows:
            if other == model:
                return pk, fields
            if other in self.manifest:
                queue = waiting.get(other)
                if queue is None:
                    queue = waiting[other] = RowSpill()
                queue.push([pk, fields])
        return None

    def _pair(self, model: str, left_pk: int, left: Fields, right_pk: int, right: Fields) -> None:
        if model in CUSTOM_ORDINALS:
            held = self.held.setdefault(model, ([], []))
            held[0].append(_Row(left_pk, left))
            held[1].append(_Row(right_pk, right))
            return
        ordinal = self.ordinals[model] = self.ordinals.get(model, 0) + 1
        plan = self._plan(model)
        if model in self.dirty:
            return
        if model in self.dated:
            used = self.used.setdefault(model, set())
            used.update(left)
            used.update(right)
        m = Match(InstanceID(model, ordinal), left_pk, right_pk, left, right)
        if _quick(m, plan.comparators, plan.handled):
            return
        if plan.foreign_keys is not None and not self._resolved(plan.foreign_keys, left, right):
            self.deferred.push([model, ordinal, left_pk, left, right_pk, right])
            return
        self.findings.extend(_compare_pair(m, plan.comparators))

    def _plan(self, model: str) -> _ModelPlan:
        """The model's comparators for the datetime fields seen so far (made again when they grow)."""
        plan = self.plans.get(model)
        if plan is not None and not (model in self.sides[0].dates_changed or model in self.sides[1].dates_changed):
            return plan
        for side in self.sides:
            side.dates_changed.discard(model)
        dates = frozenset(self.sides[0].dates.get(model, set()) | self.sides[1].dates.get(model, set()))
        if plan is not None and (dates - plan.dates) & self.used.get(model, set()):
            self.dirty.add(model)
        comparators = _model_comparators(model, self.table, self.manifest, set(dates))
        foreign_keys = next((c for c in comparators if isinstance(c, ForeignKeyComparator)), None)
        if foreign_keys is not None:
            foreign_keys.set_primary_key_maps(self.sides[0].pks, self.sides[1].pks)
        plan = self.plans[model] = _ModelPlan(
            comparators, frozenset(f for c in comparators for f in c.fields), foreign_keys, dates
        )
        return plan

    def _resolved(self, comparator: ForeignKeyComparator, left: Fields, right: Fields) -> bool:
        """Whether every foreign key of the pair points at a row already numbered on its side."""
        for f, target in comparator.targets.items():
            for side, fields in zip(self.sides, (left, right)):
                value = fields.get(f)
                if isinstance(value, int) and (
                    target in CUSTOM_ORDINALS or target not in side.pks or side.pks[target].get(value) is None
                ):
                    return False
        return True

    def _compare_now(self, model: str, ordinal: int, left: _Row, right: _Row) -> None:
        plan = self._plan(model)
        m = Match(InstanceID(model, ordinal), left.pk, right.pk, left.fields, right.fields)
        if not _quick(m, plan.comparators, plan.handled):
            self.findings.extend(_compare_pair(m, plan.comparators))

    def finish(self, models: list[str], left: RowSource, right: RowSource) -> list[ComparatorFinding]:
        """What the pass left: held custom-ordinal models, deferred pairs, dirty models; findings in order."""
        for model, (lefts, rights) in self.held.items():
            orders = self.sides[0].order[model], self.sides[1].order[model]
            for ordinal, (i, j) in enumerate(zip(*orders), 1):
                self._compare_now(model, ordinal, lefts[i], rights[j])
        self.held.clear()
        for model, ordinal, left_pk, left_fields, right_pk, right_fields in self.deferred.drain():
            if model not in self.dirty:
                self._compare_now(model, ordinal, _Row(left_pk, left_fields), _Row(right_pk, right_fields))
        if self.dirty:
            self.findings = [f for f in self.findings if f.on.model not in self.dirty]
            counts = {model: self.sides[0].counts[model] for model in self.dirty}
            ordinals: dict[str, int] = {}
            for model, left_row, right_row in _pairs(left(), right(), counts, self.names):
                ordinals[model] = ordinal = ordinals.get(model, 0) + 1
                self._compare_now(
                    model, ordinal, _Row(left_row["pk"], left_row["fields"]), _Row(right_row["pk"], right_row["fields"])
                )
        rank = {model: i for i, model in enumerate(models)}
        return sorted(self.findings, key=lambda f: (rank[f.on.model], f.on.ordinal or 0))


def _first_pass_findings(sides: tuple[_Side, _Side], models: list[str]) -> list[ComparatorFinding]:
    """Ordering findings of each side, then a finding per model whose counts differ."""
    findings: list[ComparatorFinding] = []
    for side in sides:
        for model in models:
            findings.extend(side.order_custom(model) if model in CUSTOM_ORDINALS else side.unordered.get(model, ()))
    for model in models:
        counts = sides[0].counts.get(model, 0), sides[1].counts.get(model, 0)
        if counts[0] != counts[1]:
            findings.append(
                ComparatorFinding(
                    kind=Kind.UnequalCounts,
                    on=InstanceID(model),
                    reason=f"{counts[0]} left rows, {counts[1]} right rows",
                )
            )
    return findings


def compare_sources(
    left: RowSource,
    right: RowSource,
    manifest: Manifest,
    comparators: Mapping[str, list[Comparator]] | None = None,
    *,
    names: tuple[str, str] = ("left", "right"),
    skipped: dict[str, tuple[int, int]] | None = None,
) -> list[ComparatorFinding]:
    """Compare two exports in bounded memory; each side is read by calling its source (once, or twice when
    a model's comparators could only be known at the end: see :class:`_Comparison`).

    Held in memory: per model its count and its pks as runs of integers, the rows of custom-ordinal models
    (users' emails and options, options, relays), usernames; rows of the other models are compared as they
    come, or wait in an encrypted spill. See :func:`compare` for the arguments and the findings.
    """
    run = _Comparison(manifest, default_comparators() if comparators is None else comparators, names)
    try:
        run.read(left(), right())
        models = []
        for model in dict.fromkeys([*run.sides[0].counts, *run.sides[1].counts]):
            if model in manifest:
                models.append(model)
            elif skipped is not None:
                skipped[model] = (run.sides[0].counts.get(model, 0), run.sides[1].counts.get(model, 0))
        return _first_pass_findings(run.sides, models) or run.finish(models, left, right)
    finally:
        run.deferred.close()


def compare(
    left_rows: Iterable[Any],
    right_rows: Iterable[Any],
    manifest: Manifest,
    comparators: Mapping[str, list[Comparator]] | None = None,
    *,
    names: tuple[str, str] = ("left", "right"),
    skipped: dict[str, tuple[int, int]] | None = None,
) -> list[ComparatorFinding]:
    """Compare two exports' rows (left: the original, right: the copy) and return the differences.

    ``comparators`` maps a model to its comparators (default: :func:`default_comparators`); foreign-key
    and datetime comparators are added automatically. ``names`` label the sides in error messages.
    Rows of models the manifest does not know are not compared, as Sentry's validator only knows the
    models of its dependency graph (an old export's ``sites.site``, say); ``skipped`` receives their
    counts (model -> (left rows, right rows)).
    Raises :class:`ExportParseError` for a row that is not ``{"model": str, "pk": int, "fields": {...}}``.

    A side may have to be read a second time (see :class:`_Comparison`), so a side given as a one-shot
    iterator is first kept in a list. To compare in bounded memory, give :func:`compare_sources` a way to
    read each side again.
    """
    sources = []
    for rows in (left_rows, right_rows):
        again = list(rows) if iter(rows) is rows else rows
        sources.append(lambda again=again: iter(again))
    return compare_sources(sources[0], sources[1], manifest, comparators, names=names, skipped=skipped)
