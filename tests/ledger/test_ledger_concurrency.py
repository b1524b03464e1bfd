"""Concurrent spending: available credits never go negative and nothing is spent twice."""

from __future__ import annotations

import asyncio

from services.ledger.model import GrantKind, HoldResult
from services.runtime.errors import FailedPrecondition
from tests.ledger.conftest import TENANT


async def test_256_concurrent_reserves_of_7_against_400_credits_let_exactly_57_through(ledger):
    await ledger.open_account(TENANT, "alice", "open")

    answers = await asyncio.gather(
        *(ledger.reserve(TENANT, "alice", 7, f"reserve-{i}") for i in range(256)),
        return_exceptions=True,
    )

    held = [answer for answer in answers if isinstance(answer, HoldResult)]
    refused = [answer for answer in answers if isinstance(answer, FailedPrecondition)]
    assert len(held) == 57
    assert len(refused) == 199
    assert {error.reason for error in refused} == {"INSUFFICIENT_CREDITS"}
    assert {error.metadata["required"] for error in refused} == {"7"}
    assert len({answer.hold.hold_id for answer in held}) == 57
    balance = await ledger.get_balance(TENANT, "alice")
    assert (balance.available, balance.held) == (1, 399)
    assert all(check.ok for check in await ledger.verify())


async def test_concurrent_traffic_on_many_accounts_keeps_every_invariant(ledger, clock):
    accounts = [f"user-{n}" for n in range(8)]
    await asyncio.gather(*(ledger.open_account(TENANT, account, "open") for account in accounts))

    async def customer(account: str) -> None:
        for round_ in range(6):
            hold = (await ledger.reserve(TENANT, account, 30, f"job-{round_}", ttl_seconds=60)).hold
            if round_ % 3 == 0:
                await ledger.capture(TENANT, hold.hold_id, 20, f"capture-{round_}")
            elif round_ % 3 == 1:
                await ledger.release(TENANT, hold.hold_id, f"release-{round_}")
            await ledger.grant(TENANT, account, 5, GrantKind.PURCHASE, "top-up", f"buy-{round_}")

    await asyncio.gather(*(customer(account) for account in accounts))
    clock.advance(minutes=2)

    checks = await ledger.verify()

    assert [check.name for check in checks if not check.ok] == []
    for account in accounts:
        balance = await ledger.get_balance(TENANT, account)
        assert (balance.consumed, balance.purchased, balance.held) == (40, 30, 0)
        assert balance.available == 400 + 30 - 40
