"""OpenAccount and CheckIn over gRPC: what a call granted and why, replays that are replays."""

from __future__ import annotations

import asyncio
from typing import TypeVar

import grpc
import pytest
from tiergen.ledger.v1 import ledger_pb2

from tests.ledger.served import Served, failure

GRANTED = ledger_pb2.GRANT_OUTCOME_GRANTED
ALREADY_OPEN = ledger_pb2.GRANT_OUTCOME_ALREADY_OPEN
ALREADY_CHECKED_IN = ledger_pb2.GRANT_OUTCOME_ALREADY_CHECKED_IN_THIS_WEEK

Reply = TypeVar("Reply", ledger_pb2.OpenAccountResponse, ledger_pb2.CheckInResponse)


async def open_account(ledger: Served, key: str) -> ledger_pb2.OpenAccountResponse:
    request = ledger_pb2.OpenAccountRequest(account_id="alice", idempotency_key=key)
    return await ledger.stub.OpenAccount(request)


async def check_in(ledger: Served, key: str) -> ledger_pb2.CheckInResponse:
    request = ledger_pb2.CheckInRequest(account_id="alice", idempotency_key=key)
    return await ledger.stub.CheckIn(request)


async def balance(ledger: Served) -> ledger_pb2.Balance:
    reply = await ledger.stub.GetBalance(ledger_pb2.GetBalanceRequest(account_id="alice"))
    return reply.balance


def replayed(reply: Reply) -> Reply:
    """`reply` as a retry with its key answers it."""
    again = type(reply)()
    again.CopyFrom(reply)
    again.replayed = True
    return again


@pytest.fixture
async def ledger(serve, clock) -> Served:
    return await serve(clock=clock)


async def test_opening_an_open_account_with_a_new_key_grants_nothing_and_says_so(ledger):
    first = await open_account(ledger, "signup")
    await ledger.reserve(30, "job")

    again = await open_account(ledger, "signup-from-another-device")

    assert (first.granted, first.replayed, first.outcome) == (400, False, GRANTED)
    assert (again.granted, again.replayed, again.outcome) == (0, False, ALREADY_OPEN)
    assert again.balance == await balance(ledger)
    assert (again.balance.available, again.balance.held) == (370, 30)
    # Each key replays its own answer, exactly.
    assert await open_account(ledger, "signup-from-another-device") == replayed(again)
    assert await open_account(ledger, "signup") == replayed(first)
    assert (await balance(ledger)).promotional_granted == 400


async def test_a_second_check_in_in_a_week_with_a_new_key_grants_nothing_and_says_so(ledger, clock):
    await open_account(ledger, "signup")
    first = await check_in(ledger, "monday")
    clock.advance(days=6, hours=13)  # Sunday evening, still 2026-W48
    await ledger.reserve(15, "job")

    second = await check_in(ledger, "sunday")

    assert (first.granted, first.replayed, first.outcome) == (40, False, GRANTED)
    assert (second.granted, second.replayed, second.outcome) == (0, False, ALREADY_CHECKED_IN)
    assert (second.iso_week, second.cap_reached) == ("2026-W48", False)
    assert second.balance == await balance(ledger)
    assert (second.balance.available, second.balance.held) == (425, 15)
    assert await check_in(ledger, "sunday") == replayed(second)
    assert await check_in(ledger, "monday") == replayed(first)

    clock.advance(hours=11)  # Monday: 2026-W49
    next_week = await check_in(ledger, "next-monday")

    assert (next_week.granted, next_week.outcome, next_week.iso_week) == (40, GRANTED, "2026-W49")
    assert (await balance(ledger)).promotional_granted == 480


async def test_the_week_the_cap_is_reached_says_so_and_the_next_is_promo_cap_reached(serve, clock):
    ledger = await serve(clock=clock, promo_cap=420)
    await open_account(ledger, "signup")

    cut = await check_in(ledger, "tap-1")
    again = await check_in(ledger, "tap-2")
    clock.advance(weeks=1)
    refused = await failure(check_in(ledger, "next-week"))

    assert (cut.granted, cut.outcome, cut.cap_reached) == (20, GRANTED, True)
    assert (again.granted, again.outcome, again.cap_reached) == (0, ALREADY_CHECKED_IN, True)
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "PROMO_CAP_REACHED",
    )
    assert refused.metadata == {"promotional_granted": "420", "promotional_cap": "420"}


async def test_concurrent_check_ins_with_new_keys_grant_once(ledger):
    await open_account(ledger, "signup")

    answers = await asyncio.gather(*(check_in(ledger, f"tap-{i}") for i in range(16)))

    assert sorted((a.granted, a.outcome, a.replayed) for a in answers) == [
        (0, ALREADY_CHECKED_IN, False)
    ] * 15 + [(40, GRANTED, False)]
    assert (await balance(ledger)).promotional_granted == 440


async def test_answers_recorded_before_outcomes_existed_replay_as_granted(ledger):
    opened = await open_account(ledger, "signup")
    checked = await check_in(ledger, "tap")
    # As an earlier version recorded them: the same answers, without the outcome.
    await ledger.harness.execute_raw(
        "UPDATE idempotency_records SET outcome = replace(outcome, ',\"outcome\":\"GRANTED\"', '')"
    )
    rows = await ledger.harness.execute_raw("SELECT outcome FROM idempotency_records")
    assert rows and not any("outcome" in row[0] for row in rows)

    assert await open_account(ledger, "signup") == replayed(opened)
    assert await check_in(ledger, "tap") == replayed(checked)
    assert (await check_in(ledger, "another-tap")).outcome == ALREADY_CHECKED_IN
