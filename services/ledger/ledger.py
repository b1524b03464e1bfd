"""The ledger's public face: validated, idempotent credit operations over SQLite or PostgreSQL.

Every method names the caller's tenant first: accounts are (tenant, account id), and nothing of
another tenant is ever read, changed or revealed (its holds are HOLD_NOT_FOUND). Every mutating
method takes an idempotency key (see `services.ledger.rules` for how keys are scoped).
Repeating a request with its key returns the original answer with `replayed=True`, or raises
the original failure again; the same key with a different request raises AlreadyExists
(reason IDEMPOTENCY_KEY_REUSED). Errors are those of `services.runtime.errors`:

- InvalidArgument (with the field) for malformed input; never recorded, the request never ran.
  Tenants, ids, keys and texts follow `services.runtime.identifiers` on every store, and no message
  repeats more than an excerpt of what the caller sent.
- FailedPrecondition with reason INSUFFICIENT_CREDITS (metadata `available`, `required`),
  PROMO_CAP_REACHED, HOLD_EXPIRED, HOLD_ALREADY_CAPTURED, HOLD_ALREADY_RELEASED,
  CAPTURE_EXCEEDS_HOLD or ACCOUNT_NOT_OPEN (a mutation of an account never opened).
- NotFound with reason ACCOUNT_NOT_FOUND (reads of an unknown account) or HOLD_NOT_FOUND.
- Aborted after internal retries of a write conflict; Unavailable when the database is down.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import re
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TypeVar

import structlog
from prometheus_client import Counter

from services.ledger import rules
from services.ledger.invariants import check_invariants
from services.ledger.model import (
    Balance,
    CheckInResult,
    Clock,
    EntryKind,
    EntryPage,
    ExpiryResult,
    GrantKind,
    GrantResult,
    Hold,
    HoldResult,
    HoldStatus,
    InvariantCheck,
    OpenAccountResult,
    Outcome,
    SystemClock,
    require_amount,
    require_text,
    to_micros,
)
from services.ledger.postgres_store import PostgresStore
from services.ledger.settings import LedgerSettings
from services.ledger.sqlite_store import SqliteStore
from services.ledger.store import EntryQuery, LedgerStore
from services.runtime.collectors import LoopGauge
from services.runtime.errors import (
    Aborted,
    Internal,
    InvalidArgument,
    NotFound,
    TiergenError,
    Unavailable,
)
from services.runtime.identifiers import (
    excerpt,
    require_account_id,
    require_id,
    require_idempotency_key,
    require_tenant,
)

__all__ = ["DEFAULT_PAGE_SIZE", "HOLD_ID_PATTERN", "MAX_PAGE_SIZE", "Ledger"]

DEFAULT_PAGE_SIZE = 50
#: As the contract (ListEntriesRequest.page_size) promises.
MAX_PAGE_SIZE = 500
HOLD_ID_PATTERN = re.compile(r"hold_[0-9a-f]{32}")
#: Accounts whose overdue holds one sweep round returns, concurrently.
_SWEEP_ROUND = 64

_log = structlog.get_logger("tiergen.ledger")

_CREDITS = Counter(
    "tiergen_ledger_credits_total",
    "Credits moved by committed entries, by entry kind (capture: credits spent).",
    ["kind"],
)
_CREDITS_BY_KIND = {kind: _CREDITS.labels(kind.value.lower()) for kind in EntryKind}
_HOLDS_EXPIRED = Counter(
    "tiergen_ledger_holds_expired",
    "Holds that expired unsettled, their credits returned (by the sweeper or on access).",
)
#: Read from the database at each scrape, so every replica reports the same, current figure.
_HOLDS_OPEN = LoopGauge(
    "tiergen_ledger_holds_open",
    "Holds neither captured nor released nor expired (open, not past their expiry), over all"
    " tenants.",
)

_R = TypeVar("_R", OpenAccountResult, CheckInResult, HoldResult, GrantResult, ExpiryResult)


async def _open_store(settings: LedgerSettings) -> LedgerStore:
    """The store the DSN names, its schema current and ready."""
    path = settings.sqlite_path
    if path is not None:
        return await SqliteStore.open(path, lock_timeout_seconds=settings.lock_timeout_seconds)
    return await PostgresStore.open(
        settings.dsn,
        pool_size=settings.pool_size,
        timeout_seconds=settings.db_timeout_seconds,
        lock_timeout_seconds=settings.lock_timeout_seconds,
    )


class Ledger:
    """Accounts, promotions, holds and history of money-like credits."""

    def __init__(self, store: LedgerStore, settings: LedgerSettings, clock: Clock) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock
        self._promotions = rules.Promotions(
            signup_bonus=settings.signup_bonus,
            check_in_amount=settings.checkin_amount,
            cap=settings.promo_cap,
        )

    @classmethod
    async def open(cls, settings: LedgerSettings, clock: Clock | None = None) -> Ledger:
        """Open the configured store: a SQLite file upgraded to the current schema, or a PostgreSQL
        database whose schema must already be current (SchemaNotCurrent otherwise); raises
        Unavailable if it cannot be reached."""
        clock = clock or SystemClock()
        ledger = cls(await _open_store(settings), settings, clock)
        _HOLDS_OPEN.track(ledger, ledger.count_open_holds)
        return ledger

    async def close(self) -> None:
        _HOLDS_OPEN.forget(self)
        await self._store.close()

    async def count_open_holds(self) -> int:
        """Holds of every tenant still open and not past their expiry (an index's count: the
        partial index of open holds by expiry)."""
        now = to_micros(self._clock.now())
        rows = await self._store.audit(
            f"SELECT count(*) FROM holds WHERE status = 'open' AND expires_at_us > {now:d}"
        )
        return int(rows[0][0])

    async def open_account(
        self, tenant: str, account_id: str, idempotency_key: str
    ) -> OpenAccountResult:
        """Open an account and grant its sign-up bonus, once; opening it again (a new key) grants
        nothing and answers ALREADY_OPEN with the current balance."""
        command = rules.OpenAccount(
            tenant=require_tenant(tenant),
            account_id=require_account_id(account_id),
            idempotency_key=require_idempotency_key(idempotency_key),
            now=self._clock.now(),
        )
        return await self._execute(command, OpenAccountResult)

    async def check_in(self, tenant: str, account_id: str, idempotency_key: str) -> CheckInResult:
        """Grant the weekly credit, once per ISO week, up to the lifetime promotional cap; a second
        check-in in the week (a new key) answers ALREADY_CHECKED_IN_THIS_WEEK, granting nothing."""
        command = rules.CheckIn(
            tenant=require_tenant(tenant),
            account_id=require_account_id(account_id),
            idempotency_key=require_idempotency_key(idempotency_key),
            now=self._clock.now(),
        )
        return await self._execute(command, CheckInResult)

    async def grant(
        self,
        tenant: str,
        account_id: str,
        amount: int,
        kind: GrantKind,
        reason: str,
        idempotency_key: str,
    ) -> GrantResult:
        """Add purchased credits or an operator's adjustment, with the reason for it."""
        if not isinstance(kind, GrantKind):
            raise InvalidArgument("kind must be PURCHASE or ADJUSTMENT", field="kind")
        command = rules.Grant(
            tenant=require_tenant(tenant),
            account_id=require_account_id(account_id),
            amount=require_amount(amount),
            kind=kind,
            reason=require_text(reason, "reason", required=True),
            idempotency_key=require_idempotency_key(idempotency_key),
            now=self._clock.now(),
        )
        return await self._execute(command, GrantResult)

    async def reserve(
        self,
        tenant: str,
        account_id: str,
        amount: int,
        idempotency_key: str,
        *,
        ttl_seconds: int | None = None,
        memo: str = "",
    ) -> HoldResult:
        """Hold `amount` available credits until captured, released or expired."""
        tenant = require_tenant(tenant)
        ttl = self._settings.default_hold_ttl_seconds if ttl_seconds is None else ttl_seconds
        maximum = self._settings.max_hold_ttl_seconds
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 < ttl <= maximum:
            raise InvalidArgument(
                f"ttl_seconds must be a whole number from 1 to {maximum}", field="ttl_seconds"
            )
        now = self._clock.now()
        command = rules.Reserve(
            tenant=tenant,
            account_id=require_account_id(account_id),
            hold_id=f"hold_{secrets.token_hex(16)}",
            amount=require_amount(amount),
            ttl_seconds=ttl_seconds,
            expires_at=now + timedelta(seconds=ttl),
            memo=require_text(memo, "memo", required=False),
            idempotency_key=require_idempotency_key(idempotency_key),
            now=now,
        )
        return await self._execute(command, HoldResult)

    async def capture(
        self, tenant: str, hold_id: str, amount: int, idempotency_key: str
    ) -> HoldResult:
        """Spend up to the held amount; the rest goes back to available."""
        command = rules.Capture(
            tenant=require_tenant(tenant),
            hold_id=_require_hold_id(hold_id),
            amount=require_amount(amount),
            idempotency_key=require_idempotency_key(idempotency_key),
            now=self._clock.now(),
        )
        return await self._execute(command, HoldResult)

    async def release(self, tenant: str, hold_id: str, idempotency_key: str) -> HoldResult:
        """Return all of a hold's credits to available."""
        command = rules.Release(
            tenant=require_tenant(tenant),
            hold_id=_require_hold_id(hold_id),
            idempotency_key=require_idempotency_key(idempotency_key),
            now=self._clock.now(),
        )
        return await self._execute(command, HoldResult)

    async def get_balance(self, tenant: str, account_id: str) -> Balance:
        require_tenant(tenant)
        require_account_id(account_id)
        return await self._current_balance(tenant, account_id, self._clock.now())

    async def get_hold(self, tenant: str, hold_id: str) -> Hold:
        require_tenant(tenant)
        hold = await self._store.hold(tenant, _require_hold_id(hold_id))
        if hold is None:
            raise NotFound("no such hold", reason="HOLD_NOT_FOUND", metadata={"hold_id": hold_id})
        now = self._clock.now()
        if hold.status is not HoldStatus.OPEN or hold.expires_at > now:
            return hold
        await self._execute(rules.ExpireHolds(tenant, hold.account_id, now), ExpiryResult)
        return await self._store.hold(tenant, hold_id) or hold

    async def list_entries(
        self,
        tenant: str,
        account_id: str,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        kinds: Sequence[EntryKind] = (),
        page_size: int = 0,
        page_token: str = "",
    ) -> EntryPage:
        """An account's entries, oldest first, each with the balance right after it.

        `start` is inclusive and `end` exclusive; `page_size` 0 means the default. The token
        only continues a listing of the same account with the same filters.
        """
        require_tenant(tenant)
        require_account_id(account_id)
        if start is not None and end is not None and end <= start:
            raise InvalidArgument("end must be after start", field="end")
        if any(not isinstance(kind, EntryKind) for kind in kinds):
            raise InvalidArgument("kinds must be entry kinds", field="kinds")
        if isinstance(page_size, bool) or not isinstance(page_size, int):
            raise InvalidArgument("page_size must be a whole number", field="page_size")
        if not 0 <= page_size <= MAX_PAGE_SIZE:
            raise InvalidArgument(f"page_size must be 0 to {MAX_PAGE_SIZE}", field="page_size")
        unique_kinds = tuple(sorted(set(kinds)))
        query = EntryQuery(
            tenant=tenant,
            account_id=account_id,
            after_sequence=0,
            start_micros=None if start is None else _micros(start, "start"),
            end_micros=None if end is None else _micros(end, "end"),
            kinds=unique_kinds,
            limit=(page_size or DEFAULT_PAGE_SIZE) + 1,
        )
        listing = _listing_digest(query)
        if page_token:
            query = EntryQuery(
                tenant=query.tenant,
                account_id=query.account_id,
                after_sequence=_read_page_token(page_token, listing),
                start_micros=query.start_micros,
                end_micros=query.end_micros,
                kinds=query.kinds,
                limit=query.limit,
            )
        await self._current_balance(tenant, account_id, self._clock.now())
        found = await self._store.entries(query)
        if len(found) < query.limit:
            return EntryPage(entries=tuple(found), next_page_token="")
        page = tuple(found[:-1])
        return EntryPage(entries=page, next_page_token=_page_token(page[-1].sequence, listing))

    async def sweep_expired(self, now: datetime | None = None) -> int:
        """Return the credits of every open hold past its expiry, of every tenant; the number of
        holds returned."""
        moment = now or self._clock.now()
        returned = 0
        while True:
            accounts = await self._store.accounts_with_expired_holds(moment, _SWEEP_ROUND)
            if not accounts:
                return returned
            results = await asyncio.gather(
                *(
                    self._execute(rules.ExpireHolds(tenant, account_id, moment), ExpiryResult)
                    for tenant, account_id in accounts
                )
            )
            expired_now = sum(len(result.expired) for result in results)
            if expired_now == 0:
                # Another ledger process swept these accounts first.
                return returned
            returned += expired_now

    async def run_sweeper(self) -> None:
        """Sweep every `sweep_interval_seconds` until cancelled."""
        interval = self._settings.sweep_interval_seconds
        while True:
            await asyncio.sleep(interval)
            try:
                returned = await self.sweep_expired()
            except (Unavailable, Aborted) as error:
                # The database being down or busy only delays the sweep to the next round.
                _log.warning(
                    "expiry sweep skipped",
                    error=error.message,
                    code=error.code,
                    next_sweep_in_seconds=interval,
                )
                continue
            if returned:
                _log.info("expired holds returned", holds=returned)

    async def verify(self, *, sweep: bool = True) -> list[InvariantCheck]:
        """Check every invariant of the whole ledger (every tenant), after a sweep unless told not
        to."""
        now = self._clock.now()
        if sweep:
            await self.sweep_expired(now)
        return await check_invariants(self._store, now)

    async def _current_balance(self, tenant: str, account_id: str, now: datetime) -> Balance:
        """The balance, after lazily returning the account's overdue holds if it has any."""
        account, overdue = await self._store.account(tenant, account_id, now)
        if account is None:
            raise NotFound(
                "no such account", reason="ACCOUNT_NOT_FOUND", metadata={"account_id": account_id}
            )
        if overdue:
            expiry = await self._execute(rules.ExpireHolds(tenant, account_id, now), ExpiryResult)
            if expiry.balance is not None:
                return expiry.balance
        return account.balance(self._settings.promo_cap)

    async def _execute(self, command: rules.Command, answer: type[_R]) -> _R:
        decision = await self._store.transact(
            rules.lookup(command),
            lambda snapshot: rules.decide(command, snapshot, self._promotions),
        )
        for entry in decision.changes.entries:
            _CREDITS_BY_KIND[entry.kind].inc(entry.amount)
        expired = sum(hold.status is HoldStatus.EXPIRED for hold in decision.changes.holds)
        if expired:
            _HOLDS_EXPIRED.inc(expired)
        return _expect(decision.outcome, answer)


