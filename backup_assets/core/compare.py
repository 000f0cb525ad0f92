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

Memory: the input is parsed as a stream (ijson), but both sides' rows are held in memory, grouped by
model, for the duration of the comparison (ordinals of a custom-ordinal model are known only once all
of its rows are seen, and counts are checked before any row is compared).
"""
from __future__ import annotations

import ast
import difflib
import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, BinaryIO, ClassVar

import ijson

from .errors import ExportParseError
from .findings import ComparatorFinding, ComparatorFindingKind as Kind, InstanceID
from .manifest import Manifest

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
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


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
        return ComparatorFinding(kind=kind, on=self.on, left_pk=self.left_pk, right_pk=self.right_pk,
                                 reason=reason)


# -- comparators ----------------------------------------------------------------------------------

class Comparator:
    """Checks some fields of a matched pair, then scrubs them from the final JSON diff.

    Subclasses set :attr:`kind` and implement :meth:`check` (one field whose value is present on
    both sides -> a reason, or ``None`` when fine); a few override :meth:`existence`/:meth:`compare`.
    """

    kind: ClassVar[Kind] = Kind.Unknown

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
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


class IgnoredComparator(Comparator):
    """No check at all: the fields are only left out of the diff."""

    kind = Kind.IgnoredComparator

    def existence(self, m: Match) -> list[ComparatorFinding]:
        return []

    def check(self, field: str, left: Any, right: Any) -> str | None:
        return None


class AutoSuffixComparator(Comparator):
    """Equal, or the right value is the left one plus ``-<suffix>`` (a slug or username made unique)."""

    kind = Kind.AutoSuffixComparator

    def check(self, field: str, left: Any, right: Any) -> str | None:
        if left == right or (isinstance(left, str) and isinstance(right, str) and right.startswith(left + "-")):
            return None
        return f"the left value ({left!r}) of `{field}` is neither equal to nor a dashed prefix of the right value ({right!r})"


class DatetimeEqualityComparator(Comparator):
    """Both values are the same instant (``.000`` milliseconds or ``Z`` spelled or not)."""

    kind = Kind.DatetimeEqualityComparator

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

    def check(self, field: str, left: Any, right: Any) -> str | None:
        lt, rt = parse_datetime(left) or _EPOCH, parse_datetime(right) or _EPOCH
        if lt > rt:
            return f"the left value ({left}) of `{field}` is later than the right value ({right})"
        return None


class _ObfuscatingComparator(Comparator):
    """Equality of private values; reasons show only an obfuscated form of them."""

    def obfuscate(self, value: Any) -> str:
        raise NotImplementedError

    def check(self, field: str, left: Any, right: Any) -> str | None:
        if left == right:
            return None
        return (f"the left value ({self.obfuscate(left)}) of `{field}` is not equal to the right value "
                f"({self.obfuscate(right)})")


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

    def compare(self, m: Match) -> list[ComparatorFinding]:
        found = []
        if m.left.get("is_unclaimed") and not m.right.get("is_unclaimed"):
            found.append(m.finding(self.kind, "the left user is unclaimed but the right one is claimed; "
                                              "an import never claims a user"))
        if not m.right.get("is_unclaimed"):
            return found + super().compare(m)
        if m.left.get("password") == m.right.get("password"):
            found.append(m.finding(self.kind, "`password` is unchanged, but an unclaimed user's must be new"))
        left_change, right_change = m.left.get("last_password_change"), m.right.get("last_password_change")
        if (parse_datetime(left_change) or _EPOCH) > (parse_datetime(right_change) or _EPOCH):
            found.append(m.finding(self.kind, f"the left value ({left_change}) of `last_password_change` is later "
                                              f"than the right value ({right_change})"))
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
        items = self.as_list(left), self.as_list(right)
        bad = [side for side, v in zip(("left", "right"), items) if v is None]
        if bad:
            return f"the {' and '.join(bad)} value of `{field}` is not a list"
        if sorted(items[0], key=_sort_key) != sorted(items[1], key=_sort_key):
            return f"the left value ({left!r}) of `{field}` does not hold the same items as the right value ({right!r})"
        return None


class EqualOrRemovedComparator(Comparator):
    """Equal, unless the right side no longer has the value (null or absent)."""

    kind = Kind.EqualOrRemovedComparator

    def existence(self, m: Match) -> list[ComparatorFinding]:
        return [m.finding(self.existence_kind, f"the left value of `{f}` is missing but the right one is set")
                for f in self.fields if m.left.get(f) is None and m.right.get(f) is not None]

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

    def set_primary_key_maps(self, left: Mapping[str, Mapping[int, int]],
                             right: Mapping[str, Mapping[int, int]]) -> None:
        """Each side's model -> {pk: ordinal}; needed before :meth:`compare`."""
        self._maps = (left, right)

    def exempt(self, m: Match, field: str) -> bool:
        """The left value dangles and the right one is null: the import dropped the reference."""
        return m.right.get(field) is None and self._ordinal(0, field, m.left.get(field)) is None

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
            return (f"the left value of `{field}` points at {target} #{ordinals[0]}, the right value at "
                    f"{target} #{ordinals[1]}")
        return None


