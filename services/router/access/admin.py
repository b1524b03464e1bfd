"""The API-key RPCs of RouterService: a tenant's administrators making, listing, rotating and
revoking their own tenant's keys.

Every call acts in the caller's tenant (`current_principal()`), never in one a request names:
another tenant's key is NOT_FOUND exactly like a key that does not exist. A caller can only hand
out scopes it holds itself, so a `keys:admin` key cannot mint a key broader than its own; that
covers rotation too, whose new key inherits the old one's scopes and whose secret the caller
receives. Revoking needs no such check: it takes power away.

Every change is audited (`tiergen.audit`: `key.created`, `key.rotated`, `key.revoked`) with the
key's prefix and the credential that asked, never a secret. A secret travels only in the
response that issues it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import structlog
from google.protobuf import timestamp_pb2
from tiergen.router.v1 import router_pb2

from services.router.access.keys import DEFAULT_GRACE_SECONDS, ApiKeyRecord, KeyStore
from services.router.access.principal import Principal, current_principal
from services.router.access.scopes import Scope, parse_scopes
from services.runtime.errors import InvalidArgument, PermissionDenied
from services.runtime.tracing import current_trace_id

__all__ = ["ApiKeyAdmin", "api_key_message", "audit_key_change"]

_audit = structlog.get_logger("tiergen.audit")


def audit_key_change(action: str, *, tenant: str, prefix: str, by: str, **facts: Any) -> None:
    """The audit event of a key created, rotated or revoked (`action` "key.created", ...), by
    the credential or operator `by`: through the RPCs below, or on the store by `tiergen keys`.
    """
    _audit.info(
        "audit",
        action=action,
        tenant=tenant,
        prefix=prefix,
        by=by,
        trace_id=current_trace_id(),
        **facts,
    )


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def api_key_message(record: ApiKeyRecord) -> router_pb2.ApiKey:
    """The listing of a key: everything but its secret and its hash."""
    message = router_pb2.ApiKey(
        prefix=record.prefix,
        tenant=record.tenant,
        scopes=sorted(scope.value for scope in record.scopes),
        name=record.name,
        create_time=_timestamp(record.created_at),
        replaces=record.replaces or "",
    )
    if record.expires_at is not None:
        message.expire_time.CopyFrom(_timestamp(record.expires_at))
    if record.revoked_at is not None:
        message.revoke_time.CopyFrom(_timestamp(record.revoked_at))
    return message


def _require_held(caller: Principal, scopes: Iterable[Scope]) -> None:
    missing = sorted(scope.value for scope in scopes if not caller.may(scope))
    if missing:
        raise PermissionDenied(
            f"this credential does not hold {', '.join(missing)}, so it cannot give a key"
            " those scopes",
            reason="SCOPE_NOT_HELD",
            metadata={"scopes": ",".join(missing)},
        )


def _seconds(value: int, field: str) -> int:
    if value < 0:
        raise InvalidArgument(f"{field} must not be negative", field=field, reason="OUT_OF_RANGE")
    return value


class ApiKeyAdmin:
    """The bodies of CreateApiKey, ListApiKeys, RotateApiKey and RevokeApiKey over `keys`.

    `on_change` is told the prefix of every key this router creates or changes, so that its
    authenticator reads it again at once rather than at the end of its cache bound.
    """

    def __init__(self, keys: KeyStore, *, on_change: Callable[[str], None] | None = None) -> None:
        self._keys = keys
        self._on_change = on_change

    def _changed(self, *prefixes: str) -> None:
        if self._on_change is not None:
            for prefix in prefixes:
                self._on_change(prefix)

    async def CreateApiKey(
        self, request: router_pb2.CreateApiKeyRequest
    ) -> router_pb2.CreateApiKeyResponse:
        caller = current_principal()
        scopes = parse_scopes(request.scopes)
        _require_held(caller, scopes)
        ttl = _seconds(request.ttl_seconds, "ttl_seconds")
        issued = await self._keys.create(
            caller.tenant, scopes, name=request.name, ttl_seconds=ttl or None
        )
        self._changed(issued.prefix)
        audit_key_change(
            "key.created",
            tenant=caller.tenant,
            prefix=issued.prefix,
            by=caller.credential,
            scopes=sorted(scope.value for scope in scopes),
        )
        return router_pb2.CreateApiKeyResponse(
            api_key=api_key_message(issued.record), secret=issued.secret
        )

    async def ListApiKeys(
        self, request: router_pb2.ListApiKeysRequest
    ) -> router_pb2.ListApiKeysResponse:
        caller = current_principal()
        records = await self._keys.list(caller.tenant, include_inactive=request.include_inactive)
        return router_pb2.ListApiKeysResponse(api_keys=[api_key_message(r) for r in records])

    async def RotateApiKey(
        self, request: router_pb2.RotateApiKeyRequest
    ) -> router_pb2.RotateApiKeyResponse:
        caller = current_principal()
        grace = _seconds(request.grace_seconds, "grace_seconds") or DEFAULT_GRACE_SECONDS
        existing = await self._keys.find(request.prefix)
        if existing is not None and existing.tenant == caller.tenant:
            # Read outside the rotation's transaction, which is safe: a key's scopes never
            # change. Another tenant's key is left to the store's NOT_FOUND.
            _require_held(caller, existing.scopes)
        issued, replaced = await self._keys.rotate(
            caller.tenant, request.prefix, grace_seconds=grace
        )
        self._changed(replaced.prefix, issued.prefix)
        audit_key_change(
            "key.rotated",
            tenant=caller.tenant,
            prefix=replaced.prefix,
            by=caller.credential,
            new_prefix=issued.prefix,
            grace_seconds=grace,
        )
        return router_pb2.RotateApiKeyResponse(
            api_key=api_key_message(issued.record),
            secret=issued.secret,
            replaced=api_key_message(replaced),
        )

    async def RevokeApiKey(
        self, request: router_pb2.RevokeApiKeyRequest
    ) -> router_pb2.RevokeApiKeyResponse:
        caller = current_principal()
        record = await self._keys.revoke(caller.tenant, request.prefix)
        self._changed(record.prefix)
        audit_key_change(
            "key.revoked", tenant=caller.tenant, prefix=record.prefix, by=caller.credential
        )
        return router_pb2.RevokeApiKeyResponse(api_key=api_key_message(record))
