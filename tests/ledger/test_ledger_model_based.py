"""Model-based test: random sequences of ledger commands against an in-memory model of the rules.

Two tenants with the same account ids share the ledger, and each counts its idempotency keys
from zero, so the same key names requests of both: whatever one tenant does must show in none
of the other's answers.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import tempfile
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from services.ledger.ledger import Ledger
from services.ledger.migrations import SCHEMA as LEDGER_SCHEMA
from services.ledger.model import Balance, GrantKind, GrantOutcome, HoldStatus, iso_week
from services.ledger.settings import LedgerSettings
from services.runtime.errors import AlreadyExists, TiergenError
from services.runtime.migrations import upgrade
from tests.postgres import with_search_path

T = TypeVar("T")
TENANTS = ["acme", "globex"]
ACCOUNTS = ["ann", "ben", "cy"]
#: An account is (tenant, account id).
Account = tuple[str, str]
#: Commands mostly name the accounts opened at the start, sometimes the one that may not be open.
ACCOUNT_KEYS = st.tuples(
    st.sampled_from(TENANTS), st.sampled_from(["ann", "ben", "ann", "ben", "cy"])
)
SIGNUP, CHECK_IN, CAP = 400, 250, 840
START = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
NO_HOLD = "hold_" + "0" * 32


@dataclass
class ModelAccount:
    available: int = SIGNUP
    held: int = 0
    promotional: int = SIGNUP
    purchased: int = 0
    adjusted: int = 0
    consumed: int = 0

    def balance(self, account: Account) -> Balance:
        return Balance(
            tenant=account[0],
            account_id=account[1],
            available=self.available,
            held=self.held,
            promotional_granted=self.promotional,
            promotional_cap=CAP,
            purchased=self.purchased,
            adjusted=self.adjusted,
            consumed=self.consumed,
        )


@dataclass
class ModelHold:
    account: Account
    amount: int
    expires_at: datetime
    status: HoldStatus = HoldStatus.OPEN
    captured: int = 0


@dataclass(frozen=True)
class Call:
    """A command as it was sent, and what it answered: what a retry must answer again."""

    operation: str
    #: The tenant first, as every ledger command takes them.
    arguments: tuple[Any, ...]
    keywords: dict[str, Any]
    #: ("account" or "hold", tenant, account or hold id).
    scope: tuple[str, str, str]
    key: str
    outcome: Any


@dataclass
class Model:
    """The ledger's rules, restated as simply as possible."""

    accounts: dict[Account, ModelAccount] = field(default_factory=dict)
    holds: dict[str, ModelHold] = field(default_factory=dict)
    opened: dict[Account, Any] = field(default_factory=dict)
    check_ins: dict[tuple[Account, str], Any] = field(default_factory=dict)

    def expire_due(self, key: Account, now: datetime) -> int:
        account = self.accounts[key]
        expired = 0
        for hold in self.holds.values():
            due = hold.status is HoldStatus.OPEN and hold.expires_at <= now
            if due and hold.account == key:
                hold.status = HoldStatus.EXPIRED
                account.held -= hold.amount
                account.available += hold.amount
                expired += 1
        return expired


class ManualClock:
    def __init__(self, start: datetime) -> None:
        self.moment = start

    def now(self) -> datetime:
        return self.moment


