"""The router's `Authenticator`: a bearer token to its principal, for API keys and OIDC tokens.

A token starting `tgk_` is an API key, one shaped like a JWT (three base64url segments) goes to
the OIDC verifier when one is configured, and anything else is refused as unknown.

Keys are cached per prefix: the stored hash, the principal, the expiry and revocation. A call
with a key already seen costs one SHA-256 and one constant-time compare, no read of the store.
An entry read more than `cache_seconds` ago is read again before it is used, once per prefix
however many calls are waiting for it (single flight), so a revocation or rotation made by any
router or by `tiergen keys` reaches every replica within `cache_seconds` plus one store read.
Unknown prefixes are cached too (a key made meanwhile is known within the same bound), and at
most `max_entries` prefixes are kept, the least recently used forgotten first. A store that
cannot be read fails the call (UNAVAILABLE), never serves an entry past its bound.

Every refusal of a key takes the same path, compare included: an unknown prefix is compared
against a dummy hash, so that how long a refusal takes says nothing about whether the prefix
exists. The cause ("unknown", "mismatch", "expired", "revoked", "malformed") reaches only the
audit trail; the caller gets one answer for all of them (`access.gate`).
"""

from __future__ import annotations

import asyncio
import hmac
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from services.router.access.gate import Authenticator, CredentialRejected
from services.router.access.keys import (
    KEY_MARK,
    PREFIX_CHARS,
    StoredKey,
    hash_key,
    is_api_key,
    is_key_prefix,
)
from services.router.access.principal import Principal

__all__ = ["DEFAULT_CACHE_SECONDS", "KeySource", "RouterAuthenticator", "looks_like_jwt"]

#: How long a key read from the store is trusted before it is read again.
DEFAULT_CACHE_SECONDS = 2.0
_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
#: What an unknown prefix's key is compared against, so that its refusal costs what a wrong
#: key's does. No key hashes to it but this one, which no store holds.
_DUMMY_HASH = hash_key(f"{KEY_MARK}00000000_{'A' * 43}")


def looks_like_jwt(token: str) -> bool:
    """Whether `token` has a JWT's compact shape: header.payload.signature, base64url each."""
    return _JWT.fullmatch(token) is not None


class KeySource(Protocol):
    """Where keys are read from: `KeyStore`, or a fake of it."""

    async def stored(self, prefix: str) -> StoredKey | None: ...


@dataclass(frozen=True, slots=True)
class _Entry:
    """What the store said about a prefix, and when the reading of it started."""

    read_at: float
    #: None when no key has the prefix.
    stored: StoredKey | None
    principal: Principal | None


def _utc_now() -> datetime:
    return datetime.now(UTC)


class RouterAuthenticator:
    """API keys from `keys`, OIDC tokens through `oidc` (None: refused), keys cached for
    `cache_seconds` (0: the store is read on every call)."""

    def __init__(
        self,
        keys: KeySource,
        *,
        oidc: Authenticator | None = None,
        cache_seconds: float = DEFAULT_CACHE_SECONDS,
        max_entries: int = 10_000,
        clock: Callable[[], datetime] = _utc_now,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keys = keys
        self._oidc = oidc
        self._cache_seconds = cache_seconds
        self._max_entries = max_entries
        self._clock = clock
        self._timer = timer
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._reads: dict[str, asyncio.Task[_Entry]] = {}

    async def authenticate(self, token: str) -> Principal:
        if token.startswith(KEY_MARK):
            return await self._api_key(token)
        if looks_like_jwt(token):
            if self._oidc is None:
                raise CredentialRejected("oidc-not-configured")
            return await self._oidc.authenticate(token)
        raise CredentialRejected("unknown")

    def forget(self, prefix: str) -> None:
        """Read `prefix` from the store on its next use: this router changed it."""
        self._entries.pop(prefix, None)
        # A read already under way may predate the change: it is left to finish, uncached.
        self._reads.pop(prefix, None)

    async def _api_key(self, token: str) -> Principal:
        prefix = token[:PREFIX_CHARS]
        if not is_api_key(token):
            raise CredentialRejected(
                "malformed", credential=prefix if is_key_prefix(prefix) else ""
            )
        entry = await self._entry(prefix)
        stored = entry.stored
        matches = hmac.compare_digest(
            hash_key(token), _DUMMY_HASH if stored is None else stored.key_hash
        )
        if stored is None or entry.principal is None:
            raise CredentialRejected("unknown", credential=prefix)
        record = stored.record
        if not matches:
            raise CredentialRejected("mismatch", credential=prefix, tenant=record.tenant)
        if record.revoked_at is not None:
            raise CredentialRejected("revoked", credential=prefix, tenant=record.tenant)
        if record.expires_at is not None and self._clock() >= record.expires_at:
            raise CredentialRejected("expired", credential=prefix, tenant=record.tenant)
        return entry.principal

    async def _entry(self, prefix: str) -> _Entry:
        entry = self._entries.get(prefix)
        if entry is not None and self._timer() - entry.read_at < self._cache_seconds:
            self._entries.move_to_end(prefix)
            return entry
        read = self._reads.get(prefix)
        if read is None:
            read = asyncio.create_task(self._read(prefix), name=f"read-key-{prefix}")
            self._reads[prefix] = read
            read.add_done_callback(lambda done: self._landed(prefix, done))
        # Shielded: a caller that gives up does not cancel the read the others wait for.
        return await asyncio.shield(read)

    async def _read(self, prefix: str) -> _Entry:
        started = self._timer()
        stored = await self._keys.stored(prefix)
        entry = _Entry(started, stored, None if stored is None else stored.record.principal)
        if self._cache_seconds > 0 and self._reads.get(prefix) is asyncio.current_task():
            self._entries[prefix] = entry
            self._entries.move_to_end(prefix)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return entry

    def _landed(self, prefix: str, read: asyncio.Task[_Entry]) -> None:
        if self._reads.get(prefix) is read:
            del self._reads[prefix]
        if not read.cancelled():
            # Retrieved here too, so a failure whose waiters all gave up is not reported as
            # never retrieved.
            read.exception()
