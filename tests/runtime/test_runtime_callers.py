"""The caller gate of a backend: the identities of a client certificate against an allow list
per method, every refusal PERMISSION_DENIED with a reason and an audit event; and when a
backend gets one at all."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import structlog
from tiergen.generator.v1 import generator_pb2

from services.runtime.callers import CallerGate, caller_gate, same_for_every_method
from services.runtime.errors import PermissionDenied
from services.runtime.settings import ConfigError, ServerSettings
from tests.tls import session_pki

SERVICE = "tiergen.test.Backend"
ROUTER = "spiffe://tiergen/router"


class _Context:
    """What the gate reads of a call: its peer's auth context and address."""

    def __init__(self, uris: tuple[str, ...] = (), dns: tuple[str, ...] = ()) -> None:
        self._auth: dict[str, list[bytes]] = {}
        if uris:
            self._auth["peer_uri"] = [uri.encode() for uri in uris]
        if dns:
            self._auth["peer_dns"] = [name.encode() for name in dns]

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth

    def peer(self) -> str:
        return "ipv4:10.0.0.7:41000"


GATE = CallerGate(SERVICE, {"Read": {ROUTER, "spiffe://tiergen/admin"}, "Write": {ROUTER}})


async def _refusal(method: str, context: Any) -> tuple[PermissionDenied, dict[str, Any]]:
    with structlog.testing.capture_logs() as logs, pytest.raises(PermissionDenied) as refused:
        await GATE(f"/{SERVICE}/{method}", context)
    (audit,) = [line for line in logs if line.get("action") == "call.refused"]
    return refused.value, audit


async def test_a_listed_identity_is_admitted() -> None:
    await GATE(f"/{SERVICE}/Write", _Context((ROUTER,), ("localhost",)))
    await GATE(f"/{SERVICE}/Read", _Context(("spiffe://tiergen/admin",)))
    # A DNS name listed is matched against the certificate's DNS SANs.
    dns_gate = CallerGate(SERVICE, {"Read": {"router.tiergen.svc"}})
    await dns_gate(f"/{SERVICE}/Read", _Context(dns=("router.tiergen.svc",)))


async def test_another_identity_is_refused_and_audited() -> None:
    error, audit = await _refusal("Write", _Context(("spiffe://tiergen/admin",), ("localhost",)))
    assert (error.code, error.reason) == ("PERMISSION_DENIED", "CALLER_NOT_ALLOWED")
    assert error.metadata == {"identity": "spiffe://tiergen/admin"}
    assert audit["cause"] == "identity-not-allowed"
    assert audit["identity"] == "spiffe://tiergen/admin"
    assert audit["method"] == f"/{SERVICE}/Write"
    assert audit["peer"] == "ipv4:10.0.0.7:41000"
    assert "trace_id" in audit


async def test_a_call_without_a_certificate_is_refused() -> None:
    error, audit = await _refusal("Read", _Context())
    assert error.reason == "CALLER_NOT_ALLOWED"
    assert "client certificate" in error.message
    assert (audit["cause"], audit["identity"]) == ("identity-missing", None)


async def test_a_method_without_a_row_serves_nobody() -> None:
    error, audit = await _refusal("Delete", _Context((ROUTER,)))
    assert error.reason == "METHOD_NOT_ALLOWED"
    assert audit["cause"] == "no-rule"


async def test_other_services_pass_through() -> None:
    await GATE("/tiergen.test.Other/Write", _Context())


def test_every_generator_rpc_gets_the_same_row() -> None:
    service = generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"]
    table = same_for_every_method(service, frozenset({ROUTER}))
    assert table == {"ListTiers": {ROUTER}, "Render": {ROUTER}}


def test_a_backend_gets_a_gate_only_where_identities_can_be_known() -> None:
    pki = session_pki()
    mutual = pki.server("generator")
    assert isinstance(caller_gate(mutual, SERVICE, {}), CallerGate)
    with structlog.testing.capture_logs() as logs:
        assert caller_gate(ServerSettings(service="x", insecure=True), SERVICE, {}) is None
    assert any("NOT checked" in line["event"] for line in logs)
    with pytest.raises(ConfigError, match="TIERGEN_TLS_CLIENT_CA_FILE is not set"):
        caller_gate(replace(mutual, tls=pki.server_tls("generator", mutual=False)), SERVICE, {})
