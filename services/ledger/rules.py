"""The ledger's rules: what each command does to an account, decided from a snapshot of its rows.

Every function here is pure: given the rows a store read, it returns the rows to write and the
answer to give. That is what lets SQLite and PostgreSQL share one set of rules, and what the
model-based tests check.

Idempotency keys are scoped: for OpenAccount, CheckIn, Grant and Reserve a key names one request
on one account; for Capture and Release it names one request on one hold; and always within the
caller's tenant. The same key on another account or hold, or from another tenant, is another
request: a tenant's key never replays another tenant's answer. Every answer and every
state-derived failure is recorded under its key, and only that key replays it.

Every command names its tenant and reads only that tenant's rows, so another tenant's hold is
absent, and Capture or Release of it answers HOLD_NOT_FOUND as an unknown hold does.

Opening an account and a week's check-in happen once whatever the key: the account row, and a
record under the account's event scope (`account-event:<id>`, `check-in/<week>`), say they
happened. A new key asking for them again is a new request that grants nothing: it answers
granted 0, the current balance and why (ALREADY_OPEN, ALREADY_CHECKED_IN_THIS_WEEK), not a
replay of the call that granted, whose balance would be stale.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from services.ledger.model import (
    Account,
    Balance,
    CheckInResult,
    Entry,
    EntryKind,
    ExpiryResult,
    GrantKind,
    GrantOutcome,
    GrantResult,
    Hold,
    HoldResult,
    HoldStatus,
    OpenAccountResult,
    Outcome,
    SystemBook,
    available_book,
    held_book,
    iso_week,
)
from services.ledger.replay import decode_outcome, encode_outcome, fingerprint, is_recorded
from services.ledger.store import (
    Changes,
    Decision,
    Lookup,
    RecordKey,
    Snapshot,
    StoredRecord,
)
from services.runtime.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    TiergenError,
)

__all__ = [
    "Capture",
    "CheckIn",
    "Command",
    "ExpireHolds",
    "Grant",
    "OpenAccount",
    "Promotions",
    "Release",
    "Reserve",
    "decide",
    "lookup",
]


@dataclass(frozen=True)
class Promotions:
    """The promotional policy: the sign-up bonus, the weekly check-in and their lifetime cap."""

    signup_bonus: int
    check_in_amount: int
    cap: int


@dataclass(frozen=True)
class OpenAccount:
    tenant: str
    account_id: str
    idempotency_key: str
    now: datetime


@dataclass(frozen=True)
class CheckIn:
    tenant: str
    account_id: str
    idempotency_key: str
    now: datetime


@dataclass(frozen=True)
class Grant:
    tenant: str
    account_id: str
    amount: int
    kind: GrantKind
    reason: str
    idempotency_key: str
    now: datetime


@dataclass(frozen=True)
class Reserve:
    tenant: str
    account_id: str
    #: Chosen by the caller of the rules so that deciding stays deterministic.
    hold_id: str
    amount: int
    #: As requested (None: the default); part of the request a key is checked against.
    ttl_seconds: int | None
    expires_at: datetime
    memo: str
    idempotency_key: str
    now: datetime


@dataclass(frozen=True)
class Capture:
    tenant: str
    hold_id: str
    amount: int
    idempotency_key: str
    now: datetime


@dataclass(frozen=True)
class Release:
    tenant: str
    hold_id: str
    idempotency_key: str
    now: datetime


@dataclass(frozen=True)
class ExpireHolds:
    """Return every open hold of an account whose expiry has passed (the sweeper's command)."""

    tenant: str
    account_id: str
    now: datetime


Command = OpenAccount | CheckIn | Grant | Reserve | Capture | Release | ExpireHolds


def lookup(command: Command) -> Lookup:
    """The rows a command must read before `decide` can run."""
    tenant = command.tenant
    match command:
        case CheckIn():
            keys = (_caller_key(command), _week_key(command))
            return Lookup(tenant, command.account_id, None, keys, command.now)
        case OpenAccount() | Grant() | Reserve():
            return Lookup(tenant, command.account_id, None, (_caller_key(command),), command.now)
        case Capture() | Release():
            return Lookup(tenant, None, command.hold_id, (_caller_key(command),), command.now)
        case ExpireHolds():
            return Lookup(tenant, command.account_id, None, (), command.now)


def decide(command: Command, snapshot: Snapshot, promotions: Promotions) -> Decision:
    """What a command does, given the rows its lookup read."""
    draft = _Draft(snapshot, command.now, promotions.cap)
    if isinstance(command, ExpireHolds):
        if draft.account is None:
            return draft.decision(ExpiryResult(expired=(), balance=None))
        expired = draft.expire_due()
        return draft.decision(ExpiryResult(expired=expired, balance=draft.balance()))
    key = _caller_key(command)
    request = _fingerprint(command)
    stored = snapshot.records.get(key)
    if stored is not None:
        if stored.fingerprint != request:
            return draft.decision(
                AlreadyExists(
                    "this idempotency key was already used for a different request",
                    reason="IDEMPOTENCY_KEY_REUSED",
                    metadata={"idempotency_key": command.idempotency_key},
                )
            )
        return draft.decision(decode_outcome(stored.outcome, command.tenant))
    outcome = _decide_fresh(command, draft, snapshot, promotions, request)
    if is_recorded(outcome):
        draft.record(key, request, encode_outcome(outcome))
    return draft.decision(outcome)


def _decide_fresh(
    command: OpenAccount | CheckIn | Grant | Reserve | Capture | Release,
    draft: _Draft,
    snapshot: Snapshot,
    promotions: Promotions,
    request: str,
) -> Outcome | TiergenError:
    match command:
        case OpenAccount():
            return _open_account(command, draft, promotions)
        case CheckIn():
            return _check_in(command, draft, snapshot, promotions, request)
        case Grant():
            if draft.account is None:
                return _not_open(command.account_id)
            draft.expire_due()
            entry_kind = EntryKind(command.kind.value)
            entry = draft.post(entry_kind, command.amount, memo=command.reason)
            return GrantResult(entry=entry, balance=draft.balance())
        case Reserve():
            return _reserve(command, draft)
        case Capture():
            return _capture(command, draft, snapshot)
        case Release():
            return _release(command, draft, snapshot)


def _open_account(
    command: OpenAccount, draft: _Draft, promotions: Promotions
) -> Outcome | TiergenError:
    if draft.account is not None:
        # The account row is the proof the bonus was granted; this call grants nothing.
        draft.expire_due()
        return OpenAccountResult(
            balance=draft.balance(), granted=0, outcome=GrantOutcome.ALREADY_OPEN
        )
    draft.open(command.tenant, command.account_id)
    granted = min(promotions.signup_bonus, promotions.cap)
    if granted > 0:
        draft.post(EntryKind.SIGNUP_BONUS, granted, memo="sign-up bonus")
    return OpenAccountResult(balance=draft.balance(), granted=granted, outcome=GrantOutcome.GRANTED)


def _check_in(
    command: CheckIn,
    draft: _Draft,
    snapshot: Snapshot,
    promotions: Promotions,
    request: str,
) -> Outcome | TiergenError:
    if draft.account is None:
        return _not_open(command.account_id)
    draft.expire_due()
    week = iso_week(command.now)
    week_key = _week_key(command)
    if week_key in snapshot.records:
        return CheckInResult(
            balance=draft.balance(),
            granted=0,
            outcome=GrantOutcome.ALREADY_CHECKED_IN_THIS_WEEK,
            iso_week=week,
            cap_reached=draft.account.promotional_granted >= promotions.cap,
        )
    account = draft.account
    remaining = promotions.cap - account.promotional_granted
    if remaining <= 0:
        return FailedPrecondition(
            "this account has received all the promotional credits it can",
            reason="PROMO_CAP_REACHED",
            metadata={
                "promotional_granted": str(account.promotional_granted),
                "promotional_cap": str(promotions.cap),
            },
        )
    granted = min(promotions.check_in_amount, remaining)
    draft.post(EntryKind.CHECK_IN, granted, memo=f"check-in {week}")
    outcome = CheckInResult(
        balance=draft.balance(),
        granted=granted,
        outcome=GrantOutcome.GRANTED,
        iso_week=week,
        cap_reached=granted == remaining,
    )
    # Only a check-in that granted marks the week: one refused at the cap can be asked again.
    draft.record(week_key, request, encode_outcome(outcome))
    return outcome


def _reserve(command: Reserve, draft: _Draft) -> Outcome | TiergenError:
    if draft.account is None:
        return _not_open(command.account_id)
    draft.expire_due()
    available = draft.account.available
    if command.amount > available:
        return FailedPrecondition(
            f"{command.amount} credits are needed but only {available} are available",
            reason="INSUFFICIENT_CREDITS",
            metadata={"available": str(available), "required": str(command.amount)},
        )
    hold = Hold(
        hold_id=command.hold_id,
        tenant=command.tenant,
        account_id=command.account_id,
        amount=command.amount,
        captured_amount=0,
        status=HoldStatus.OPEN,
        memo=command.memo,
        created_at=command.now,
        expires_at=command.expires_at,
        resolved_at=None,
    )
    draft.put_hold(hold)
    draft.post(EntryKind.RESERVE, command.amount, hold_id=hold.hold_id, memo=command.memo)
    return HoldResult(hold=hold, balance=draft.balance())


def _capture(command: Capture, draft: _Draft, snapshot: Snapshot) -> Outcome | TiergenError:
    hold = _resolvable_hold(command.hold_id, draft, snapshot)
    if isinstance(hold, TiergenError):
        return hold
    if command.amount > hold.amount:
        return FailedPrecondition(
            f"cannot capture {command.amount} credits from a hold of {hold.amount}",
            reason="CAPTURE_EXCEEDS_HOLD",
            metadata={
                "hold_id": hold.hold_id,
                "held": str(hold.amount),
                "requested": str(command.amount),
            },
        )
    draft.post(EntryKind.CAPTURE, command.amount, hold_id=hold.hold_id, memo=hold.memo)
    rest = hold.amount - command.amount
    if rest > 0:
        draft.post(EntryKind.RELEASE, rest, hold_id=hold.hold_id, memo=hold.memo)
    captured = replace(
        hold,
        captured_amount=command.amount,
        status=HoldStatus.CAPTURED,
        resolved_at=command.now,
    )
    draft.put_hold(captured)
    return HoldResult(hold=captured, balance=draft.balance())


def _release(command: Release, draft: _Draft, snapshot: Snapshot) -> Outcome | TiergenError:
    hold = _resolvable_hold(command.hold_id, draft, snapshot)
    if isinstance(hold, TiergenError):
        return hold
    draft.post(EntryKind.RELEASE, hold.amount, hold_id=hold.hold_id, memo=hold.memo)
    released = replace(hold, status=HoldStatus.RELEASED, resolved_at=command.now)
    draft.put_hold(released)
    return HoldResult(hold=released, balance=draft.balance())


def _resolvable_hold(hold_id: str, draft: _Draft, snapshot: Snapshot) -> Hold | TiergenError:
    """The named hold if it is still open; the reason it cannot be resolved otherwise."""
    if snapshot.hold is None or draft.account is None:
        return NotFound("no such hold", reason="HOLD_NOT_FOUND", metadata={"hold_id": hold_id})
    draft.expire_due()
    hold = draft.current(snapshot.hold)
    metadata = {"hold_id": hold_id}
    match hold.status:
        case HoldStatus.OPEN:
            return hold
        case HoldStatus.CAPTURED:
            metadata["captured_amount"] = str(hold.captured_amount)
            return FailedPrecondition(
                "the hold was already captured", reason="HOLD_ALREADY_CAPTURED", metadata=metadata
            )
        case HoldStatus.RELEASED:
            return FailedPrecondition(
                "the hold was already released", reason="HOLD_ALREADY_RELEASED", metadata=metadata
            )
        case HoldStatus.EXPIRED:
            metadata["expires_at"] = hold.expires_at.isoformat()
            return FailedPrecondition(
                "the hold expired and its credits were returned",
                reason="HOLD_EXPIRED",
                metadata=metadata,
            )


def _not_open(account_id: str) -> FailedPrecondition:
    return FailedPrecondition(
        "the account is not open", reason="ACCOUNT_NOT_OPEN", metadata={"account_id": account_id}
    )


def _caller_key(command: OpenAccount | CheckIn | Grant | Reserve | Capture | Release) -> RecordKey:
    if isinstance(command, Capture | Release):
        return RecordKey(command.tenant, f"hold:{command.hold_id}", command.idempotency_key)
    return RecordKey(command.tenant, f"account:{command.account_id}", command.idempotency_key)


def _week_key(command: CheckIn) -> RecordKey:
    """The record that makes a week's check-in grant once whatever key asks for it.

    (Accounts opened before the account row alone said so also have an `open` record in the
    same scope; nothing reads it now.)
    """
    scope = f"account-event:{command.account_id}"
    return RecordKey(command.tenant, scope, f"check-in/{iso_week(command.now)}")


def _fingerprint(command: OpenAccount | CheckIn | Grant | Reserve | Capture | Release) -> str:
    # The tenant is left out: a record is found only within its tenant anyway, and records
    # written before tenants keep matching their retries.
    match command:
        case OpenAccount():
            return fingerprint("open_account", {"account_id": command.account_id})
        case CheckIn():
            return fingerprint("check_in", {"account_id": command.account_id})
        case Grant():
            fields: dict[str, object] = {
                "account_id": command.account_id,
                "amount": command.amount,
                "kind": command.kind.value,
                "reason": command.reason,
            }
            return fingerprint("grant", fields)
        case Reserve():
            fields = {
                "account_id": command.account_id,
                "amount": command.amount,
                "ttl_seconds": command.ttl_seconds,
                "memo": command.memo,
            }
            return fingerprint("reserve", fields)
        case Capture():
            return fingerprint("capture", {"hold_id": command.hold_id, "amount": command.amount})
        case Release():
            return fingerprint("release", {"hold_id": command.hold_id})


# Which books each kind of entry moves credits between, and how it changes the account.
_SOURCES: dict[EntryKind, str] = {
    EntryKind.SIGNUP_BONUS: SystemBook.PROMOTIONS.value,
    EntryKind.CHECK_IN: SystemBook.PROMOTIONS.value,
    EntryKind.PURCHASE: SystemBook.PURCHASES.value,
    EntryKind.ADJUSTMENT: SystemBook.ADJUSTMENTS.value,
}


def _books(kind: EntryKind, account_id: str) -> tuple[str, str]:
    if kind in _SOURCES:
        return _SOURCES[kind], available_book(account_id)
    match kind:
        case EntryKind.RESERVE:
            return available_book(account_id), held_book(account_id)
        case EntryKind.CAPTURE:
            return held_book(account_id), SystemBook.CONSUMED.value
        case _:
            return held_book(account_id), available_book(account_id)


#: Which of an account's balances each kind of entry raises (+1) or lowers (-1), by its amount.
_MOVES: dict[EntryKind, dict[str, int]] = {
    EntryKind.SIGNUP_BONUS: {"available": 1, "promotional_granted": 1},
    EntryKind.CHECK_IN: {"available": 1, "promotional_granted": 1},
    EntryKind.PURCHASE: {"available": 1, "purchased": 1},
    EntryKind.ADJUSTMENT: {"available": 1, "adjusted": 1},
    EntryKind.RESERVE: {"available": -1, "held": 1},
    EntryKind.CAPTURE: {"held": -1, "consumed": 1},
    EntryKind.RELEASE: {"held": -1, "available": 1},
    EntryKind.EXPIRE: {"held": -1, "available": 1},
}


def _apply(account: Account, kind: EntryKind, amount: int) -> Account:
    """The account after an entry of `kind` moved `amount` credits, with its next sequence."""
    moved = {name: getattr(account, name) + sign * amount for name, sign in _MOVES[kind].items()}
    return replace(account, last_sequence=account.last_sequence + 1, **moved)


class _Draft:
    """The changes one command is building up, applied to its copy of the account."""

    def __init__(self, snapshot: Snapshot, now: datetime, cap: int) -> None:
        self.account = snapshot.account
        self._previous_sequence = None if self.account is None else self.account.last_sequence
        self._expired_holds = snapshot.expired_holds
        self._now = now
        self._cap = cap
        self._holds: dict[str, Hold] = {}
        self._entries: list[Entry] = []
        self.records: list[StoredRecord] = []

    def open(self, tenant: str, account_id: str) -> None:
        self.account = Account(
            tenant=tenant,
            account_id=account_id,
            available=0,
            held=0,
            promotional_granted=0,
            purchased=0,
            adjusted=0,
            consumed=0,
            last_sequence=0,
            opened_at=self._now,
        )

    def balance(self) -> Balance:
        if self.account is None:
            raise RuntimeError("the draft has no account")
        return self.account.balance(self._cap)

    def post(self, kind: EntryKind, amount: int, *, hold_id: str | None = None, memo: str) -> Entry:
        """Move `amount` credits as `kind` says and append the entry that records it."""
        if self.account is None:
            raise RuntimeError("the draft has no account")
        account = _apply(self.account, kind, amount)
        source, destination = _books(kind, account.account_id)
        entry = Entry(
            tenant=account.tenant,
            account_id=account.account_id,
            sequence=account.last_sequence,
            kind=kind,
            amount=amount,
            source=source,
            destination=destination,
            hold_id=hold_id,
            memo=memo,
            created_at=self._now,
            available_after=account.available,
            held_after=account.held,
        )
        self.account = account
        self._entries.append(entry)
        return entry

    def put_hold(self, hold: Hold) -> None:
        self._holds[hold.hold_id] = hold

    def current(self, hold: Hold) -> Hold:
        """The hold as this draft leaves it."""
        return self._holds.get(hold.hold_id, hold)

    def expire_due(self) -> tuple[Hold, ...]:
        """Return the credits of every open hold past its expiry (lazily, on access)."""
        expired = []
        for hold in self._expired_holds:
            if self.current(hold).status is not HoldStatus.OPEN or hold.expires_at > self._now:
                continue
            self.post(EntryKind.EXPIRE, hold.amount, hold_id=hold.hold_id, memo=hold.memo)
            done = replace(hold, status=HoldStatus.EXPIRED, resolved_at=self._now)
            self.put_hold(done)
            expired.append(done)
        return tuple(expired)

    def record(self, key: RecordKey, request: str, outcome: str) -> None:
        self.records.append(StoredRecord(key, request, outcome))

    def decision(self, outcome: Outcome | TiergenError) -> Decision:
        changed = self.account if self._entries or self._previous_sequence is None else None
        return Decision(
            changes=Changes(
                account=changed,
                previous_sequence=self._previous_sequence,
                holds=tuple(self._holds.values()),
                entries=tuple(self._entries),
                records=tuple(self.records),
                now=self._now,
            ),
            outcome=outcome,
        )
