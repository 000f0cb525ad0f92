"""A corpus of malformed and hostile backups, generated at test time (no binary file is committed).

Each :class:`Case` is the content of one backup file, the private key the restore is given (None for a plain
JSON export), and what must happen: the project's error type and a regular expression its message must match.
The generators derive every case from one small, valid export of :data:`MANIFEST`'s models, encrypted the way
Sentry does it (:mod:`tests.crypto_helpers`), so each case differs from a valid backup by one defect.

    keys = KeySet.generate()
    for case in tarball_cases(keys) + token_cases(keys) + key_cases(keys) + json_cases(keys):
        path = case.write(tmp_dir)          # the backup file; case.key_file(tmp_dir) the private key
"""

from __future__ import annotations

import base64
import bz2
import gzip
import io
import json
import lzma
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from backup_assets.core.errors import BackupAssetsError, BackupFormatError, DecryptionError, ExportParseError
from backup_assets.core.manifest import Manifest
from tests.crypto_helpers import OAEP, make_key_pair, tar_of

#: A unique string planted in the valid export (a username): found anywhere but the target tables, it is a leak.
MARKER = "zz-plaintext-marker-5b1d0c7e"


def manifest_entry(
    name: str,
    table: str,
    fks: tuple[tuple[str, str, bool], ...] = (),
    scope: str = "Organization",
    uniques: tuple[tuple[str, ...], ...] = (),
) -> dict:
    """One model of Sentry's manifest format (``detailed.json``); ``fks`` are (field, model, nullable)."""
    return {
        "dangling": False,
        "model": name,
        "relocation_dependencies": [],
        "relocation_scope": scope,
        "silos": ["Region"],
        "table_name": table,
        "uniques": [list(u) for u in uniques],
        "foreign_keys": {f: {"kind": "FlexibleForeignKey", "model": m, "nullable": n} for f, m, n in fks},
    }


#: Sentry's manifest format: what ``--manifest`` reads, and :data:`MANIFEST` is built from.
MANIFEST_JSON = {
    "c.user": manifest_entry("c.user", "c_user", scope="User", uniques=(("username",),)),
    "c.org": manifest_entry("c.org", "c_org", uniques=(("slug",),)),
    "c.project": manifest_entry("c.project", "c_project", fks=(("organization", "c.org", False),)),
    "c.member": manifest_entry(
        "c.member", "c_member", fks=(("organization", "c.org", False), ("user_id", "c.user", True))
    ),
}
MANIFEST = Manifest.from_json(MANIFEST_JSON)
TABLES = tuple(spec["table_name"] for spec in MANIFEST_JSON.values())


def row(model: str, pk: object, **fields: object) -> dict:
    return {"model": model, "pk": pk, "fields": fields}


def valid_rows() -> list[dict]:
    """A small export of every model of :data:`MANIFEST` (the marker is a username)."""
    rows = [
        row("c.user", 1, username=MARKER, is_active=True),
        row("c.user", 2, username="bob", is_active=False),
        row("c.org", 10, slug="acme", status=0, flags="3"),
        row("c.org", 11, slug="globex", status=1, flags="0"),
    ]
    rows += [
        row("c.project", 100 + i, organization=10 + i % 2, name=f"project {i}", options={"i": [i, None]})
        for i in range(8)
    ]
    rows += [
        row("c.member", 200, organization=10, user_id=1, role="owner"),
        row("c.member", 201, organization=11, user_id=None, email="invite@example.com", role="member"),
    ]
    return rows


def export_bytes(rows: list | None = None) -> bytes:
    return json.dumps(valid_rows() if rows is None else rows, indent=2).encode()


@dataclass(frozen=True, repr=False)
class KeySet:
    """The key pair backups are encrypted for, and another one (the wrong key)."""

    private: bytes
    public: bytes
    other_private: bytes
    other_public: bytes

    @classmethod
    def generate(cls) -> KeySet:
        return cls(*make_key_pair(), *make_key_pair())


