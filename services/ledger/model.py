"""The ledger's vocabulary: accounts, books, entries, holds, balances and the clock they run on.

Every account belongs to one tenant, and an account is named by its tenant and its id together:
"alice" of two tenants is two accounts. Holds and entries belong to their account's tenant.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Protocol, TypeAlias

from services.runtime.errors import InvalidArgument
from services.runtime.identifiers import require_plain_text

__all__ = [
    "MAX_AMOUNT",
    "MAX_TEXT_LENGTH",
    "Account",
    "Balance",
    "CheckInResult",
    "Clock",
    "Entry",
    "EntryKind",
    "EntryPage",
    "ExpiryResult",
    "GrantKind",
    "GrantOutcome",
    "GrantResult",
    "Hold",
    "HoldResult",
    "HoldStatus",
    "InvariantCheck",
    "OpenAccountResult",
    "Outcome",
    "SystemBook",
    "SystemClock",
    "available_book",
    "from_micros",
    "held_book",
    "iso_week",
    "require_amount",
    "require_text",
    "to_micros",
]

#: Larger amounts are refused so that every sum the ledger keeps fits a signed 64-bit column.
MAX_AMOUNT = 1_000_000_000_000
#: Longest memo or reason kept with a hold or a grant.
MAX_TEXT_LENGTH = 500

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class Clock(Protocol):
    """Where the ledger reads the time; injected so tests can move it."""

    def now(self) -> datetime:
        """The current time, timezone-aware."""
        ...


class SystemClock:
    """The wall clock, in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class EntryKind(StrEnum):
    """Why credits moved; each kind moves them between one fixed pair of books."""

    SIGNUP_BONUS = "SIGNUP_BONUS"
    CHECK_IN = "CHECK_IN"
    PURCHASE = "PURCHASE"
    ADJUSTMENT = "ADJUSTMENT"
    RESERVE = "RESERVE"
    CAPTURE = "CAPTURE"
    RELEASE = "RELEASE"
    EXPIRE = "EXPIRE"


class GrantKind(StrEnum):
    """What an operator's grant is: credits paid for, or a correction."""

    PURCHASE = "PURCHASE"
    ADJUSTMENT = "ADJUSTMENT"


class GrantOutcome(StrEnum):
    """What an OpenAccount or CheckIn call did, and so why it granted what it granted."""

    #: This call opened the account, or made this week's check-in, and granted `granted`.
    GRANTED = "GRANTED"
    #: Nothing granted: the account was already open, its sign-up bonus granted back then.
    ALREADY_OPEN = "ALREADY_OPEN"
    #: Nothing granted: the account already checked in this ISO week.
    ALREADY_CHECKED_IN_THIS_WEEK = "ALREADY_CHECKED_IN_THIS_WEEK"


class HoldStatus(StrEnum):
    """Where a hold is in its life: open until it resolves exactly once."""

    OPEN = "open"
    CAPTURED = "captured"
    RELEASED = "released"
    EXPIRED = "expired"


class SystemBook(StrEnum):
    """The ledger's own books: the other side of every credit a user account gains or spends."""

    PROMOTIONS = "system/promotions"
    PURCHASES = "system/purchases"
    ADJUSTMENTS = "system/adjustments"
    CONSUMED = "system/consumed"


def available_book(account_id: str) -> str:
    """The book of an account's spendable credits ('/' never occurs in an account id).

    Named within the account's tenant, which every entry carries beside its books: the names
    of history written before tenants stay valid, and the system books stay shared by all.
    """
    return f"accounts/{account_id}/available"


def held_book(account_id: str) -> str:
    """The book of an account's credits set aside by open holds."""
    return f"accounts/{account_id}/held"


@dataclass(frozen=True)
class Balance:
    """An account's credits: spendable, held, and where they came from and went."""

    tenant: str
    account_id: str
    available: int
    held: int
    promotional_granted: int
    promotional_cap: int
    purchased: int
    adjusted: int
    consumed: int

    @property
    def total(self) -> int:
        """Credits the account still owns: available plus held."""
        return self.available + self.held


@dataclass(frozen=True)
class Account:
    """The stored state of one user account (its two books and lifetime counters)."""

    tenant: str
    account_id: str
    available: int
    held: int
    promotional_granted: int
    purchased: int
    adjusted: int
    consumed: int
    #: Sequence number of the account's latest entry; entries are numbered 1, 2, 3...
    last_sequence: int
    opened_at: datetime

    def balance(self, promotional_cap: int) -> Balance:
        return Balance(
            tenant=self.tenant,
            account_id=self.account_id,
            available=self.available,
            held=self.held,
            promotional_granted=self.promotional_granted,
            promotional_cap=promotional_cap,
            purchased=self.purchased,
            adjusted=self.adjusted,
            consumed=self.consumed,
        )


