"""Model-based test: random sequences of ledger commands against an in-memory model of the rules."""

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
ACCOUNTS = ["ann", "ben", "cy"]
#: Commands mostly name the accounts opened at the start, sometimes the one that may not be open.
ACCOUNT_IDS = st.sampled_from(["ann", "ben", "ann", "ben", "cy"])
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

    def balance(self, account_id: str) -> Balance:
        return Balance(
            account_id=account_id,
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
    account_id: str
    amount: int
    expires_at: datetime
    status: HoldStatus = HoldStatus.OPEN
    captured: int = 0


@dataclass(frozen=True)
class Call:
    """A command as it was sent, and what it answered: what a retry must answer again."""

    operation: str
    arguments: tuple[Any, ...]
    keywords: dict[str, Any]
    scope: tuple[str, str]
    key: str
    outcome: Any


@dataclass
class Model:
    """The ledger's rules, restated as simply as possible."""

    accounts: dict[str, ModelAccount] = field(default_factory=dict)
    holds: dict[str, ModelHold] = field(default_factory=dict)
    opened: dict[str, Any] = field(default_factory=dict)
    check_ins: dict[tuple[str, str], Any] = field(default_factory=dict)

    def expire_due(self, account_id: str, now: datetime) -> int:
        account = self.accounts[account_id]
        expired = 0
        for hold in self.holds.values():
            due = hold.status is HoldStatus.OPEN and hold.expires_at <= now
            if due and hold.account_id == account_id:
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
        self.keys = itertools.count()
        self.calls: list[Call] = []

    def run(self, awaitable: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(awaitable)

    def attempt(self, awaitable: Coroutine[Any, Any, Any]) -> Any:
        try:
            return self.run(awaitable)
        except TiergenError as error:
            return error

    def new_key(self) -> str:
        return f"key-{next(self.keys)}"

    def remember(
        self,
        operation: str,
        arguments: tuple[Any, ...],
        scope: tuple[str, str],
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

    def not_open(self, outcome: Any, account_id: str) -> None:
        self.expect_error(outcome, "ACCOUNT_NOT_OPEN", {"account_id": account_id})

    @initialize()
    def open_most_accounts(self) -> None:
        # Most commands need an open account; the last one opens only if a rule opens it.
        for account_id in ACCOUNTS[:-1]:
            self.open_account(account_id)

    @rule(account_id=ACCOUNT_IDS)
    def open_account(self, account_id: str) -> None:
        key = self.new_key()
        outcome = self.attempt(self.ledger.open_account(account_id, key))
        if account_id in self.model.opened:
            # A new key on an open account: nothing granted, the balance as it is now.
            self.model.expire_due(account_id, self.clock.now())
            assert (outcome.granted, outcome.outcome) == (0, GrantOutcome.ALREADY_OPEN)
        else:
            self.model.accounts[account_id] = ModelAccount()
            assert (outcome.granted, outcome.outcome) == (SIGNUP, GrantOutcome.GRANTED)
            self.model.opened[account_id] = outcome
        assert not outcome.replayed
        assert outcome.balance == self.model.accounts[account_id].balance(account_id)
        self.remember("open_account", (account_id, key), ("account", account_id), outcome)

    @rule(account_id=ACCOUNT_IDS)
    def check_in(self, account_id: str) -> None:
        key = self.new_key()
        now = self.clock.now()
        outcome = self.attempt(self.ledger.check_in(account_id, key))
        week = (account_id, iso_week(now))
        if account_id not in self.model.accounts:
            self.not_open(outcome, account_id)
        elif week in self.model.check_ins:
            self.model.expire_due(account_id, now)
            account = self.model.accounts[account_id]
            assert (outcome.granted, outcome.replayed) == (0, False)
            assert outcome.outcome is GrantOutcome.ALREADY_CHECKED_IN_THIS_WEEK
            assert (outcome.iso_week, outcome.cap_reached) == (week[1], account.promotional == CAP)
            assert outcome.balance == account.balance(account_id)
        else:
            self.model.expire_due(account_id, now)
            account = self.model.accounts[account_id]
            remaining = CAP - account.promotional
            if remaining == 0:
                self.expect_error(outcome, "PROMO_CAP_REACHED")
            else:
                granted = min(CHECK_IN, remaining)
                account.available += granted
                account.promotional += granted
                assert (outcome.granted, outcome.cap_reached) == (granted, granted == remaining)
                assert outcome.outcome is GrantOutcome.GRANTED
                assert outcome.balance == account.balance(account_id)
                self.model.check_ins[week] = outcome
        self.remember("check_in", (account_id, key), ("account", account_id), outcome)

    @rule(
        account_id=ACCOUNT_IDS,
        amount=st.integers(1, 120),
        kind=st.sampled_from(GrantKind),
    )
    def grant(self, account_id: str, amount: int, kind: GrantKind) -> None:
        key = self.new_key()
        arguments = (account_id, amount, kind, "top-up", key)
        outcome = self.attempt(self.ledger.grant(*arguments))
        if account_id not in self.model.accounts:
            self.not_open(outcome, account_id)
        else:
            self.model.expire_due(account_id, self.clock.now())
            account = self.model.accounts[account_id]
            account.available += amount
            if kind is GrantKind.PURCHASE:
                account.purchased += amount
            else:
                account.adjusted += amount
            assert outcome.balance == account.balance(account_id)
            assert outcome.entry.amount == amount
        self.remember("grant", arguments, ("account", account_id), outcome)

    @rule(
        target=holds,
        account_id=ACCOUNT_IDS,
        amount=st.integers(1, 300),
        ttl_seconds=st.sampled_from([None, 10, 3600]),
    )
    def reserve(self, account_id: str, amount: int, ttl_seconds: int | None) -> Any:
        key = self.new_key()
        now = self.clock.now()
        outcome = self.attempt(
            self.ledger.reserve(account_id, amount, key, ttl_seconds=ttl_seconds)
        )
        scope = ("account", account_id)
        arguments = (account_id, amount, key)
        self.remember("reserve", arguments, scope, outcome, ttl_seconds=ttl_seconds)
        if account_id not in self.model.accounts:
            self.not_open(outcome, account_id)
            return multiple()
        self.model.expire_due(account_id, now)
        account = self.model.accounts[account_id]
        if amount > account.available:
            self.expect_error(
                outcome,
                "INSUFFICIENT_CREDITS",
                {"available": str(account.available), "required": str(amount)},
            )
            return multiple()
        account.available -= amount
        account.held += amount
        ttl = timedelta(seconds=60 if ttl_seconds is None else ttl_seconds)
        self.model.holds[outcome.hold.hold_id] = ModelHold(account_id, amount, now + ttl)
        assert outcome.balance == account.balance(account_id)
        return outcome.hold.hold_id

    def resolvable(self, hold_id: str, outcome: Any, now: datetime) -> ModelHold | None:
        """The model's hold if it can be resolved; checks the failure otherwise."""
        hold = self.model.holds[hold_id]
        self.model.expire_due(hold.account_id, now)
        reasons = {
            HoldStatus.CAPTURED: "HOLD_ALREADY_CAPTURED",
            HoldStatus.RELEASED: "HOLD_ALREADY_RELEASED",
            HoldStatus.EXPIRED: "HOLD_EXPIRED",
        }
        if hold.status in reasons:
            self.expect_error(outcome, reasons[hold.status])
            return None
        return hold

    @rule(hold_id=holds, amount=st.integers(1, 320))
    def capture(self, hold_id: str, amount: int) -> None:
        key = self.new_key()
        outcome = self.attempt(self.ledger.capture(hold_id, amount, key))
        hold = self.resolvable(hold_id, outcome, self.clock.now())
        if hold is not None:
            account = self.model.accounts[hold.account_id]
            if amount > hold.amount:
                self.expect_error(outcome, "CAPTURE_EXCEEDS_HOLD")
            else:
                hold.status, hold.captured = HoldStatus.CAPTURED, amount
                account.held -= hold.amount
                account.consumed += amount
                account.available += hold.amount - amount
                assert outcome.balance == account.balance(hold.account_id)
                assert outcome.hold.captured_amount == amount
        self.remember("capture", (hold_id, amount, key), ("hold", hold_id), outcome)

    @rule(account_id=ACCOUNT_IDS, small=st.integers(1, 20), large=st.integers(40, 150))
    def capture_more_than_the_hold_less_than_all_held(
        self, account_id: str, small: int, large: int
    ) -> None:
        """Two open holds on one account, and a capture from the smaller one of more than it
        holds but less than the account holds in all: only the hold's own amount counts."""
        first = self.reserve(account_id, small, None)
        second = self.reserve(account_id, large, None)
        if isinstance(first, str) and isinstance(second, str):
            self.capture(first, small + large // 2)

    @rule(hold_id=holds)
    def release(self, hold_id: str) -> None:
        key = self.new_key()
        outcome = self.attempt(self.ledger.release(hold_id, key))
        hold = self.resolvable(hold_id, outcome, self.clock.now())
        if hold is not None:
            account = self.model.accounts[hold.account_id]
            hold.status = HoldStatus.RELEASED
            account.held -= hold.amount
            account.available += hold.amount
            assert outcome.balance == account.balance(hold.account_id)
        self.remember("release", (hold_id, key), ("hold", hold_id), outcome)

    @rule(capture=st.booleans())
    def resolve_an_unknown_hold(self, capture: bool) -> None:
        key = self.new_key()
        if capture:
            outcome = self.attempt(self.ledger.capture(NO_HOLD, 5, key))
            self.remember("capture", (NO_HOLD, 5, key), ("hold", NO_HOLD), outcome)
        else:
            outcome = self.attempt(self.ledger.release(NO_HOLD, key))
            self.remember("release", (NO_HOLD, key), ("hold", NO_HOLD), outcome)
        self.expect_error(outcome, "HOLD_NOT_FOUND", {"hold_id": NO_HOLD})

    @rule(seconds=st.sampled_from([1, 9, 59, 600, 3 * 86_400, 7 * 86_400, 14 * 86_400]))
    def advance_clock(self, seconds: int) -> None:
        self.clock.moment += timedelta(seconds=seconds)

    @rule()
    def sweep(self) -> None:
        now = self.clock.now()
        expected = sum(self.model.expire_due(account_id, now) for account_id in self.model.accounts)
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
        kind, name = call.scope
        attempt: Coroutine[Any, Any, Any]
        if kind == "account":
            attempt = self.ledger.grant(name, 1, GrantKind.ADJUSTMENT, "reused key", call.key)
        elif call.operation == "release":
            attempt = self.ledger.capture(name, 1, call.key)
        else:
            attempt = self.ledger.release(name, call.key)
        outcome = self.attempt(attempt)
        assert isinstance(outcome, AlreadyExists)
        assert outcome.reason == "IDEMPOTENCY_KEY_REUSED"

    @invariant()
    def balances_match_the_model(self) -> None:
        now = self.clock.now()
        for account_id, account in self.model.accounts.items():
            self.model.expire_due(account_id, now)
            assert self.run(self.ledger.get_balance(account_id)) == account.balance(account_id)


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
