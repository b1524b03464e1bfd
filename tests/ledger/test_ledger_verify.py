"""verify(): every invariant holds after real traffic, and a tampered database is caught."""

from __future__ import annotations

import pytest

from services.ledger.model import GrantKind, InvariantCheck
from tests.ledger.conftest import TENANT

CHECKS = [
    "zero_sum",
    "no_negative_available",
    "granted_equals_available_held_consumed",
    "held_equals_open_holds",
    "balances_match_history",
    "running_balances_chain",
    "no_open_hold_past_expiry",
]


@pytest.fixture
async def traded(ledger, clock):
    """Two accounts after a bit of everything, with one hold left open and one overdue."""
    for account_id in ("alice", "bob"):
        await ledger.open_account(TENANT, account_id, "open")
        await ledger.check_in(TENANT, account_id, "week")
    await ledger.grant(TENANT, "alice", 250, GrantKind.PURCHASE, "order 1", "buy")
    await ledger.grant(TENANT, "bob", 3, GrantKind.ADJUSTMENT, "goodwill", "fix")
    captured = (await ledger.reserve(TENANT, "alice", 90, "job-1")).hold
    await ledger.capture(TENANT, captured.hold_id, 60, "capture")
    released = (await ledger.reserve(TENANT, "bob", 40, "job-2")).hold
    await ledger.release(TENANT, released.hold_id, "release")
    await ledger.reserve(TENANT, "bob", 25, "overdue", ttl_seconds=10)
    await ledger.reserve(TENANT, "alice", 15, "job-3", ttl_seconds=3600)
    clock.advance(seconds=30)
    return ledger


def failing(checks: list[InvariantCheck]) -> list[str]:
    return sorted(check.name for check in checks if not check.ok)


async def test_every_invariant_holds_after_traffic_and_a_sweep(traded):
    checks = await traded.verify()

    assert [check.name for check in checks] == CHECKS
    assert failing(checks) == []
    zero_sum = checks[0]
    assert "system/consumed 60" in zero_sum.detail
    assert "system/promotions -880" in zero_sum.detail
    assert (await traded.get_balance(TENANT, "bob")).held == 0


async def test_an_overdue_hold_is_reported_when_not_swept_first(traded):
    checks = await traded.verify(sweep=False)

    assert failing(checks) == ["no_open_hold_past_expiry"]
    assert f"{TENANT}/bob has overdue open holds" in checks[-1].detail


async def test_an_empty_ledger_is_consistent(ledger):
    assert failing(await ledger.verify()) == []


async def test_credits_added_behind_the_ledgers_back_are_caught(harness, traded):
    await harness.execute_raw(
        "UPDATE accounts SET available = available + 5 WHERE account_id = 'alice'"
    )

    checks = await traded.verify()

    assert failing(checks) == [
        "balances_match_history",
        "granted_equals_available_held_consumed",
        "zero_sum",
    ]
    details = {check.name: check.detail for check in checks}
    assert "all books sum to 5" in details["zero_sum"]
    assert "alice" in details["granted_equals_available_held_consumed"]
    assert "bob" not in details["balances_match_history"]


async def test_credits_moved_from_one_tenant_to_another_are_caught(harness, traded):
    await traded.open_account("globex", "alice", "open")
    await harness.execute_raw(
        "UPDATE accounts SET available = available - 5"
        f" WHERE tenant = '{TENANT}' AND account_id = 'alice'",
        "UPDATE accounts SET available = available + 5"
        " WHERE tenant = 'globex' AND account_id = 'alice'",
    )

    checks = await traded.verify()

    assert failing(checks) == [
        "balances_match_history",
        "granted_equals_available_held_consumed",
        "zero_sum",
    ]
    details = {check.name: check.detail for check in checks}
    # Nothing is missing from the ledger as a whole; each tenant's books are off.
    assert "all books sum to 0" in details["zero_sum"]
    assert f"do not sum to zero: {TENANT} -5, globex 5" in details["zero_sum"]
    assert f"{TENANT}/alice; globex/alice" in details["balances_match_history"]


async def test_a_hold_changed_behind_the_ledgers_back_is_caught(harness, traded):
    await harness.execute_raw(
        "UPDATE holds SET amount = amount + 1 WHERE status = 'open' AND account_id = 'alice'"
    )

    checks = await traded.verify()

    assert failing(checks) == ["held_equals_open_holds"]
    assert f"{TENANT}/alice (held 15, open holds 16)" in checks[3].detail


async def test_an_entry_slipped_into_the_history_is_caught(harness, traded):
    await harness.execute_raw(
        "INSERT INTO entries (tenant, account_id, sequence, kind, amount, source, destination,"
        " hold_id, memo, created_at_us, available_after, held_after) VALUES"
        f" ('{TENANT}', 'bob', 99, 'CHECK_IN', 40, 'system/promotions', 'accounts/bob/available',"
        " NULL, 'forged', 0, 9999, 0)"
    )

    checks = await traded.verify()

    assert failing(checks) == ["balances_match_history", "running_balances_chain", "zero_sum"]
    assert f"{TENANT}/bob #99" in checks[5].detail


async def test_a_negative_balance_forced_past_the_schema_is_caught(harness, traded):
    # Move credits from available to held so that only the negative balance is wrong with them.
    update = (
        "UPDATE accounts SET available = -1, held = held + available + 1 WHERE account_id = 'alice'"
    )
    if harness.kind == "sqlite":
        # A connection may switch CHECK constraints off; the ledger's own never does.
        await harness.execute_raw("PRAGMA ignore_check_constraints = ON", update)
    else:
        await harness.execute_raw(
            "ALTER TABLE accounts DROP CONSTRAINT accounts_available_check", update
        )

    checks = await traded.verify()

    assert "no_negative_available" in failing(checks)
    assert f"{TENANT}/alice (available -1, held 631)" in checks[1].detail
