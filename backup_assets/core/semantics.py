"""Sentry's import rules, expressed as what a model's load must do differently from a plain copy.

The loader (``load.py``) asks :func:`rules_for` once per model and applies the answer set-based:
rows to drop (filters, scope), foreign keys that become NULL instead of dropping their row, values
reset on import, rows matched onto existing ones (``Existing`` / ``Overwrite``), rows that repeat an
earlier row's unique key inside the same export, and values rewritten on collision (renamed with a
``-xxxx`` suffix, or regenerated secrets). Each rule is SQL over the staged row ``s`` (``s.fields`` is
the export's JSON object) and the candidate row ``c`` (its resolved foreign keys ``c.fkN``); names come
from the manifest or are Sentry's own field names, never from the export.

What each scope, filter and flag does (Sentry's ``ImportScope``, filters and ``ImportFlags``):

* Scope: a model is loaded when one of its relocation scopes is in the import scope (``Restore.plan``);
  models with several scopes decide per row (API tokens and authorizations with an application are
  Global, otherwise Config; notification actions with an integration or Sentry app are Global, otherwise
  Organization; global saved searches are Global). A row whose parent model is outside the scope is
  dropped as Sentry drops it (its parent has no pk mapping), counted as a scope drop.
* Filters (allow-lists; an empty set imports nothing): usernames keep those users; organization slugs
  keep those organizations and exactly the users who are members of them. Everything hanging from a
  filtered row goes with it through the pk maps. ``sentry.email`` rows are kept for the addresses of the
  kept users (Sentry's own org filter loses them; we do not).
* ``merge_users``: a username that exists maps onto the existing user (kind E); the merged user's
  emails, options, permissions, IPs, authenticators and role links from the export are not written.
  Without it the username gets a ``-xxxx`` suffix (also for duplicates inside the export).
* ``overwrite_configs``: config rows (single non-FK unique key) that exist are overwritten in place (O)
  instead of kept (E).
* ``hide_organizations``: imported organizations get status 3 (pending approval).
* Outside global scope: staff/superuser/managed flags off (not in config scope), users unclaimed with an
  unusable password, user emails unverified with a new validation hash dated now.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from psycopg import sql

from .manifest import IMPORT_SCOPES, Manifest, ModelSpec
from .pk_kind import PkKind
from .settings import ImportSettings
from .state import PK_MAP

#: Foreign keys Sentry sets to NULL (keeping the row) when their target was not imported.
NULL_IF_MISSING = {("sentry.organizationmember", "inviter_id")}

#: Models whose rows hanging from a merged (existing) user are not imported: the existing user's own
#: data is left as it is (Sentry drops the incoming UserEmail and UserPermission rows of a merged user;
#: we drop the rest of the user's personal rows too, so a merge never grants roles or adds 2FA devices).
MERGED_USER_DATA = (
    "sentry.useremail",
    "sentry.userpermission",
    "sentry.useroption",
    "sentry.userip",
    "sentry.authenticator",
    "sentry.userroleuser",
)

#: Per-row relocation scope: model -> the fields that make a row Global when any is set (else its other scope).
ROW_SCOPE = {
    "sentry.apitoken": ("application",),
    "sentry.apiauthorization": ("application",),
    "sentry.notificationaction": ("integration_id", "sentry_app_id"),
}

#: Maximum lengths Sentry's columns have, used when the target column has no declared length.
SENTRY_MAX_LENGTH = {("sentry.user", "username"): 128, ("sentry.organization", "slug"): 50}

#: Django's marker for an unusable password is a string starting with "!".
UNUSABLE_PASSWORD = sql.SQL(
    "'!' || replace(gen_random_uuid()::text, '-', '') || left(replace(gen_random_uuid()::text, '-', ''), 8)"
)
RANDOM_HEX32 = sql.SQL("replace(gen_random_uuid()::text, '-', '')")
RANDOM_HEX64 = sql.SQL("replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '')")
SUFFIX = sql.SQL("left(md5(random()::text || clock_timestamp()::text), 4)")
RELOCATION_PENDING_APPROVAL = 3


@dataclass(frozen=True)
class Where:
    """What a rule's SQL may refer to besides ``s`` and ``c``: the staged rows and this import's pk maps."""

    staging: sql.Composable
    import_id: str

    def kept(self, model: str, old_pk: sql.Composable) -> sql.Composable:
        """True when ``old_pk`` of ``model`` was imported (inserted, merged or overwritten) by this import."""
        return sql.SQL(
            "EXISTS (SELECT 1 FROM {pk} m WHERE m.import_id = {id} AND m.model = {model} "
            "AND m.old_pk = {old} AND m.kind IN ('I', 'E', 'O'))"
        ).format(pk=PK_MAP, id=sql.Literal(self.import_id), model=sql.Literal(model), old=old_pk)


SqlFn = Callable[[Where], sql.Composable]
Fresh = Callable[[sql.Composable, int | None], sql.Composable]  # (old text value, max length) -> new text


@dataclass
class Drop:
    condition: sql.Composable | SqlFn  #: over ``s`` and ``c`` (or a function of :class:`Where`); true -> drop
    reason: str
    expected: bool = True  #: caused by a filter or the scope (a warning, not an error, in checks)

    def sql(self, where: Where) -> sql.Composable:
        return self.condition(where) if callable(self.condition) else self.condition


@dataclass
class Rewrite:
    """A unique value that is rewritten when it collides with a row in the table or an earlier row of the
    export: ``fresh`` gives the new value (text, or NULL); ``derived`` columns are recomputed from it."""

    column: str
    fresh: Fresh
    derived: dict[str, Callable[[sql.Composable], sql.Composable]] = field(default_factory=dict)
    max_length: int | None = None
    record: bool = True  #: list each rewrite in ``LoadResult.renamed`` (secrets are only counted)


@dataclass
class ModelRules:
    drops: list[Drop] = field(default_factory=list)
    null_if_missing: frozenset[str] = frozenset()  #: FK fields set NULL when their target is missing
    drop_if_parent_kind: dict[str, tuple[PkKind, str]] = field(default_factory=dict)  #: fk field -> (kind, reason)
    overrides: dict[str, sql.Composable] = field(default_factory=dict)  #: column -> value expression (resets)
    match_columns: tuple[str, ...] = ()  #: unique key (columns) matched against existing rows (kind E, or O)
    overwrite: bool = False  #: matched rows are overwritten in place, keeping their id
    dedupe: bool = False  #: a row repeating an earlier row's match key maps onto it (E)
    rewrites: list[Rewrite] = field(default_factory=list)
    keep_pks: bool = False  #: new id = old pk


def _has(f: str) -> sql.Composable:
    return sql.SQL("jsonb_typeof(s.fields -> {}) = 'number'").format(sql.Literal(f))


def _text_in(f: str, values: frozenset[str]) -> sql.Composable:
    return sql.SQL("COALESCE(s.fields ->> {f} = ANY ({v}::text[]), false)").format(
        f=sql.Literal(f), v=sql.Literal(sorted(values))
    )


def _suffixed(old: sql.Composable, max_length: int | None) -> sql.Composable:
    """``old-xxxx`` within ``max_length`` characters (the original is shortened to make room)."""
    keep = sql.SQL("left({o}, {n})").format(o=old, n=sql.Literal(max_length - 5)) if max_length else old
    return sql.SQL("{k} || '-' || {sfx}").format(k=keep, sfx=SUFFIX)


def _regenerated(new: sql.Composable) -> Fresh:
    return lambda old, _n: new


def _null(old: sql.Composable, _n: int | None) -> sql.Composable:
    return sql.SQL("NULL::text")


def _sha256(v: sql.Composable) -> sql.Composable:
    return sql.SQL("encode(sha256(convert_to({}, 'UTF8')), 'hex')").format(v)


def _right4(v: sql.Composable) -> sql.Composable:
    return sql.SQL("right({}, 4)").format(v)


#: Unique secrets regenerated (or cleared) when they collide; the existing row always keeps its value.
SECRETS: dict[str, list[Rewrite]] = {
    "sentry.projectkey": [
        Rewrite("public_key", _regenerated(RANDOM_HEX32), record=False),
        Rewrite("secret_key", _regenerated(RANDOM_HEX32), record=False),
    ],
    "sentry.apitoken": [
        Rewrite(
            "token",
            _regenerated(RANDOM_HEX64),
            record=False,
            derived={"hashed_token": _sha256, "token_last_characters": _right4},
        ),
        Rewrite("refresh_token", _regenerated(RANDOM_HEX64), record=False, derived={"hashed_refresh_token": _sha256}),
    ],
    "sentry.orgauthtoken": [
        Rewrite(
            "token_hashed",
            _regenerated(_sha256(RANDOM_HEX64)),
            record=False,
            derived={"token_last_characters": _right4},
        )
    ],
    "sentry.organizationmember": [Rewrite("token", _null, record=False)],
}


def _scope_drops(spec: ModelSpec, settings: ImportSettings, manifest: Manifest | None) -> list[Drop]:
    allowed = IMPORT_SCOPES[settings.scope]
    drops = []
    if spec.name in ROW_SCOPE and "Global" not in allowed:
        fields = ROW_SCOPE[spec.name]
        drops.append(
            Drop(
                sql.SQL(" OR ").join(_has(f) for f in fields),
                f"filtered: scope: rows with {' or '.join(fields)} set are Global, outside the {settings.scope} scope",
            )
        )
    if spec.name == "sentry.savedsearch" and "Global" not in allowed:
        drops.append(
            Drop(
                sql.SQL("s.fields -> 'is_global' = 'true'::jsonb"),
                f"filtered: scope: global saved searches are Global, outside the {settings.scope} scope",
            )
        )
    if manifest is not None:
        for fk in spec.foreign_keys:
            parent = manifest.models.get(fk.model)
            if (
                fk.model == spec.name
                or parent is None
                or not parent.relocatable
                or parent.in_scope(settings.scope)
                or (spec.name, fk.field) in NULL_IF_MISSING
            ):
                continue
            drops.append(
                Drop(
                    _has(fk.field),
                    f"filtered: scope: parent {fk.model} ({fk.field}) is outside the {settings.scope} scope",
                )
            )
    return drops


def _filter_drops(spec: ModelSpec, settings: ImportSettings) -> list[Drop]:
    users, orgs = settings.filter_usernames, settings.filter_org_slugs
    drops = []
    if spec.name == "sentry.user" and users is not None:
        drops.append(
            Drop(sql.SQL("NOT {}").format(_text_in("username", users)), "filtered: username not in the username filter")
        )
    if spec.name == "sentry.user" and orgs is not None:

        def not_member(w: Where) -> sql.Composable:
            return sql.SQL(
                "NOT EXISTS (SELECT 1 FROM {st} m JOIN {st} o ON o.model = 'sentry.organization' "
                "AND o.pk = (m.fields ->> 'organization')::bigint WHERE m.model = 'sentry.organizationmember' "
                "AND jsonb_typeof(m.fields -> 'user_id') = 'number' AND (m.fields ->> 'user_id')::bigint = s.pk "
                "AND o.fields ->> 'slug' = ANY ({slugs}::text[]))"
            ).format(st=w.staging, slugs=sql.Literal(sorted(orgs)))

        drops.append(Drop(not_member, "filtered: not a member of an organization in the slug filter"))
    if spec.name == "sentry.organization" and orgs is not None:
        drops.append(
            Drop(sql.SQL("NOT {}").format(_text_in("slug", orgs)), "filtered: organization slug not in the slug filter")
        )
    if spec.name == "sentry.email" and (users is not None or orgs is not None):

        def not_of_kept_user(w: Where) -> sql.Composable:
            return sql.SQL(
                "NOT EXISTS (SELECT 1 FROM {st} u WHERE u.model = 'sentry.user' "
                "AND u.fields ->> 'email' = s.fields ->> 'email' AND {kept_u}) "
                "AND NOT EXISTS (SELECT 1 FROM {st} e WHERE e.model = 'sentry.useremail' "
                "AND e.fields ->> 'email' = s.fields ->> 'email' AND jsonb_typeof(e.fields -> 'user') = 'number' "
                "AND {kept_e})"
            ).format(
                st=w.staging,
                kept_u=w.kept("sentry.user", sql.SQL("u.pk")),
                kept_e=w.kept("sentry.user", sql.SQL("(e.fields ->> 'user')::bigint")),
            )

        drops.append(Drop(not_of_kept_user, "filtered: email address of no imported user"))
    return drops


def _config_key(spec: ModelSpec) -> tuple[str, ...]:
    """The unique key of an overwritable config model: Config scope only, a single unique set, no FKs."""
    if spec.relocation_scopes != frozenset({"Config"}) or len(spec.uniques) != 1:
        return ()
    key = spec.uniques[0]
    return () if any(f in spec.fk_by_field for f in key) else key


_RANDOM_UUID = sql.SQL("gen_random_uuid()")


def _fresh(field: str, value: sql.Composable = _RANDOM_UUID) -> sql.Composable:
    """``value`` where the staged row has ``field`` set, NULL where it has not."""
    return sql.SQL("CASE WHEN s.fields ->> {f} IS NULL THEN NULL ELSE {v} END").format(f=sql.Literal(field), v=value)


#: Values every import mints anew, as Sentry's does (its validator requires them to differ after a round trip):
#: identifiers that must stay unique across instances. NULL stays NULL.
REGENERATED: dict[str, dict[str, sql.Composable]] = {
    "sentry.monitor": {"guid": _fresh("guid")},
    "sentry.incident": {"detection_uuid": _fresh("detection_uuid")},
    "sentry.incidentactivity": {"notification_uuid": _fresh("notification_uuid")},
    # "<dataset id>/<32 hex>": the id before the slash is kept, the hex part is new
    "sentry.querysubscription": {
        "subscription_id": _fresh(
            "subscription_id",
            sql.SQL(
                "split_part(s.fields ->> 'subscription_id', '/', 1) || '/' || replace(gen_random_uuid()::text, '-', '')"
            ),
        )
    },
}


def rules_for(spec: ModelSpec, settings: ImportSettings, manifest: Manifest | None = None) -> ModelRules:
    """The rules for ``spec`` under ``settings``. With ``manifest``, rows whose parent model is outside the
    scope are counted as scope drops (without it they are still dropped, as missing parents)."""
    name, scope = spec.name, settings.scope
    rules = ModelRules(
        null_if_missing=frozenset(f for m, f in NULL_IF_MISSING if m == name),
        keep_pks=settings.preserve_pks or (scope == "global" and name == "sentry.project"),
        drops=_scope_drops(spec, settings, manifest) + _filter_drops(spec, settings),
        rewrites=list(SECRETS.get(name, ())),
        overrides=dict(REGENERATED.get(name, {})),
    )
    if name in MERGED_USER_DATA:
        user_fk = next((fk.field for fk in spec.foreign_keys if fk.model == "sentry.user"), None)
        if user_fk:
            rules.drop_if_parent_kind[user_fk] = (
                PkKind.EXISTING,
                "filtered: the user was merged into an existing user",
            )
    key = _config_key(spec)
    if key:
        rules.match_columns, rules.overwrite, rules.dedupe = key, settings.overwrite_configs, True

    if name == "sentry.user":
        if settings.merge_users:
            rules.match_columns, rules.dedupe = ("username",), True
        else:
            rules.rewrites.append(Rewrite("username", _suffixed, max_length=SENTRY_MAX_LENGTH[(name, "username")]))
        if scope in ("users", "organizations"):
            rules.overrides.update({f: sql.SQL("false") for f in ("is_staff", "is_superuser", "is_managed")})
        if scope != "global":
            rules.overrides.update({"is_unclaimed": sql.SQL("true"), "password": UNUSABLE_PASSWORD})
    elif name == "sentry.email":
        rules.match_columns, rules.dedupe = ("email",), True  # get-or-create by address
    elif name == "sentry.useremail":
        rules.match_columns, rules.overwrite, rules.dedupe = ("user_id", "email"), True, True
        if scope != "global":
            rules.overrides.update(
                {"is_verified": sql.SQL("false"), "validation_hash": RANDOM_HEX32, "date_hash_added": sql.SQL("now()")}
            )
    elif name == "sentry.userip":
        rules.match_columns, rules.dedupe = ("user_id", "ip_address"), True
    elif name == "sentry.organization":
        rules.rewrites.append(Rewrite("slug", _suffixed, max_length=SENTRY_MAX_LENGTH[(name, "slug")]))
        if settings.hide_organizations:
            rules.overrides["status"] = sql.Literal(RELOCATION_PENDING_APPROVAL)
    return rules