@dataclass(frozen=True, repr=False)
class Parts:
    """The three members of a Sentry export tarball, and the Fernet key inside ``data.key``."""

    token: bytes
    data_key: bytes
    key_pub: bytes
    fernet_key: bytes

    @classmethod
    def encrypt(
        cls, plaintext: bytes, keys: KeySet, *, fernet_key: bytes | None = None, wrapped_key: bytes | None = None
    ) -> Parts:
        """Encrypt like Sentry; ``wrapped_key`` (default: the Fernet key) is what ``data.key`` wraps."""
        fernet_key = fernet_key or Fernet.generate_key()
        public = serialization.load_pem_public_key(keys.public)
        return cls(
            Fernet(fernet_key).encrypt(plaintext),
            public.encrypt(wrapped_key or fernet_key, OAEP),
            keys.public,
            fernet_key,
        )

    def members(self) -> list[tuple[str, bytes]]:
        return [("export.json", self.token), ("data.key", self.data_key), ("key.pub", self.key_pub)]

    def tar(self) -> bytes:
        return tar_of(self.members())


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes = field(repr=False)
    error: type[BackupAssetsError]
    match: str  #: a regular expression the error message must match
    key: bytes | None = field(default=None, repr=False)  #: the PEM given as the private key (None: no decryptor)

    def write(self, folder: Path) -> Path:
        path = folder / "backup.tar"
        path.write_bytes(self.data)
        return path

    def key_file(self, folder: Path) -> Path | None:
        if self.key is None:
            return None
        path = folder / "private.pem"
        path.write_bytes(self.key)
        return path


# --------------------------------------------------------------------------------------------- tar structure