@dataclass(frozen=True)
class Hold:
    """Credits set aside for one piece of work until it is captured, released or expires.

    Hold ids are unique across tenants; a hold belongs to its account's tenant.
    """

    hold_id: str
    tenant: str
    account_id: str
    amount: int
    captured_amount: int
    status: HoldStatus
    memo: str
    created_at: datetime
    expires_at: datetime
    resolved_at: datetime | None


@dataclass(frozen=True)
class Entry:
    """One transfer between two books, numbered within its account, with the balance after it."""

    tenant: str
    account_id: str
    sequence: int
    kind: EntryKind
    amount: int
    source: str
    destination: str
    hold_id: str | None
    memo: str
    created_at: datetime
    available_after: int
    held_after: int

    @property
    def balance_after(self) -> int:
        """The account's available plus held credits right after this entry."""
        return self.available_after + self.held_after


@dataclass(frozen=True)
class OpenAccountResult:
    """The answer to opening an account: the sign-up bonus this call granted, why, and the
    balance after it."""

    balance: Balance
    granted: int
    outcome: GrantOutcome
    replayed: bool = False


@dataclass(frozen=True)
class CheckInResult:
    """The answer to a weekly check-in: what this call granted and why, for which week, and
    whether the cap is reached."""

    balance: Balance
    granted: int
    outcome: GrantOutcome
    iso_week: str
    cap_reached: bool
    replayed: bool = False


@dataclass(frozen=True)
class HoldResult:
    """The answer to reserve, capture and release: the hold as it now stands and the balance."""

    hold: Hold
    balance: Balance
    replayed: bool = False


@dataclass(frozen=True)
class GrantResult:
    """The answer to an operator's grant: the entry it wrote and the balance after it."""

    entry: Entry
    balance: Balance
    replayed: bool = False


@dataclass(frozen=True)
class ExpiryResult:
    """What returning an account's expired holds did: the holds expired and the balance after."""

    expired: tuple[Hold, ...]
    balance: Balance | None


@dataclass(frozen=True)
class EntryPage:
    """One page of an account's history, oldest first; an empty token means the last page."""

    entries: tuple[Entry, ...]
    next_page_token: str


@dataclass(frozen=True)
class InvariantCheck:
    """One invariant verified over the whole ledger, and what was found when it does not hold."""

    name: str
    ok: bool
    detail: str


#: What a successful ledger command answers.
Outcome: TypeAlias = OpenAccountResult | CheckInResult | HoldResult | GrantResult | ExpiryResult


def to_micros(moment: datetime) -> int:
    """A timezone-aware moment as whole microseconds since the Unix epoch (how stores keep time)."""
    if moment.tzinfo is None:
        raise ValueError("the ledger only handles timezone-aware datetimes")
    return (moment - _EPOCH) // _MICROSECOND


def from_micros(micros: int) -> datetime:
    return _EPOCH + _MICROSECOND * micros


def iso_week(moment: datetime) -> str:
    """The ISO 8601 week of a moment in UTC, for example '2026-W48'."""
    year, week, _ = moment.astimezone(UTC).isocalendar()
    return f"{year}-W{week:02d}"


def require_amount(amount: int, field: str = "amount") -> int:
    # bool is an int subclass; True credits is a caller bug, not one credit.
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise InvalidArgument("amount must be a whole number of credits", field=field)
    if amount <= 0:
        raise InvalidArgument("amount must be greater than zero", field=field)
    if amount > MAX_AMOUNT:
        raise InvalidArgument(f"amount must be at most {MAX_AMOUNT}", field=field)
    return amount


def require_text(text: str, field: str, *, required: bool) -> str:
    """A memo or reason the ledger keeps: bounded, and plain text on every store (PostgreSQL's
    `text` cannot hold the NUL that SQLite would keep)."""
    if required and not text.strip():
        raise InvalidArgument(f"{field} is required", field=field)
    if len(text) > MAX_TEXT_LENGTH:
        raise InvalidArgument(f"{field} is at most {MAX_TEXT_LENGTH} characters", field=field)
    return require_plain_text(text, field)
