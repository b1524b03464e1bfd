"""API keys: their format, the one-way hash the router keeps of them, and their table.

A key reads `tgk_3f9a2c1d_<43 characters>`: `tgk_`, eight lowercase hex digits, `_`, and
`secrets.token_urlsafe(32)`. Its first 12 characters, the prefix (`tgk_3f9a2c1d`), are not
secret: they name the key in listings, logs, the audit trail and revocation, and they are the
table's primary key. The whole key is shown once, when it is issued (`IssuedKey`, whose repr
hides it); the store keeps only its SHA-256.

Why a plain SHA-256 and not a password KDF (bcrypt, scrypt, Argon2): a KDF makes each guess
expensive to protect secrets that have little entropy, which people choose. A key's secret part
is 256 random bits, so a stolen table cannot be searched for keys however fast the hash is, and a
slow hash would only cost the router CPU on every call. Hashes are compared in constant time
(`hmac.compare_digest`, in `access.authenticator`).

`KeyStore` keeps the keys in the router's own database, next to the job tables, on SQLite (one
router) or PostgreSQL (replicas), and opens it as the job store does: a SQLite file is brought up
to date at open, a PostgreSQL schema that `tiergen migrate` has not brought up to date is
refused. Every change is one guarded statement or one transaction, so two replicas (or a router
and `tiergen keys`) changing one key at once cannot corrupt it, and every change waits for the
disk on SQLite: a revocation lost to a power loss would bring a key back.

Tenancy: every call that names a key by prefix names the tenant too, and another tenant's key
is `NOT_FOUND` with the very message of a key that does not exist. `find` and `list(None)`
cross tenants; they are for the authenticator and for operators, never for a caller's request.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from services.router.access.principal import Principal
from services.router.access.scopes import Scope, parse_scopes
from services.router.jobs.databases import (
    Database,
    Mode,
    PostgresDatabase,
    Script,
    SqliteDatabase,
    Step,
)
from services.router.jobs.migrations import SCHEMA
from services.router.jobs.queries import Query, insert_for
from services.router.jobs.schema import api_keys
from services.runtime.errors import FailedPrecondition, Internal, InvalidArgument, NotFound
from services.runtime.identifiers import excerpt, require_tenant
from services.runtime.migrations import require_current, upgrade
from services.runtime.settings import ConfigError

__all__ = [
    "DEFAULT_GRACE_SECONDS",
    "KEY_MARK",
    "MAX_GRACE_SECONDS",
    "MAX_NAME_CHARS",
    "MAX_TTL_SECONDS",
    "PREFIX_CHARS",
    "ApiKeyRecord",
    "IssuedKey",
    "KeyStore",
    "StoredKey",
    "hash_key",
    "is_api_key",
    "is_key_prefix",
    "new_key",
]

#: What every API key starts with; a bearer token that does is taken for one.
KEY_MARK = "tgk_"
#: Characters of a key's prefix: `tgk_` and eight hex digits.
PREFIX_CHARS = 12
#: Random bytes of a key's secret part: 256 bits, 43 characters of URL-safe base64.
_SECRET_BYTES = 32
_KEY_PATTERN = re.compile(r"tgk_[0-9a-f]{8}_[A-Za-z0-9_-]{43}")
_PREFIX_PATTERN = re.compile(r"tgk_[0-9a-f]{8}")
#: Longest label of a key.
MAX_NAME_CHARS = 100
#: Longest lifetime of a key: ten years.
MAX_TTL_SECONDS = 10 * 365 * 86_400
#: How long a rotated-out key keeps working unless the rotation says otherwise.
DEFAULT_GRACE_SECONDS = 86_400
#: Longest grace of a rotated-out key: thirty days.
MAX_GRACE_SECONDS = 30 * 86_400
#: New keys drawn before giving up when each prefix drawn is taken (32 bits each: a collision
#: is rare, two in a row among a million keys about one in ten million).
_DRAWS = 5


def is_api_key(token: str) -> bool:
    """Whether `token` has the shape of an API key (it may still be unknown)."""
    return len(token) == PREFIX_CHARS + 1 + 43 and _KEY_PATTERN.fullmatch(token) is not None


def is_key_prefix(prefix: str) -> bool:
    """Whether `prefix` has the shape of a key's prefix, `tgk_` and eight lowercase hex digits."""
    return len(prefix) == PREFIX_CHARS and _PREFIX_PATTERN.fullmatch(prefix) is not None


def new_key() -> str:
    """A new, random API key."""
    return f"{KEY_MARK}{secrets.token_hex(4)}_{secrets.token_urlsafe(_SECRET_BYTES)}"


