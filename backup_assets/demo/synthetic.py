"""Generated Sentry-format exports: realistic rows for tests, the demo and the benchmarks.

Rows look like those of a real ``sentry export``: ``{"model", "pk", "fields"}``, grouped by model in
the built-in manifest's dependency order, ascending pks within a model, every foreign-key field the
manifest lists present under the manifest's name (``organization``, ``user_id``, ...), values typed
as Sentry writes them (ISO datetimes with milliseconds and ``Z``, some without milliseconds as older
exports have them; bit flags as strings of ints; JSON objects; JSON held in strings; booleans; nulls).
Unique constraints of the manifest hold within one generated export.

Everything is computed from row indexes, so generation streams in constant memory and the row counts
are known in advance (:func:`count_rows`).

Row counts. With ``s = scale``, ``U = users*s`` users, ``O = orgs*s`` organizations, ``P =
projects_per_org*s`` projects and ``M = members_per_org*s`` members per organization, ``T =
teams_per_org`` teams per organization (not scaled), ``N = options*s`` options, ``R = s`` relays,
``L = n - n//3`` members with a user per organization where ``n = min(M, U)`` (every third member,
and every member beyond the U-th, is a pending invite), ``Q = min(P, 2)``::

    per user:          user, email, useremail, userip (1 each), useroption (2), authenticator (1 every 2nd
                       user), userpermission and userroleuser (1 every 50th user)
    per organization:  organization 1, organizationoption 2, projecttemplate (every 2nd org), team T,
                       environment 2, project P, projectkey P, projectoption P, projectteam P (if T > 0),
                       environmentproject 2*Q, rule Q, organizationmember M,
                       organizationmemberteam L (if T > 0), savedsearch 1, dashboard 1,
                       dashboardwidget 2, dashboardwidgetquery 2
    once:              userrole 2, savedsearch 1 (a global one), option N, controloption N, relay R,
                       relayusage 2R

The bulk is ``O*(4P + M + L)``, which grows with ``s**2``: the defaults give 112 rows at ``scale=1``,
25,824 at ``scale=30``, 1,056,143 at ``scale=200``. :func:`scale_for_rows` finds the scale for a
wanted size.

Deliberate irregularities, as real exports have them: pending invites (``user_id`` null, an
``email``), organization members whose ``inviter_id`` names a user that is not in the export (every
odd organization's second member), and nullable foreign keys that are sometimes null
(``project.template``, ``rule.environment_id`` / ``owner_team`` / ``owner_user_id``,
``useroption.organization_id`` / ``project_id``, ``savedsearch.organization`` / ``owner_id``).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from random import Random
from typing import IO

from ..core.errors import ConfigurationError
from ..core.manifest import Manifest

__all__ = ["generate_rows", "count_rows", "write_export", "demo_rows", "scale_for_rows"]

_EPOCH = datetime(2023, 6, 22, 22, 54, 28, tzinfo=UTC)
_FIRST = (
    "alice",
    "bob",
    "carol",
    "dave",
    "erin",
    "frank",
    "grace",
    "heidi",
    "ivan",
    "judy",
    "mallory",
    "niaj",
    "olivia",
    "peggy",
    "rupert",
    "sybil",
    "trent",
    "victor",
    "walter",
    "zoe",
)
_ORGS = (
    "Acme",
    "Globex",
    "Initech",
    "Umbrella",
    "Hooli",
    "Wayne Enterprises",
    "Stark Industries",
    "Tyrell",
    "Cyberdyne",
    "Soylent",
)
_PROJECTS = ("web", "api", "mobile", "worker", "billing", "search", "checkout", "auth")
_TEAMS = ("backend", "frontend", "platform", "sre", "data")
_PLATFORMS = ("python", "javascript", "go", None, "java", "ruby")
_OPTION_KEYS = (
    "sentry:version-configured",
    "system.url-prefix",
    "system.admin-email",
    "sentry:last_worker_ping",
    "auth.ip-rate-limit",
)
_CONTROL_OPTION_KEYS = ("system.secret-key-rotated", "auth.allow-registration", "mail.from")
_RULE_DATA = json.dumps(
    {
        "match": "all",
        "conditions": [{"id": "sentry.rules.conditions.first_seen_event.FirstSeenEventCondition"}],
        "actions": [
            {
                "id": "sentry.mail.actions.NotifyEmailAction",
                "targetType": "IssueOwners",
                "targetIdentifier": None,
                "fallthroughType": "ActiveMembers",
            }
        ],
    },
    separators=(",", ":"),
)
_ROLE_PERMISSIONS = ("['broadcasts.admin', 'users.admin', 'options.admin']", "['users.admin']")


def _pick(pool: tuple[str, ...], i: int) -> str:
    """The i-th name of a pool; past the pool's end the names repeat with a number, so they stay unique."""
    n = len(pool)
    return pool[i % n] if i < n else f"{pool[i % n]}{i // n}"


