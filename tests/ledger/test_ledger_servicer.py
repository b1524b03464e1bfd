"""LedgerService over a real server on port 0: every RPC, its answers and its error details."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2
from tiergen.ledger.v1 import ledger_pb2

from services.ledger.server import SERVICE_NAME
from tests.ledger.served import Served, failure

UNKNOWN_HOLD = "hold_" + "0" * 32
HOLD_ID = re.compile(r"hold_[0-9a-f]{32}")


@pytest.fixture
async def ledger(serve) -> Served:
    return await serve()


@pytest.fixture
async def alice(ledger) -> Served:
    await ledger.open()
    return ledger


def stamp(moment: datetime) -> timestamp_pb2.Timestamp:
    value = timestamp_pb2.Timestamp()
    value.FromDatetime(moment)
    return value


# Health


async def test_health_is_serving_overall_and_for_the_ledger(ledger):
    for service in ("", SERVICE_NAME):
        reply = await ledger.health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


# OpenAccount and GetBalance


async def test_open_account_grants_the_signup_bonus_once(ledger):
    opened = await ledger.open()

    assert (opened.granted, opened.replayed) == (400, False)
    balance = opened.balance
    assert (balance.account_id, balance.available, balance.held, balance.total) == (
        "alice",
        400,
        0,
        400,
    )
    assert (balance.promotional_granted, balance.promotional_cap) == (400, 840)
    assert (balance.purchased, balance.consumed) == (0, 0)

    assert opened.outcome == ledger_pb2.GRANT_OUTCOME_GRANTED

    again = await ledger.open()
    assert again.replayed
    assert (again.granted, again.balance, again.outcome) == (
        400,
        opened.balance,
        ledger_pb2.GRANT_OUTCOME_GRANTED,
    )
    fetched = await ledger.stub.GetBalance(ledger_pb2.GetBalanceRequest(account_id="alice"))
    assert fetched.balance == opened.balance


async def test_the_signup_bonus_is_configurable(serve):
    ledger = await serve(signup_bonus=250)

    assert (await ledger.open()).balance.available == 250


@pytest.mark.parametrize(
    ("account_id", "key", "field", "reason"),
    [
        ("", "open", "account_id", "MALFORMED_ACCOUNT_ID"),
        ("has space", "open", "account_id", "MALFORMED_ACCOUNT_ID"),
        ("-leading-dash", "open", "account_id", "MALFORMED_ACCOUNT_ID"),
        ("a/b", "open", "account_id", "MALFORMED_ACCOUNT_ID"),
        ("x" * 129, "open", "account_id", "MALFORMED_ACCOUNT_ID"),
        ("alice", "", "idempotency_key", "IDEMPOTENCY_KEY_REQUIRED"),
        ("alice", "k" * 257, "idempotency_key", "IDEMPOTENCY_KEY_TOO_LONG"),
    ],
)
async def test_open_account_refuses_malformed_input(ledger, account_id, key, field, reason):
    found = await failure(
        ledger.stub.OpenAccount(
            ledger_pb2.OpenAccountRequest(account_id=account_id, idempotency_key=key)
        )
    )

    assert found.code == grpc.StatusCode.INVALID_ARGUMENT
    assert (found.reason, found.fields) == (reason, [field])


async def test_get_balance_of_an_unknown_account_is_not_found(ledger):
    found = await failure(ledger.stub.GetBalance(ledger_pb2.GetBalanceRequest(account_id="zoe")))

    assert found.code == grpc.StatusCode.NOT_FOUND
    assert (found.reason, found.metadata) == ("ACCOUNT_NOT_FOUND", {"account_id": "zoe"})


async def test_get_balance_refuses_a_malformed_account_id(ledger):
    found = await failure(ledger.stub.GetBalance(ledger_pb2.GetBalanceRequest(account_id="")))

    assert (found.code, found.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["account_id"])


# CheckIn


async def test_check_in_grants_once_per_week_and_a_double_tap_grants_nothing(serve, clock):
    ledger = await serve(clock=clock)
    await ledger.open()

    first = await ledger.stub.CheckIn(
        ledger_pb2.CheckInRequest(account_id="alice", idempotency_key="tap-1")
    )
    second = await ledger.stub.CheckIn(
        ledger_pb2.CheckInRequest(account_id="alice", idempotency_key="tap-2")
    )

    assert (first.granted, first.cap_reached, first.replayed) == (40, False, False)
    assert (first.outcome, first.iso_week) == (ledger_pb2.GRANT_OUTCOME_GRANTED, "2026-W48")
    assert (first.balance.available, first.balance.promotional_granted) == (440, 440)
    assert (second.granted, second.replayed, second.iso_week) == (0, False, "2026-W48")
    assert second.outcome == ledger_pb2.GRANT_OUTCOME_ALREADY_CHECKED_IN_THIS_WEEK
    assert second.balance == first.balance
    balance = await ledger.stub.GetBalance(ledger_pb2.GetBalanceRequest(account_id="alice"))
    assert balance.balance.available == 440


async def test_check_in_is_cut_to_the_cap_then_refused_past_it(serve):
    ledger = await serve(promo_cap=410)
    await ledger.open()

    cut = await ledger.stub.CheckIn(
        ledger_pb2.CheckInRequest(account_id="alice", idempotency_key="week")
    )
    assert (cut.granted, cut.cap_reached) == (10, True)
    assert (cut.balance.promotional_granted, cut.balance.promotional_cap) == (410, 410)


async def test_check_in_at_the_cap_is_promo_cap_reached(serve):
    ledger = await serve(promo_cap=400)
    await ledger.open()

    found = await failure(
        ledger.stub.CheckIn(ledger_pb2.CheckInRequest(account_id="alice", idempotency_key="w"))
    )

    assert found.code == grpc.StatusCode.FAILED_PRECONDITION
    assert found.reason == "PROMO_CAP_REACHED"
    assert found.metadata == {"promotional_granted": "400", "promotional_cap": "400"}


async def test_check_in_of_an_account_never_opened_fails(ledger):
    found = await failure(
        ledger.stub.CheckIn(ledger_pb2.CheckInRequest(account_id="zoe", idempotency_key="w"))
    )

    assert found.code == grpc.StatusCode.FAILED_PRECONDITION
    assert (found.reason, found.metadata) == ("ACCOUNT_NOT_OPEN", {"account_id": "zoe"})


# Reserve


async def test_reserve_holds_credits_and_a_retry_replays_the_same_hold(alice):
    before = datetime.now(UTC).replace(microsecond=0)
    reserved = await alice.reserve(120, "job-1", ttl_seconds=90, memo="job 1")

    hold = reserved.hold
    assert HOLD_ID.fullmatch(hold.hold_id)
    assert (hold.account_id, hold.amount, hold.captured_amount) == ("alice", 120, 0)
    assert (hold.status, hold.memo) == (ledger_pb2.HOLD_STATUS_OPEN, "job 1")
    created = hold.create_time.ToDatetime(tzinfo=UTC)
    assert created >= before
    assert hold.expire_time.ToDatetime(tzinfo=UTC) == created + timedelta(seconds=90)
    assert not hold.HasField("resolve_time")
    assert (reserved.balance.available, reserved.balance.held, reserved.balance.total) == (
        280,
        120,
        400,
    )
    assert not reserved.replayed

    retried = await alice.reserve(120, "job-1", ttl_seconds=90, memo="job 1")
    assert retried.replayed
    assert (retried.hold, retried.balance) == (reserved.hold, reserved.balance)
    balance = await alice.stub.GetBalance(ledger_pb2.GetBalanceRequest(account_id="alice"))
    assert balance.balance.held == 120


async def test_reserve_without_a_ttl_takes_the_default(serve):
    ledger = await serve(default_hold_ttl_seconds=300)
    await ledger.open()

    hold = (await ledger.reserve(5, "job")).hold

    lifetime = hold.expire_time.ToDatetime() - hold.create_time.ToDatetime()
    assert lifetime == timedelta(seconds=300)


async def test_a_key_reused_for_another_reserve_is_already_exists(alice):
    await alice.reserve(10, "job-1")

    found = await failure(alice.reserve(11, "job-1"))

    assert found.code == grpc.StatusCode.ALREADY_EXISTS
    assert found.reason == "IDEMPOTENCY_KEY_REUSED"
    assert found.metadata == {"idempotency_key": "job-1"}


async def test_reserving_more_than_available_is_insufficient_credits(alice):
    await alice.reserve(350, "first")

    found = await failure(alice.reserve(51, "second"))

    assert found.code == grpc.StatusCode.FAILED_PRECONDITION
    assert found.reason == "INSUFFICIENT_CREDITS"
    assert found.metadata == {"available": "50", "required": "51"}
    assert "51" in found.message


async def test_a_failed_reserve_replays_its_failure_even_once_affordable(alice):
    first = await failure(alice.reserve(500, "big-job"))
    await alice.stub.Grant(
        ledger_pb2.GrantRequest(
            account_id="alice",
            amount=1000,
            kind=ledger_pb2.GRANT_KIND_PURCHASE,
            reason="order 1",
            idempotency_key="buy",
        )
    )

    again = await failure(alice.reserve(500, "big-job"))

    assert (again.code, again.reason, again.metadata) == (
        first.code,
        "INSUFFICIENT_CREDITS",
        {"available": "400", "required": "500"},
    )
    assert (await alice.reserve(500, "big-job-2")).balance.held == 500


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"amount": 0}, "amount"),
        ({"amount": -5}, "amount"),
        ({"amount": 10**13}, "amount"),
        ({"idempotency_key": ""}, "idempotency_key"),
        ({"account_id": "not an id"}, "account_id"),
        ({"account_id": ""}, "account_id"),
        ({"ttl_seconds": -1}, "ttl_seconds"),
        ({"ttl_seconds": 86_401}, "ttl_seconds"),
        ({"memo": "m" * 501}, "memo"),
    ],
)
async def test_reserve_refuses_malformed_input_naming_the_field(alice, fields, field):
    request = {"account_id": "alice", "amount": 7, "idempotency_key": "job", **fields}

    found = await failure(alice.stub.Reserve(ledger_pb2.ReserveRequest(**request)))

    assert found.code == grpc.StatusCode.INVALID_ARGUMENT
    assert found.fields == [field]
    # Refused before it ran: the key is still free for a well-formed request.
    assert not (await alice.reserve(7, "job")).replayed


async def test_reserve_on_an_account_never_opened_fails(ledger):
    found = await failure(ledger.reserve(5, "job", account_id="zoe"))

    assert (found.code, found.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_NOT_OPEN")


# Capture and Release


async def test_capture_takes_up_to_the_hold_and_returns_the_rest(alice):
    hold = (await alice.reserve(100, "job")).hold

    captured = await alice.stub.Capture(
        ledger_pb2.CaptureRequest(hold_id=hold.hold_id, amount=60, idempotency_key="settle")
    )

    assert (captured.hold.status, captured.hold.captured_amount) == (
        ledger_pb2.HOLD_STATUS_CAPTURED,
        60,
    )
    assert captured.hold.HasField("resolve_time")
    balance = captured.balance
    assert (balance.available, balance.held, balance.consumed, balance.total) == (340, 0, 60, 340)
    assert not captured.replayed
    retried = await alice.stub.Capture(
        ledger_pb2.CaptureRequest(hold_id=hold.hold_id, amount=60, idempotency_key="settle")
    )
    assert retried.replayed
    assert (retried.hold, retried.balance) == (captured.hold, captured.balance)


async def test_a_hold_resolves_once_capture_then_anything_else_fails(alice):
    hold_id = (await alice.reserve(100, "job")).hold.hold_id
    await alice.stub.Capture(
        ledger_pb2.CaptureRequest(hold_id=hold_id, amount=100, idempotency_key="settle")
    )

    again = await failure(
        alice.stub.Capture(
            ledger_pb2.CaptureRequest(hold_id=hold_id, amount=100, idempotency_key="settle-2")
        )
    )
    release = await failure(
        alice.stub.Release(ledger_pb2.ReleaseRequest(hold_id=hold_id, idempotency_key="undo"))
    )

    for found in (again, release):
        assert found.code == grpc.StatusCode.FAILED_PRECONDITION
        assert found.reason == "HOLD_ALREADY_CAPTURED"
        assert found.metadata == {"hold_id": hold_id, "captured_amount": "100"}


async def test_release_returns_everything_once(alice):
    hold_id = (await alice.reserve(100, "job")).hold.hold_id

    released = await alice.stub.Release(
        ledger_pb2.ReleaseRequest(hold_id=hold_id, idempotency_key="undo")
    )

    assert released.hold.status == ledger_pb2.HOLD_STATUS_RELEASED
    assert (released.balance.available, released.balance.held) == (400, 0)
    retried = await alice.stub.Release(
        ledger_pb2.ReleaseRequest(hold_id=hold_id, idempotency_key="undo")
    )
    assert retried.replayed
    for call in (
        alice.stub.Release(ledger_pb2.ReleaseRequest(hold_id=hold_id, idempotency_key="undo-2")),
        alice.stub.Capture(
            ledger_pb2.CaptureRequest(hold_id=hold_id, amount=1, idempotency_key="late")
        ),
    ):
        found = await failure(call)
        assert (found.code, found.reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "HOLD_ALREADY_RELEASED",
        )
        assert found.metadata == {"hold_id": hold_id}


async def test_capturing_more_than_the_hold_fails_and_keeps_it_open(alice):
    hold_id = (await alice.reserve(30, "job")).hold.hold_id

    found = await failure(
        alice.stub.Capture(
            ledger_pb2.CaptureRequest(hold_id=hold_id, amount=31, idempotency_key="settle")
        )
    )

    assert (found.code, found.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "CAPTURE_EXCEEDS_HOLD",
    )
    assert found.metadata == {"hold_id": hold_id, "held": "30", "requested": "31"}
    settled = await alice.stub.Capture(
        ledger_pb2.CaptureRequest(hold_id=hold_id, amount=30, idempotency_key="settle-again")
    )
    assert settled.hold.status == ledger_pb2.HOLD_STATUS_CAPTURED


async def test_capturing_an_expired_hold_fails_and_its_credits_are_back(alice):
    hold_id = (await alice.reserve(100, "job", ttl_seconds=60)).hold.hold_id
    # Expiry moved into the past behind the ledger's back, instead of waiting a minute.
    await alice.harness.execute_raw(
        f"UPDATE holds SET expires_at_us = expires_at_us - 3600000000 WHERE hold_id = '{hold_id}'"
    )

    found = await failure(
        alice.stub.Capture(
            ledger_pb2.CaptureRequest(hold_id=hold_id, amount=100, idempotency_key="late")
        )
    )

    assert (found.code, found.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "HOLD_EXPIRED")
    assert found.metadata["hold_id"] == hold_id
    balance = await alice.stub.GetBalance(ledger_pb2.GetBalanceRequest(account_id="alice"))
    assert (balance.balance.available, balance.balance.held) == (400, 0)


async def test_an_unknown_hold_is_not_found(alice):
    capture = await failure(
        alice.stub.Capture(
            ledger_pb2.CaptureRequest(hold_id=UNKNOWN_HOLD, amount=1, idempotency_key="c")
        )
    )
    release = await failure(
        alice.stub.Release(ledger_pb2.ReleaseRequest(hold_id=UNKNOWN_HOLD, idempotency_key="r"))
    )

    for found in (capture, release):
        assert found.code == grpc.StatusCode.NOT_FOUND
        assert (found.reason, found.metadata) == ("HOLD_NOT_FOUND", {"hold_id": UNKNOWN_HOLD})


@pytest.mark.parametrize(
    ("method", "fields", "field"),
    [
        ("Capture", {"hold_id": "h-1"}, "hold_id"),
        ("Capture", {"hold_id": UNKNOWN_HOLD.upper()}, "hold_id"),
        ("Capture", {"amount": 0}, "amount"),
        ("Capture", {"idempotency_key": ""}, "idempotency_key"),
        ("Release", {"hold_id": ""}, "hold_id"),
        ("Release", {"idempotency_key": ""}, "idempotency_key"),
    ],
)
async def test_capture_and_release_refuse_malformed_input(alice, method, fields, field):
    if method == "Capture":
        request = {"hold_id": UNKNOWN_HOLD, "amount": 1, "idempotency_key": "k", **fields}
        call = alice.stub.Capture(ledger_pb2.CaptureRequest(**request))
    else:
        request = {"hold_id": UNKNOWN_HOLD, "idempotency_key": "k", **fields}
        call = alice.stub.Release(ledger_pb2.ReleaseRequest(**request))

    found = await failure(call)

    assert (found.code, found.fields) == (grpc.StatusCode.INVALID_ARGUMENT, [field])


# Grant


async def test_grant_records_the_entry_and_a_retry_replays_it(alice):
    request = ledger_pb2.GrantRequest(
        account_id="alice",
        amount=250,
        kind=ledger_pb2.GRANT_KIND_PURCHASE,
        reason="order 17",
        idempotency_key="buy-17",
    )

    granted = await alice.stub.Grant(request)

    entry = granted.entry
    assert (entry.entry_id, entry.account_id, entry.kind) == (
        "alice/2",
        "alice",
        ledger_pb2.ENTRY_KIND_PURCHASE,
    )
    assert (entry.available_delta, entry.held_delta) == (250, 0)
    assert (entry.available_after, entry.held_after, entry.memo) == (650, 0, "order 17")
    assert (granted.balance.available, granted.balance.purchased) == (650, 250)
    assert not granted.replayed
    retried = await alice.stub.Grant(request)
    assert retried.replayed
    assert (retried.entry, retried.balance) == (granted.entry, granted.balance)
    reused = await failure(alice.stub.Grant(ledger_pb2.GrantRequest(**{
        "account_id": "alice", "amount": 251, "kind": ledger_pb2.GRANT_KIND_PURCHASE,
        "reason": "order 17", "idempotency_key": "buy-17",
    })))  # fmt: skip
    assert (reused.code, reused.reason) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "IDEMPOTENCY_KEY_REUSED",
    )


async def test_an_adjustment_counts_with_purchases_in_the_balance(alice):
    granted = await alice.stub.Grant(
        ledger_pb2.GrantRequest(
            account_id="alice",
            amount=3,
            kind=ledger_pb2.GRANT_KIND_ADJUSTMENT,
            reason="goodwill",
            idempotency_key="fix",
        )
    )

    assert granted.entry.kind == ledger_pb2.ENTRY_KIND_ADJUSTMENT
    assert (granted.balance.purchased, granted.balance.available) == (3, 403)


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        ({"kind": ledger_pb2.GRANT_KIND_UNSPECIFIED}, "kind", "INVALID_ARGUMENT"),
        ({"kind": 7}, "kind", "INVALID_ARGUMENT"),
        ({"amount": 0}, "amount", "INVALID_ARGUMENT"),
        ({"amount": -1}, "amount", "INVALID_ARGUMENT"),
        ({"reason": ""}, "reason", "INVALID_ARGUMENT"),
        ({"reason": "   "}, "reason", "INVALID_ARGUMENT"),
        ({"idempotency_key": ""}, "idempotency_key", "IDEMPOTENCY_KEY_REQUIRED"),
        ({"account_id": "bad id"}, "account_id", "MALFORMED_ACCOUNT_ID"),
    ],
)
async def test_grant_refuses_malformed_input(alice, fields, field, reason):
    request = {
        "account_id": "alice",
        "amount": 10,
        "kind": ledger_pb2.GRANT_KIND_PURCHASE,
        "reason": "order",
        "idempotency_key": "buy",
        **fields,
    }

    found = await failure(alice.stub.Grant(ledger_pb2.GrantRequest(**request)))

    assert found.code == grpc.StatusCode.INVALID_ARGUMENT
    assert (found.reason, found.fields) == (reason, [field])


async def test_grant_to_an_account_never_opened_fails(ledger):
    found = await failure(
        ledger.stub.Grant(
            ledger_pb2.GrantRequest(
                account_id="zoe",
                amount=10,
                kind=ledger_pb2.GRANT_KIND_PURCHASE,
                reason="order",
                idempotency_key="buy",
            )
        )
    )

    assert (found.code, found.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_NOT_OPEN")


# ListEntries


@pytest.fixture
async def busy_alice(alice) -> Served:
    """alice after a grant, a captured hold, a released hold and an open one: 7 entries."""
    await alice.stub.Grant(
        ledger_pb2.GrantRequest(
            account_id="alice",
            amount=100,
            kind=ledger_pb2.GRANT_KIND_PURCHASE,
            reason="order 1",
            idempotency_key="buy",
        )
    )
    captured = (await alice.reserve(50, "job-1", memo="job 1")).hold.hold_id
    await alice.stub.Capture(
        ledger_pb2.CaptureRequest(hold_id=captured, amount=50, idempotency_key="c")
    )
    released = (await alice.reserve(20, "job-2")).hold.hold_id
    await alice.stub.Release(ledger_pb2.ReleaseRequest(hold_id=released, idempotency_key="r"))
    await alice.reserve(30, "job-3")
    return alice


async def list_all(ledger: Served, page_size: int, **filters: Any) -> list[Any]:
    entries: list[Any] = []
    token = ""
    while True:
        page = await ledger.stub.ListEntries(
            ledger_pb2.ListEntriesRequest(
                account_id="alice", page_size=page_size, page_token=token, **filters
            )
        )
        assert len(page.entries) <= page_size
        entries.extend(page.entries)
        token = page.next_page_token
        if not token:
            return entries


async def test_list_entries_pages_through_the_history_with_running_balances(busy_alice):
    entries = await list_all(busy_alice, page_size=2)

    assert [entry.kind for entry in entries] == [
        ledger_pb2.ENTRY_KIND_SIGNUP_BONUS,
        ledger_pb2.ENTRY_KIND_PURCHASE,
        ledger_pb2.ENTRY_KIND_RESERVE,
        ledger_pb2.ENTRY_KIND_CAPTURE,
        ledger_pb2.ENTRY_KIND_RESERVE,
        ledger_pb2.ENTRY_KIND_RELEASE,
        ledger_pb2.ENTRY_KIND_RESERVE,
    ]
    assert [entry.entry_id for entry in entries] == [f"alice/{n}" for n in range(1, 8)]
    available = held = 0
    for entry in entries:
        available += entry.available_delta
        held += entry.held_delta
        assert (entry.available_after, entry.held_after) == (available, held)
    assert (available, held) == (420, 30)
    assert [(e.available_delta, e.held_delta) for e in entries[2:4]] == [(-50, 50), (0, -50)]
    assert entries[2].hold_id == entries[3].hold_id != ""
    assert entries[2].memo == "job 1"
    balance = await busy_alice.stub.GetBalance(ledger_pb2.GetBalanceRequest(account_id="alice"))
    assert (balance.balance.available, balance.balance.held) == (available, held)


async def test_list_entries_filters_by_kind_across_pages(busy_alice):
    reserves = await list_all(busy_alice, page_size=1, kinds=[ledger_pb2.ENTRY_KIND_RESERVE])

    assert [entry.entry_id for entry in reserves] == ["alice/3", "alice/5", "alice/7"]
    assert [entry.available_after for entry in reserves] == [450, 430, 420]


async def test_the_unspecified_kind_as_a_filter_matches_nothing(busy_alice):
    nothing = await busy_alice.stub.ListEntries(
        ledger_pb2.ListEntriesRequest(account_id="alice", kinds=[ledger_pb2.ENTRY_KIND_UNSPECIFIED])
    )
    captures = await busy_alice.stub.ListEntries(
        ledger_pb2.ListEntriesRequest(
            account_id="alice",
            kinds=[ledger_pb2.ENTRY_KIND_UNSPECIFIED, ledger_pb2.ENTRY_KIND_CAPTURE],
        )
    )

    assert (list(nothing.entries), nothing.next_page_token) == ([], "")
    assert [entry.kind for entry in captures.entries] == [ledger_pb2.ENTRY_KIND_CAPTURE]


async def test_list_entries_filters_by_time(busy_alice):
    now = datetime.now(UTC)

    past = await busy_alice.stub.ListEntries(
        ledger_pb2.ListEntriesRequest(account_id="alice", end_time=stamp(now - timedelta(hours=1)))
    )
    recent = await busy_alice.stub.ListEntries(
        ledger_pb2.ListEntriesRequest(
            account_id="alice",
            start_time=stamp(now - timedelta(hours=1)),
            end_time=stamp(now + timedelta(hours=1)),
        )
    )

    assert list(past.entries) == []
    assert len(recent.entries) == 7


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"kinds": [99]}, "kinds"),
        ({"page_size": -1}, "page_size"),
        ({"page_size": 501}, "page_size"),
        ({"page_token": "not-a-token"}, "page_token"),
        ({"account_id": "bad id"}, "account_id"),
        (
            {
                "start_time": stamp(datetime(2026, 1, 2, tzinfo=UTC)),
                "end_time": stamp(datetime(2026, 1, 1, tzinfo=UTC)),
            },
            "end",
        ),
    ],
)
async def test_list_entries_refuses_malformed_input(busy_alice, fields, field):
    request = {"account_id": "alice", **fields}

    found = await failure(busy_alice.stub.ListEntries(ledger_pb2.ListEntriesRequest(**request)))

    assert found.code == grpc.StatusCode.INVALID_ARGUMENT
    assert found.fields == [field]


async def test_a_page_token_only_continues_its_own_listing(busy_alice):
    first = await busy_alice.stub.ListEntries(
        ledger_pb2.ListEntriesRequest(account_id="alice", page_size=2)
    )

    found = await failure(
        busy_alice.stub.ListEntries(
            ledger_pb2.ListEntriesRequest(
                account_id="alice",
                page_size=2,
                page_token=first.next_page_token,
                kinds=[ledger_pb2.ENTRY_KIND_CAPTURE],
            )
        )
    )

    assert (found.code, found.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["page_token"])


async def test_list_entries_of_an_unknown_account_is_not_found(ledger):
    for kinds in ([], [ledger_pb2.ENTRY_KIND_UNSPECIFIED]):
        found = await failure(
            ledger.stub.ListEntries(ledger_pb2.ListEntriesRequest(account_id="zoe", kinds=kinds))
        )
        assert (found.code, found.reason) == (grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND")