def _expect(outcome: Outcome | TiergenError, answer: type[_R]) -> _R:
    if isinstance(outcome, TiergenError):
        raise outcome
    if not isinstance(outcome, answer):
        raise Internal(f"expected a {answer.__name__}, the rules gave a {type(outcome).__name__}")
    return outcome


def _require_hold_id(hold_id: str) -> str:
    # The shape every id shares first, then the ledger's own: no other string names a hold.
    require_id(hold_id, "hold_id")
    if not HOLD_ID_PATTERN.fullmatch(hold_id):
        raise InvalidArgument(
            f"hold_id {excerpt(hold_id)} is not a hold id (hold_ and 32 lowercase hex digits)",
            field="hold_id",
            reason="MALFORMED_ID",
        )
    return hold_id


def _micros(moment: datetime, field: str) -> int:
    if moment.tzinfo is None:
        raise InvalidArgument("times must carry a timezone", field=field)
    return to_micros(moment)


def _listing_digest(query: EntryQuery) -> str:
    """What a page token is bound to: the account (tenant and id) and filters of its listing."""
    listing = [
        query.tenant,
        query.account_id,
        query.start_micros,
        query.end_micros,
        list(query.kinds),
    ]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]


def _page_token(after_sequence: int, listing: str) -> str:
    text = json.dumps({"after": after_sequence, "listing": listing})
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _read_page_token(token: str, listing: str) -> int:
    try:
        padded = token + "=" * (-len(token) % 4)
        body = json.loads(base64.urlsafe_b64decode(padded.encode()))
        after = body["after"]
        matches = body["listing"] == listing
    except (binascii.Error, ValueError, TypeError, KeyError, UnicodeDecodeError):
        raise InvalidArgument("not a page token of this ledger", field="page_token") from None
    if not isinstance(after, int) or isinstance(after, bool) or after < 0:
        raise InvalidArgument("not a page token of this ledger", field="page_token")
    if not matches:
        raise InvalidArgument(
            "the page token belongs to a listing with other filters", field="page_token"
        )
    return after
