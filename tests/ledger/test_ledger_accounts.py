"""Accounts and promotions: the sign-up bonus, weekly check-ins up to the cap, and grants."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from services.ledger.model import EntryKind, GrantKind, GrantOutcome
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from tests.ledger.conftest import TENANT


async def test_opening_an_account_grants_the_signup_bonus(ledger):
    opened = await ledger.open_account(TENANT, "alice", "open-1")

    assert opened.granted == 400
    assert not opened.replayed
    balance = await ledger.get_balance(TENANT, "alice")
    assert (balance.available, balance.held, balance.total) == (400, 0, 400)
    assert (balance.promotional_granted, balance.promotional_cap) == (400, 840)
    assert (balance.purchased, balance.adjusted, balance.consumed) == (0, 0, 0)
    assert opened.balance == balance


async def test_opening_an_open_account_with_a_new_key_grants_nothing_and_says_so(ledger):
    first = await ledger.open_account(TENANT, "alice", "open-1")
    await ledger.reserve(TENANT, "alice", 30, "reserve-1")

    again = await ledger.open_account(TENANT, "alice", "open-2")

    assert (first.granted, first.outcome) == (400, GrantOutcome.GRANTED)
    assert (again.granted, again.outcome, again.replayed) == (0, GrantOutcome.ALREADY_OPEN, False)
    assert again.balance == await ledger.get_balance(TENANT, "alice")
    assert (again.balance.available, again.balance.held) == (370, 30)
    assert await ledger.open_account(TENANT, "alice", "open-2") == replace(again, replayed=True)
    assert await ledger.open_account(TENANT, "alice", "open-1") == replace(first, replayed=True)
    page = await ledger.list_entries(TENANT, "alice", kinds=[EntryKind.SIGNUP_BONUS])
    assert len(page.entries) == 1


async def test_signup_bonus_is_configurable(harness):
    ledger = await harness.open(signup_bonus=250, promo_cap=300)

    opened = await ledger.open_account(TENANT, "bob", "open")

    assert opened.granted == 250
    assert opened.balance.promotional_cap == 300


async def test_a_zero_signup_bonus_opens_an_empty_account(harness):
    ledger = await harness.open(signup_bonus=0)

    opened = await ledger.open_account(TENANT, "carol", "open")

    assert (opened.granted, opened.balance.available) == (0, 0)
    assert (await ledger.list_entries(TENANT, "carol")).entries == ()


async def test_balance_of_an_unknown_account_is_not_found(ledger):
    with pytest.raises(NotFound) as caught:
        await ledger.get_balance(TENANT, "nobody")
    assert caught.value.reason == "ACCOUNT_NOT_FOUND"
    assert caught.value.metadata == {"account_id": "nobody"}


@pytest.mark.parametrize(
    "account_id",
    ["", "-starts-with-dash", ".dot", "has space", "slash/inside", "x" * 129, "caf\u00e9", "a\n"],
)
async def test_malformed_account_ids_are_invalid_arguments(ledger, account_id):
    with pytest.raises(InvalidArgument) as opening:
        await ledger.open_account(TENANT, account_id, "open")
    with pytest.raises(InvalidArgument) as reading:
        await ledger.get_balance(TENANT, account_id)

    for caught in (opening, reading):
        assert [violation.field for violation in caught.value.violations] == ["account_id"]


@pytest.mark.parametrize("account_id", ["a", "x" * 128, "user:42@example.com", "A.b_c-d:e@f"])
async def test_account_ids_may_use_every_allowed_character(ledger, account_id):
    opened = await ledger.open_account(TENANT, account_id, "open")

    assert opened.balance.account_id == account_id


@pytest.mark.parametrize("key", ["", "   ", "k" * 257, "k\x00", "k\n"])
async def test_missing_oversized_or_malformed_idempotency_keys_are_refused(ledger, key):
    with pytest.raises(InvalidArgument) as caught:
        await ledger.open_account(TENANT, "alice", key)

    assert caught.value.violations[0].field == "idempotency_key"
    with pytest.raises(NotFound):
        await ledger.get_balance(TENANT, "alice")


async def test_check_in_grants_the_weekly_credit_for_the_current_iso_week(ledger):
    await ledger.open_account(TENANT, "alice", "open")

    checked = await ledger.check_in(TENANT, "alice", "week-48")

    assert (checked.granted, checked.iso_week, checked.cap_reached) == (40, "2026-W48", False)
    assert not checked.replayed
    assert checked.balance.available == 440
    assert checked.balance.promotional_granted == 440


async def test_a_double_tap_in_one_week_grants_nothing_and_says_so(ledger, clock):
    await ledger.open_account(TENANT, "alice", "open")
    first = await ledger.check_in(TENANT, "alice", "tap-1")
    clock.advance(days=6, hours=13)  # Sunday evening, still 2026-W48
    await ledger.reserve(TENANT, "alice", 15, "job")

    second = await ledger.check_in(TENANT, "alice", "tap-2")

    assert (first.granted, first.outcome) == (40, GrantOutcome.GRANTED)
    assert (second.granted, second.iso_week, second.replayed) == (0, "2026-W48", False)
    assert second.outcome is GrantOutcome.ALREADY_CHECKED_IN_THIS_WEEK
    assert second.balance == await ledger.get_balance(TENANT, "alice")
    assert (second.balance.available, second.balance.held) == (425, 15)
    assert not second.cap_reached
    assert await ledger.check_in(TENANT, "alice", "tap-2") == replace(second, replayed=True)
    assert await ledger.check_in(TENANT, "alice", "tap-1") == replace(first, replayed=True)


async def test_check_in_is_granted_again_in_the_next_iso_week(ledger, clock):
    await ledger.open_account(TENANT, "alice", "open")
    clock.advance(days=6, hours=13, minutes=59, seconds=59)  # Sunday 23:59:59 UTC
    sunday = await ledger.check_in(TENANT, "alice", "sunday")
    clock.advance(seconds=1)  # Monday 00:00:00 UTC

    monday = await ledger.check_in(TENANT, "alice", "monday")

    assert (sunday.iso_week, monday.iso_week) == ("2026-W48", "2026-W49")
    assert not monday.replayed
    assert monday.balance.available == 480


async def test_check_ins_stop_at_exactly_the_promotional_cap(ledger, clock):
    await ledger.open_account(TENANT, "alice", "open")
    granted = []
    for week in range(11):
        result = await ledger.check_in(TENANT, "alice", f"week-{week}")
        granted.append(result.granted)
        clock.advance(weeks=1)

    assert granted == [40] * 11
    assert result.cap_reached
    assert result.balance.promotional_granted == 840
    with pytest.raises(FailedPrecondition) as caught:
        await ledger.check_in(TENANT, "alice", "week-11")
    assert caught.value.reason == "PROMO_CAP_REACHED"
    assert caught.value.metadata == {"promotional_granted": "840", "promotional_cap": "840"}
    assert (await ledger.get_balance(TENANT, "alice")).promotional_granted == 840


async def test_the_check_in_that_would_cross_the_cap_is_cut_to_it(harness, clock):
    ledger = await harness.open(checkin_amount=50)
    await ledger.open_account(TENANT, "alice", "open")
    results = []
    for week in range(9):
        results.append(await ledger.check_in(TENANT, "alice", f"week-{week}"))
        clock.advance(weeks=1)

    assert [result.granted for result in results] == [50] * 8 + [40]
    assert [result.cap_reached for result in results] == [False] * 8 + [True]
    assert results[-1].balance.promotional_granted == 840
    with pytest.raises(FailedPrecondition, match="promotional"):
        await ledger.check_in(TENANT, "alice", "week-9")


async def test_purchases_do_not_count_towards_the_promotional_cap(harness):
    ledger = await harness.open(promo_cap=400)
    await ledger.open_account(TENANT, "alice", "open")
    await ledger.grant(TENANT, "alice", 1000, GrantKind.PURCHASE, "order 7", "buy")

    with pytest.raises(FailedPrecondition) as caught:
        await ledger.check_in(TENANT, "alice", "week")

    assert caught.value.reason == "PROMO_CAP_REACHED"
    assert (await ledger.get_balance(TENANT, "alice")).available == 1400


@pytest.mark.parametrize("operation", ["check_in", "grant", "reserve"])
async def test_mutating_an_account_never_opened_fails_with_account_not_open(ledger, operation):
    calls = {
        "check_in": lambda: ledger.check_in(TENANT, "ghost", "key"),
        "grant": lambda: ledger.grant(TENANT, "ghost", 5, GrantKind.PURCHASE, "order", "key"),
        "reserve": lambda: ledger.reserve(TENANT, "ghost", 5, "key"),
    }
    with pytest.raises(FailedPrecondition) as caught:
        await calls[operation]()

    assert caught.value.reason == "ACCOUNT_NOT_OPEN"
    assert caught.value.metadata == {"account_id": "ghost"}
    with pytest.raises(NotFound):
        await ledger.get_balance(TENANT, "ghost")


async def test_grants_record_purchases_and_adjustments_with_their_reason(ledger, clock):
    await ledger.open_account(TENANT, "alice", "open")
    clock.advance(minutes=5)

    bought = await ledger.grant(TENANT, "alice", 500, GrantKind.PURCHASE, "order 1234", "buy-1")
    fixed = await ledger.grant(
        TENANT, "alice", 7, GrantKind.ADJUSTMENT, "refund for job 9", "fix-1"
    )

    assert not bought.replayed
    assert bought.entry.kind is EntryKind.PURCHASE
    assert (bought.entry.amount, bought.entry.memo) == (500, "order 1234")
    assert (bought.entry.source, bought.entry.destination) == (
        "system/purchases",
        "accounts/alice/available",
    )
    assert bought.entry.created_at == clock.now()
    assert (bought.entry.sequence, bought.entry.available_after) == (2, 900)
    assert fixed.entry.kind is EntryKind.ADJUSTMENT
    assert fixed.entry.source == "system/adjustments"
    balance = fixed.balance
    assert (balance.available, balance.purchased, balance.adjusted) == (907, 500, 7)
    assert balance.promotional_granted == 400


@pytest.mark.parametrize(
    ("amount", "reason", "field"),
    [
        (0, "order", "amount"),
        (-5, "order", "amount"),
        (10**12 + 1, "order", "amount"),
        (True, "order", "amount"),
        (2.5, "order", "amount"),
        (5, "", "reason"),
        (5, "   ", "reason"),
        (5, "r" * 501, "reason"),
    ],
)
async def test_bad_grants_are_invalid_arguments_and_change_nothing(ledger, amount, reason, field):
    await ledger.open_account(TENANT, "alice", "open")

    with pytest.raises(InvalidArgument) as caught:
        await ledger.grant(TENANT, "alice", amount, GrantKind.PURCHASE, reason, "grant")

    assert caught.value.violations[0].field == field
    assert (await ledger.get_balance(TENANT, "alice")).available == 400


async def test_a_grant_kind_must_be_purchase_or_adjustment(ledger):
    await ledger.open_account(TENANT, "alice", "open")

    with pytest.raises(InvalidArgument) as caught:
        await ledger.grant(TENANT, "alice", 5, "GIFT", "why not", "grant")

    assert caught.value.violations[0].field == "kind"


async def test_check_in_weeks_follow_utc_whatever_the_clock_zone(harness):
    class KievClock:
        def now(self):
            # Monday 01:00 at UTC+2 is still Sunday, and ISO week 2026-W48, in UTC.
            return datetime(2026, 11, 30, 1, 0, tzinfo=timezone(timedelta(hours=2)))

    ledger = await harness.open(clock=KievClock())
    await ledger.open_account(TENANT, "alice", "open")

    checked = await ledger.check_in(TENANT, "alice", "week")

    assert checked.iso_week == "2026-W48"
