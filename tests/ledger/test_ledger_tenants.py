"""Tenants over a real server on port 0: one account id of two tenants is two accounts, another
tenant's hold is not there, idempotency keys are each tenant's own, and a request naming no
tenant is the default tenant's."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from tiergen.ledger.v1 import ledger_pb2

from tests.ledger.served import Served, failure

ACME, GLOBEX = "acme", "globex"
UNKNOWN_HOLD = "hold_" + "0" * 32


@pytest.fixture
async def ledger(serve) -> Served:
    """A server where alice of acme and alice of globex are open."""
    served = await serve()
    for tenant in (ACME, GLOBEX):
        await served.open(tenant=tenant)
    return served


async def balance(ledger: Served, tenant: str, account_id: str = "alice") -> ledger_pb2.Balance:
    request = ledger_pb2.GetBalanceRequest(account_id=account_id, tenant=tenant)
    return (await ledger.stub.GetBalance(request)).balance


async def entries(ledger: Served, tenant: str) -> list[ledger_pb2.Entry]:
    request = ledger_pb2.ListEntriesRequest(account_id="alice", tenant=tenant)
    return list((await ledger.stub.ListEntries(request)).entries)


async def capture(ledger: Served, tenant: str, hold_id: str, key: str = "settle") -> Any:
    return await ledger.stub.Capture(
        ledger_pb2.CaptureRequest(hold_id=hold_id, amount=5, idempotency_key=key, tenant=tenant)
    )


async def release(ledger: Served, tenant: str, hold_id: str, key: str = "free") -> Any:
    return await ledger.stub.Release(
        ledger_pb2.ReleaseRequest(hold_id=hold_id, idempotency_key=key, tenant=tenant)
    )


async def test_one_account_id_of_two_tenants_is_two_accounts(ledger):
    await ledger.stub.Grant(
        ledger_pb2.GrantRequest(
            account_id="alice",
            amount=100,
            kind=ledger_pb2.GRANT_KIND_PURCHASE,
            reason="order 1",
            idempotency_key="buy",
            tenant=ACME,
        )
    )
    held = await ledger.reserve(30, "job", tenant=GLOBEX)

    acme, globex = await balance(ledger, ACME), await balance(ledger, GLOBEX)
    assert (acme.tenant, acme.available, acme.held, acme.purchased) == (ACME, 500, 0, 100)
    assert (globex.tenant, globex.available, globex.held, globex.purchased) == (GLOBEX, 370, 30, 0)
    assert (held.hold.tenant, held.balance.tenant) == (GLOBEX, GLOBEX)
    acme_history, globex_history = await entries(ledger, ACME), await entries(ledger, GLOBEX)
    assert [entry.kind for entry in acme_history] == [
        ledger_pb2.ENTRY_KIND_SIGNUP_BONUS,
        ledger_pb2.ENTRY_KIND_PURCHASE,
    ]
    assert [entry.kind for entry in globex_history] == [
        ledger_pb2.ENTRY_KIND_SIGNUP_BONUS,
        ledger_pb2.ENTRY_KIND_RESERVE,
    ]
    assert {entry.tenant for entry in acme_history} == {ACME}
    assert {entry.tenant for entry in globex_history} == {GLOBEX}
    assert globex_history[-1].hold_id == held.hold.hold_id


async def test_each_tenant_checks_in_once_a_week(ledger):
    def check_in(tenant: str, key: str) -> Any:
        request = ledger_pb2.CheckInRequest(account_id="alice", idempotency_key=key, tenant=tenant)
        return ledger.stub.CheckIn(request)

    acme = await check_in(ACME, "week")
    globex = await check_in(GLOBEX, "week")
    acme_again = await check_in(ACME, "week-again")

    assert (acme.outcome, acme.granted) == (ledger_pb2.GRANT_OUTCOME_GRANTED, 40)
    assert (globex.outcome, globex.granted, globex.replayed) == (
        ledger_pb2.GRANT_OUTCOME_GRANTED,
        40,
        False,
    )
    assert acme_again.outcome == ledger_pb2.GRANT_OUTCOME_ALREADY_CHECKED_IN_THIS_WEEK
    assert (await balance(ledger, GLOBEX)).promotional_granted == 440


@pytest.mark.parametrize("resolve", [capture, release])
async def test_another_tenants_hold_is_not_found_as_an_unknown_one_is(ledger, resolve):
    hold_id = (await ledger.reserve(20, "job", tenant=ACME)).hold.hold_id
    # Globex has an alice too, with a hold of its own.
    await ledger.reserve(20, "job", tenant=GLOBEX)
    before = {tenant: await balance(ledger, tenant) for tenant in (ACME, GLOBEX)}

    theirs = await failure(resolve(ledger, GLOBEX, hold_id))
    unknown = await failure(resolve(ledger, GLOBEX, UNKNOWN_HOLD, key="other"))

    assert theirs.code == grpc.StatusCode.NOT_FOUND
    assert (theirs.message, theirs.reason, theirs.fields) == (
        unknown.message,
        unknown.reason,
        unknown.fields,
    )
    assert (theirs.reason, theirs.metadata) == ("HOLD_NOT_FOUND", {"hold_id": hold_id})
    assert unknown.metadata == {"hold_id": UNKNOWN_HOLD}
    assert {tenant: await balance(ledger, tenant) for tenant in (ACME, GLOBEX)} == before
    # Still open for its own tenant; and once resolved, still not there for the other one (not
    # HOLD_ALREADY_CAPTURED, which would say it exists).
    resolved = await resolve(ledger, ACME, hold_id)
    assert resolved.hold.status != ledger_pb2.HOLD_STATUS_OPEN
    after = await failure(resolve(ledger, GLOBEX, hold_id, key="after"))
    assert (after.code, after.reason) == (grpc.StatusCode.NOT_FOUND, "HOLD_NOT_FOUND")


async def test_one_idempotency_key_of_two_tenants_is_two_operations(ledger):
    acme = await ledger.reserve(10, "job-1", tenant=ACME)
    # Another request under the same key: another tenant's key, so neither a replay of acme's
    # answer nor a key reused for a different request.
    globex = await ledger.reserve(25, "job-1", tenant=GLOBEX)

    assert not acme.replayed and not globex.replayed
    assert acme.hold.hold_id != globex.hold.hold_id
    assert (globex.hold.tenant, globex.hold.amount, globex.balance.held) == (GLOBEX, 25, 25)
    acme_retried = await ledger.reserve(10, "job-1", tenant=ACME)
    globex_retried = await ledger.reserve(25, "job-1", tenant=GLOBEX)
    assert acme_retried.replayed and acme_retried.hold == acme.hold
    assert globex_retried.replayed and globex_retried.hold == globex.hold
    assert ((await balance(ledger, ACME)).held, (await balance(ledger, GLOBEX)).held) == (10, 25)
    reused = await failure(ledger.reserve(11, "job-1", tenant=ACME))
    assert (reused.code, reused.reason) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "IDEMPOTENCY_KEY_REUSED",
    )


async def test_a_request_naming_no_tenant_is_the_default_tenants(serve):
    ledger = await serve()

    opened = await ledger.open()

    assert opened.balance.tenant == "default"
    assert await balance(ledger, "default") == opened.balance
    missing = await failure(
        ledger.stub.GetBalance(ledger_pb2.GetBalanceRequest(account_id="alice", tenant=ACME))
    )
    assert (missing.code, missing.reason) == (grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND")


REQUESTS: dict[str, Any] = {
    "OpenAccount": ledger_pb2.OpenAccountRequest(account_id="alice", idempotency_key="k"),
    "CheckIn": ledger_pb2.CheckInRequest(account_id="alice", idempotency_key="k"),
    "GetBalance": ledger_pb2.GetBalanceRequest(account_id="alice"),
    "Reserve": ledger_pb2.ReserveRequest(account_id="alice", amount=5, idempotency_key="k"),
    "Capture": ledger_pb2.CaptureRequest(hold_id=UNKNOWN_HOLD, amount=5, idempotency_key="k"),
    "Release": ledger_pb2.ReleaseRequest(hold_id=UNKNOWN_HOLD, idempotency_key="k"),
    "Grant": ledger_pb2.GrantRequest(
        account_id="alice",
        amount=5,
        kind=ledger_pb2.GRANT_KIND_PURCHASE,
        reason="order",
        idempotency_key="k",
    ),
    "ListEntries": ledger_pb2.ListEntriesRequest(account_id="alice"),
}


@pytest.mark.parametrize("method", sorted(REQUESTS))
@pytest.mark.parametrize("tenant", ["Acme", "-acme", "acme_1", "a" * 64])
async def test_a_malformed_tenant_is_invalid_argument(ledger, method, tenant):
    request = type(REQUESTS[method])()
    request.CopyFrom(REQUESTS[method])
    request.tenant = tenant

    found = await failure(getattr(ledger.stub, method)(request))

    assert found.code == grpc.StatusCode.INVALID_ARGUMENT
    assert (found.reason, found.fields) == ("MALFORMED_TENANT", ["tenant"])
    assert (await balance(ledger, ACME)).total == 400
