"""Running the ledger's rules on a store directly, below the Ledger class, for store tests."""

from __future__ import annotations

import secrets
from datetime import timedelta

from services.ledger import rules
from services.ledger.store import Decision, LedgerStore
from tests.ledger.conftest import START, TENANT

__all__ = ["PROMOTIONS", "reserve", "run"]

PROMOTIONS = rules.Promotions(signup_bonus=400, check_in_amount=60, cap=840)


async def run(store: LedgerStore, command: rules.Command) -> Decision:
    """`command` decided by the rules and written by `store`, as the Ledger would."""
    return await store.transact(
        rules.lookup(command), lambda snapshot: rules.decide(command, snapshot, PROMOTIONS)
    )


def reserve(account_id: str, key: str, amount: int = 7, tenant: str = TENANT) -> rules.Reserve:
    """A Reserve of `amount` on `account_id` of `tenant` at START, with a fresh hold id."""
    return rules.Reserve(
        tenant=tenant,
        account_id=account_id,
        hold_id=f"hold_{secrets.token_hex(16)}",
        amount=amount,
        ttl_seconds=None,
        expires_at=START + timedelta(minutes=5),
        memo="",
        idempotency_key=key,
        now=START,
    )
