"""Holds: reserve, capture and release, each hold resolving exactly once, and expiry."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY
from tiergen.ledger.v1 import ledger_pb2

from services.ledger.ledger import Ledger
from services.ledger.model import EntryKind, HoldResult, HoldStatus
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from tests.ledger.conftest import TENANT
from tests.ledger.served import Served, failure

UNKNOWN_HOLD = "hold_" + "0" * 32


@pytest.fixture
async def alice(ledger):
    await ledger.open_account(TENANT, "alice", "open")
    return ledger


async def test_reserve_moves_credits_from_available_to_held(alice, clock):
    reserved = await alice.reserve(TENANT, "alice", 120, "job-1", memo="job 1: nano 1K x8")

    hold = reserved.hold
    assert hold.hold_id.startswith("hold_")
    assert (hold.account_id, hold.amount, hold.captured_amount) == ("alice", 120, 0)
    assert (hold.status, hold.memo) == (HoldStatus.OPEN, "job 1: nano 1K x8")
    assert hold.created_at == clock.now()
    assert hold.expires_at == clock.now() + timedelta(seconds=600)
    assert hold.resolved_at is None
    assert (reserved.balance.available, reserved.balance.held) == (280, 120)
    assert reserved.balance.total == 400
    assert await alice.get_hold(TENANT, hold.hold_id) == hold


async def test_reserve_takes_the_ttl_it_is_given(alice, clock):
    reserved = await alice.reserve(TENANT, "alice", 10, "job", ttl_seconds=45)

    assert reserved.hold.expires_at == clock.now() + timedelta(seconds=45)


async def test_reserving_everything_available_leaves_zero(alice):
    reserved = await alice.reserve(TENANT, "alice", 400, "all")

    assert (reserved.balance.available, reserved.balance.held) == (0, 400)


async def test_reserving_more_than_available_fails_and_changes_nothing(alice):
    await alice.reserve(TENANT, "alice", 350, "first")

    with pytest.raises(FailedPrecondition) as caught:
        await alice.reserve(TENANT, "alice", 51, "second")

    assert caught.value.reason == "INSUFFICIENT_CREDITS"
    assert caught.value.metadata == {"available": "50", "required": "51"}
    balance = await alice.get_balance(TENANT, "alice")
    assert (balance.available, balance.held) == (50, 350)


async def test_partial_capture_spends_part_and_returns_the_rest(alice, clock):
    hold = (await alice.reserve(TENANT, "alice", 100, "job", memo="render")).hold
    clock.advance(seconds=20)

    captured = await alice.capture(TENANT, hold.hold_id, 64, "capture")

    assert captured.hold.status is HoldStatus.CAPTURED
    assert (captured.hold.amount, captured.hold.captured_amount) == (100, 64)
    assert captured.hold.resolved_at == clock.now()
    balance = captured.balance
    assert (balance.available, balance.held, balance.consumed) == (336, 0, 64)
    entries = (await alice.list_entries(TENANT, "alice")).entries
    assert [(e.kind, e.amount, e.hold_id) for e in entries[1:]] == [
        (EntryKind.RESERVE, 100, hold.hold_id),
        (EntryKind.CAPTURE, 64, hold.hold_id),
        (EntryKind.RELEASE, 36, hold.hold_id),
    ]
    assert (entries[2].source, entries[2].destination) == (
        "accounts/alice/held",
        "system/consumed",
    )


async def test_full_capture_returns_nothing(alice):
    hold = (await alice.reserve(TENANT, "alice", 100, "job")).hold

    captured = await alice.capture(TENANT, hold.hold_id, 100, "capture")

    assert captured.balance.consumed == 100
    kinds = [e.kind for e in (await alice.list_entries(TENANT, "alice")).entries]
    assert kinds == [EntryKind.SIGNUP_BONUS, EntryKind.RESERVE, EntryKind.CAPTURE]


async def test_release_returns_everything(alice):
    hold = (await alice.reserve(TENANT, "alice", 100, "job")).hold

    released = await alice.release(TENANT, hold.hold_id, "release")

    assert released.hold.status is HoldStatus.RELEASED
    assert released.hold.captured_amount == 0
    assert (released.balance.available, released.balance.held) == (400, 0)


async def test_capturing_more_than_held_fails_and_leaves_the_hold_open(alice):
    hold = (await alice.reserve(TENANT, "alice", 100, "job")).hold

    with pytest.raises(FailedPrecondition) as caught:
        await alice.capture(TENANT, hold.hold_id, 101, "too-much")

    assert caught.value.reason == "CAPTURE_EXCEEDS_HOLD"
    assert caught.value.metadata == {"hold_id": hold.hold_id, "held": "100", "requested": "101"}
    assert (await alice.get_hold(TENANT, hold.hold_id)).status is HoldStatus.OPEN
    assert (await alice.capture(TENANT, hold.hold_id, 100, "right")).balance.consumed == 100


@pytest.mark.parametrize(
    ("first", "second", "reason"),
    [
        ("capture", "capture", "HOLD_ALREADY_CAPTURED"),
        ("capture", "release", "HOLD_ALREADY_CAPTURED"),
        ("release", "capture", "HOLD_ALREADY_RELEASED"),
        ("release", "release", "HOLD_ALREADY_RELEASED"),
    ],
)
async def test_a_hold_resolves_exactly_once(alice: Ledger, first, second, reason):
    hold = (await alice.reserve(TENANT, "alice", 100, "job")).hold

    async def resolve(operation: str, key: str) -> HoldResult:
        if operation == "capture":
            return await alice.capture(TENANT, hold.hold_id, 30, key)
        return await alice.release(TENANT, hold.hold_id, key)

    resolved = await resolve(first, "first")
    with pytest.raises(FailedPrecondition) as caught:
        await resolve(second, "second")

    assert caught.value.reason == reason
    assert caught.value.metadata["hold_id"] == hold.hold_id
    assert await alice.get_balance(TENANT, "alice") == resolved.balance


async def test_unknown_holds_are_not_found(alice):
    for attempt in (
        alice.capture(TENANT, UNKNOWN_HOLD, 5, "capture"),
        alice.release(TENANT, UNKNOWN_HOLD, "release"),
        alice.get_hold(TENANT, UNKNOWN_HOLD),
    ):
        with pytest.raises(NotFound) as caught:
            await attempt
        assert caught.value.reason == "HOLD_NOT_FOUND"
        assert caught.value.metadata == {"hold_id": UNKNOWN_HOLD}


@pytest.mark.parametrize("hold_id", ["", "hold_", "hold_XYZ", "h" * 40, "hold_" + "0" * 33])
async def test_malformed_hold_ids_are_invalid_arguments(alice, hold_id):
    for attempt in (
        alice.capture(TENANT, hold_id, 5, "capture"),
        alice.release(TENANT, hold_id, "release"),
        alice.get_hold(TENANT, hold_id),
    ):
        with pytest.raises(InvalidArgument) as caught:
            await attempt
        assert caught.value.violations[0].field == "hold_id"


@pytest.mark.parametrize(
    ("amount", "ttl_seconds", "memo", "field"),
    [
        (0, None, "", "amount"),
        (-1, None, "", "amount"),
        (5, 0, "", "ttl_seconds"),
        (5, -30, "", "ttl_seconds"),
        (5, 86_401, "", "ttl_seconds"),
        (5, True, "", "ttl_seconds"),
        (5, 1.5, "", "ttl_seconds"),
        (5, None, "m" * 501, "memo"),
    ],
)
async def test_bad_reserves_are_invalid_arguments_and_change_nothing(
    alice, amount, ttl_seconds, memo, field
):
    with pytest.raises(InvalidArgument) as caught:
        await alice.reserve(TENANT, "alice", amount, "job", ttl_seconds=ttl_seconds, memo=memo)

    assert caught.value.violations[0].field == field
    assert (await alice.get_balance(TENANT, "alice")).available == 400


async def test_captures_must_be_positive(alice):
    hold = (await alice.reserve(TENANT, "alice", 100, "job")).hold

    with pytest.raises(InvalidArgument) as caught:
        await alice.capture(TENANT, hold.hold_id, 0, "nothing")

    assert caught.value.violations[0].field == "amount"


async def test_capturing_an_expired_hold_fails_and_its_credits_are_back(alice, clock):
    hold = (await alice.reserve(TENANT, "alice", 100, "job", ttl_seconds=60)).hold
    clock.advance(seconds=60)  # expiry is inclusive: at expires_at the hold is gone

    with pytest.raises(FailedPrecondition) as caught:
        await alice.capture(TENANT, hold.hold_id, 100, "late")

    assert caught.value.reason == "HOLD_EXPIRED"
    assert caught.value.metadata["expires_at"] == hold.expires_at.isoformat()
    expired = await alice.get_hold(TENANT, hold.hold_id)
    assert (expired.status, expired.resolved_at) == (HoldStatus.EXPIRED, clock.now())
    balance = await alice.get_balance(TENANT, "alice")
    assert (balance.available, balance.held, balance.consumed) == (400, 0, 0)
    last = (await alice.list_entries(TENANT, "alice")).entries[-1]
    assert (last.kind, last.amount, last.hold_id) == (EntryKind.EXPIRE, 100, hold.hold_id)


async def test_releasing_an_expired_hold_reports_the_expiry(alice, clock):
    hold = (await alice.reserve(TENANT, "alice", 100, "job", ttl_seconds=60)).hold
    clock.advance(minutes=5)

    with pytest.raises(FailedPrecondition) as caught:
        await alice.release(TENANT, hold.hold_id, "late")

    assert caught.value.reason == "HOLD_EXPIRED"
    assert (await alice.get_balance(TENANT, "alice")).available == 400


async def test_a_hold_can_be_captured_until_just_before_it_expires(alice, clock):
    hold = (await alice.reserve(TENANT, "alice", 100, "job", ttl_seconds=60)).hold
    clock.advance(seconds=59, microseconds=999_999)

    captured = await alice.capture(TENANT, hold.hold_id, 10, "in-time")

    assert captured.hold.status is HoldStatus.CAPTURED


async def test_reading_a_balance_returns_expired_holds_lazily(alice, clock):
    hold = (await alice.reserve(TENANT, "alice", 300, "job", ttl_seconds=30)).hold
    clock.advance(seconds=31)

    balance = await alice.get_balance(TENANT, "alice")

    assert (balance.available, balance.held) == (400, 0)
    assert (await alice.get_hold(TENANT, hold.hold_id)).status is HoldStatus.EXPIRED


async def test_reading_a_hold_returns_it_lazily_when_expired(alice, clock):
    hold = (await alice.reserve(TENANT, "alice", 300, "job", ttl_seconds=30)).hold
    clock.advance(seconds=31)

    expired = await alice.get_hold(TENANT, hold.hold_id)

    assert expired.status is HoldStatus.EXPIRED
    assert (await alice.get_balance(TENANT, "alice")).available == 400


async def test_reserving_returns_expired_holds_first(alice, clock):
    await alice.reserve(TENANT, "alice", 400, "everything", ttl_seconds=30)
    clock.advance(minutes=1)

    reserved = await alice.reserve(TENANT, "alice", 250, "next")

    assert (reserved.balance.available, reserved.balance.held) == (150, 250)


async def test_the_sweeper_returns_every_overdue_hold_and_only_those(ledger, clock):
    holds = {}
    for account_id in ("alice", "bob", "carol"):
        await ledger.open_account(TENANT, account_id, "open")
        holds[account_id] = [
            (await ledger.reserve(TENANT, account_id, 10, f"short-{i}", ttl_seconds=30)).hold
            for i in range(3)
        ]
    kept = (await ledger.reserve(TENANT, "bob", 10, "long", ttl_seconds=3600)).hold
    clock.advance(minutes=1)

    assert await ledger.sweep_expired() == 9
    assert await ledger.sweep_expired() == 0

    assert (await ledger.get_hold(TENANT, kept.hold_id)).status is HoldStatus.OPEN
    for account_id, account_holds in holds.items():
        balance = await ledger.get_balance(TENANT, account_id)
        assert balance.available == (390 if account_id == "bob" else 400)
        for hold in account_holds:
            assert (await ledger.get_hold(TENANT, hold.hold_id)).status is HoldStatus.EXPIRED


async def test_the_sweeper_can_sweep_as_of_a_given_moment(alice, clock):
    await alice.reserve(TENANT, "alice", 10, "a", ttl_seconds=30)
    await alice.reserve(TENANT, "alice", 10, "b", ttl_seconds=90)

    assert await alice.sweep_expired(clock.now() + timedelta(seconds=60)) == 1
    assert await alice.sweep_expired(clock.now() + timedelta(seconds=120)) == 1


async def test_the_background_sweeper_returns_overdue_holds_on_its_own(harness, clock):
    ledger = await harness.open(sweep_interval_seconds=0.01)
    await ledger.open_account(TENANT, "alice", "open")
    hold = (await ledger.reserve(TENANT, "alice", 100, "job", ttl_seconds=30)).hold
    clock.advance(minutes=1)

    sweeper = asyncio.create_task(ledger.run_sweeper())
    try:
        # Read behind the ledger's back: reading through it would return the hold lazily.
        for _ in range(3000):
            await asyncio.sleep(0.01)
            if await harness.execute_raw("SELECT status FROM holds") == [("expired",)]:
                break
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper

    assert await harness.execute_raw("SELECT status FROM holds") == [("expired",)]
    assert (await ledger.get_hold(TENANT, hold.hold_id)).resolved_at == clock.now()


def _credits(kind: str) -> float:
    return REGISTRY.get_sample_value("tiergen_ledger_credits_total", {"kind": kind}) or 0.0


async def test_committed_movements_are_counted_once_by_kind(alice):
    kinds = ("reserve", "capture", "release")
    before = {kind: _credits(kind) for kind in kinds}

    reserved = await alice.reserve(TENANT, "alice", 7, "job-metrics")
    await alice.capture(TENANT, reserved.hold.hold_id, 5, "settle")
    await alice.capture(TENANT, reserved.hold.hold_id, 5, "settle")  # a replay moves nothing
    await alice.reserve(TENANT, "alice", 7, "job-metrics")  # neither does this one
    with pytest.raises(FailedPrecondition):
        await alice.reserve(TENANT, "alice", 10_000, "too-much")

    moved = {kind: _credits(kind) - before[kind] for kind in kinds}
    assert moved == {"reserve": 7, "capture": 5, "release": 2}


async def capture_reply(ledger: Served, hold_id: str, amount: int, key: str) -> Any:
    request = ledger_pb2.CaptureRequest(hold_id=hold_id, amount=amount, idempotency_key=key)
    return await ledger.stub.Capture(request)


async def test_a_capture_is_bounded_by_its_own_hold_not_by_all_the_account_holds(serve):
    # Over gRPC: a store error (INTERNAL) would also refuse the capture, but not as
    # CAPTURE_EXCEEDS_HOLD.
    ledger = await serve()
    await ledger.open()
    small = (await ledger.reserve(10, "small")).hold.hold_id
    large = (await ledger.reserve(100, "large")).hold.hold_id

    found = await failure(capture_reply(ledger, small, 50, "settle-small"))

    assert (found.code, found.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "CAPTURE_EXCEEDS_HOLD",
    )
    assert found.metadata == {"hold_id": small, "held": "10", "requested": "50"}
    reply = await ledger.stub.GetBalance(ledger_pb2.GetBalanceRequest(account_id="alice"))
    assert (reply.balance.available, reply.balance.held, reply.balance.consumed) == (290, 110, 0)
    settled = await capture_reply(ledger, large, 50, "settle-large")
    assert (settled.balance.available, settled.balance.held, settled.balance.consumed) == (
        340,
        10,
        50,
    )
    settled = await capture_reply(ledger, small, 10, "settle-small-again")
    assert settled.hold.status == ledger_pb2.HOLD_STATUS_CAPTURED


async def test_concurrent_captures_of_two_holds_are_each_bounded_by_their_own(serve):
    ledger = await serve()
    await ledger.open()
    small = (await ledger.reserve(10, "small")).hold.hold_id
    large = (await ledger.reserve(100, "large")).hold.hold_id

    too_much, fine = await asyncio.gather(
        failure(capture_reply(ledger, small, 50, "settle")),
        capture_reply(ledger, large, 50, "settle"),
    )

    assert (too_much.code, too_much.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "CAPTURE_EXCEEDS_HOLD",
    )
    assert (fine.hold.captured_amount, fine.balance.held, fine.balance.consumed) == (50, 10, 50)
