"""The router's access check: every RouterService call carries a credential with the scope the
RPC needs, or is refused before its handler runs.

The gate runs inside the call's span and log line (`services.runtime.interceptors.Gate`), so a
refused call is traced, logged with its reason and answered with an ErrorInfo like any other
error. It reads the bearer token from the `authorization` metadata, asks the `Authenticator`
who it belongs to, checks the scope against `METHOD_SCOPES`, and binds the caller for the
handler (`current_principal()`). Health and reflection never reach it.

A refusal says only what the caller can act on: UNAUTHENTICATED with the same reason and
message for a token that is unknown, wrong, expired or revoked, so a guesser learns nothing;
the audit event, which only operators read, says which. Refusals from one peer past a few in a
minute are answered ever more slowly (`Throttle`).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import structlog
from opentelemetry import trace

from services.router.access.principal import Principal, bind_principal
from services.router.access.scopes import METHOD_SCOPES, SERVICE, Scope
from services.runtime.errors import PermissionDenied, TiergenError, Unauthenticated
from services.runtime.tracing import current_trace_id

__all__ = [
    "AUTH_OFF_PRINCIPAL",
    "MAX_TOKEN_CHARS",
    "AccessGate",
    "Authenticator",
    "CredentialRejected",
    "Throttle",
    "bearer_token",
]

_audit = structlog.get_logger("tiergen.audit")

#: The caller of every call when authentication is switched off (TIERGEN_AUTH=off).
AUTH_OFF_PRINCIPAL = Principal(tenant="default", scopes=frozenset(Scope), credential="auth-off")

#: Longest bearer token read; a longer one is refused without being looked at.
MAX_TOKEN_CHARS = 8192


class CredentialRejected(Exception):
    """A token that names no valid credential. `cause` ("unknown", "mismatch", "expired",
    "revoked", "bad-signature", ...) is for the audit trail only; `credential` names the
    credential without revealing it (a key's prefix) when the token had one."""

    def __init__(self, cause: str, credential: str = "", tenant: str = "") -> None:
        super().__init__(cause)
        self.cause = cause
        self.credential = credential
        self.tenant = tenant


class Authenticator(Protocol):
    """Turns a bearer token into its principal, or raises CredentialRejected."""

    async def authenticate(self, token: str) -> Principal: ...


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str:
    """The token of the call's one `authorization: Bearer <token>` metadata entry.

    Unauthenticated CREDENTIAL_MISSING without one, CREDENTIAL_MALFORMED for anything else: two
    entries, another scheme, no token, or a token with blanks or control characters in it.
    """
    values = [value for key, value in metadata or () if key == "authorization"]
    if not values:
        raise Unauthenticated(
            "this call needs a credential: send `authorization: Bearer <API key or token>`"
            " metadata",
            reason="CREDENTIAL_MISSING",
        )
    if len(values) > 1:
        raise _malformed("send one `authorization` entry, not several")
    value = values[0]
    if not isinstance(value, str):
        raise _malformed("the `authorization` value must be text")
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise _malformed("the `authorization` value must read `Bearer <API key or token>`")
    token = token.strip()
    if not token or len(token) > MAX_TOKEN_CHARS or not token.isascii() or not token.isprintable():
        raise _malformed("the bearer token is empty, too long or holds characters no token has")
    if any(char.isspace() for char in token):
        raise _malformed("the bearer token holds a blank")
    return token


def _malformed(message: str) -> Unauthenticated:
    return Unauthenticated(message, reason="CREDENTIAL_MALFORMED")


def _invalid() -> Unauthenticated:
    return Unauthenticated(
        "the credential is not valid: it is unknown, wrong, expired or revoked",
        reason="CREDENTIAL_INVALID",
    )


class Throttle:
    """Slows down peers that keep failing: past `free` refusals within `window` seconds, each
    further refusal is answered after a delay that doubles, from `base` up to `cap` seconds.

    Peers are hosts (a client's ports change with every connection); at most `max_peers` are
    remembered, the least recently refused forgotten first.
    """

    def __init__(
        self,
        *,
        free: int = 5,
        window: float = 60.0,
        base: float = 0.1,
        cap: float = 5.0,
        max_peers: int = 10_000,
    ) -> None:
        self._free = free
        self._window = window
        self._base = base
        self._cap = cap
        self._max_peers = max_peers
        self._refusals: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def refused(self, peer: str, now: float | None = None) -> float:
        """Counts a refusal of `peer`; the seconds to wait before answering it."""
        now = time.monotonic() if now is None else now
        host = peer_host(peer)
        since, count = self._refusals.pop(host, (now, 0))
        if now - since > self._window:
            since, count = now, 0
        count += 1
        self._refusals[host] = (since, count)
        while len(self._refusals) > self._max_peers:
            self._refusals.popitem(last=False)
        if count <= self._free:
            return 0.0
        return float(min(self._cap, self._base * 2 ** (count - self._free - 1)))


def peer_host(peer: str) -> str:
    """The host of a gRPC peer string: "ipv4:10.0.0.7:5123" -> "ipv4:10.0.0.7",
    "ipv6:[::1]:5123" -> "ipv6:[::1]"; anything else unchanged."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6") and ":" in rest:
        return f"{kind}:{rest.rpartition(':')[0]}"
    return peer


@dataclass(frozen=True)
class _Refusal:
    error: TiergenError
    cause: str
    credential: str = ""
    tenant: str = ""


class AccessGate:
    """The `Gate` of the router's server. `authenticator` None means TIERGEN_AUTH=off: every
    call acts as `AUTH_OFF_PRINCIPAL`."""

    def __init__(self, authenticator: Authenticator | None, throttle: Throttle | None = None):
        self._authenticator = authenticator
        self._throttle = throttle or Throttle()
        self._prefix = f"/{SERVICE}/"

    async def __call__(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if not method.startswith(self._prefix):
            return
        name = method[len(self._prefix) :]
        outcome = await self._admit(name, context)
        if isinstance(outcome, Principal):
            bind_principal(outcome)
            structlog.contextvars.bind_contextvars(
                tenant=outcome.tenant, credential=outcome.credential
            )
            span = trace.get_current_span()
            span.set_attribute("tiergen.tenant", outcome.tenant)
            span.set_attribute("tiergen.credential", outcome.credential)
            return
        peer = context.peer() or ""
        _audit.warning(
            "audit",
            action="call.refused",
            code=outcome.error.code,
            reason=outcome.error.reason,
            cause=outcome.cause,
            method=method,
            tenant=outcome.tenant or None,
            credential=outcome.credential or None,
            peer=peer,
            trace_id=current_trace_id(),
        )
        delay = self._throttle.refused(peer)
        if delay:
            await asyncio.sleep(delay)
        raise outcome.error

    async def _admit(
        self, name: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Principal | _Refusal:
        scope = METHOD_SCOPES.get(name)
        if self._authenticator is None:
            principal = AUTH_OFF_PRINCIPAL
        else:
            try:
                token = bearer_token(context.invocation_metadata())
            except Unauthenticated as exc:
                return _Refusal(exc, exc.reason.lower().replace("_", "-"))
            try:
                principal = await self._authenticator.authenticate(token)
            except CredentialRejected as rejected:
                return _Refusal(_invalid(), rejected.cause, rejected.credential, rejected.tenant)
        if scope is None:
            # An RPC without a row in the table is refused, never let through.
            return _Refusal(
                PermissionDenied("this method is not open to callers", reason="METHOD_NOT_ALLOWED"),
                "no-scope-row",
                principal.credential,
                principal.tenant,
            )
        if not principal.may(scope):
            return _Refusal(
                PermissionDenied(
                    f"this credential lacks the scope {scope.value!r} this call needs; ask the"
                    " tenant's administrator for a key that has it",
                    reason="SCOPE_MISSING",
                    metadata={"scope": scope.value},
                ),
                "scope-missing",
                principal.credential,
                principal.tenant,
            )
        return principal
