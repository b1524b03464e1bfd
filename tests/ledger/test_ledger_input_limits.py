"""Ids, keys and texts: refused alike on every store, with answers of bounded size; over gRPC,
and from callers in the ledger's own process."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from tiergen.ledger.v1 import ledger_pb2

from services.ledger.model import GrantKind
from services.runtime.errors import InvalidArgument
from tests.ledger.conftest import TENANT
from tests.ledger.served import Served, failure

#: A well-formed request of each RPC; "{hold}" stands for an open hold of alice's.
REQUESTS: dict[str, dict[str, Any]] = {
    "OpenAccount": {"account_id": "alice", "idempotency_key": "k"},
    "CheckIn": {"account_id": "alice", "idempotency_key": "k"},
    "GetBalance": {"account_id": "alice"},
    "Reserve": {"account_id": "alice", "amount": 5, "idempotency_key": "k", "memo": "job"},
    "Grant": {
        "account_id": "alice",
        "amount": 5,
        "kind": ledger_pb2.GRANT_KIND_PURCHASE,
        "reason": "order",
        "idempotency_key": "k",
    },
    "Capture": {"hold_id": "{hold}", "amount": 1, "idempotency_key": "k"},
    "Release": {"hold_id": "{hold}", "idempotency_key": "k"},
    "ListEntries": {"account_id": "alice"},
}
MUTATING = ["OpenAccount", "CheckIn", "Reserve", "Grant", "Capture", "Release"]
BY_ACCOUNT = ["OpenAccount", "CheckIn", "GetBalance", "Reserve", "Grant", "ListEntries"]
MEBIBYTE = "a" * (1 << 20)


@pytest.fixture
async def alice(serve) -> tuple[Served, str]:
    """A ledger server whose account alice has 390 credits available and an open hold of 10."""
    ledger = await serve()
    await ledger.open()
    hold = await ledger.reserve(10, "hold")
    return ledger, hold.hold.hold_id


async def call(ledger: Served, open_hold: str, method: str, **changed: Any) -> Any:
    """`method` with its well-formed request, but for the `changed` fields."""
    fields = {
        name: open_hold if value == "{hold}" else value for name, value in REQUESTS[method].items()
    }
    request = getattr(ledger_pb2, f"{method}Request")(**(fields | changed))
    return await getattr(ledger.stub, method)(request)


async def assert_unchanged(ledger: Served, hold_id: str) -> None:
    reply = await ledger.stub.GetBalance(ledger_pb2.GetBalanceRequest(account_id="alice"))
    assert (reply.balance.available, reply.balance.held) == (390, 10)
    # The hold is still open: releasing it now works.
    await ledger.stub.Release(ledger_pb2.ReleaseRequest(hold_id=hold_id, idempotency_key="free"))


@pytest.mark.parametrize(
    ("method", "field", "value", "reason"),
    [
        *((method, "idempotency_key", "k\x00", "IDEMPOTENCY_KEY_MALFORMED") for method in MUTATING),
        ("CheckIn", "idempotency_key", "k\n", "IDEMPOTENCY_KEY_MALFORMED"),
        ("Reserve", "idempotency_key", "   ", "IDEMPOTENCY_KEY_REQUIRED"),
        ("Reserve", "memo", "job\x00", "TEXT_MALFORMED"),
        ("Grant", "reason", "order\x00", "TEXT_MALFORMED"),
        ("Grant", "reason", "order\x1b[31m", "TEXT_MALFORMED"),
        ("CheckIn", "account_id", "alice\x00", "MALFORMED_ACCOUNT_ID"),
        ("Capture", "hold_id", "hold_" + "0" * 31 + "\x00", "MALFORMED_ID"),
        ("Release", "hold_id", "hold_" + "0" * 200, "MALFORMED_ID"),
        ("Release", "hold_id", "hold_" + "A" * 32, "MALFORMED_ID"),
    ],
)
async def test_malformed_input_is_invalid_argument_on_every_store(
    alice, method, field, value, reason
):
    ledger, hold_id = alice

    found = await failure(call(ledger, hold_id, method, **{field: value}))

    assert found.code == grpc.StatusCode.INVALID_ARGUMENT
    assert (found.reason, found.fields) == (reason, [field])
    await assert_unchanged(ledger, hold_id)


async def test_memos_and_reasons_keep_tabs_and_line_breaks(alice):
    ledger, hold_id = alice

    reserved = await call(ledger, hold_id, "Reserve", memo="job 7\n\tnano x8\r\n")
    granted = await call(ledger, hold_id, "Grant", reason="order 12\nrefund", idempotency_key="g")

    assert reserved.hold.memo == "job 7\n\tnano x8\r\n"
    assert granted.entry.memo == "order 12\nrefund"


@pytest.mark.parametrize(
    ("method", "field", "reason"),
    [
        *((method, "account_id", "MALFORMED_ACCOUNT_ID") for method in BY_ACCOUNT),
        *((method, "tenant", "MALFORMED_TENANT") for method in REQUESTS),
        *((method, "idempotency_key", "IDEMPOTENCY_KEY_TOO_LONG") for method in MUTATING),
        ("Capture", "hold_id", "MALFORMED_ID"),
        ("Release", "hold_id", "MALFORMED_ID"),
        ("Reserve", "memo", "INVALID_ARGUMENT"),
        ("Grant", "reason", "INVALID_ARGUMENT"),
    ],
)
async def test_a_mebibyte_of_input_is_refused_with_a_short_answer(alice, method, field, reason):
    ledger, hold_id = alice

    found = await failure(call(ledger, hold_id, method, **{field: MEBIBYTE}))

    # Not RESOURCE_EXHAUSTED: an answer repeating the input would not fit gRPC's metadata.
    assert found.code == grpc.StatusCode.INVALID_ARGUMENT
    assert (found.reason, found.fields) == (reason, [field])
    assert len(found.message) < 250
    assert found.status_size < 1024
    await assert_unchanged(ledger, hold_id)


async def test_lone_surrogates_from_callers_in_process_are_invalid_arguments(ledger):
    # gRPC strings are always valid UTF-8; a string decoded with surrogateescape is not, and
    # no store can encode it.
    await ledger.open_account(TENANT, "alice", "open")
    for attempt, field in (
        (ledger.check_in(TENANT, "alice", "week\udcff"), "idempotency_key"),
        (ledger.reserve(TENANT, "alice", 5, "job", memo="job \udcff"), "memo"),
        (ledger.grant(TENANT, "alice", 5, GrantKind.PURCHASE, "order \udcff", "buy"), "reason"),
    ):
        with pytest.raises(InvalidArgument) as caught:
            await attempt
        assert caught.value.violations[0].field == field
    assert (await ledger.get_balance(TENANT, "alice")).available == 400