def _member_bytes(
    name: str,
    data: bytes = b"",
    *,
    type_: bytes = tarfile.REGTYPE,
    linkname: str = "",
    size: int | None = None,
    fmt: int = tarfile.PAX_FORMAT,
) -> bytes:
    """One member (header + data padded to 512 bytes); ``size`` may declare more than ``data`` holds."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname = type_, linkname
    info.size = len(data) if size is None else size
    header = info.tobuf(fmt, tarfile.ENCODING, "surrogateescape")
    return header + data + b"\0" * (-len(data) % tarfile.BLOCKSIZE)


def raw_tar(*members: bytes) -> bytes:
    """Members as built by :func:`_member_bytes`, then the end-of-archive marker."""
    return b"".join(members) + b"\0" * (2 * tarfile.BLOCKSIZE)


def _member_offsets(tar_bytes: bytes) -> list[tuple[str, int, int]]:
    """(name, data offset, size) of each member of a valid tar."""
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
        return [(m.name, m.offset_data, m.size) for m in tar.getmembers()]


def truncation_points(tar_bytes: bytes) -> list[int]:
    """Cut points covering every region: inside each header, at and around each boundary, inside each member,
    and inside the end-of-archive marker's first block (what follows it is padding a reader may do without)."""
    points = {0, 1, 100, 257, 262, 511}
    end = 0
    for _name, offset, size in _member_offsets(tar_bytes):
        header = offset - tarfile.BLOCKSIZE
        points |= {header, header + 1, header + 148, header + 511, offset, offset + 1}
        points |= {offset + size * k // 4 for k in (1, 2, 3)} | {offset + size - 1, offset + size}
        end = offset + size + (-size % tarfile.BLOCKSIZE)
    points |= {end, end + 1, end + tarfile.BLOCKSIZE - 1}
    return sorted(p for p in points if 0 <= p < len(tar_bytes))


TRUNCATED = r"truncated|end-of-archive marker is missing|is empty|a truncated tarball\?"


def tarball_cases(keys: KeySet) -> list[Case]:
    parts = Parts.encrypt(export_bytes(), keys)
    good = parts.tar()
    token, data_key, key_pub = parts.token, parts.data_key, parts.key_pub
    fmt = BackupFormatError

    def case(name: str, data: bytes, match: str) -> Case:
        return Case(name, data, fmt, match, keys.private)

    cases = [case(f"tar cut at byte {p}", good[:p], TRUNCATED) for p in truncation_points(good)]
    _name, last, size = _member_offsets(good)[-1]
    end = last + size + (-size % tarfile.BLOCKSIZE)
    regular = [
        _member_bytes("export.json", token),
        _member_bytes("data.key", data_key),
        _member_bytes("key.pub", key_pub),
    ]
    cases += [
        case("extra member", raw_tar(*regular, _member_bytes("notes.txt", b"hello")), "unknown member 'notes.txt'"),
        case(
            "path traversal member",
            raw_tar(_member_bytes("../export.json", token), *regular[1:]),
            r"unknown member '\.\./export\.json'",
        ),
        case(
            "absolute member",
            raw_tar(*regular, _member_bytes("/etc/cron.d/x", b"* * * * * root sh")),
            "unknown member '/etc/cron.d/x'",
        ),
        case(
            "duplicate export.json",
            raw_tar(*regular, _member_bytes("export.json", token)),
            "'export.json': duplicate member",
        ),
        case("duplicate data.key", raw_tar(regular[1], *regular), "'data.key': duplicate member"),
        case(
            "symlink export.json",
            raw_tar(_member_bytes("export.json", type_=tarfile.SYMTYPE, linkname="/etc/passwd"), *regular[1:]),
            "'export.json': is a symbolic link",
        ),
        case(
            "hard link key.pub",
            raw_tar(*regular[:2], _member_bytes("key.pub", type_=tarfile.LNKTYPE, linkname="export.json")),
            "'key.pub': is a hard link",
        ),
        case(
            "directory export.json",
            raw_tar(_member_bytes("export.json/", type_=tarfile.DIRTYPE), *regular[1:]),
            "'export.json': is a directory",
        ),
        case(
            "FIFO data.key",
            raw_tar(regular[0], _member_bytes("data.key", type_=tarfile.FIFOTYPE), regular[2]),
            "'data.key': is a FIFO",
        ),
        case(
            "export.json declares 8 GiB (octal)",
            raw_tar(_member_bytes("export.json", token, size=8**11 - 1, fmt=tarfile.USTAR_FORMAT), *regular[1:]),
            r"'export.json': truncated: the member's 8589934591 bytes",
        ),
        case(
            "export.json declares 2**50 bytes (PAX)",
            raw_tar(_member_bytes("export.json", token, size=2**50), *regular[1:]),
            r"truncated: the member's 1125899906842624",
        ),
        case(
            "data.key declares 2**62 bytes (GNU base-256)",
            raw_tar(regular[0], _member_bytes("data.key", data_key, size=2**62, fmt=tarfile.GNU_FORMAT), regular[2]),
            r"'data.key': truncated",
        ),
        case(
            "data.key of 5 bytes",
            raw_tar(regular[0], _member_bytes("data.key", b"short"), regular[2]),
            "'data.key': implausible size 5",
        ),
        case("garbage after the last member", good[:end] + b"\x01" * 1024 + good[end:], "invalid tar header"),
        case("empty export.json", raw_tar(_member_bytes("export.json", b""), *regular[1:]), "'export.json': is empty"),
        case(
            "key.pub is not a PEM",
            raw_tar(*regular[:2], _member_bytes("key.pub", b"x" * 200)),
            "'key.pub': is not a PEM RSA public key",
        ),
        case("gzip-compressed tarball", gzip.compress(good), "gzip-compressed"),
        case("bzip2-compressed tarball", bz2.compress(good), "bzip2-compressed"),
        case("xz-compressed tarball", lzma.compress(good), "xz-compressed"),
        case(
            "export.json is gzip",
            raw_tar(_member_bytes("export.json", gzip.compress(token)), *regular[1:]),
            "'export.json': is gzip-compressed",
        ),
        case(
            "export.json is plain JSON",
            raw_tar(_member_bytes("export.json", export_bytes()), *regular[1:]),
            "'export.json': holds plain JSON, not the Fernet token",
        ),
        case("empty file", b"", "empty"),
        case("random bytes", bytes(range(256)) * 16, "neither a Sentry export tarball nor a JSON export"),
        case("a PNG", b"\x89PNG\r\n\x1a\n" + b"\0" * 600, "neither a Sentry export tarball nor a JSON export"),
        case("a zip", b"PK\x03\x04" + b"\0" * 600, "zip-compressed"),
        case("a text file", b"hello, this is not a backup\n", "neither a Sentry export tarball nor a JSON export"),
        case("JSON object, not a list", b'{"model": "c.org"}', "neither a Sentry export tarball nor a JSON export"),
    ]
    return cases


# --------------------------------------------------------------------------------------------- the token

#: Regions of a decoded Fernet token: (name, offset from the start or negative from the end).
TOKEN_REGIONS = {
    "version": (0,),
    "timestamp": (1, 4, 8),
    "IV": (9, 17, 24),
    "first ciphertext block": (25, 33, 40),
    "middle of the ciphertext": ("mid",),
    "last (padding) block": (-48, -40, -33),
    "MAC": (-32, -16, -1),
}
CORRUPT = r"Fernet token is corrupt or was tampered with"


def _flip(token: bytes, offset: int, bit: int) -> bytes:
    raw = bytearray(base64.urlsafe_b64decode(token))
    raw[offset] ^= 1 << bit
    return base64.urlsafe_b64encode(bytes(raw))


def token_cases(keys: KeySet) -> list[Case]:
    parts = Parts.encrypt(export_bytes(), keys)
    decoded = len(base64.urlsafe_b64decode(parts.token))

    def with_token(name: str, token: bytes, match: str) -> Case:
        members = [("export.json", token), ("data.key", parts.data_key), ("key.pub", parts.key_pub)]
        return Case(name, tar_of(members), DecryptionError, match, keys.private)

    cases = []
    for region, offsets in TOKEN_REGIONS.items():
        for offset in offsets:
            at = decoded // 2 if offset == "mid" else offset % decoded
            for bit in (0, 7):
                match = "unknown version byte" if region == "version" else f"{CORRUPT}.*HMAC verification failed"
                cases.append(
                    with_token(f"bit {bit} of byte {at} ({region}) flipped", _flip(parts.token, at, bit), match)
                )
    n = len(parts.token)
    for cut in sorted({1, 4, 7, 20, 33, 60, 100, n // 3, n // 2, n - 45, n - 44, n - 8, n - 5, n - 4, n - 1}):
        cases.append(with_token(f"token cut to {cut} bytes", parts.token[:cut], CORRUPT))
    text = bytearray(parts.token)
    text[n // 2] = ord("*")
    cases += [
        with_token("a character outside base64", bytes(text), rf"{CORRUPT}: invalid base64 at byte {n // 2}"),
        with_token("a newline inside the token", parts.token[:40] + b"\n" + parts.token[40:], CORRUPT),
        with_token("standard base64 alphabet", parts.token.replace(b"-", b"+").replace(b"_", b"/") + b"+/AA", CORRUPT),
        with_token("two tokens concatenated", parts.token + parts.token, CORRUPT),
        with_token("token with a block appended", _append_block(parts.token), f"{CORRUPT}.*HMAC verification failed"),
    ]
    return cases


def _append_block(token: bytes) -> bytes:
    raw = base64.urlsafe_b64decode(token)
    return base64.urlsafe_b64encode(raw[:-32] + raw[-48:-32] + raw[-32:])


# --------------------------------------------------------------------------------------------- keys


def _ec_private_pem() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _encrypted_pem(pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(pem, password=None)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"secret")
    )


def key_cases(keys: KeySet) -> list[Case]:
    plain = export_bytes()
    parts = Parts.encrypt(plain, keys)
    good = parts.tar()
    swapped = tar_of([("export.json", parts.token), ("data.key", parts.data_key), ("key.pub", keys.other_public)])
    flipped_key = bytearray(parts.data_key)
    flipped_key[100] ^= 1
    dec = DecryptionError

    def encrypted(**kw: bytes) -> bytes:
        return Parts.encrypt(plain, keys, **kw).tar()

    return [
        Case("the other private key", good, dec, "key.pub does not match the private key", keys.other_private),
        Case("key.pub swapped for another key's", swapped, dec, "key.pub does not match the private key", keys.private),
        Case(
            "key.pub swapped, decrypted with that other key",
            swapped,
            dec,
            "could not decrypt data.key",
            keys.other_private,
        ),
        Case(
            "data.key with one bit flipped",
            tar_of([("export.json", parts.token), ("data.key", bytes(flipped_key)), ("key.pub", parts.key_pub)]),
            dec,
            "could not decrypt data.key",
            keys.private,
        ),
        Case(
            "data.key wraps 32 raw bytes",
            encrypted(wrapped_key=b"k" * 32),
            dec,
            "data.key decrypted to 32 bytes",
            keys.private,
        ),
        Case(
            "data.key wraps 44 bytes that are not base64",
            encrypted(wrapped_key=b"*" * 44),
            dec,
            "not a valid Fernet key",
            keys.private,
        ),
        Case(
            "data.key wraps another Fernet key",
            encrypted(wrapped_key=Fernet.generate_key()),
            dec,
            "HMAC verification failed",
            keys.private,
        ),
        Case("the public key given as the private key", good, dec, "is a public key", keys.public),
        Case("an EC private key", good, dec, "EC key; Sentry backups need an RSA key", _ec_private_pem()),
        Case(
            "a password-protected private key",
            good,
            dec,
            "encrypted \\(password-protected\\)",
            _encrypted_pem(keys.private),
        ),
        Case("garbage as the private key", good, dec, "not a PEM private key", b"-----BEGIN PRIVATE KEY-----\nxx\n"),
        Case("an empty key file", good, dec, "not a PEM private key", b""),
        Case("the tarball given as the private key", good, dec, "not a PEM private key", good),
    ]


# --------------------------------------------------------------------------------------------- export JSON


def _with(rows: list[dict], index: int, **changes: object) -> list[dict]:
    """A copy of ``rows`` whose row ``index`` has ``changes`` (``fields``: merged; ``_DELETE``: key removed)."""
    rows = [dict(r, fields=dict(r["fields"])) for r in rows]
    for k, v in changes.items():
        if k == "fields" and isinstance(v, dict):
            rows[index]["fields"].update(v)
        elif v is _DELETE:
            del rows[index][k]
        else:
            rows[index][k] = v
    return rows


_DELETE = object()
DEEP = 100_000
#: a plain file is told from a tarball by its first byte, so a plain export that is not a list fails at open
NOT_A_LIST = r"must be a JSON list|a JSON export starts with '\['"


def json_texts() -> list[tuple[str, bytes, str]]:
    """(name, export bytes, expected message) of malformed exports; each fails while staging."""
    rows = valid_rows()
    good = export_bytes(rows)
    head = good[: good.rindex(b"]")]  # the list without its closing bracket
    nat = "Older Sentry exports wrote natural keys"

    def edit(index: int, **changes: object) -> bytes:
        return export_bytes(_with(rows, index, **changes))

    return [
        ("invalid UTF-8 in a value", good.replace(b'"acme"', b'"ac\xff\xfeme"'), "UTF-?8"),
        ("invalid UTF-8 in a key", good.replace(b'"slug"', b'"sl\xc3\x28ug"', 1), "UTF-?8"),
        ("an overlong UTF-8 encoding", good.replace(b'"bob"', b'"b\xc0\xafb"'), "UTF-?8"),
        ("a JSON object", json.dumps({"rows": rows}).encode(), NOT_A_LIST),
        ("a JSON number", b"42", NOT_A_LIST),
        ("a JSON string", b'"[]"', NOT_A_LIST),
        ("JSON null", b"null", NOT_A_LIST),
        ("a row that is a number", head + b", 3]", "row 14.*a row must be an object, not an integer"),
        ("a row that is a string", head + b', "c.org"]', "row 14.*a row must be an object, not a string"),
        ("a row that is null", head + b", null]", "row 14.*a row must be an object"),
        ("a row that is a list", head + b", [1, 2]]", "row 14.*a row must be an object, not a list"),
        ("pk is a string", edit(2, pk="10"), "row 2.*'pk' must be a 64-bit integer, not a string.*natural keys"),
        ("pk is a float", edit(2, pk=10.5), "'pk' must be a 64-bit integer, not a number with a fraction"),
        ("pk is a boolean", edit(2, pk=True), "'pk' must be a 64-bit integer, not a boolean"),
        ("pk is null", edit(2, pk=None), "'pk' must be a 64-bit integer, not null"),
        ("pk is missing", edit(2, pk=_DELETE), "'pk' must be a 64-bit integer, not missing"),
        ("pk is a list (natural key)", edit(2, pk=["acme"]), "'pk' must be a 64-bit integer, not a list.*natural"),
        ("pk is 2**63", edit(2, pk=2**63), "integer overflow"),
        ("pk is -2**63 - 1", edit(2, pk=-(2**63) - 1), "integer overflow"),
        ("fields is a list", edit(2, fields=[]), "row 2.*model c.org.*'fields' must be an object, not a list"),
        ("fields is missing", edit(2, fields=_DELETE), "'fields' must be an object, not missing"),
        ("model is a number", edit(2, model=7), "'model' must be a string, not an integer"),
        (
            "FK is a string (natural key)",
            edit(4, fields={"organization": "acme"}),
            f"model c.project, field 'organization'.*a foreign key must be an integer pk or null, not a string.*{nat}",
        ),
        ("FK is a list (natural key)", edit(4, fields={"organization": ["acme"]}), f"not a list.*{nat}"),
        (
            "FK is a float",
            edit(4, fields={"organization": 10.0}),
            "a foreign key must be an integer pk or null, not a number with a fraction",
        ),
        (
            "FK is an object",
            edit(12, fields={"user_id": {"username": MARKER}}),
            "field 'user_id'.*a foreign key must be an integer pk or null, not an object",
        ),
        ("duplicate pk within a model", edit(5, pk=100), r"pk 100 appears more than once for this model \(rows 4, 5\)"),
        (
            f"{DEEP} levels of [ in a value",
            head[:-1] + b', {"model": "c.org", "pk": 99, "fields": {"slug": ' + b"[" * DEEP + b"]" * DEEP + b"}}]",
            "nested more than 512 levels deep",
        ),
        (
            f"{DEEP} levels of [ as a row",
            head + b"," + b"[" * DEEP + b"]" * DEEP + b"]",
            "nested more than 512 levels deep",
        ),
        (f"{DEEP} unclosed levels of {{", head + b"," + b'{"a":' * DEEP, "nested more than 512 levels deep"),
        (
            "600 levels of objects in an unknown model",
            head + b', {"model": "x.y", "pk": 1, "fields": ' + b'{"a":' * 600 + b"1" + b"}" * 600 + b"}]",
            "nested more than 512 levels deep",
        ),
        ("a NUL character in a value", good.replace(b'"acme"', b'"ac\\u0000me"'), "cannot be stored"),
        ("NaN", good.replace(b'"status": 0', b'"status": NaN'), "malformed JSON"),
        ("1e400", good.replace(b'"status": 0', b'"status": 1e400'), "malformed JSON.*overflow"),
        ("truncated JSON", good[: len(good) * 2 // 3], "malformed JSON"),
        ("two JSON lists", good + good, "malformed JSON"),
    ]


def json_cases(keys: KeySet, *, encrypted: bool) -> list[Case]:
    """:func:`json_texts` as plain JSON exports, or encrypted in Sentry's tarball."""
    out = []
    for name, text, match in json_texts():
        if encrypted:
            out.append(
                Case(f"{name} (encrypted)", Parts.encrypt(text, keys).tar(), ExportParseError, match, keys.private)
            )
        else:
            error = BackupFormatError if match == NOT_A_LIST else ExportParseError
            out.append(Case(name, text, error, match))
    return out


CaseSource = Callable[[KeySet], list[Case]]
