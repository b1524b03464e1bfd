"""Who may call a backend: the identities a caller's client certificate names, checked against
an allow list per RPC before the call's handler runs.

The ledger, generator and upscaler serve the router, and the ledger a few RPCs to an operator
too; nobody else. Mutual TLS proves which certificate a caller holds, and its URI SAN
(`spiffe://tiergen/router`) says who that is (`services.runtime.identities`). `CallerGate` is
the server's `Gate` (`services.runtime.interceptors`): it runs inside the call's span and log
line, so a refused call is traced and logged like any other, answered PERMISSION_DENIED with an
ErrorInfo, and written to the audit trail (logger `tiergen.audit`, action `call.refused`).
Health and reflection never reach it: probes and tools stay open.

A method without a row in the table is refused, never let through, so an RPC added to a
service without deciding who may call it serves nobody until its row is written.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import grpc
import structlog
from google.protobuf.descriptor import ServiceDescriptor

from services.runtime.errors import PermissionDenied
from services.runtime.interceptors import Gate
from services.runtime.settings import (
    CLIENT_CA_FILE_VARIABLE,
    INSECURE_VARIABLE,
    ConfigError,
    ServerSettings,
)
from services.runtime.tracing import current_trace_id

__all__ = ["CallerGate", "caller_gate", "peer_identities", "same_for_every_method"]

_audit = structlog.get_logger("tiergen.audit")
_log = structlog.get_logger("tiergen.callers")


def _names(auth: Mapping[str, Iterable[Any]], key: str) -> frozenset[str]:
    return frozenset(
        value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        for value in auth.get(key, ())
    )


def peer_identities(context: grpc.aio.ServicerContext[Any, Any]) -> tuple[frozenset[str], str]:
    """The names the call's client certificate gives (its URI and DNS SANs, verified by the TLS
    handshake against the client CA), and the one a message names it by: its URIs, or its DNS
    names when it has no URI; empty without a certificate."""
    auth = context.auth_context() or {}
    uris, dns = _names(auth, "peer_uri"), _names(auth, "peer_dns")
    return uris | dns, _named(uris or dns)


def same_for_every_method(
    service: ServiceDescriptor, identities: frozenset[str]
) -> dict[str, frozenset[str]]:
    """The table of a service every RPC of which serves the same `identities`."""
    return {method.name: identities for method in service.methods}


class CallerGate:
    """The `Gate` of a backend: a call to `service` (its full name) is admitted only when the
    caller's certificate names an identity `allowed[method name]` lists."""

    def __init__(self, service: str, allowed: Mapping[str, Iterable[str]]) -> None:
        self._prefix = f"/{service}/"
        self._allowed = {method: frozenset(names) for method, names in allowed.items()}

    @property
    def table(self) -> Mapping[str, frozenset[str]]:
        return self._allowed

    async def __call__(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if not method.startswith(self._prefix):
            # Another service on the same server; each service brings its own gate.
            return
        identities, identity = peer_identities(context)
        allowed = self._allowed.get(method[len(self._prefix) :])
        if allowed is not None and not identities.isdisjoint(allowed):
            structlog.contextvars.bind_contextvars(caller=_named(identities & allowed))
            return
        if allowed is None:
            cause = "no-rule"
            error = PermissionDenied(
                "this method is not open to any caller", reason="METHOD_NOT_ALLOWED"
            )
        elif not identities:
            cause = "identity-missing"
            error = PermissionDenied(
                "this call needs a client certificate naming a caller this service serves",
                reason="CALLER_NOT_ALLOWED",
            )
        else:
            cause = "identity-not-allowed"
            error = PermissionDenied(
                f"the caller {identity} may not call this method",
                reason="CALLER_NOT_ALLOWED",
                metadata={"identity": identity},
            )
        _audit.warning(
            "audit",
            action="call.refused",
            code=error.code,
            reason=error.reason,
            cause=cause,
            method=method,
            identity=identity or None,
            peer=context.peer() or "",
            trace_id=current_trace_id(),
        )
        raise error


def _named(identities: Iterable[str]) -> str:
    return ",".join(sorted(identities))


def caller_gate(
    settings: ServerSettings, service: str, allowed: Mapping[str, Iterable[str]]
) -> Gate | None:
    """The gate of a backend's server, or None when it serves plaintext (TIERGEN_INSECURE):
    with no certificates there are no identities to check, and a warning says the mesh must.

    ConfigError for a TLS server that does not require client certificates: none of its
    callers could ever be admitted.
    """
    if settings.tls is None:
        if settings.insecure:
            _log.warning(
                "caller identities are NOT checked: in plaintext no caller presents a"
                " certificate; the mesh must admit only the router",
                setting=f"{INSECURE_VARIABLE}=true",
                service=service,
            )
        return None
    if settings.tls.client_ca is None:
        raise ConfigError(
            f"{CLIENT_CA_FILE_VARIABLE} is not set: this service admits its callers by their"
            " client certificates; set it to the CA file that signs them"
        )
    return CallerGate(service, allowed)
