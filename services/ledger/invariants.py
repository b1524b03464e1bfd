"""The ledger's invariants, checked over a whole database by `Ledger.verify`.

Each check reads the database as it is (the stored balances against the append-only history), so
a database changed behind the ledger's back, or a bug, shows up as a violation with the accounts
it concerns.
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
# system books' balances (derived from the entries) sum to zero.
_BOOK_TOTALS = """
SELECT 'accounts', COALESCE(SUM(available + held), 0) FROM accounts
UNION ALL
SELECT destination, SUM(amount) FROM entries WHERE destination LIKE 'system/%' GROUP BY destination
UNION ALL
SELECT source, -SUM(amount) FROM entries WHERE source LIKE 'system/%' GROUP BY source
"""

_NEGATIVE = """
SELECT account_id, available, held FROM accounts
WHERE available < 0 OR held < 0 ORDER BY account_id
"""

_GRANTED_VS_SPENT = """
SELECT account_id, promotional_granted + purchased + adjusted, available + held + consumed
FROM accounts
WHERE promotional_granted + purchased + adjusted <> available + held + consumed
ORDER BY account_id
"""

_HELD_VS_OPEN_HOLDS = """
SELECT accounts.account_id, accounts.held, COALESCE(open_holds.total, 0)
FROM accounts LEFT JOIN (
    SELECT account_id, SUM(amount) AS total FROM holds WHERE status = 'open' GROUP BY account_id
) open_holds ON open_holds.account_id = accounts.account_id
WHERE accounts.held <> COALESCE(open_holds.total, 0)
ORDER BY accounts.account_id
"""

_BALANCES_VS_HISTORY = """
SELECT accounts.account_id
FROM accounts LEFT JOIN (
    SELECT account_id,
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
    FROM entries GROUP BY account_id
) history ON history.account_id = accounts.account_id
WHERE accounts.available <> COALESCE(history.available, 0)
   OR accounts.held <> COALESCE(history.held, 0)
   OR accounts.promotional_granted <> COALESCE(history.promotional, 0)
   OR accounts.purchased <> COALESCE(history.purchased, 0)
   OR accounts.adjusted <> COALESCE(history.adjusted, 0)
   OR accounts.consumed <> COALESCE(history.consumed, 0)
   OR accounts.last_sequence <> COALESCE(history.entry_count, 0)
   OR accounts.last_sequence <> COALESCE(history.last_sequence, 0)
ORDER BY accounts.account_id
"""

# Each entry's running balance is the previous one moved by the entry's own transfer.
_RUNNING_BALANCES = """
SELECT account_id, sequence FROM (
    SELECT account_id, sequence, available_after, held_after,
        COALESCE(LAG(available_after) OVER history, 0)
            + CASE WHEN destination = 'accounts/' || account_id || '/available' THEN amount
                   WHEN source = 'accounts/' || account_id || '/available' THEN -amount
                   ELSE 0 END AS expected_available,
        COALESCE(LAG(held_after) OVER history, 0)
            + CASE WHEN destination = 'accounts/' || account_id || '/held' THEN amount
                   WHEN source = 'accounts/' || account_id || '/held' THEN -amount
                   ELSE 0 END AS expected_held
    FROM entries
    WINDOW history AS (PARTITION BY account_id ORDER BY sequence)
) chained
WHERE available_after <> expected_available OR held_after <> expected_held
ORDER BY account_id, sequence
"""


async def check_invariants(store: LedgerStore, now: datetime) -> list[InvariantCheck]:
    """Check every invariant; `now` is the moment no open hold may be past its expiry."""
    checks = [await _zero_sum(store)]
    checks.append(
        _from_violations(
            "no_negative_available",
            await store.audit(_NEGATIVE),
            "every account's available and held credits are zero or more",
            lambda row: f"{row[0]} (available {row[1]}, held {row[2]})",
        )
    )
    checks.append(
        _from_violations(
            "granted_equals_available_held_consumed",
            await store.audit(_GRANTED_VS_SPENT),
            "for every account, credits granted = available + held + consumed",
            lambda row: f"{row[0]} (granted {row[1]}, available + held + consumed {row[2]})",
        )
    )
    checks.append(
        _from_violations(
            "held_equals_open_holds",
            await store.audit(_HELD_VS_OPEN_HOLDS),
            "every account's held credits equal the sum of its open holds",
            lambda row: f"{row[0]} (held {row[1]}, open holds {row[2]})",
        )
    )
    checks.append(
        _from_violations(
            "balances_match_history",
            await store.audit(_BALANCES_VS_HISTORY),
            "every account's balances and counters equal the sums of its entries",
            lambda row: str(row[0]),
        )
    )
    checks.append(
        _from_violations(
            "running_balances_chain",
            await store.audit(_RUNNING_BALANCES),
            "every entry's running balance follows from the one before it",
            lambda row: f"{row[0]} #{row[1]}",
        )
    )
    overdue = await store.accounts_with_expired_holds(now, limit=_OVERDUE_COUNTED)
    checks.append(
        _from_violations(
            "no_open_hold_past_expiry",
            [(account_id,) for account_id in overdue],
            f"no hold is still open past its expiry at {now.isoformat()}",
            lambda row: f"{row[0]} has overdue open holds",
        )
    )
    return checks


async def _zero_sum(store: LedgerStore) -> InvariantCheck:
    totals: dict[str, int] = {}
    for book, amount in await store.audit(_BOOK_TOTALS):
        totals[book] = totals.get(book, 0) + int(amount)
    total = sum(totals.values())
    books = ", ".join(f"{book} {amount}" for book, amount in sorted(totals.items()))
    return InvariantCheck(
        name="zero_sum",
        ok=total == 0,
        detail=f"all books sum to {total} ({books})",
    )


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