def hash_key(key: str) -> bytes:
    """The SHA-256 of the whole key, as stored (in hex) and compared."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """An API key as listed: everything but its secret and its hash."""

    prefix: str
    tenant: str
    scopes: frozenset[Scope]
    name: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    #: The prefix of the key this one replaced, for a key made by `KeyStore.rotate`.
    replaces: str | None = None

    def active(self, now: datetime) -> bool:
        """Whether the key is accepted at `now`: neither revoked nor expired."""
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    @property
    def principal(self) -> Principal:
        """The caller a call with this key acts as."""
        return Principal(tenant=self.tenant, scopes=self.scopes, credential=self.prefix)


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A key just made: the only moment its secret is known. Its repr shows the record only."""

    secret: str = field(repr=False)
    record: ApiKeyRecord

    @property
    def prefix(self) -> str:
        return self.record.prefix


@dataclass(frozen=True, slots=True)
class StoredKey:
    """A key's record with the hash its secret must match, for the authenticator."""

    record: ApiKeyRecord
    key_hash: bytes = field(repr=False)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _to_us(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


def _from_us(micros: int) -> datetime:
    return datetime.fromtimestamp(micros // 1_000_000, UTC).replace(microsecond=micros % 1_000_000)


def _optional_time(micros: int | None) -> datetime | None:
    return None if micros is None else _from_us(micros)


def _encode_scopes(scopes: Iterable[Scope]) -> str:
    return " ".join(sorted(scope.value for scope in scopes))


def _decode_scopes(text: str) -> frozenset[Scope]:
    # A scope this release does not know (written by a newer one mid-rollout) grants nothing.
    known = {scope.value for scope in Scope}
    return frozenset(Scope(name) for name in text.split() if name in known)


def _record(row: Mapping[str, Any]) -> ApiKeyRecord:
    return ApiKeyRecord(
        prefix=row["prefix"],
        tenant=row["tenant"],
        scopes=_decode_scopes(row["scopes"]),
        name=row["name"],
        created_at=_from_us(row["create_us"]),
        expires_at=_optional_time(row["expire_us"]),
        revoked_at=_optional_time(row["revoke_us"]),
        replaces=row["replaces"],
    )


def _stored(row: Mapping[str, Any]) -> StoredKey:
    return StoredKey(_record(row), bytes.fromhex(row["key_hash"]))


def _sqlite_path(dsn: str) -> Path | None:
    """The file a `sqlite:///PATH` DSN names (`~` expanded), None for any other DSN."""
    if dsn.startswith("sqlite:///") and len(dsn) > len("sqlite:///"):
        return Path(dsn.removeprefix("sqlite:///")).expanduser()
    return None


def _prepare_sqlite(path: Path) -> None:
    """Make the file's directory, and bring its schema up to date."""
    path.parent.mkdir(parents=True, exist_ok=True)
    upgrade(SCHEMA, f"sqlite:///{path}")


def _require_prefix(prefix: str) -> str:
    if not is_key_prefix(prefix):
        raise InvalidArgument(
            f"key prefix {excerpt(prefix)} is malformed: a prefix is `tgk_` and eight lowercase"
            " hex digits, the first 12 characters of the key",
            field="prefix",
            reason="MALFORMED_KEY_PREFIX",
        )
    return prefix


def _require_name(name: str) -> str:
    if len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise InvalidArgument(
            f"the key's name must be at most {MAX_NAME_CHARS} printable characters on one line",
            field="name",
            reason="KEY_NAME_MALFORMED",
        )
    return name


def _require_seconds(value: float, field: str, *, minimum: float, maximum: float) -> float:
    if not minimum <= value <= maximum:
        raise InvalidArgument(
            f"{field} must be between {minimum:g} and {maximum:g} seconds",
            field=field,
            reason="OUT_OF_RANGE",
        )
    return value


def _not_found(prefix: str) -> NotFound:
    # One message whether the key does not exist or is another tenant's.
    return NotFound(f"there is no API key {prefix}", reason="API_KEY_NOT_FOUND")


_p = sa.bindparam
_ACTIVE = sa.and_(
    api_keys.c.revoke_us.is_(None),
    sa.or_(api_keys.c.expire_us.is_(None), api_keys.c.expire_us > _p("now_us")),
)
_NEWEST_FIRST = (api_keys.c.create_us.desc(), api_keys.c.prefix)
_NEW_KEY_COLUMNS = (
    "prefix",
    "tenant",
    "key_hash",
    "scopes",
    "name",
    "create_us",
    "expire_us",
    "replaces",
)

INSERT_KEY = Query(
    "insert api key",
    lambda dialect: (
        insert_for(dialect, api_keys)
        .values({column: _p(column) for column in _NEW_KEY_COLUMNS})
        .on_conflict_do_nothing(index_elements=["prefix"])
        .returning(*api_keys.c)
    ),
)
KEY_BY_PREFIX = Query.of(
    "api key by prefix", sa.select(api_keys).where(api_keys.c.prefix == _p("prefix"))
)
LOCK_KEY = Query.of(
    "lock api key",
    sa.select(api_keys).where(api_keys.c.prefix == _p("prefix")).with_for_update(),
)
KEYS_OF_TENANT = Query.of(
    "api keys of tenant",
    sa.select(api_keys).where(api_keys.c.tenant == _p("tenant")).order_by(*_NEWEST_FIRST),
)
ACTIVE_KEYS_OF_TENANT = Query.of(
    "active api keys of tenant",
    sa.select(api_keys).where(api_keys.c.tenant == _p("tenant"), _ACTIVE).order_by(*_NEWEST_FIRST),
)
EVERY_KEY = Query.of("every api key", sa.select(api_keys).order_by(*_NEWEST_FIRST))
EVERY_ACTIVE_KEY = Query.of(
    "every active api key", sa.select(api_keys).where(_ACTIVE).order_by(*_NEWEST_FIRST)
)
REVOKE_KEY = Query.of(
    "revoke api key",
    sa.update(api_keys)
    .values(revoke_us=_p("now_us"))
    .where(
        api_keys.c.prefix == _p("prefix"),
        api_keys.c.tenant == _p("tenant"),
        api_keys.c.revoke_us.is_(None),
    )
    .returning(*api_keys.c),
)
EXPIRE_KEY = Query.of(
    "expire api key",
    sa.update(api_keys)
    .values(expire_us=_p("new_expire_us"))
    .where(api_keys.c.prefix == _p("prefix"))
    .returning(*api_keys.c),
)


class KeyStore:
    """The router's API keys in its database. Open with `open`; `clock` tells the time of
    creations, expiries and revocations."""

    def __init__(self, database: Database, clock: Callable[[], datetime] = _utc_now) -> None:
        self._database = database
        self._clock = clock

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        clock: Callable[[], datetime] = _utc_now,
        pool_size: int = 2,
        timeout_seconds: float = 5.0,
    ) -> KeyStore:
        """The keys of the router database at `dsn`: `sqlite:///PATH` (made, with its directory,
        when missing, and brought up to date) or `postgresql://...` (whose schema must be
        current: `tiergen migrate`; ConfigError otherwise). Up to `pool_size` PostgreSQL
        connections, each call waiting at most `timeout_seconds` for one."""
        path = _sqlite_path(dsn)
        if path is not None:
            sqlite = await SqliteDatabase.open(path, lambda: _prepare_sqlite(path))
            return cls(sqlite, clock)
        if not dsn.startswith(("postgresql://", "postgres://")):
            raise ConfigError(
                "the router database must be sqlite:///PATH or postgresql://...; got another"
                " kind of DSN"
            )
        postgres = await PostgresDatabase.open(
            dsn, pool_size=pool_size, timeout_seconds=timeout_seconds
        )
        try:
            await asyncio.to_thread(require_current, SCHEMA, dsn)
        except BaseException:
            await postgres.close()
            raise
        return cls(postgres, clock)

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`."""
        return self._database.dialect.name

    async def close(self) -> None:
        await self._database.close()

    async def create(
        self,
        tenant: str,
        scopes: Iterable[str],
        *,
        name: str = "",
        ttl_seconds: float | None = None,
    ) -> IssuedKey:
        """A new key of `tenant` with `scopes` (at least one), labelled `name`, expiring after
        `ttl_seconds` (never when None). InvalidArgument for a bad tenant, scope, name or ttl."""
        require_tenant(tenant)
        granted = parse_scopes(scopes)
        _require_name(name)
        if ttl_seconds is not None:
            _require_seconds(ttl_seconds, "ttl_seconds", minimum=1, maximum=MAX_TTL_SECONDS)

        def create() -> Script[IssuedKey]:
            now = self._clock()
            expires = None if ttl_seconds is None else now + timedelta(seconds=ttl_seconds)
            return (yield from _insert(tenant, granted, name, now, expires, replaces=None))

        return await self._database.run(Mode.WRITE, create, durable=True)

    async def list(
        self, tenant: str | None, *, include_inactive: bool = False
    ) -> builtins.list[ApiKeyRecord]:
        """The keys of `tenant` (None: of every tenant, for operators), newest first; only those
        neither revoked nor expired unless `include_inactive`."""
        if tenant is not None:
            require_tenant(tenant)
        if tenant is None:
            query = EVERY_KEY if include_inactive else EVERY_ACTIVE_KEY
        else:
            query = KEYS_OF_TENANT if include_inactive else ACTIVE_KEYS_OF_TENANT
        now_us = _to_us(self._clock())

        def read() -> Script[builtins.list[ApiKeyRecord]]:
            rows = yield Step.all(query, tenant=tenant, now_us=now_us)
            return [_record(row) for row in rows]

        return await self._database.run(Mode.READ, read)

    async def rotate(
        self, tenant: str, prefix: str, *, grace_seconds: float = DEFAULT_GRACE_SECONDS
    ) -> tuple[IssuedKey, ApiKeyRecord]:
        """A new key replacing `prefix`, with its scopes, name and lifetime, and the old key's
        record, now expiring `grace_seconds` from now (or sooner, if it already expired
        sooner). NotFound for a key that is not `tenant`'s, FailedPrecondition for one that is
        revoked or expired."""
        require_tenant(tenant)
        _require_prefix(prefix)
        _require_seconds(grace_seconds, "grace_seconds", minimum=0, maximum=MAX_GRACE_SECONDS)

        def rotate() -> Script[tuple[IssuedKey, ApiKeyRecord]]:
            now = self._clock()
            row = yield Step.one(LOCK_KEY, prefix=prefix)
            if row is None or row["tenant"] != tenant:
                raise _not_found(prefix)
            old = _record(row)
            if not old.active(now):
                raise FailedPrecondition(
                    f"API key {prefix} is revoked or expired: create a new key instead",
                    reason="API_KEY_INACTIVE",
                )
            expires = None
            if old.expires_at is not None:
                expires = now + (old.expires_at - old.created_at)
            issued = yield from _insert(tenant, old.scopes, old.name, now, expires, replaces=prefix)
            end = now + timedelta(seconds=grace_seconds)
            if old.expires_at is not None:
                end = min(end, old.expires_at)
            updated = yield Step.one(EXPIRE_KEY, prefix=prefix, new_expire_us=_to_us(end))
            assert updated is not None, "the key is locked by this transaction"
            return issued, _record(updated)

        return await self._database.run(Mode.ATOMIC, rotate, durable=True)

    async def revoke(self, tenant: str, prefix: str) -> ApiKeyRecord:
        """Revoke `tenant`'s key `prefix` (a key already revoked stays as it was); its record.
        NotFound for a key that is not `tenant`'s."""
        require_tenant(tenant)
        _require_prefix(prefix)

        def revoke() -> Script[ApiKeyRecord]:
            now_us = _to_us(self._clock())
            row = yield Step.one(REVOKE_KEY, prefix=prefix, tenant=tenant, now_us=now_us)
            if row is None:
                row = yield Step.one(KEY_BY_PREFIX, prefix=prefix)
                if row is None or row["tenant"] != tenant:
                    raise _not_found(prefix)
            return _record(row)

        return await self._database.run(Mode.WRITE, revoke, durable=True)

    async def find(self, prefix: str) -> ApiKeyRecord | None:
        """The key named `prefix`, of whatever tenant, or None."""
        stored = await self.stored(prefix)
        return None if stored is None else stored.record

    async def stored(self, prefix: str) -> StoredKey | None:
        """The key named `prefix` with its hash, of whatever tenant, or None: one read."""
        _require_prefix(prefix)

        def read() -> Script[StoredKey | None]:
            row = yield Step.one(KEY_BY_PREFIX, prefix=prefix)
            return None if row is None else _stored(row)

        return await self._database.run(Mode.READ, read)


def _insert(
    tenant: str,
    scopes: frozenset[Scope],
    name: str,
    now: datetime,
    expires: datetime | None,
    *,
    replaces: str | None,
) -> Script[IssuedKey]:
    """Insert a new key, drawing another when its prefix is taken."""
    for _ in range(_DRAWS):
        secret = new_key()
        row = yield Step.one(
            INSERT_KEY,
            prefix=secret[:PREFIX_CHARS],
            tenant=tenant,
            key_hash=hash_key(secret).hex(),
            scopes=_encode_scopes(scopes),
            name=name,
            create_us=_to_us(now),
            expire_us=None if expires is None else _to_us(expires),
            replaces=replaces,
        )
        if row is not None:
            return IssuedKey(secret=secret, record=_record(row))
    raise Internal(f"{_DRAWS} new API keys in a row had prefixes already taken")