def _slug(name: str) -> str:
    return name.lower().replace(" ", "-")


def _iso(seconds: float, *, millis: bool = True) -> str:
    """A Sentry export datetime ``_EPOCH + seconds``; without milliseconds the time is whole seconds."""
    t = _EPOCH + timedelta(seconds=seconds if millis else int(seconds))
    head = t.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{head}.{t.microsecond // 1000:03d}Z" if millis else head + "Z"


def _when(rng: Random, i: int) -> str:
    """A creation time for row ``i``: rows get later with their index; one row in seven has no millis."""
    return _iso(i * 61.0 + rng.random() * 60.0, millis=i % 7 != 3)


def _hex(rng: Random, chars: int) -> str:
    return f"{rng.getrandbits(chars * 4):0{chars}x}"


def _unique_hex(rng: Random, index: int, chars: int = 32) -> str:
    """Random-looking hex of ``chars`` digits that is unique per ``index`` (the index is its prefix)."""
    head = f"{index:010x}"
    return head + _hex(rng, chars - len(head))


@dataclass(frozen=True)
class _Plan:
    """The shape of one generated export: counts, and how row indexes map to pks."""

    users: int  # U
    orgs: int  # O
    projects: int  # P, per organization
    teams: int  # T, per organization
    members: int  # M, per organization
    options: int  # N
    relays: int  # R
    seed: int
    offset: int

    def pk(self, index: int) -> int:
        return index + 1 + self.offset

    @property
    def linked_members(self) -> int:
        """L: members per organization that have a user (the others are pending invites)."""
        n = min(self.members, self.users)
        return n - n // 3

    def member_user(self, org: int, k: int) -> int | None:
        """The user index of member ``k`` of organization ``org``, or None for a pending invite."""
        if k % 3 == 2 or k >= self.users:
            return None
        return (org + k) % self.users

    def owner(self, org: int) -> int:
        """The user pk of an organization's owner (its member 0)."""
        return self.pk(org % self.users)

    @property
    def rules_per_org(self) -> int:
        return min(self.projects, 2)


def _plan(
    orgs: int,
    users: int,
    projects_per_org: int,
    teams_per_org: int,
    members_per_org: int,
    options: int,
    scale: int,
    seed: int,
    pk_offset: int,
) -> _Plan:
    values = {
        "orgs": orgs,
        "users": users,
        "projects_per_org": projects_per_org,
        "teams_per_org": teams_per_org,
        "members_per_org": members_per_org,
        "options": options,
        "pk_offset": pk_offset,
    }
    for name, value in values.items():
        if not isinstance(value, int) or value < 0:
            raise ConfigurationError(f"synthetic export: {name} must be a non-negative integer, not {value!r}")
    if not isinstance(scale, int) or scale < 1:
        raise ConfigurationError(f"synthetic export: scale must be a positive integer, not {scale!r}")
    if orgs and not users:
        raise ConfigurationError("synthetic export: organizations need at least one user (their owner)")
    return _Plan(
        users=users * scale,
        orgs=orgs * scale,
        projects=projects_per_org * scale,
        teams=teams_per_org,
        members=members_per_org * scale,
        options=options * scale,
        relays=scale,
        seed=seed,
        offset=pk_offset,
    )


# -- per-model row generators: each yields the ``fields`` of its rows in pk order -----------------------
Fields = dict
_Gen = Callable[[_Plan, Random], Iterator[Fields]]


def _user_name(i: int) -> str:
    return _pick(_FIRST, i)


def _user_email(i: int) -> str:
    return f"{_user_name(i)}@example.com"


def _users(p: _Plan, rng: Random) -> Iterator[Fields]:
    for i in range(p.users):
        joined = _when(rng, i)
        yield {
            "password": f"pbkdf2_sha256$150000${_hex(rng, 12)}$" + base64.b64encode(rng.randbytes(32)).decode(),
            "last_login": None if i % 3 else joined,
            "username": _user_email(i),
            "name": _user_name(i).capitalize(),
            "email": _user_email(i),
            "is_staff": i == 0,
            "is_active": i % 11 != 10,
            "is_superuser": i % 50 == 0,
            "is_managed": False,
            "is_sentry_app": None,
            "is_password_expired": False,
            "is_unclaimed": False,
            "last_password_change": joined,
            "flags": "0",
            "session_nonce": None,
            "date_joined": joined,
            "last_active": joined,
            "avatar_type": 0,
            "avatar_url": None,
        }


def _emails(p: _Plan, rng: Random) -> Iterator[Fields]:
    for i in range(p.users):
        yield {"email": _user_email(i), "date_added": _when(rng, i)}


def _useremails(p: _Plan, rng: Random) -> Iterator[Fields]:
    for i in range(p.users):
        yield {
            "user": p.pk(i),
            "email": _user_email(i),
            "validation_hash": _hex(rng, 32),
            "date_hash_added": _when(rng, i),
            "is_verified": i % 4 != 1,
        }


def _useroptions(p: _Plan, rng: Random) -> Iterator[Fields]:
    all_projects = p.orgs * p.projects
    for i in range(p.users):
        yield {
            "user": p.pk(i),
            "key": "timezone",
            "organization_id": None,
            "project_id": None,
            "value": json.dumps("Europe/Vienna" if i % 2 else "UTC"),
        }
        if i % 2 == 0 and all_projects:
            yield {
                "user": p.pk(i),
                "key": "mail:alert",
                "organization_id": None,
                "project_id": p.pk(i % all_projects),
                "value": "1",
            }
        elif p.orgs:
            yield {
                "user": p.pk(i),
                "key": "reports:disabled-organizations",
                "organization_id": p.pk(i % p.orgs),
                "project_id": None,
                "value": "0",
            }
        else:
            yield {
                "user": p.pk(i),
                "key": "language",
                "organization_id": None,
                "project_id": None,
                "value": json.dumps("en"),
            }


def _userips(p: _Plan, rng: Random) -> Iterator[Fields]:
    for i in range(p.users):
        seen = _when(rng, i)
        yield {
            "user": p.pk(i),
            "ip_address": f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",
            "country_code": "AT" if i % 3 == 0 else None,
            "region_code": None,
            "first_seen": seen,
            "last_seen": seen,
        }


def _authenticators(p: _Plan, rng: Random) -> Iterator[Fields]:
    for i in range(0, p.users, 2):
        yield {"user": p.pk(i), "created_at": _when(rng, i), "last_used_at": None, "type": 1, "config": '""'}


def _userpermissions(p: _Plan, rng: Random) -> Iterator[Fields]:
    for i in range(0, p.users, 50):
        yield {"user": p.pk(i), "permission": "users.admin"}


def _userroles(p: _Plan, rng: Random) -> Iterator[Fields]:
    for i, (name, perms) in enumerate(zip(("Super Admin", "Support"), _ROLE_PERMISSIONS)):
        added = _when(rng, i)
        yield {"date_updated": added, "date_added": added, "name": name, "permissions": perms}


def _userroleusers(p: _Plan, rng: Random) -> Iterator[Fields]:
    for i in range(0, p.users, 50):
        added = _when(rng, i)
        yield {"date_updated": added, "date_added": added, "user": p.pk(i), "role": p.pk(0)}


def _org_name(o: int) -> str:
    return _pick(_ORGS, o)


def _organizations(p: _Plan, rng: Random) -> Iterator[Fields]:
    for o in range(p.orgs):
        yield {
            "name": _org_name(o),
            "slug": _slug(_org_name(o)),
            "status": 0,
            "date_added": _when(rng, o),
            "default_role": "member",
            "is_test": False,
            "flags": "1",
        }


def _organizationoptions(p: _Plan, rng: Random) -> Iterator[Fields]:
    for o in range(p.orgs):
        yield {"organization": p.pk(o), "key": "sentry:account-rate-limit", "value": 0}
        yield {"organization": p.pk(o), "key": "sentry:require_scrub_defaults", "value": o % 2 == 0}


def _projecttemplates(p: _Plan, rng: Random) -> Iterator[Fields]:
    for o in range(0, p.orgs, 2):
        added = _when(rng, o)
        yield {
            "organization": p.pk(o),
            "name": f"template-{_slug(_org_name(o))}",
            "date_added": added,
            "date_updated": added,
        }


def _teams(p: _Plan, rng: Random) -> Iterator[Fields]:
    for o in range(p.orgs):
        for k in range(p.teams):
            name = _pick(_TEAMS, k)
            yield {
                "organization": p.pk(o),
                "slug": name,
                "name": name.capitalize(),
                "status": 0,
                "idp_provisioned": False,
                "date_added": _when(rng, o * p.teams + k),
            }


def _environments(p: _Plan, rng: Random) -> Iterator[Fields]:
    for o in range(p.orgs):
        for e, name in enumerate(("production", "staging")):
            yield {"organization_id": p.pk(o), "name": name, "date_added": _when(rng, 2 * o + e)}


def _projects(p: _Plan, rng: Random) -> Iterator[Fields]:
    for o in range(p.orgs):
        for k in range(p.projects):
            g = o * p.projects + k
            name = _pick(_PROJECTS, k)
            templated = o % 2 == 0 and k % 2 == 0
            yield {
                "slug": name,
                "name": name.capitalize(),
                "forced_color": None,
                "organization": p.pk(o),
                "public": False,
                "date_added": _when(rng, g),
                "status": 0,
                "first_event": _when(rng, g + 5) if k % 3 == 0 else None,
                "flags": "10",
                "platform": _PLATFORMS[g % len(_PLATFORMS)],
                "template": p.pk(o // 2) if templated else None,
            }


def _projectkeys(p: _Plan, rng: Random) -> Iterator[Fields]:
    for g in range(p.orgs * p.projects):
        yield {
            "project": p.pk(g),
            "label": "Default",
            "public_key": _unique_hex(rng, 2 * g),
            "secret_key": _unique_hex(rng, 2 * g + 1),
            "roles": "1",
            "status": 0,
            "date_added": _when(rng, g),
            "rate_limit_count": 100 if g % 5 == 4 else None,
            "rate_limit_window": 60 if g % 5 == 4 else None,
            "data": {"dynamicSdkLoaderOptions": {"hasPerformance": g % 2 == 0, "hasReplay": True}},
            "use_case": "user",
        }


def _projectoptions(p: _Plan, rng: Random) -> Iterator[Fields]:
    for g in range(p.orgs * p.projects):
        if g % 2:
            yield {"project": p.pk(g), "key": "sentry:option-epoch", "value": 11}
        else:
            yield {"project": p.pk(g), "key": "sentry:relay-rev", "value": json.dumps(_hex(rng, 32))}


def _projectteams(p: _Plan, rng: Random) -> Iterator[Fields]:
    if not p.teams:
        return
    for o in range(p.orgs):
        for k in range(p.projects):
            yield {"project": p.pk(o * p.projects + k), "team": p.pk(o * p.teams + k % p.teams)}


def _environmentprojects(p: _Plan, rng: Random) -> Iterator[Fields]:
    for o in range(p.orgs):
        for e in range(2):
            for k in range(p.rules_per_org):
                yield {
                    "environment": p.pk(2 * o + e),
                    "project": p.pk(o * p.projects + k),
                    "is_hidden": None if e == 0 else False,
                }


def _rules(p: _Plan, rng: Random) -> Iterator[Fields]:
    for o in range(p.orgs):
        for k in range(p.rules_per_org):
            yield {
                "project": p.pk(o * p.projects + k),
                "environment_id": p.pk(2 * o) if k == 0 else None,
                "owner_team": p.pk(o * p.teams) if k == 0 and p.teams else None,
                "owner_user_id": p.owner(o) if k == 1 else None,
                "label": "Send a notification for new issues",
                "data": _RULE_DATA,
                "status": 0,
                "source": 0,
                "date_added": _when(rng, o * 2 + k),
            }


def _organizationmembers(p: _Plan, rng: Random) -> Iterator[Fields]:
    missing_user = p.pk(p.users)  # one past the last user: an inviter that is not in the export
    for o in range(p.orgs):
        for k in range(p.members):
            user = p.member_user(o, k)
            if k == 0:
                inviter = None
            elif k == 1 and o % 2 == 1:
                inviter = missing_user
            else:
                inviter = p.owner(o)
            pending = user is None
            yield {
                "organization": p.pk(o),
                "user_id": None if user is None else p.pk(user),
                "email": f"invite-{o}-{k}@example.com" if pending else None,
                "role": "owner" if k == 0 else ("admin" if k % 5 == 1 else "member"),
                "flags": "0",
                "token": _unique_hex(rng, o * p.members + k) if pending and k % 2 == 0 else None,
                "date_added": _when(rng, o * p.members + k),
                "token_expires_at": None,
                "has_global_access": True,
                "inviter_id": inviter,
                "invite_status": 1 if pending else 0,
                "type": 50,
                "user_is_active": True,
                "user_email": None if user is None else _user_email(user),
            }


def _organizationmemberteams(p: _Plan, rng: Random) -> Iterator[Fields]:
    if not p.teams:
        return
    for o in range(p.orgs):
        for k in range(p.members):
            if p.member_user(o, k) is not None:
                yield {
                    "organizationmember": p.pk(o * p.members + k),
                    "team": p.pk(o * p.teams + k % p.teams),
                    "is_active": True,
                    "role": "admin" if k == 0 else None,
                }


def _savedsearches(p: _Plan, rng: Random) -> Iterator[Fields]:
    if not p.orgs:
        return
    yield {
        "organization": None,
        "owner_id": None,
        "type": 0,
        "name": "Unresolved Issues",
        "query": "is:unresolved",
        "sort": "date",
        "is_global": True,
        "visibility": "organization",
        "date_added": _when(rng, 0),
    }
    for o in range(p.orgs):
        yield {
            "organization": p.pk(o),
            "owner_id": p.owner(o),
            "type": 0,
            "name": f"Saved query for {_slug(_org_name(o))}",
            "query": "is:unresolved assigned:me",
            "sort": "date",
            "is_global": False,
            "visibility": "owner",
            "date_added": _when(rng, o + 1),
        }


def _dashboards(p: _Plan, rng: Random) -> Iterator[Fields]:
    for o in range(p.orgs):
        added = _when(rng, o)
        yield {
            "organization": p.pk(o),
            "created_by_id": p.owner(o),
            "title": f"{_org_name(o)} overview",
            "filters": None,
            "visits": 1,
            "last_visited": added,
            "date_added": added,
        }


def _dashboardwidgets(p: _Plan, rng: Random) -> Iterator[Fields]:
    for d in range(p.orgs):
        for j, title in enumerate(("Errors", "Latency")):
            yield {
                "dashboard": p.pk(d),
                "order": j + 1,
                "title": title,
                "description": None,
                "display_type": j,
                "widget_type": 0,
                "interval": "5m",
                "limit": None,
                "thresholds": None,
                "detail": None,
                "discover_widget_split": None,
                "date_added": _when(rng, 2 * d + j),
            }


def _dashboardwidgetqueries(p: _Plan, rng: Random) -> Iterator[Fields]:
    for w in range(2 * p.orgs):
        added = _when(rng, w)
        yield {
            "widget": p.pk(w),
            "order": 1,
            "name": "",
            "fields": json.dumps(["count()"]),
            "columns": None,
            "aggregates": None,
            "field_aliases": None,
            "conditions": "",
            "orderby": "",
            "is_hidden": False,
            "date_added": added,
            "date_modified": added,
        }


def _option_value(rng: Random, i: int) -> object:
    kind = i % 3
    if kind == 0:
        return json.dumps(f"{23 + i % 2}.{i % 12 + 1}.{i % 4}")  # JSON in a string: "\"23.6.1\""
    if kind == 1:
        return round(1687902001 + i + rng.random(), 4)  # a raw number
    return json.dumps({"enabled": i % 2 == 0, "rate": 0.5})


def _config_options(keys: tuple[str, ...]) -> _Gen:
    def gen(p: _Plan, rng: Random) -> Iterator[Fields]:
        for i in range(p.options):
            yield {
                "key": keys[i] if i < len(keys) else f"synthetic.option-{i}",
                "last_updated": _when(rng, i),
                "last_updated_by": "unknown",
                "value": _option_value(rng, i),
            }

    return gen


def _relay_identity(seed: int, i: int) -> tuple[str, str]:
    digest = hashlib.blake2b(f"{seed}:relay:{i}".encode(), digest_size=32).digest()
    relay_id = str(uuid.UUID(bytes=digest[:16], version=4))
    return relay_id, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _relays(p: _Plan, rng: Random) -> Iterator[Fields]:
    for i in range(p.relays):
        relay_id, key = _relay_identity(p.seed, i)
        seen = None if i % 2 == 0 else _when(rng, i)
        yield {
            "relay_id": relay_id,
            "public_key": key,
            "first_seen": seen,
            "last_seen": seen,
            "is_internal": i % 2 == 0,
        }


def _relayusages(p: _Plan, rng: Random) -> Iterator[Fields]:
    for i in range(p.relays):
        relay_id, key = _relay_identity(p.seed, i)
        for version in ("23.6.1", "24.6.0"):
            yield {
                "relay_id": relay_id,
                "version": version,
                "first_seen": _when(rng, i),
                "last_seen": _when(rng, i + 1),
                "public_key": key,
            }


#: model -> (its row generator, its row count for a plan)
_MODELS: dict[str, tuple[_Gen, Callable[[_Plan], int]]] = {
    "sentry.user": (_users, lambda p: p.users),
    "sentry.email": (_emails, lambda p: p.users),
    "sentry.useremail": (_useremails, lambda p: p.users),
    "sentry.useroption": (_useroptions, lambda p: 2 * p.users),
    "sentry.userip": (_userips, lambda p: p.users),
    "sentry.authenticator": (_authenticators, lambda p: (p.users + 1) // 2),
    "sentry.userpermission": (_userpermissions, lambda p: (p.users + 49) // 50),
    "sentry.userrole": (_userroles, lambda p: 2),
    "sentry.userroleuser": (_userroleusers, lambda p: (p.users + 49) // 50),
    "sentry.organization": (_organizations, lambda p: p.orgs),
    "sentry.organizationoption": (_organizationoptions, lambda p: 2 * p.orgs),
    "sentry.projecttemplate": (_projecttemplates, lambda p: (p.orgs + 1) // 2),
    "sentry.team": (_teams, lambda p: p.orgs * p.teams),
    "sentry.environment": (_environments, lambda p: 2 * p.orgs),
    "sentry.project": (_projects, lambda p: p.orgs * p.projects),
    "sentry.projectkey": (_projectkeys, lambda p: p.orgs * p.projects),
    "sentry.projectoption": (_projectoptions, lambda p: p.orgs * p.projects),
    "sentry.projectteam": (_projectteams, lambda p: p.orgs * p.projects if p.teams else 0),
    "sentry.environmentproject": (_environmentprojects, lambda p: 2 * p.orgs * p.rules_per_org),
    "sentry.rule": (_rules, lambda p: p.orgs * p.rules_per_org),
    "sentry.organizationmember": (_organizationmembers, lambda p: p.orgs * p.members),
    "sentry.organizationmemberteam": (_organizationmemberteams, lambda p: p.orgs * p.linked_members if p.teams else 0),
    "sentry.savedsearch": (_savedsearches, lambda p: p.orgs + 1 if p.orgs else 0),
    "sentry.dashboard": (_dashboards, lambda p: p.orgs),
    "sentry.dashboardwidget": (_dashboardwidgets, lambda p: 2 * p.orgs),
    "sentry.dashboardwidgetquery": (_dashboardwidgetqueries, lambda p: 2 * p.orgs),
    "sentry.option": (_config_options(_OPTION_KEYS), lambda p: p.options),
    "sentry.controloption": (_config_options(_CONTROL_OPTION_KEYS), lambda p: p.options),
    "sentry.relay": (_relays, lambda p: p.relays),
    "sentry.relayusage": (_relayusages, lambda p: 2 * p.relays),
}


def _order() -> list[str]:
    return [m for m in Manifest.builtin().sorted_models() if m in _MODELS]


# -- public API ----------------------------------------------------------------------------------------
def generate_rows(
    *,
    orgs: int = 2,
    users: int = 5,
    projects_per_org: int = 2,
    teams_per_org: int = 2,
    members_per_org: int = 3,
    options: int = 3,
    scale: int = 1,
    seed: int = 0,
    pk_offset: int = 0,
) -> Iterator[dict]:
    """Rows ``{"model", "pk", "fields"}`` grouped by model in dependency order (the built-in manifest's
    ``sorted_models()``), ascending pk within a model, deterministic for a seed.

    ``scale`` multiplies the counts of the bulk models (users, organizations, projects and their keys
    and options, members, options, relays); the module docstring gives the exact row-count formula
    (``scale=200`` with the defaults: about 1,000,000 rows). Rows are produced one at a time, in
    constant memory. ``pk_offset`` shifts every pk and every foreign key with it.
    """
    plan = _plan(orgs, users, projects_per_org, teams_per_org, members_per_org, options, scale, seed, pk_offset)
    return _stream(plan)


def _stream(plan: _Plan) -> Iterator[dict]:
    for model in _order():
        gen, _count = _MODELS[model]
        rng = Random(f"{plan.seed}:{model}")
        for i, fields in enumerate(gen(plan, rng)):
            yield {"model": model, "pk": plan.pk(i), "fields": fields}


def count_rows(
    *,
    orgs: int = 2,
    users: int = 5,
    projects_per_org: int = 2,
    teams_per_org: int = 2,
    members_per_org: int = 3,
    options: int = 3,
    scale: int = 1,
    seed: int = 0,
    pk_offset: int = 0,
) -> dict[str, int]:
    """Rows per model that :func:`generate_rows` with the same arguments yields (models with none left out)."""
    plan = _plan(orgs, users, projects_per_org, teams_per_org, members_per_org, options, scale, seed, pk_offset)
    counts = {m: _MODELS[m][1](plan) for m in _order()}
    return {m: n for m, n in counts.items() if n}


def scale_for_rows(rows: int, **kwargs: int) -> int:
    """The smallest ``scale`` at which :func:`generate_rows` (other arguments as given) yields ``rows`` or more."""
    if rows < 1:
        raise ConfigurationError(f"synthetic export: a row target must be positive, not {rows!r}")
    lo, hi = 1, 1
    while sum(count_rows(**kwargs, scale=hi).values()) < rows:
        lo, hi = hi + 1, hi * 2
        if hi > 1 << 20:
            raise ConfigurationError(f"synthetic export: {rows} rows cannot be reached with {kwargs}")
    while lo < hi:
        mid = (lo + hi) // 2
        if sum(count_rows(**kwargs, scale=mid).values()) >= rows:
            hi = mid
        else:
            lo = mid + 1
    return lo


def demo_rows() -> list[dict]:
    """A small, friendly export for ``backup-assets demo``: two organizations (Acme, Globex), four users
    (alice, bob, carol, dave), two projects each (web, api), with teams, members, keys and options."""
    return list(
        generate_rows(orgs=2, users=4, projects_per_org=2, teams_per_org=2, members_per_org=3, options=2, seed=2023)
    )


def write_export(
    path_or_binary_file: str | os.PathLike[str] | IO[bytes], rows: Iterable[dict], *, indent: int | None = None
) -> int:
    """Stream ``rows`` as a Sentry export JSON list (compact when ``indent`` is None, pretty like
    ``sentry export`` when 2) to a path or a binary file object; returns the bytes written."""
    if isinstance(path_or_binary_file, (str, os.PathLike)):
        with open(path_or_binary_file, "wb") as f:
            return _write(f, rows, indent)
    return _write(path_or_binary_file, rows, indent)


def _write(out: IO[bytes], rows: Iterable[dict], indent: int | None) -> int:
    if indent is None:
        encode: Callable[[dict], str] = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
        sep, head, tail = ",", "[", "]"
    else:
        pad = " " * indent
        pretty = json.JSONEncoder(indent=indent, ensure_ascii=False).encode
        encode = lambda row: pad + pretty(row).replace("\n", "\n" + pad)  # noqa: E731
        sep, head, tail = ",\n", "[\n", "\n]"
    buf = io.StringIO()
    written = 0
    first = True
    for row in rows:
        buf.write(head if first else sep)
        first = False
        buf.write(encode(row))
        if buf.tell() >= 1 << 16:
            written += _flush(out, buf)
    buf.write("[]" if first else tail)
    return written + _flush(out, buf)


def _flush(out: IO[bytes], buf: io.StringIO) -> int:
    data = buf.getvalue().encode()
    out.write(data)
    buf.seek(0)
    buf.truncate()
    return len(data)
