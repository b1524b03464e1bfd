"""The ledger's tables as both stores use them: statements and conversions between rows and records.

Statements are written with `?` placeholders (SQLite's style); the PostgreSQL store rewrites them
to `%s` once, at import. Table definitions differ per database and live with each store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.ledger.model import (
    Account,
    Entry,
    EntryKind,
    Hold,
    HoldStatus,
    from_micros,
    to_micros,
)
from services.ledger.store import EntryQuery, RecordKey, StoredRecord

__all__ = [
    "INSERT_ACCOUNT",
    "INSERT_ENTRY",
    "INSERT_RECORD",
    "SELECT_ACCOUNT",
    "SELECT_ACCOUNTS",
    "SELECT_ACCOUNTS_WITH_EXPIRED_HOLDS",
    "SELECT_ACCOUNT_OF_HOLD",
    "SELECT_ACCOUNT_WITH_EXPIRY",
    "SELECT_EXPIRED_HOLDS",
    "SELECT_EXPIRED_HOLDS_OF_HOLD",
    "SELECT_HOLD",
    "SELECT_HOLDS",
    "UPDATE_ACCOUNT",
    "UPSERT_HOLD",
    "account_from_row",
    "account_insert_params",
    "account_update_params",
    "entries_statement",
    "entry_from_row",
    "entry_params",
    "hold_from_row",
    "hold_params",
    "record_from_row",
    "record_params",
    "records_statement",
]

_ACCOUNT_COLUMNS = (
    "tenant, account_id, available, held, promotional_granted, purchased, adjusted, consumed,"
    " last_sequence, opened_at_us"
)
_HOLD_COLUMNS = (
    "hold_id, tenant, account_id, amount, captured_amount, status, memo, created_at_us,"
    " expires_at_us, resolved_at_us"
)
_ENTRY_COLUMNS = (
    "tenant, account_id, sequence, kind, amount, source, destination, hold_id, memo,"
    " created_at_us, available_after, held_after"
)

#: Every account column, for a WHERE clause to follow.
SELECT_ACCOUNTS = f"SELECT {_ACCOUNT_COLUMNS} FROM accounts"
SELECT_ACCOUNT = f"{SELECT_ACCOUNTS} WHERE tenant = ? AND account_id = ?"
#: The account and whether it has open holds past their expiry: `(now_us, tenant, account_id)`.
SELECT_ACCOUNT_WITH_EXPIRY = (
    f"SELECT {_ACCOUNT_COLUMNS}, EXISTS (SELECT 1 FROM holds WHERE holds.tenant ="
    " accounts.tenant AND holds.account_id = accounts.account_id AND status = 'open'"
    " AND expires_at_us <= ?) FROM accounts WHERE tenant = ? AND account_id = ?"
)
#: Every hold column, for a WHERE clause to follow.
SELECT_HOLDS = f"SELECT {_HOLD_COLUMNS} FROM holds"
SELECT_HOLD = f"{SELECT_HOLDS} WHERE tenant = ? AND hold_id = ?"
SELECT_EXPIRED_HOLDS = (
    f"SELECT {_HOLD_COLUMNS} FROM holds WHERE tenant = ? AND account_id = ? AND status = 'open'"
    " AND expires_at_us <= ? ORDER BY expires_at_us, hold_id"
)
# The same two, for commands that name a hold: its account never changes, so it can be found
# through the hold in the same statement (`tenant, hold_id`; another tenant's hold finds none).
_ACCOUNT_OF_HOLD = (
    "(tenant, account_id) = (SELECT tenant, account_id FROM holds WHERE tenant = ? AND hold_id = ?)"
)
SELECT_ACCOUNT_OF_HOLD = f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE {_ACCOUNT_OF_HOLD}"
SELECT_EXPIRED_HOLDS_OF_HOLD = (
    f"SELECT {_HOLD_COLUMNS} FROM holds WHERE {_ACCOUNT_OF_HOLD}"
    " AND status = 'open' AND expires_at_us <= ? ORDER BY expires_at_us, hold_id"
)
#: Every tenant's: the sweeper returns what is overdue wherever it is.
SELECT_ACCOUNTS_WITH_EXPIRED_HOLDS = (
    "SELECT DISTINCT tenant, account_id FROM holds WHERE status = 'open' AND expires_at_us <= ?"
    " ORDER BY tenant, account_id LIMIT ?"
)
INSERT_ACCOUNT = f"INSERT INTO accounts ({_ACCOUNT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
#: Guarded by the sequence the command read, so a lost update can never go unnoticed.
UPDATE_ACCOUNT = (
    "UPDATE accounts SET available = ?, held = ?, promotional_granted = ?, purchased = ?,"
    " adjusted = ?, consumed = ?, last_sequence = ?"
    " WHERE tenant = ? AND account_id = ? AND last_sequence = ?"
)
# Only a hold of the same tenant is updated: another tenant's hold under the same id (which
# 128 random bits make as good as impossible) is a conflict on the id, never overwritten.
UPSERT_HOLD = (
    f"INSERT INTO holds ({_HOLD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (tenant, hold_id) DO UPDATE SET captured_amount = excluded.captured_amount,"
    " status = excluded.status, resolved_at_us = excluded.resolved_at_us"
)
INSERT_ENTRY = f"INSERT INTO entries ({_ENTRY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
INSERT_RECORD = (
    "INSERT INTO idempotency_records"
    " (tenant, scope, idempotency_key, fingerprint, outcome, created_at_us)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)


def records_statement(keys: Sequence[RecordKey]) -> tuple[str, list[Any]]:
    """One query for every idempotency record a command needs."""
    triples = ", ".join("(?, ?, ?)" for _ in keys)
    sql = (
        "SELECT tenant, scope, idempotency_key, fingerprint, outcome FROM idempotency_records"
        f" WHERE (tenant, scope, idempotency_key) IN ({triples})"
    )
    return sql, [part for key in keys for part in (key.tenant, key.scope, key.key)]


def entries_statement(query: EntryQuery) -> tuple[str, list[Any]]:
    """One page of an account's entries, filtered, oldest first."""
    conditions = ["tenant = ?", "account_id = ?", "sequence > ?"]
    params: list[Any] = [query.tenant, query.account_id, query.after_sequence]
    if query.start_micros is not None:
        conditions.append("created_at_us >= ?")
        params.append(query.start_micros)
    if query.end_micros is not None:
        conditions.append("created_at_us < ?")
        params.append(query.end_micros)
    if query.kinds:
        conditions.append(f"kind IN ({', '.join('?' for _ in query.kinds)})")
        params.extend(kind.value for kind in query.kinds)
    params.append(query.limit)
    sql = (
        f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE {' AND '.join(conditions)}"
        " ORDER BY sequence LIMIT ?"
    )
    return sql, params


