"""The ledger's invariants, checked over a whole database by `Ledger.verify`.

Each check reads the database as it is (the stored balances against the append-only history), so
a database changed behind the ledger's back, or a bug, shows up as a violation with the accounts
it concerns. Every tenant is checked at once: an account is its (tenant, account id), named
`tenant/account` in a violation, and the system books, which every tenant's credits come out
of, sum with all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from services.ledger.model import InvariantCheck
from services.ledger.store import LedgerStore

__all__ = ["check_invariants"]

#: Violations named in a check's detail; the count covers all of them.
_SHOWN = 5
#: Accounts with overdue holds counted at most (a healthy ledger has none after a sweep).
_OVERDUE_COUNTED = 10_000

# Every credit a user book holds came out of a system book, so stored user balances plus the
# system books' balances (derived from the entries) sum to zero, within each tenant: no credit
# ever moves from one tenant's accounts to another's.
_BOOK_TOTALS = """
SELECT tenant, 'accounts', SUM(available + held) FROM accounts GROUP BY tenant
UNION ALL
SELECT tenant, destination, SUM(amount) FROM entries WHERE destination LIKE 'system/%'
GROUP BY tenant, destination
UNION ALL
SELECT tenant, source, -SUM(amount) FROM entries WHERE source LIKE 'system/%'
GROUP BY tenant, source
"""

_NEGATIVE = """
SELECT tenant, account_id, available, held FROM accounts
WHERE available < 0 OR held < 0 ORDER BY tenant, account_id
"""

_GRANTED_VS_SPENT = """
SELECT tenant, account_id, promotional_granted + purchased + adjusted,
    available + held + consumed
FROM accounts
WHERE promotional_granted + purchased + adjusted <> available + held + consumed
ORDER BY tenant, account_id
"""

_HELD_VS_OPEN_HOLDS = """
SELECT accounts.tenant, accounts.account_id, accounts.held, COALESCE(open_holds.total, 0)
FROM accounts LEFT JOIN (
    SELECT tenant, account_id, SUM(amount) AS total FROM holds WHERE status = 'open'
    GROUP BY tenant, account_id
) open_holds
    ON open_holds.tenant = accounts.tenant AND open_holds.account_id = accounts.account_id
WHERE accounts.held <> COALESCE(open_holds.total, 0)
ORDER BY accounts.tenant, accounts.account_id
"""

# An entry's account books are named within its tenant ('accounts/<id>/...').
_BALANCES_VS_HISTORY = """
SELECT accounts.tenant, accounts.account_id
FROM accounts LEFT JOIN (
    SELECT tenant, account_id,
        SUM(CASE WHEN destination = 'accounts/' || account_id || '/available' THEN amount
                 WHEN source = 'accounts/' || account_id || '/available' THEN -amount
                 ELSE 0 END) AS available,
        SUM(CASE WHEN destination = 'accounts/' || account_id || '/held' THEN amount
                 WHEN source = 'accounts/' || account_id || '/held' THEN -amount
                 ELSE 0 END) AS held,
        SUM(CASE WHEN kind IN ('SIGNUP_BONUS', 'CHECK_IN') THEN amount ELSE 0 END) AS promotional,
        SUM(CASE WHEN kind = 'PURCHASE' THEN amount ELSE 0 END) AS purchased,
        SUM(CASE WHEN kind = 'ADJUSTMENT' THEN amount ELSE 0 END) AS adjusted,
        SUM(CASE WHEN kind = 'CAPTURE' THEN amount ELSE 0 END) AS consumed,
        COUNT(*) AS entry_count,
        MAX(sequence) AS last_sequence
    FROM entries GROUP BY tenant, account_id
) history ON history.tenant = accounts.tenant AND history.account_id = accounts.account_id
WHERE accounts.available <> COALESCE(history.available, 0)
   OR accounts.held <> COALESCE(history.held, 0)
   OR accounts.promotional_granted <> COALESCE(history.promotional, 0)
   OR accounts.purchased <> COALESCE(history.purchased, 0)
   OR accounts.adjusted <> COALESCE(history.adjusted, 0)
   OR accounts.consumed <> COALESCE(history.consumed, 0)
   OR accounts.last_sequence <> COALESCE(history.entry_count, 0)
   OR accounts.last_sequence <> COALESCE(history.last_sequence, 0)
