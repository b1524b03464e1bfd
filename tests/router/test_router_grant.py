"""RouterService.Grant over the suite's real ledger: a tenant's billing system adds purchased or
adjusted credits to one of its accounts; a retry with the key replays; bad input is refused on
its field before the ledger is asked; an unopened account is what the ledger says it is; every
grant is audited; and a grant reaches only the caller's tenant's account of that id."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
import structlog
from tiergen.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from tiergen.router.v1 import router_pb2

from services.router.downstream.grpc_clients import LEDGER_SERVICE
from services.runtime.channels import open_channel
from services.runtime.status import from_rpc_error
from tests.router.conftest import MAIN_TENANT, InProcessSuite
from tests.tls import session_pki


def grant(account: str, **changes: Any) -> router_pb2.GrantRequest:
    fields: dict[str, Any] = {
        "account_id": account,
        "amount": 100,
        "reason": "order 4711",
        "idempotency_key": f"grant-{uuid.uuid4().hex}",
        **changes,
    }
    return router_pb2.GrantRequest(**fields)


async def refusal(call: Any) -> tuple[grpc.StatusCode, str, list[str]]:
    """The code, ErrorInfo reason and BadRequest fields a call ended with."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = from_rpc_error(caught.value)
    fields = [v.field for v in getattr(error, "violations", ())]
    return caught.value.code(), error.reason, fields


async def test_a_grant_credits_the_account_and_is_audited(suite: InProcessSuite) -> None:
    account = await suite.open_account()
    with structlog.testing.capture_logs() as logs:
        reply = await suite.router.Grant(grant(account, reason="order 4711: 100 credits"))

    assert not reply.replayed
    assert (reply.entry.account_id, reply.entry.kind) == (account, ledger_pb2.ENTRY_KIND_PURCHASE)
    assert (reply.entry.available_delta, reply.entry.memo) == (100, "order 4711: 100 credits")
    assert reply.entry.create_time.seconds > 0
    assert (reply.balance.account_id, reply.balance.tenant) == (account, MAIN_TENANT)
    assert (reply.balance.available, reply.balance.purchased) == (500, 100)
    assert (await suite.balance(account)).available == 500

    (audit,) = [log for log in logs if log.get("action") == "credits.granted"]
    assert audit["event"] == "audit"
    assert {key: audit[key] for key in ("tenant", "account_id", "amount", "kind")} == {
        "tenant": MAIN_TENANT,
        "account_id": account,
        "amount": 100,
        "kind": "purchase",
    }
    # The credential is named by its prefix; its secret is in no log line.
    assert audit["credential"].startswith("tgk_") and suite.api_key not in str(logs)
    assert "trace_id" in audit

    adjusted = await suite.router.Grant(
        grant(account, amount=5, kind=ledger_pb2.GRANT_KIND_ADJUSTMENT, reason="goodwill")
    )
    assert adjusted.entry.kind == ledger_pb2.ENTRY_KIND_ADJUSTMENT
    assert adjusted.balance.available == 505


async def test_a_retry_with_the_key_replays(suite: InProcessSuite) -> None:
    account = await suite.open_account()
    request = grant(account, amount=40)
    first = await suite.router.Grant(request)
    again = await suite.router.Grant(request)

    assert again.replayed and not first.replayed
    assert again.entry == first.entry
    assert (await suite.balance(account)).available == 440
    # The same key for another grant is the ledger's ALREADY_EXISTS.
    code, reason, _ = await refusal(
        suite.router.Grant(grant(account, amount=41, idempotency_key=request.idempotency_key))
    )
    assert code == grpc.StatusCode.ALREADY_EXISTS, reason
    assert (await suite.balance(account)).available == 440


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"amount": 0}, "amount"),
        ({"amount": -5}, "amount"),
        ({"reason": ""}, "reason"),
        ({"reason": "   "}, "reason"),
        ({"reason": "x" * 501}, "reason"),
        ({"reason": "order\x00 42"}, "reason"),
        ({"kind": 99}, "kind"),
        ({"idempotency_key": ""}, "idempotency_key"),
        ({"account_id": "not an id"}, "account_id"),
    ],
)
async def test_bad_grants_are_refused_on_their_field(
    suite: InProcessSuite, changes: dict[str, Any], field: str
) -> None:
    account = await suite.open_account()
    code, _, fields = await refusal(suite.router.Grant(grant(account, **changes)))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, [field])
    assert (await suite.balance(account)).available == 400


async def test_a_reason_of_the_limit_is_taken(suite: InProcessSuite) -> None:
    account = await suite.open_account()
    reply = await suite.router.Grant(grant(account, amount=1, reason="é" * 500))
    assert reply.entry.memo == "é" * 500


async def test_an_unopened_account_is_what_the_ledger_answers(suite: InProcessSuite) -> None:
    channel = open_channel(
        suite.addresses["ledger"],
        security=session_pki().security(),
        services=[LEDGER_SERVICE],
        default_timeout=10,
    )
    try:
        ledger = ledger_pb2_grpc.LedgerServiceStub(channel)
        expected = await refusal(
            ledger.Grant(
                ledger_pb2.GrantRequest(
                    tenant=MAIN_TENANT,
                    account_id="never-opened-1",
                    amount=100,
                    kind=ledger_pb2.GRANT_KIND_PURCHASE,
                    reason="order 4711",
                    idempotency_key="k-1",
                )
            )
        )
    finally:
        await channel.close()
    answered = await refusal(suite.router.Grant(grant("never-opened-2")))
    assert answered == expected
    assert answered[:2] == (grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_NOT_OPEN")


async def test_a_grant_reaches_only_the_callers_tenants_account(suite: InProcessSuite) -> None:
    account = await suite.open_account()
    other = await suite.stub_of("t-other")
    # Unopened in the other tenant: the main tenant's account of that id is not there.
    code, reason, _ = await refusal(other.Grant(grant(account)))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_NOT_OPEN")
    await other.OpenAccount(
        router_pb2.OpenAccountRequest(account_id=account, idempotency_key=f"open-{account}")
    )
    reply = await other.Grant(grant(account, amount=7))
    assert (reply.balance.tenant, reply.balance.available) == ("t-other", 407)
    assert (await suite.balance(account)).available == 400
