"""Idempotency: retries replay the original answer or failure; a reused key is refused."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from services.ledger.model import EntryKind, GrantKind, GrantOutcome, HoldStatus
from services.runtime.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from tests.ledger.conftest import TENANT


@pytest.fixture
async def alice(ledger):
    await ledger.open_account(TENANT, "alice", "open")
    return ledger


async def test_a_retried_reserve_replays_the_original_hold(alice, clock):
    first = await alice.reserve(TENANT, "alice", 100, "job-1", ttl_seconds=60, memo="m")
    clock.advance(seconds=5)

    again = await alice.reserve(TENANT, "alice", 100, "job-1", ttl_seconds=60, memo="m")

    assert again.replayed and not first.replayed
    assert replace(again, replayed=False) == first
    balance = await alice.get_balance(TENANT, "alice")
    assert (balance.available, balance.held) == (300, 100)


@pytest.mark.parametrize(
    "changed",
    [{"amount": 101}, {"ttl_seconds": 61}, {"ttl_seconds": None}, {"memo": "other"}],
)
async def test_a_key_reused_for_another_reserve_is_refused(alice, changed):
    request = {"amount": 100, "ttl_seconds": 60, "memo": "m"}
    await alice.reserve(TENANT, "alice", idempotency_key="job-1", **request)

    with pytest.raises(AlreadyExists) as caught:
        await alice.reserve(TENANT, "alice", idempotency_key="job-1", **(request | changed))

    assert caught.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert caught.value.metadata == {"idempotency_key": "job-1"}
    assert (await alice.get_balance(TENANT, "alice")).held == 100


async def test_a_key_names_one_request_per_account(alice):
    await alice.open_account(TENANT, "bob", "open")

    mine = await alice.reserve(TENANT, "alice", 10, "shared-key")
    theirs = await alice.reserve(TENANT, "bob", 10, "shared-key")

    assert not theirs.replayed
    assert mine.hold.hold_id != theirs.hold.hold_id
    with pytest.raises(AlreadyExists):
        await alice.grant(TENANT, "alice", 10, GrantKind.PURCHASE, "order", "shared-key")


async def test_capture_and_release_keys_are_scoped_to_their_hold(alice):
    one = (await alice.reserve(TENANT, "alice", 10, "one")).hold
    two = (await alice.reserve(TENANT, "alice", 10, "two")).hold

    await alice.capture(TENANT, one.hold_id, 10, "settle")
    settled = await alice.release(TENANT, two.hold_id, "settle")

    assert not settled.replayed
    assert settled.hold.status is HoldStatus.RELEASED


async def test_retried_captures_and_releases_replay(alice):
    one = (await alice.reserve(TENANT, "alice", 100, "one")).hold
    two = (await alice.reserve(TENANT, "alice", 100, "two")).hold
    captured = await alice.capture(TENANT, one.hold_id, 40, "capture")
    released = await alice.release(TENANT, two.hold_id, "release")

    assert await alice.capture(TENANT, one.hold_id, 40, "capture") == replace(
        captured, replayed=True
    )
    assert await alice.release(TENANT, two.hold_id, "release") == replace(released, replayed=True)
    with pytest.raises(AlreadyExists):
        await alice.capture(TENANT, one.hold_id, 41, "capture")
    assert (await alice.get_balance(TENANT, "alice")).consumed == 40


async def test_a_retried_grant_replays_its_entry(alice):
    first = await alice.grant(TENANT, "alice", 70, GrantKind.ADJUSTMENT, "goodwill", "fix")

    again = await alice.grant(TENANT, "alice", 70, GrantKind.ADJUSTMENT, "goodwill", "fix")

    assert again == replace(first, replayed=True)
    assert (await alice.get_balance(TENANT, "alice")).adjusted == 70
    with pytest.raises(AlreadyExists):
        await alice.grant(TENANT, "alice", 70, GrantKind.PURCHASE, "goodwill", "fix")


async def test_a_retried_open_and_check_in_replay(alice):
    opened = await alice.open_account(TENANT, "alice", "open")
    checked = await alice.check_in(TENANT, "alice", "week")

    assert opened.replayed
    assert (opened.granted, opened.outcome) == (400, GrantOutcome.GRANTED)
    assert await alice.check_in(TENANT, "alice", "week") == replace(checked, replayed=True)
    with pytest.raises(AlreadyExists):
        await alice.check_in(TENANT, "alice", "open")


async def test_a_failed_attempt_replays_its_failure_even_once_it_could_succeed(alice):
    with pytest.raises(FailedPrecondition) as first:
        await alice.reserve(TENANT, "alice", 500, "big-job")
    await alice.grant(TENANT, "alice", 1000, GrantKind.PURCHASE, "order 1", "buy")

    with pytest.raises(FailedPrecondition) as again:
        await alice.reserve(TENANT, "alice", 500, "big-job")

    assert again.value.reason == first.value.reason == "INSUFFICIENT_CREDITS"
    assert again.value.metadata == first.value.metadata == {"available": "400", "required": "500"}
    assert (await alice.reserve(TENANT, "alice", 500, "big-job-2")).balance.available == 900


async def test_failures_of_hold_operations_replay(alice):
    hold = (await alice.reserve(TENANT, "alice", 10, "job")).hold
    unknown = "hold_" + "f" * 32
    with pytest.raises(FailedPrecondition):
        await alice.capture(TENANT, hold.hold_id, 11, "capture")
    with pytest.raises(NotFound):
        await alice.release(TENANT, unknown, "release")

    with pytest.raises(FailedPrecondition) as replayed:
        await alice.capture(TENANT, hold.hold_id, 11, "capture")
    with pytest.raises(NotFound):
        await alice.release(TENANT, unknown, "release")

    assert replayed.value.reason == "CAPTURE_EXCEEDS_HOLD"
    with pytest.raises(AlreadyExists):
        await alice.capture(TENANT, hold.hold_id, 10, "capture")


async def test_a_failure_for_an_account_not_yet_open_replays_after_it_opens(ledger):
    with pytest.raises(FailedPrecondition):
        await ledger.reserve(TENANT, "bob", 10, "early")
    await ledger.open_account(TENANT, "bob", "open")

    with pytest.raises(FailedPrecondition) as caught:
        await ledger.reserve(TENANT, "bob", 10, "early")

    assert caught.value.reason == "ACCOUNT_NOT_OPEN"


async def test_invalid_requests_are_not_recorded(alice):
    with pytest.raises(InvalidArgument):
        await alice.reserve(TENANT, "alice", -1, "job")

    reserved = await alice.reserve(TENANT, "alice", 1, "job")

    assert not reserved.replayed


async def test_sixty_four_concurrent_calls_with_one_key_have_one_effect(alice):
    answers = await asyncio.gather(
        *(alice.reserve(TENANT, "alice", 25, "same-key", memo="burst") for _ in range(64))
    )

    assert sum(not answer.replayed for answer in answers) == 1
    assert len({replace(answer, replayed=False) for answer in answers}) == 1
    balance = await alice.get_balance(TENANT, "alice")
    assert (balance.available, balance.held) == (375, 25)
    reserves = (await alice.list_entries(TENANT, "alice", kinds=[EntryKind.RESERVE])).entries
    assert len(reserves) == 1


async def test_sixty_four_concurrent_captures_with_one_key_capture_once(alice):
    hold = (await alice.reserve(TENANT, "alice", 100, "job")).hold

    answers = await asyncio.gather(
        *(alice.capture(TENANT, hold.hold_id, 60, "capture") for _ in range(64))
    )

    assert sum(not answer.replayed for answer in answers) == 1
    assert len({replace(answer, replayed=False) for answer in answers}) == 1
    assert (await alice.get_balance(TENANT, "alice")).consumed == 60


async def test_concurrent_check_ins_in_one_week_grant_once(alice):
    answers = await asyncio.gather(
        *(alice.check_in(TENANT, "alice", f"tap-{i}") for i in range(32))
    )

    assert not any(answer.replayed for answer in answers)
    assert sorted((answer.granted, answer.outcome) for answer in answers) == [
        (0, GrantOutcome.ALREADY_CHECKED_IN_THIS_WEEK)
    ] * 31 + [(40, GrantOutcome.GRANTED)]
    assert (await alice.get_balance(TENANT, "alice")).promotional_granted == 440


async def test_concurrent_opens_grant_the_bonus_once(ledger):
    answers = await asyncio.gather(
        *(ledger.open_account(TENANT, "dave", f"open-{i}") for i in range(32))
    )

    assert not any(answer.replayed for answer in answers)
    assert sorted((answer.granted, answer.outcome) for answer in answers) == [
        (0, GrantOutcome.ALREADY_OPEN)
    ] * 31 + [(400, GrantOutcome.GRANTED)]
    assert (await ledger.get_balance(TENANT, "dave")).available == 400


@pytest.mark.parametrize(
    "changed", [{"amount": 51}, {"kind": GrantKind.ADJUSTMENT}, {"reason": "another order"}]
)
async def test_a_key_reused_for_another_grant_is_refused(alice, changed):
    request = {"amount": 50, "kind": GrantKind.PURCHASE, "reason": "order 7"}
    await alice.grant(TENANT, "alice", idempotency_key="grant-1", **request)

    with pytest.raises(AlreadyExists) as caught:
        await alice.grant(TENANT, "alice", idempotency_key="grant-1", **(request | changed))

    assert caught.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert (await alice.get_balance(TENANT, "alice")).available == 450
