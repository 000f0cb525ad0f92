"""The model manifest: which models a restore knows, their tables, foreign keys, scopes and order.

It reads Sentry's own model-dependency format (``model_dependencies/detailed.json`` of a Sentry
release): a JSON object keyed by model name, each entry holding ``dangling``, ``foreign_keys``
(field -> ``{kind, model, nullable}``), ``model``, ``relocation_dependencies``, ``relocation_scope``
(a scope name or a list of them), ``silos``, ``table_name`` and ``uniques``. The project ships its own
manifest in that format (``backup_assets/manifests/builtin.json``: every relocatable model of a current
Sentry, derived from its ``detailed.json``); a user may point at the file of their Sentry release instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path

from .errors import ManifestError

#: Relocation scopes in Sentry's enum order.
SCOPES = ("Excluded", "User", "Organization", "Config", "Global")

#: Import scope (the CLI's word) -> the relocation scopes it imports.
IMPORT_SCOPES: Mapping[str, frozenset[str]] = {
    "users": frozenset({"User"}),
    "organizations": frozenset({"User", "Organization"}),
    "config": frozenset({"User", "Config"}),
    "global": frozenset({"User", "Organization", "Config", "Global"}),
}

FK_KINDS = frozenset(
    {
        "FlexibleForeignKey",
        "DefaultForeignKey",
        "HybridCloudForeignKey",
        "OneToOneCascadeDeletes",
        "DefaultOneToOneField",
        "ImplicitForeignKey",
    }
)

#: What the manifest's names may look like: they reach SQL (as quoted identifiers and literals), so they
#: are held to what Django produces. PostgreSQL keeps only 63 bytes of an identifier.
MODEL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}\.[a-z][a-z0-9_]{0,62}$")
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

_KEYS = (
    "dangling",
    "foreign_keys",
    "model",
    "relocation_dependencies",
    "relocation_scope",
    "silos",
    "table_name",
    "uniques",
)


def column_name(field_name: str) -> str:
    """The column Django gives a foreign-key field: ``x`` -> ``x_id``; a name ending in ``_id`` stays."""
    return field_name if field_name.endswith("_id") else field_name + "_id"


@dataclass(frozen=True)
class ForeignKey:
    field: str  #: the field name as the export writes it (``organization``, ``user_id``)
    model: str  #: the model it points at
    nullable: bool
    kind: str

    @property
    def column(self) -> str:
        return column_name(self.field)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    table_name: str
    foreign_keys: tuple[ForeignKey, ...]
    relocation_scopes: frozenset[str]
    relocation_dependencies: tuple[str, ...] = ()
    uniques: tuple[tuple[str, ...], ...] = ()
    silos: tuple[str, ...] = ()
    dangling: bool = False

    @property
    def relocatable(self) -> bool:
        return bool(self.relocation_scopes - {"Excluded"})

    @property
    def dependencies(self) -> frozenset[str]:
        """Models that must be loaded before this one (FK targets and relocation dependencies), self excluded."""
        return frozenset({fk.model for fk in self.foreign_keys} | set(self.relocation_dependencies)) - {self.name}

    @cached_property
    def fk_by_field(self) -> Mapping[str, ForeignKey]:
        return {fk.field: fk for fk in self.foreign_keys}

    def in_scope(self, import_scope: str) -> bool:
        """Whether an import in ``import_scope`` (users, organizations, config, global) may take rows of this model."""
        return bool(self.relocation_scopes & IMPORT_SCOPES[import_scope])

    def to_json(self) -> dict:
        scopes = sorted(self.relocation_scopes, key=SCOPES.index)
        return {
            "dangling": self.dangling,
            "foreign_keys": {
                fk.field: {"kind": fk.kind, "model": fk.model, "nullable": fk.nullable}
                for fk in sorted(self.foreign_keys, key=lambda f: f.field)
            },
            "model": self.name,
            "relocation_dependencies": sorted(self.relocation_dependencies),
            "relocation_scope": scopes[0] if len(scopes) == 1 else scopes,
            "silos": list(self.silos),
            "table_name": self.table_name,
            "uniques": [list(u) for u in self.uniques],
        }


def _spec_from_json(name: str, entry: object, source: str) -> ModelSpec:
    def bad(what: str) -> ManifestError:
        return ManifestError(f"{source}: model {name!r}: {what}")

    if not isinstance(entry, dict):
        raise bad("entry is not an object")
    missing = [k for k in ("foreign_keys", "relocation_scope", "table_name") if k not in entry]
    if missing:
        raise bad(f"missing key(s) {', '.join(missing)}")
    if entry.get("model", name) != name:
        raise bad(f"'model' is {entry.get('model')!r}, the key says {name!r}")
    table = entry["table_name"]
    if not isinstance(table, str) or not IDENTIFIER.match(table):
        raise bad(f"'table_name' must be a plain SQL identifier of at most 63 characters, not {_show(table)}")
    scope = entry["relocation_scope"]
    scopes = [scope] if isinstance(scope, str) else scope
    if not isinstance(scopes, list) or not scopes or any(s not in SCOPES for s in scopes):
        raise bad(f"'relocation_scope' must be one of {', '.join(SCOPES)} or a list of them, not {scope!r}")
    fks_raw = entry["foreign_keys"]
    if not isinstance(fks_raw, dict):
        raise bad("'foreign_keys' must be an object")
    fks = []
    for fname, fk in sorted(fks_raw.items()):
        if not isinstance(fname, str) or not IDENTIFIER.match(fname):
            raise bad(f"foreign key field {_show(fname)} is not a plain identifier of at most 63 characters")
        if (
            not isinstance(fk, dict)
            or not isinstance(fk.get("model"), str)
            or not MODEL_NAME.match(fk["model"].lower())
        ):
            raise bad(f"foreign key {fname!r} must be an object with a 'model' name like 'sentry.user'")
        fks.append(
            ForeignKey(
                field=fname,
                model=fk["model"].lower(),
                nullable=bool(fk.get("nullable", True)),
                kind=str(fk.get("kind", "FlexibleForeignKey")),
            )
        )
    deps = entry.get("relocation_dependencies", [])
    uniques = entry.get("uniques", [])
    if not isinstance(deps, list) or not all(isinstance(d, str) and MODEL_NAME.match(d.lower()) for d in deps):
        raise bad("'relocation_dependencies' must be a list of model names")
    if not isinstance(uniques, list) or not all(
        isinstance(u, list) and all(isinstance(f, str) for f in u) for u in uniques
    ):
        raise bad("'uniques' must be a list of lists of field names")
    return ModelSpec(
        name=name,
        table_name=table,
        foreign_keys=tuple(fks),
        relocation_scopes=frozenset(scopes),
        relocation_dependencies=tuple(d.lower() for d in deps),
        uniques=tuple(tuple(u) for u in uniques if u),
        silos=tuple(entry.get("silos", [])),
        dangling=bool(entry.get("dangling", False)),
    )


@dataclass(frozen=True)
class Manifest:
    """An immutable set of model specs, with Sentry's dependency order."""

    models: Mapping[str, ModelSpec]
    source: str = "<memory>"
    _order: tuple[str, ...] = field(default=(), repr=False, compare=False)

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def from_json(cls, data: object, source: str = "<memory>") -> Manifest:
        if not isinstance(data, dict):
            raise ManifestError(f"{source}: a manifest is a JSON object keyed by model name")
        models = {}
        for name, entry in data.items():
            if not isinstance(name, str) or not MODEL_NAME.match(name.lower()):
                raise ManifestError(f"{source}: {_show(name)} is not a model name like 'sentry.user'")
            models[name.lower()] = _spec_from_json(name.lower(), entry, source)
        return cls(models=models, source=source)

    @classmethod
    def load(cls, path: str | Path | None = None) -> Manifest:
        """Load a manifest file in Sentry's ``detailed.json`` format; ``None`` loads the built-in one."""
        if path is None:
            return cls.builtin()
        p = Path(path)
        try:
            raw = p.read_bytes()
        except OSError as e:
            raise ManifestError(f"{p}: cannot read manifest: {e.strerror or e}") from None
        try:
            data = json.loads(raw)
        except ValueError as e:
            raise ManifestError(f"{p}: not valid JSON: {e}") from None
        return cls.from_json(data, source=str(p))

    @classmethod
    def builtin(cls, subset: str | None = None) -> Manifest:
        """The built-in manifest: every model Sentry relocates (derived from its ``detailed.json`` by
        ``backup_assets.manifests.derive``). ``subset`` names a smaller one for demos and benchmarks
        (``"core"``: users, organizations, projects, teams, options and their kin), never a restore default."""
        folder = resources.files("backup_assets").joinpath("manifests")
        full = cls.from_json(json.loads(folder.joinpath("builtin.json").read_bytes()), source="built-in manifest")
        if subset is None:
            return full
        if not re.fullmatch(r"[a-z][a-z0-9_]*", subset) or not folder.joinpath(f"{subset}.txt").is_file():
            raise ManifestError(f"no built-in manifest subset named {_show(subset)}")
        names = folder.joinpath(f"{subset}.txt").read_text().split()
        unknown = sorted(set(names) - set(full.models))
        if unknown:
            raise ManifestError(
                f"built-in subset {subset!r} names models the built-in manifest lacks: {', '.join(unknown)}"
            )
        return Manifest(models={n: full.models[n] for n in names}, source=f"built-in manifest ({subset})")

    def to_json(self) -> dict:
        return {name: self.models[name].to_json() for name in sorted(self.models)}

    # -- queries -------------------------------------------------------------------------------------
    def __contains__(self, name: object) -> bool:
        return name in self.models

    def __getitem__(self, name: str) -> ModelSpec:
        return self.models[name]

    def relocatable(self) -> list[str]:
        """Relocatable models (scope not ``Excluded``) in dependency order."""
        return [m for m in self.sorted_models() if self.models[m].relocatable]

    def sorted_models(self) -> list[str]:
        """Every model after all of its dependencies, in the order Sentry's exporter writes them.

        Sentry's algorithm: passes over the models, the first in ascending name order and each later
        one over the models skipped so far in descending order; a model is taken when all its
        dependencies (within this manifest, itself excluded) have been taken. A pass that takes
        nothing means a cycle, reported with the models on it.
        """
        if self._order:
            return list(self._order)
        names = set(self.models)
        deps = {m: {d for d in self.models[m].dependencies if d in names} for m in names}
        done: set[str] = set()
        order: list[str] = []
        pending = sorted(names, reverse=True)
        while pending:
            skipped = []
            taken = len(order)
            while pending:
                m = pending.pop()
                if deps[m] <= done:
                    order.append(m)
                    done.add(m)
                else:
                    skipped.append(m)
            if skipped and len(order) == taken:
                raise ManifestError(f"{self.source}: dependency cycle: {' -> '.join(_find_cycle(skipped, deps))}")
            pending = sorted(skipped)
        object.__setattr__(self, "_order", tuple(order))
        return order

    def restrict(self, names: Iterable[str]) -> Manifest:
        keep = set(names)
        return Manifest(models={n: s for n, s in self.models.items() if n in keep}, source=self.source)


def _show(value: object) -> str:
    """A short, printable rendering of a suspicious name (never the whole of a 10,000-character one)."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(str(value))} characters)"


def _find_cycle(candidates: list[str], deps: Mapping[str, set[str]]) -> list[str]:
    """One dependency cycle among ``candidates`` (models none of which could be ordered)."""
    cand = set(candidates)
    start = min(cand)
    path: list[str] = []
    seen: dict[str, int] = {}
    node = start
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = min(d for d in deps[node] if d in cand)
    return path[seen[node] :] + [node]
