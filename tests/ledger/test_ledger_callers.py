"""Who may call the ledger: the router every RPC, the admin identity Grant and the reads, anyone
else nothing; a refusal is PERMISSION_DENIED with a reason and an audit event, and changes
nothing. Health and reflection stay open to any certificate of the CA."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tiergen.ledger.v1 import ledger_pb2, ledger_pb2_grpc

from services.ledger.callers import METHOD_GROUPS, SERVICE, Group, allowed_callers
from services.ledger.server import create_server
from services.ledger.settings import LedgerSettings
from services.runtime.channels import open_channel
from services.runtime.identities import ADMIN_IDENTITY, ROUTER_IDENTITY
from services.runtime.server import Server
from services.runtime.settings import ConfigError
from tests.ledger.served import failure
from tests.tls import session_pki

TENANT = "acme"


def test_every_ledger_rpc_has_a_row() -> None:
    methods = {m.name for m in ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"].methods}
    assert set(METHOD_GROUPS) == methods
    admins = {method for method, groups in METHOD_GROUPS.items() if Group.ADMINS in groups}
    assert admins == {"Grant", "GetBalance", "ListEntries"}
    assert all(Group.CALLERS in groups for groups in METHOD_GROUPS.values())


def test_the_table_takes_its_identities_from_the_settings() -> None:
    settings = LedgerSettings.from_env(
        {
            "TIERGEN_ALLOWED_CALLERS": "spiffe://tiergen/router,spiffe://tiergen/router-canary",
            "TIERGEN_LEDGER_ADMIN_IDENTITIES": "spiffe://tiergen/ops",
        }
    )
    table = allowed_callers(settings)
    assert table["Reserve"] == {"spiffe://tiergen/router", "spiffe://tiergen/router-canary"}
    assert table["Grant"] == {
        "spiffe://tiergen/router",
        "spiffe://tiergen/router-canary",
        "spiffe://tiergen/ops",
    }
    assert allowed_callers(LedgerSettings())["Grant"] == {ROUTER_IDENTITY, ADMIN_IDENTITY}


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[tuple[LedgerSettings, str]]:
    settings = LedgerSettings(
        dsn=f"sqlite:///{tmp_path / 'ledger.db'}", server=session_pki().server("ledger")
    )
    server: Server
    server, port = await create_server(settings)
    await server.start()
    try:
        yield settings, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


def _stub(address: str, identity: str | None) -> tuple[grpc.aio.Channel, Any]:
    """A channel presenting a certificate of the run's CA naming `identity` (the files of the
    router's and the admin's for those two), and a ledger stub on it."""
    pki = session_pki()
    names = {ROUTER_IDENTITY: "router", ADMIN_IDENTITY: "cli"}
    if identity in names:
        security = pki.security(names[identity])
    else:
        security = pki.security_of(*pki.issue(identity))
    channel = open_channel(address, security=security, services=[SERVICE], default_timeout=10)
    return channel, ledger_pb2_grpc.LedgerServiceStub(channel)


def _grant(account: str = "alice", key: str = "grant-1") -> ledger_pb2.GrantRequest:
    return ledger_pb2.GrantRequest(
        tenant=TENANT,
        account_id=account,
        amount=50,
        kind=ledger_pb2.GRANT_KIND_ADJUSTMENT,
        reason="goodwill",
        idempotency_key=key,
    )


async def test_the_router_may_call_every_rpc(ledger) -> None:
    _, address = ledger
    channel, stub = _stub(address, ROUTER_IDENTITY)
    async with channel:
        await stub.OpenAccount(
            ledger_pb2.OpenAccountRequest(tenant=TENANT, account_id="alice", idempotency_key="o")
        )
        held = await stub.Reserve(
            ledger_pb2.ReserveRequest(
                tenant=TENANT, account_id="alice", amount=10, idempotency_key="r"
            )
        )
        await stub.Release(
            ledger_pb2.ReleaseRequest(tenant=TENANT, hold_id=held.hold.hold_id, idempotency_key="l")
        )
        granted = await stub.Grant(_grant())
    assert granted.balance.available == 450


async def test_the_admin_may_grant_and_read_but_not_touch_holds(ledger) -> None:
    _, address = ledger
    channel, router = _stub(address, ROUTER_IDENTITY)
    async with channel:
        await router.OpenAccount(
            ledger_pb2.OpenAccountRequest(tenant=TENANT, account_id="bob", idempotency_key="o")
        )
    channel, stub = _stub(address, ADMIN_IDENTITY)
    async with channel:
        granted = await stub.Grant(_grant("bob"))
        balance = await stub.GetBalance(
            ledger_pb2.GetBalanceRequest(tenant=TENANT, account_id="bob")
        )
        entries = await stub.ListEntries(
            ledger_pb2.ListEntriesRequest(tenant=TENANT, account_id="bob")
        )
        with structlog.testing.capture_logs() as logs:
            refused = await failure(
                stub.Reserve(
                    ledger_pb2.ReserveRequest(
                        tenant=TENANT, account_id="bob", amount=10, idempotency_key="r"
                    )
                )
            )
    assert granted.balance.available == balance.balance.available == 450
    assert ledger_pb2.ENTRY_KIND_ADJUSTMENT in [entry.kind for entry in entries.entries]
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "CALLER_NOT_ALLOWED",
    )
    assert refused.metadata == {"identity": ADMIN_IDENTITY}
    (audit,) = [line for line in logs if line.get("action") == "call.refused"]
    assert audit["identity"] == ADMIN_IDENTITY
    assert audit["method"] == f"/{SERVICE}/Reserve"


async def test_an_operators_grant_is_audited_and_the_routers_left_to_the_router(ledger) -> None:
    _, address = ledger
    channel, router = _stub(address, ROUTER_IDENTITY)
    async with channel:
        await router.OpenAccount(
            ledger_pb2.OpenAccountRequest(tenant=TENANT, account_id="carol", idempotency_key="o")
        )
        with structlog.testing.capture_logs() as by_router:
            await router.Grant(_grant("carol", "from-the-router"))
    # The router audits its callers' grants with their credential; it does not twice.
    assert [line for line in by_router if line.get("action") == "credits.granted"] == []
    channel, admin = _stub(address, ADMIN_IDENTITY)
    async with channel:
        with structlog.testing.capture_logs() as by_admin:
            await admin.Grant(_grant("carol", "by-hand"))
            await admin.Grant(_grant("carol", "by-hand"))
    audits = [line for line in by_admin if line.get("action") == "credits.granted"]
    assert [
        {k: line[k] for k in ("tenant", "identity", "account_id", "amount", "kind", "replayed")}
        for line in audits
    ] == [
        {
            "tenant": TENANT,
            "identity": ADMIN_IDENTITY,
            "account_id": "carol",
            "amount": 50,
            "kind": "adjustment",
            "replayed": replayed,
        }
        for replayed in (False, True)
    ]
    assert all(line["log_level"] == "info" and line["reason"] == "goodwill" for line in audits)


async def test_another_identity_is_refused_audited_and_changes_nothing(ledger, spans) -> None:
    _, address = ledger
    intruder = "spiffe://tiergen/generator"
    channel, stub = _stub(address, intruder)
    async with channel:
        with structlog.testing.capture_logs() as logs:
            refused = await failure(stub.Grant(_grant("mallory", key="mint")))
        health = health_pb2_grpc.HealthStub(channel)
        served = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE))
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "CALLER_NOT_ALLOWED",
    )
    assert intruder in refused.message
    (audit,) = [line for line in logs if line.get("action") == "call.refused"]
    assert audit["log_level"] == "warning"
    assert audit["cause"] == "identity-not-allowed"
    assert audit["identity"] == intruder
    assert audit["method"] == f"/{SERVICE}/Grant"
    assert audit["peer"].startswith("ipv4:127.0.0.1:")
    server_spans = [s for s in spans.get_finished_spans() if s.name == f"{SERVICE}/Grant"]
    assert audit["trace_id"] == format(server_spans[0].context.trace_id, "032x")
    # Health stays open to any certificate of the CA.
    assert served.status == health_pb2.HealthCheckResponse.SERVING
    # Nothing was minted: the router sees no account.
    channel, stub = _stub(address, ROUTER_IDENTITY)
    async with channel:
        missing = await failure(
            stub.GetBalance(ledger_pb2.GetBalanceRequest(tenant=TENANT, account_id="mallory"))
        )
    assert missing.code == grpc.StatusCode.NOT_FOUND


async def test_a_router_identity_the_ledger_does_not_list_is_refused(tmp_path: Path) -> None:
    pki = session_pki()
    canary_only = replace(
        pki.server("ledger"), allowed_callers=frozenset({"spiffe://tiergen/router-canary"})
    )
    settings = LedgerSettings(dsn=f"sqlite:///{tmp_path / 'ledger.db'}", server=canary_only)
    server, port = await create_server(settings)
    await server.start()
    try:
        for identity, code in (
            (ROUTER_IDENTITY, grpc.StatusCode.PERMISSION_DENIED),
            ("spiffe://tiergen/router-canary", grpc.StatusCode.NOT_FOUND),
        ):
            channel, stub = _stub(f"127.0.0.1:{port}", identity)
            async with channel:
                answer = await failure(
                    stub.GetBalance(ledger_pb2.GetBalanceRequest(tenant=TENANT, account_id="x"))
                )
            assert answer.code == code, identity
    finally:
        await server.stop(0)


async def test_without_a_client_certificate_the_handshake_fails(ledger) -> None:
    _, address = ledger
    async with session_pki().channel(address, None) as channel:
        stub = ledger_pb2_grpc.LedgerServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.Grant(_grant(), timeout=3)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_tls_ledger_without_a_client_ca_refuses_to_start(tmp_path: Path) -> None:
    server = session_pki().server("ledger", mutual=False)
    settings = LedgerSettings(dsn=f"sqlite:///{tmp_path / 'ledger.db'}", server=server)
    with pytest.raises(ConfigError, match="TIERGEN_TLS_CLIENT_CA_FILE is not set"):
        await create_server(settings)
    assert not (tmp_path / "ledger.db").exists()