ORDER BY accounts.tenant, accounts.account_id
"""

# Each entry's running balance is the previous one moved by the entry's own transfer.
_RUNNING_BALANCES = """
SELECT tenant, account_id, sequence FROM (
    SELECT tenant, account_id, sequence, available_after, held_after,
        COALESCE(LAG(available_after) OVER history, 0)
            + CASE WHEN destination = 'accounts/' || account_id || '/available' THEN amount
                   WHEN source = 'accounts/' || account_id || '/available' THEN -amount
                   ELSE 0 END AS expected_available,
        COALESCE(LAG(held_after) OVER history, 0)
            + CASE WHEN destination = 'accounts/' || account_id || '/held' THEN amount
                   WHEN source = 'accounts/' || account_id || '/held' THEN -amount
                   ELSE 0 END AS expected_held
    FROM entries
    WINDOW history AS (PARTITION BY tenant, account_id ORDER BY sequence)
) chained
WHERE available_after <> expected_available OR held_after <> expected_held
ORDER BY tenant, account_id, sequence
"""


async def check_invariants(store: LedgerStore, now: datetime) -> list[InvariantCheck]:
    """Check every invariant; `now` is the moment no open hold may be past its expiry."""
    checks = [await _zero_sum(store)]
    checks.append(
        _from_violations(
            "no_negative_available",
            await store.audit(_NEGATIVE),
            "every account's available and held credits are zero or more",
            lambda row: f"{_account(row)} (available {row[2]}, held {row[3]})",
        )
    )
    checks.append(
        _from_violations(
            "granted_equals_available_held_consumed",
            await store.audit(_GRANTED_VS_SPENT),
            "for every account, credits granted = available + held + consumed",
            lambda row: f"{_account(row)} (granted {row[2]}, available + held + consumed {row[3]})",
        )
    )
    checks.append(
        _from_violations(
            "held_equals_open_holds",
            await store.audit(_HELD_VS_OPEN_HOLDS),
            "every account's held credits equal the sum of its open holds",
            lambda row: f"{_account(row)} (held {row[2]}, open holds {row[3]})",
        )
    )
    checks.append(
        _from_violations(
            "balances_match_history",
            await store.audit(_BALANCES_VS_HISTORY),
            "every account's balances and counters equal the sums of its entries",
            _account,
        )
    )
    checks.append(
        _from_violations(
            "running_balances_chain",
            await store.audit(_RUNNING_BALANCES),
            "every entry's running balance follows from the one before it",
            lambda row: f"{_account(row)} #{row[2]}",
        )
    )
    overdue = await store.accounts_with_expired_holds(now, limit=_OVERDUE_COUNTED)
    checks.append(
        _from_violations(
            "no_open_hold_past_expiry",
            overdue,
            f"no hold is still open past its expiry at {now.isoformat()}",
            lambda row: f"{_account(row)} has overdue open holds",
        )
    )
    return checks


async def _zero_sum(store: LedgerStore) -> InvariantCheck:
    totals: dict[str, int] = {}
    tenants: dict[str, int] = {}
    for tenant, book, amount in await store.audit(_BOOK_TOTALS):
        totals[book] = totals.get(book, 0) + int(amount)
        tenants[tenant] = tenants.get(tenant, 0) + int(amount)
    books = ", ".join(f"{book} {amount}" for book, amount in sorted(totals.items()))
    detail = f"all books sum to {sum(totals.values())} ({books})"
    off = ", ".join(f"{tenant} {amount}" for tenant, amount in sorted(tenants.items()) if amount)
    if off:
        detail += f"; tenants whose books do not sum to zero: {off}"
    return InvariantCheck(name="zero_sum", ok=not off, detail=detail)


def _account(row: tuple[Any, ...]) -> str:
    """The account a violation's row starts with (tenant, account id), as a violation names it."""
    return f"{row[0]}/{row[1]}"


def _from_violations(
    name: str,
    rows: Sequence[tuple[Any, ...]],
    holds: str,
    describe: Callable[[tuple[Any, ...]], str],
) -> InvariantCheck:
    if not rows:
        return InvariantCheck(name=name, ok=True, detail=holds)
    shown = "; ".join(describe(row) for row in rows[:_SHOWN])
    more = f" and {len(rows) - _SHOWN} more" if len(rows) > _SHOWN else ""
    return InvariantCheck(
        name=name, ok=False, detail=f"violated: {len(rows)} violations: {shown}{more}"
    )