def default_comparators() -> dict[str, list[Comparator]]:
    """The per-model comparators of Sentry's validator (fresh instances at every call)."""
    def updated(*fields: str) -> list[Comparator]:
        return [DateUpdatedComparator(*fields)]

    return {
        "sentry.alertrule": updated("date_modified"),
        "sentry.apiapplication": [HashObfuscatingComparator("client_id", "client_secret")],
        "sentry.apitoken": [HashObfuscatingComparator("refresh_token", "token"),
                            IgnoredComparator("hashed_token", "hashed_refresh_token", "token_last_characters"),
                            UnorderedListComparator("scope_list")],
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
        "sentry.projectkey": [HashObfuscatingComparator("public_key", "secret_key"),
                              SecretHexComparator(16, "public_key", "secret_key")],
        "sentry.projecttemplate": updated("date_updated"),
        "sentry.querysubscription": [DateUpdatedComparator("date_updated"),
                                     SubscriptionIDComparator("subscription_id")],
        "sentry.relay": [HashObfuscatingComparator("relay_id", "public_key")],
        "sentry.relayusage": [HashObfuscatingComparator("relay_id", "public_key")],
        "sentry.sentryapp": [DateUpdatedComparator("date_updated"), EmailObfuscatingComparator("creator_label")],
        "sentry.sentryappinstallation": updated("date_updated"),
        "sentry.servicehook": [HashObfuscatingComparator("secret")],
        "sentry.team": [IgnoredComparator("org_role")],
        "sentry.user": [AutoSuffixComparator("username"), DateUpdatedComparator("last_active"),
                        IgnoredComparator("last_password_change", "is_unclaimed", "is_password_expired"),
                        UserPasswordObfuscatingComparator(), EmailObfuscatingComparator("email")],
        "sentry.useremail": [DateUpdatedComparator("date_hash_added"),
                             IgnoredComparator("validation_hash", "is_verified"), EmailObfuscatingComparator("email")],
        "sentry.userip": [DateUpdatedComparator("first_seen", "last_seen"),
                          IgnoredComparator("country_code", "region_code")],
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
        raise ExportParseError(f"{source}: a Sentry export is a JSON list of rows, but this one starts with "
                               f"{chr(first)!r}")
    index = 0
    try:
        for item in ijson.items(reader, "item", use_float=True):
            yield item
            index += 1
    except ijson.JSONError as e:
        detail = (str(e).strip().splitlines() or ["unexpected end of input"])[0]
        raise ExportParseError(f"{source}: not valid JSON: {detail}", row=index) from None


# -- the comparison -------------------------------------------------------------------------------

@dataclass
class _Row:
    pk: int
    fields: Fields


def _sort_key(value: Any) -> tuple:
    """A total order over JSON values (null first, then numbers, strings, everything else)."""
    if value is None:
        return (0, 0)
    if isinstance(value, (bool, int, float)):
        return (1, value)
    if isinstance(value, str):
        return (2, value)
    return (3, json.dumps(value, sort_keys=True, default=str))


def _group(rows: Iterable[Any], side: str) -> dict[str, list[_Row]]:
    """Check each row's shape and group the rows per (lower-cased) model, in file order."""
    grouped: dict[str, list[_Row]] = {}
    for index, row in enumerate(rows):
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
        grouped.setdefault(model, []).append(_Row(pk, fields))
    return grouped


def _ordered(side: str, model: str, rows: list[_Row], usernames: Mapping[int, Any]
             ) -> tuple[list[_Row], list[ComparatorFinding]]:
    """The model's rows in ordinal order (ordinal = index + 1), with ordering findings."""
    pk_side = "left_pk" if side == "left" else "right_pk"
    custom = CUSTOM_ORDINALS.get(model)
    if custom is None:
        found = [ComparatorFinding(kind=Kind.UnorderedInput, on=InstanceID(model, i + 1), **{pk_side: row.pk},
                                   reason=f"{side}: pk {row.pk} does not follow pk {rows[i - 1].pk} in ascending order")
                 for i, row in enumerate(rows) if i and row.pk <= rows[i - 1].pk]
        return rows, found

    def key(row: _Row) -> tuple:
        values = []
        for f in custom:
            value = row.fields.get(f)
            if f in _USER_FIELDS and isinstance(value, int):
                value = usernames.get(value, value)
            values.append(_sort_key(value))
        return tuple(values)

    keys = sorted(((key(row), i) for i, row in enumerate(rows)))
    ordered = [rows[i] for _, i in keys]
    found = []
    if model not in RENUMBERED_ON_DUPLICATES:
        for n in range(1, len(keys)):
            if keys[n][0] == keys[n - 1][0]:
                row = ordered[n]
                shown = ", ".join(f"{f}={v[-1]!r}" for f, v in zip(custom, keys[n][0]))
                found.append(ComparatorFinding(kind=Kind.DuplicateCustomOrdinal, on=InstanceID(model, n + 1),
                                               **{pk_side: row.pk}, reason=f"{side}: ({shown}) appears more than once"))
    return ordered, found


def _datetime_fields(rows: Iterable[_Row]) -> set[str]:
    return {f for row in rows for f, v in row.fields.items() if parse_datetime(v) is not None}


def _model_comparators(model: str, table: Mapping[str, list[Comparator]], manifest: Manifest,
                       rows: Iterable[_Row]) -> list[Comparator]:
    """The table's comparators for ``model`` plus the automatic datetime and foreign-key ones."""
    found = list(table.get(model, ()))
    if found:
        claimed = {f for c in found if isinstance(c, (DateUpdatedComparator, IgnoredComparator)) for f in c.fields}
        dates = _datetime_fields(rows) - claimed
        if dates:
            found.append(DatetimeEqualityComparator(*dates))
    spec = manifest.models.get(model)
    if spec is not None and spec.foreign_keys:
        found.append(ForeignKeyComparator({fk.field: fk.model for fk in spec.foreign_keys}))
    return found


def _json_lines(fields: Fields) -> list[str]:
    return json.dumps(fields, sort_keys=True, indent=2, ensure_ascii=False, default=str).splitlines()


def _compare_pair(m: Match, comparators: list[Comparator]) -> list[ComparatorFinding]:
    found: list[ComparatorFinding] = []
    for comparator in comparators:
        missing = comparator.existence(m)
        found.extend(missing if missing else comparator.compare(m))
    for comparator in comparators:
        comparator.scrub(m)
    diff = list(difflib.unified_diff(_json_lines(m.left), _json_lines(m.right), "left", "right", lineterm=""))
    if diff:
        found.append(m.finding(Kind.UnequalJSON, "\n".join(diff)))
    return found


def compare(left_rows: Iterable[Any], right_rows: Iterable[Any], manifest: Manifest,
            comparators: Mapping[str, list[Comparator]] | None = None, *,
            names: tuple[str, str] = ("left", "right"),
            skipped: dict[str, tuple[int, int]] | None = None) -> list[ComparatorFinding]:
    """Compare two exports' rows (left: the original, right: the copy) and return the differences.

    ``comparators`` maps a model to its comparators (default: :func:`default_comparators`); foreign-key
    and datetime comparators are added automatically. ``names`` label the sides in error messages.
    Rows of models the manifest does not know are not compared, as Sentry's validator only knows the
    models of its dependency graph (an old export's ``sites.site``, say); ``skipped`` receives their
    counts (model -> (left rows, right rows)).
    Raises :class:`ExportParseError` for a row that is not ``{"model": str, "pk": int, "fields": {...}}``.
    """
    table = default_comparators() if comparators is None else comparators
    sides = (_group(left_rows, names[0]), _group(right_rows, names[1]))
    models = []
    for model in dict.fromkeys([*sides[0], *sides[1]]):
        if model in manifest:
            models.append(model)
        elif skipped is not None:
            skipped[model] = (len(sides[0].get(model, ())), len(sides[1].get(model, ())))

    findings: list[ComparatorFinding] = []
    ordered: tuple[dict[str, list[_Row]], dict[str, list[_Row]]] = ({}, {})
    for side, grouped, out in zip(("left", "right"), sides, ordered):
        usernames = {row.pk: row.fields.get("username") for row in grouped.get("sentry.user", ())}
        for model in models:
            out[model], found = _ordered(side, model, grouped.get(model, []), usernames)
            findings.extend(found)
    for model in models:
        counts = len(ordered[0][model]), len(ordered[1][model])
        if counts[0] != counts[1]:
            findings.append(ComparatorFinding(kind=Kind.UnequalCounts, on=InstanceID(model),
                                              reason=f"{counts[0]} left rows, {counts[1]} right rows"))
    if findings:
        return findings

    pk_maps = tuple({model: {row.pk: n for n, row in enumerate(rows, 1)} for model, rows in side.items()}
                    for side in ordered)
    for model in models:
        pairs = list(zip(ordered[0][model], ordered[1][model]))
        model_comparators = _model_comparators(model, table, manifest, (r for pair in pairs for r in pair))
        for comparator in model_comparators:
            if isinstance(comparator, ForeignKeyComparator):
                comparator.set_primary_key_maps(*pk_maps)
        for ordinal, (left, right) in enumerate(pairs, 1):
            m = Match(InstanceID(model, ordinal), left.pk, right.pk, dict(left.fields), dict(right.fields))
            findings.extend(_compare_pair(m, model_comparators))
    return findings