def account_from_row(row: Sequence[Any]) -> Account:
    return Account(
        tenant=row[0],
        account_id=row[1],
        available=row[2],
        held=row[3],
        promotional_granted=row[4],
        purchased=row[5],
        adjusted=row[6],
        consumed=row[7],
        last_sequence=row[8],
        opened_at=from_micros(row[9]),
    )


def account_insert_params(account: Account) -> tuple[Any, ...]:
    return (
        account.tenant,
        account.account_id,
        account.available,
        account.held,
        account.promotional_granted,
        account.purchased,
        account.adjusted,
        account.consumed,
        account.last_sequence,
        to_micros(account.opened_at),
    )


def account_update_params(account: Account, previous_sequence: int) -> tuple[Any, ...]:
    return (
        account.available,
        account.held,
        account.promotional_granted,
        account.purchased,
        account.adjusted,
        account.consumed,
        account.last_sequence,
        account.tenant,
        account.account_id,
        previous_sequence,
    )


def hold_from_row(row: Sequence[Any]) -> Hold:
    return Hold(
        hold_id=row[0],
        tenant=row[1],
        account_id=row[2],
        amount=row[3],
        captured_amount=row[4],
        status=HoldStatus(row[5]),
        memo=row[6],
        created_at=from_micros(row[7]),
        expires_at=from_micros(row[8]),
        resolved_at=None if row[9] is None else from_micros(row[9]),
    )


def hold_params(hold: Hold) -> tuple[Any, ...]:
    return (
        hold.hold_id,
        hold.tenant,
        hold.account_id,
        hold.amount,
        hold.captured_amount,
        hold.status.value,
        hold.memo,
        to_micros(hold.created_at),
        to_micros(hold.expires_at),
        None if hold.resolved_at is None else to_micros(hold.resolved_at),
    )


def entry_from_row(row: Sequence[Any]) -> Entry:
    return Entry(
        tenant=row[0],
        account_id=row[1],
        sequence=row[2],
        kind=EntryKind(row[3]),
        amount=row[4],
        source=row[5],
        destination=row[6],
        hold_id=row[7],
        memo=row[8],
        created_at=from_micros(row[9]),
        available_after=row[10],
        held_after=row[11],
    )


def entry_params(entry: Entry) -> tuple[Any, ...]:
    return (
        entry.tenant,
        entry.account_id,
        entry.sequence,
        entry.kind.value,
        entry.amount,
        entry.source,
        entry.destination,
        entry.hold_id,
        entry.memo,
        to_micros(entry.created_at),
        entry.available_after,
        entry.held_after,
    )


def record_from_row(row: Sequence[Any]) -> StoredRecord:
    return StoredRecord(key=RecordKey(row[0], row[1], row[2]), fingerprint=row[3], outcome=row[4])


def record_params(record: StoredRecord, created_at_us: int) -> tuple[Any, ...]:
    key = record.key
    return (key.tenant, key.scope, key.key, record.fingerprint, record.outcome, created_at_us)
