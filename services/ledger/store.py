"""The contract between the ledger's rules and its stores: what a command reads and what it writes.

A store runs each command as one transaction: it reads (and on PostgreSQL locks) what the
command's `Lookup` names, hands that `Snapshot` to the rules, and writes the `Changes` the rules
decided. The rules never see SQL and the stores never decide anything, so both stores share one
set of rules.

Locking protocol, the same on every store: all changes to an account, its holds and its entries
happen under that account's row lock (SQLite: the single writer). A hold's account never
changes, so a store may read it without a lock before taking the account's lock.

Tenancy, the same on every store: every read names the tenant, and a row of another tenant is
never read, so it is absent exactly as a row that does not exist. A command naming another
tenant's hold finds no hold and decides as it would for an unknown one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from services.ledger.model import Account, Entry, EntryKind, Hold, Outcome
from services.runtime.errors import TiergenError

__all__ = [
    "AccountKey",
    "Changes",
    "Decide",
    "Decision",
    "EntryQuery",
    "LedgerStore",
    "Lookup",
    "RecordKey",
    "Snapshot",
    "StoredRecord",
    "WriteConflict",
]


#: An account as every tenant's accounts are told apart: (tenant, account id).
AccountKey = tuple[str, str]


@dataclass(frozen=True)
class RecordKey:
    """Where an idempotency record lives: the caller's tenant, a scope chosen by the ledger, and
    a key within it."""

    tenant: str
    scope: str
    key: str


@dataclass(frozen=True)
class StoredRecord:
    """An idempotency record: which request a key was first used for, and its answer (JSON)."""

    key: RecordKey
    fingerprint: str
    outcome: str


@dataclass(frozen=True)
class Lookup:
    """What one command reads before the rules decide, all of it within one tenant."""

    tenant: str
    account_id: str | None
    hold_id: str | None
    record_keys: tuple[RecordKey, ...]
    #: Open holds of the account expiring at or before this moment are loaded too.
    now: datetime


@dataclass(frozen=True)
class Snapshot:
    """The rows a `Lookup` named, as the command's transaction sees them."""

    account: Account | None
    hold: Hold | None
    expired_holds: tuple[Hold, ...]
    records: Mapping[RecordKey, StoredRecord]


@dataclass(frozen=True)
class Changes:
    """The rows one command writes; entries and records are only ever inserted."""

    account: Account | None
    #: The account's `last_sequence` when it was read; None when the command creates the account.
    previous_sequence: int | None
    holds: tuple[Hold, ...]
    entries: tuple[Entry, ...]
    records: tuple[StoredRecord, ...]
    now: datetime


@dataclass(frozen=True)
class Decision:
    """What the rules decided: the rows to write and the answer (or domain error) to give."""

    changes: Changes
    outcome: Outcome | TiergenError


Decide = Callable[[Snapshot], Decision]


@dataclass(frozen=True)
class EntryQuery:
    """A page of one account's entries, oldest first."""

    tenant: str
    account_id: str
    after_sequence: int
    start_micros: int | None
    end_micros: int | None
    kinds: tuple[EntryKind, ...]
    limit: int


class WriteConflict(Exception):
    """Another transaction changed the account between read and write; the command is retried."""


class LedgerStore(Protocol):
    """Durable state of the ledger; every implementation is driven by the same rules."""

    async def transact(self, lookup: Lookup, decide: Decide) -> Decision:
        """Run one command atomically; its changes are durable before this returns."""
        ...

    async def account(
        self, tenant: str, account_id: str, now: datetime
    ) -> tuple[Account | None, bool]:
        """The account (if open) and whether it has open holds past their expiry at `now`."""
        ...

    async def hold(self, tenant: str, hold_id: str) -> Hold | None:
        """The hold, if it exists and belongs to `tenant`."""
        ...

    async def entries(self, query: EntryQuery) -> list[Entry]: ...

    async def accounts_with_expired_holds(self, now: datetime, limit: int) -> list[AccountKey]:
        """Accounts of every tenant that have open holds past their expiry, in (tenant, account
        id) order."""
        ...

    async def audit(self, sql: str) -> list[tuple[Any, ...]]:
        """Run one read-only, parameter-free audit query written in portable SQL."""
        ...

    async def close(self) -> None: ...