class LedgerMachine(RuleBasedStateMachine):
    """Drives one fresh ledger per example; subclasses say where its database comes from."""

    holds = Bundle("holds")

    def new_database(self) -> tuple[str, Callable[[], None]]:
        """A DSN for a fresh database, and how to remove it afterwards."""
        raise NotImplementedError

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.clock = ManualClock(START)
        self.dsn, self.cleanup = self.new_database()
        ledger_settings = LedgerSettings(
            dsn=self.dsn, checkin_amount=CHECK_IN, default_hold_ttl_seconds=60, pool_size=2
        )
        self.ledger = self.run(Ledger.open(ledger_settings, self.clock))
        self.model = Model()
        self.keys = {tenant: itertools.count() for tenant in TENANTS}
        self.calls: list[Call] = []

    def run(self, awaitable: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(awaitable)

    def attempt(self, awaitable: Coroutine[Any, Any, Any]) -> Any:
        try:
            return self.run(awaitable)
        except TiergenError as error:
            return error

    def new_key(self, tenant: str) -> str:
        """A key new to `tenant`; the other tenant uses (or will use) the same one."""
        return f"key-{next(self.keys[tenant])}"

    def remember(
        self,
        operation: str,
        arguments: tuple[Any, ...],
        scope: tuple[str, str, str],
        outcome: Any,
        **keywords: Any,
    ) -> None:
        self.calls.append(Call(operation, arguments, keywords, scope, arguments[-1], outcome))

    def teardown(self) -> None:
        try:
            checks = self.run(self.ledger.verify())
            assert [check.name for check in checks if not check.ok] == []
        finally:
            self.run(self.ledger.close())
            self.runner.close()
            self.cleanup()

    def expect_error(
        self, outcome: Any, reason: str, metadata: dict[str, str] | None = None
    ) -> None:
        assert isinstance(outcome, TiergenError), outcome
        assert outcome.reason == reason
        if metadata is not None:
            assert outcome.metadata == metadata

    def not_open(self, outcome: Any, key: Account) -> None:
        self.expect_error(outcome, "ACCOUNT_NOT_OPEN", {"account_id": key[1]})

    @initialize()
    def open_most_accounts(self) -> None:
        # Most commands need an open account; the last one opens only if a rule opens it.
        for tenant in TENANTS:
            for account_id in ACCOUNTS[:-1]:
                self.open_account((tenant, account_id))

    @rule(account=ACCOUNT_KEYS)
    def open_account(self, account: Account) -> None:
        key = self.new_key(account[0])
        outcome = self.attempt(self.ledger.open_account(*account, key))
        if account in self.model.opened:
            # A new key on an open account: nothing granted, the balance as it is now.
            self.model.expire_due(account, self.clock.now())
            assert (outcome.granted, outcome.outcome) == (0, GrantOutcome.ALREADY_OPEN)
        else:
            self.model.accounts[account] = ModelAccount()
            assert (outcome.granted, outcome.outcome) == (SIGNUP, GrantOutcome.GRANTED)
            self.model.opened[account] = outcome
        assert not outcome.replayed
        assert outcome.balance == self.model.accounts[account].balance(account)
        self.remember("open_account", (*account, key), ("account", *account), outcome)

    @rule(account=ACCOUNT_KEYS)
    def check_in(self, account: Account) -> None:
        key = self.new_key(account[0])
        now = self.clock.now()
        outcome = self.attempt(self.ledger.check_in(*account, key))
        week = (account, iso_week(now))
        if account not in self.model.accounts:
            self.not_open(outcome, account)
        elif week in self.model.check_ins:
            self.model.expire_due(account, now)
            model = self.model.accounts[account]
            assert (outcome.granted, outcome.replayed) == (0, False)
            assert outcome.outcome is GrantOutcome.ALREADY_CHECKED_IN_THIS_WEEK
            assert (outcome.iso_week, outcome.cap_reached) == (week[1], model.promotional == CAP)
            assert outcome.balance == model.balance(account)
        else:
            self.model.expire_due(account, now)
            model = self.model.accounts[account]
            remaining = CAP - model.promotional
            if remaining == 0:
                self.expect_error(outcome, "PROMO_CAP_REACHED")
            else:
                granted = min(CHECK_IN, remaining)
                model.available += granted
                model.promotional += granted
                assert (outcome.granted, outcome.cap_reached) == (granted, granted == remaining)
                assert outcome.outcome is GrantOutcome.GRANTED
                assert outcome.balance == model.balance(account)
                self.model.check_ins[week] = outcome
        self.remember("check_in", (*account, key), ("account", *account), outcome)

    @rule(
        account=ACCOUNT_KEYS,
        amount=st.integers(1, 120),
        kind=st.sampled_from(GrantKind),
    )
    def grant(self, account: Account, amount: int, kind: GrantKind) -> None:
        key = self.new_key(account[0])
        arguments = (*account, amount, kind, "top-up", key)
        outcome = self.attempt(self.ledger.grant(*arguments))
        if account not in self.model.accounts:
            self.not_open(outcome, account)
        else:
            self.model.expire_due(account, self.clock.now())
            model = self.model.accounts[account]
            model.available += amount
            if kind is GrantKind.PURCHASE:
                model.purchased += amount
            else:
                model.adjusted += amount
            assert outcome.balance == model.balance(account)
            assert (outcome.entry.tenant, outcome.entry.amount) == (account[0], amount)
        self.remember("grant", arguments, ("account", *account), outcome)

    @rule(
        target=holds,
        account=ACCOUNT_KEYS,
        amount=st.integers(1, 300),
        ttl_seconds=st.sampled_from([None, 10, 3600]),
    )
    def reserve(self, account: Account, amount: int, ttl_seconds: int | None) -> Any:
        key = self.new_key(account[0])
        now = self.clock.now()
        outcome = self.attempt(self.ledger.reserve(*account, amount, key, ttl_seconds=ttl_seconds))
        scope = ("account", *account)
        arguments = (*account, amount, key)
        self.remember("reserve", arguments, scope, outcome, ttl_seconds=ttl_seconds)
        if account not in self.model.accounts:
            self.not_open(outcome, account)
            return multiple()
        self.model.expire_due(account, now)
        model = self.model.accounts[account]
        if amount > model.available:
            self.expect_error(
                outcome,
                "INSUFFICIENT_CREDITS",
                {"available": str(model.available), "required": str(amount)},
            )
            return multiple()
        model.available -= amount
        model.held += amount
        ttl = timedelta(seconds=60 if ttl_seconds is None else ttl_seconds)
        self.model.holds[outcome.hold.hold_id] = ModelHold(account, amount, now + ttl)
        assert outcome.hold.tenant == account[0]
        assert outcome.balance == model.balance(account)
        return outcome.hold.hold_id

    def resolvable(
        self, tenant: str, hold_id: str, outcome: Any, now: datetime
    ) -> ModelHold | None:
        """The model's hold if `tenant` can resolve it; checks the failure otherwise."""
        hold = self.model.holds[hold_id]
        if hold.account[0] != tenant:
            # Another tenant's hold is not there for this one, and nothing of it moves.
            self.expect_error(outcome, "HOLD_NOT_FOUND", {"hold_id": hold_id})
            return None
        self.model.expire_due(hold.account, now)
        reasons = {
            HoldStatus.CAPTURED: "HOLD_ALREADY_CAPTURED",
            HoldStatus.RELEASED: "HOLD_ALREADY_RELEASED",
            HoldStatus.EXPIRED: "HOLD_EXPIRED",
        }
        if hold.status in reasons:
            self.expect_error(outcome, reasons[hold.status])
            return None
        return hold

    @rule(tenant=st.sampled_from(TENANTS), hold_id=holds, amount=st.integers(1, 320))
    def capture(self, tenant: str, hold_id: str, amount: int) -> None:
        key = self.new_key(tenant)
        outcome = self.attempt(self.ledger.capture(tenant, hold_id, amount, key))
        hold = self.resolvable(tenant, hold_id, outcome, self.clock.now())
        if hold is not None:
            model = self.model.accounts[hold.account]
            if amount > hold.amount:
                self.expect_error(outcome, "CAPTURE_EXCEEDS_HOLD")
            else:
                hold.status, hold.captured = HoldStatus.CAPTURED, amount
                model.held -= hold.amount
                model.consumed += amount
                model.available += hold.amount - amount
                assert outcome.balance == model.balance(hold.account)
                assert outcome.hold.captured_amount == amount
        scope = ("hold", tenant, hold_id)
        self.remember("capture", (tenant, hold_id, amount, key), scope, outcome)

    @rule(account=ACCOUNT_KEYS, small=st.integers(1, 20), large=st.integers(40, 150))
    def capture_more_than_the_hold_less_than_all_held(
        self, account: Account, small: int, large: int
    ) -> None:
        """Two open holds on one account, and a capture from the smaller one of more than it
        holds but less than the account holds in all: only the hold's own amount counts."""
        first = self.reserve(account, small, None)
        second = self.reserve(account, large, None)
        if isinstance(first, str) and isinstance(second, str):
            self.capture(account[0], first, small + large // 2)

    @rule(tenant=st.sampled_from(TENANTS), hold_id=holds)
    def release(self, tenant: str, hold_id: str) -> None:
        key = self.new_key(tenant)
        outcome = self.attempt(self.ledger.release(tenant, hold_id, key))
        hold = self.resolvable(tenant, hold_id, outcome, self.clock.now())
        if hold is not None:
            model = self.model.accounts[hold.account]
            hold.status = HoldStatus.RELEASED
            model.held -= hold.amount
            model.available += hold.amount
            assert outcome.balance == model.balance(hold.account)
        self.remember("release", (tenant, hold_id, key), ("hold", tenant, hold_id), outcome)

    @rule(tenant=st.sampled_from(TENANTS), capture=st.booleans())
    def resolve_an_unknown_hold(self, tenant: str, capture: bool) -> None:
        key = self.new_key(tenant)
        scope = ("hold", tenant, NO_HOLD)
        if capture:
            outcome = self.attempt(self.ledger.capture(tenant, NO_HOLD, 5, key))
            self.remember("capture", (tenant, NO_HOLD, 5, key), scope, outcome)
        else:
            outcome = self.attempt(self.ledger.release(tenant, NO_HOLD, key))
            self.remember("release", (tenant, NO_HOLD, key), scope, outcome)
        self.expect_error(outcome, "HOLD_NOT_FOUND", {"hold_id": NO_HOLD})

    @rule(seconds=st.sampled_from([1, 9, 59, 600, 3 * 86_400, 7 * 86_400, 14 * 86_400]))
    def advance_clock(self, seconds: int) -> None:
        self.clock.moment += timedelta(seconds=seconds)

    @rule()
    def sweep(self) -> None:
        now = self.clock.now()
        expected = sum(self.model.expire_due(account, now) for account in self.model.accounts)
        assert self.run(self.ledger.sweep_expired()) == expected

    @precondition(lambda self: self.calls)
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        call = data.draw(st.sampled_from(self.calls))
        command = getattr(self.ledger, call.operation)
        outcome = self.attempt(command(*call.arguments, **call.keywords))
        if isinstance(call.outcome, TiergenError):
            assert type(outcome) is type(call.outcome)
            assert (outcome.reason, outcome.metadata) == (
                call.outcome.reason,
                call.outcome.metadata,
            )
        else:
            assert outcome == replace(call.outcome, replayed=True)

    @precondition(lambda self: self.calls)
    @rule(data=st.data())
    def reuse_key_for_another_request(self, data: st.DataObject) -> None:
        call = data.draw(st.sampled_from(self.calls))
        kind, tenant, name = call.scope
        attempt: Coroutine[Any, Any, Any]
        if kind == "account":
            attempt = self.ledger.grant(
                tenant, name, 1, GrantKind.ADJUSTMENT, "reused key", call.key
            )
        elif call.operation == "release":
            attempt = self.ledger.capture(tenant, name, 1, call.key)
        else:
            attempt = self.ledger.release(tenant, name, call.key)
        outcome = self.attempt(attempt)
        assert isinstance(outcome, AlreadyExists)
        assert outcome.reason == "IDEMPOTENCY_KEY_REUSED"

    @invariant()
    def balances_match_the_model(self) -> None:
        now = self.clock.now()
        for account, model in self.model.accounts.items():
            self.model.expire_due(account, now)
            assert self.run(self.ledger.get_balance(*account)) == model.balance(account)


@pytest.mark.parametrize(
    ("store", "examples"),
    [("sqlite", 60), pytest.param("postgres", 15, marks=pytest.mark.postgres)],
)
def test_the_ledger_behaves_like_its_model(request, store, examples):
    schemas = request.getfixturevalue("postgres_schemas") if store == "postgres" else None

    class Machine(LedgerMachine):
        def new_database(self) -> tuple[str, Callable[[], None]]:
            if schemas is not None:
                # Dropped with the session's other schemas.
                dsn = with_search_path(schemas.create())
                upgrade(LEDGER_SCHEMA, dsn)
                return dsn, lambda: None
            directory = Path(tempfile.mkdtemp(prefix="ledger-model-"))
            return f"sqlite:///{directory / 'ledger.db'}", lambda: shutil.rmtree(directory)

    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=50,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
