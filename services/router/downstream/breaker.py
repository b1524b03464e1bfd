"""Circuit breakers: stop calling a backend that keeps failing, and try it again later.

A breaker opens after `threshold` consecutive failures that say the backend itself is in
trouble (UNAVAILABLE, DEADLINE_EXCEEDED). While open, calls fail at once with UNAVAILABLE
(reason CIRCUIT_OPEN, retry after the rest of the cool-down) instead of each waiting out a
timeout and holding credits meanwhile. After the cool-down one trial call goes through
(half-open): its success closes the breaker, its failure opens it again. Errors that are the
request's fault (INVALID_ARGUMENT, FAILED_PRECONDITION...) or overload (RESOURCE_EXHAUSTED,
which already carries its own retry advice) neither open nor close it.

The router keeps one breaker per tier (each tier is served by one generator backend), one for
the upscaler and one for the ledger. Each breaker's state is exported, read when scraped, as
`tiergen_router_breaker_state{backend}`.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TypeVar

import structlog
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.router.downstream.ports import (
    AccountBalance,
    AccountGrant,
    CreditGrant,
    GrantKind,
    Image,
    LedgerClient,
    ProgressSink,
    Renderer,
    RenderOrder,
    Reservation,
    UpscaleOrder,
    Upscaler,
)
from services.router.jobs.model import Owner
from services.runtime.errors import DeadlineExceeded, TiergenError, Unavailable

__all__ = [
    "STATE_VALUES",
    "BreakingLedger",
    "BreakingRenderer",
    "BreakingUpscaler",
    "CircuitBreaker",
]

_log = structlog.get_logger("tiergen.router")
_T = TypeVar("_T")
_TRIPPING = (Unavailable, DeadlineExceeded)
#: The value of each state in `tiergen_router_breaker_state`.
STATE_VALUES = {"closed": 0, "half-open": 1, "open": 2}


class _BreakerStates(Collector):
    """`tiergen_router_breaker_state{backend}`, read from the live breakers when scraped: an
    open breaker becomes half-open by the clock alone, with no call to record it.

    Breakers of one backend in one process (routers under test) report the worst state.
    """

    def __init__(self) -> None:
        self.breakers: weakref.WeakSet[CircuitBreaker] = weakref.WeakSet()

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return [self._family()]

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "tiergen_router_breaker_state",
            "State of the router's circuit breaker of each backend: 0 closed, 1 half-open (one"
            " trial call goes through), 2 open (calls fail at once).",
            labels=["backend"],
        )

    def collect(self) -> Iterator[GaugeMetricFamily]:
        states: dict[str, int] = {}
        for breaker in list(self.breakers):
            value = STATE_VALUES[breaker.state]
            states[breaker.backend] = max(value, states.get(breaker.backend, 0))
        family = self._family()
        for backend, value in sorted(states.items()):
            family.add_metric([backend], value)
        yield family


_STATES = _BreakerStates()
REGISTRY.register(_STATES)


class CircuitBreaker:
    """Closed, open or half-open, for one backend."""

    def __init__(
        self,
        name: str,
        *,
        threshold: int = 5,
        cooldown_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        self.name = name
        self._threshold = threshold
        self._cooldown = cooldown_seconds
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_running = False
        _STATES.breakers.add(self)

    @property
    def backend(self) -> str:
        """The `backend` label of its state gauge: the tier for a generator tier's breaker
        ("generator/nano" is "nano"), the name otherwise ("upscaler", "ledger")."""
        return self.name.rpartition("/")[2]

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "half-open" if self._clock() - self._opened_at >= self._cooldown else "open"

    def _admit(self) -> bool:
        """Whether a call may go through; True for the single trial of a half-open breaker."""
        state = self.state
        if state == "closed":
            return False
        if state == "open" or self._trial_running:
            assert self._opened_at is not None
            retry = max(0.0, self._cooldown - (self._clock() - self._opened_at))
            raise Unavailable(
                f"{self.name} is failing; calls are paused for {retry:.1f} s",
                reason="CIRCUIT_OPEN",
                retry_after=retry or self._cooldown,
                metadata={"backend": self.name},
            )
        self._trial_running = True
        return True

    def _record(self, failed: bool) -> None:
        if not failed:
            if self._opened_at is not None:
                _log.info("circuit closed", backend=self.name)
            self._failures, self._opened_at = 0, None
            return
        self._failures += 1
        if self._opened_at is not None or self._failures >= self._threshold:
            if self._opened_at is None:
                _log.warning("circuit opened", backend=self.name, failures=self._failures)
            self._opened_at = self._clock()

    async def call(self, work: Callable[[], Awaitable[_T]]) -> _T:
        """Runs `work` through the breaker."""
        trial = self._admit()
        try:
            result = await work()
        except TiergenError as error:
            if isinstance(error, _TRIPPING):
                self._record(failed=True)
            elif trial:
                self._record(failed=False)
            raise
        finally:
            if trial:
                self._trial_running = False
        self._record(failed=False)
        return result


class BreakingRenderer:
    """A renderer behind one breaker per tier."""

    def __init__(self, renderer: Renderer, breaker: Callable[[str], CircuitBreaker]) -> None:
        self._renderer = renderer
        self._breakers: dict[str, CircuitBreaker] = {}
        self._new_breaker = breaker

    def breaker(self, tier: str) -> CircuitBreaker:
        if tier not in self._breakers:
            self._breakers[tier] = self._new_breaker(f"generator/{tier}")
        return self._breakers[tier]

    async def render(self, order: RenderOrder, progress: ProgressSink) -> Image:
        return await self.breaker(order.tier).call(lambda: self._renderer.render(order, progress))


class BreakingUpscaler:
    """An upscaler behind one breaker."""

    def __init__(self, upscaler: Upscaler, breaker: CircuitBreaker) -> None:
        self._upscaler = upscaler
        self.breaker = breaker

    async def upscale(self, order: UpscaleOrder, progress: ProgressSink) -> Image:
        return await self.breaker.call(lambda: self._upscaler.upscale(order, progress))


class BreakingLedger:
    """The ledger behind one breaker: while it keeps failing, credits are neither held nor
    settled (a settlement left open is retried by recovery, or returned by the hold's expiry),
    and callers are told at once instead of each waiting out a timeout."""

    def __init__(self, ledger: LedgerClient, breaker: CircuitBreaker) -> None:
        self._ledger = ledger
        self._breaker = breaker

    async def available(self, owner: Owner) -> int:
        return await self._breaker.call(lambda: self._ledger.available(owner))

    async def reserve(
        self, owner: Owner, amount: int, idempotency_key: str, memo: str, ttl_seconds: int
    ) -> Reservation:
        return await self._breaker.call(
            lambda: self._ledger.reserve(owner, amount, idempotency_key, memo, ttl_seconds)
        )

    async def capture(self, owner: Owner, hold_id: str, amount: int, idempotency_key: str) -> None:
        await self._breaker.call(
            lambda: self._ledger.capture(owner, hold_id, amount, idempotency_key)
        )

    async def release(self, owner: Owner, hold_id: str, idempotency_key: str) -> None:
        await self._breaker.call(lambda: self._ledger.release(owner, hold_id, idempotency_key))

    async def balance(self, owner: Owner) -> AccountBalance:
        return await self._breaker.call(lambda: self._ledger.balance(owner))

    async def open_account(self, owner: Owner, idempotency_key: str) -> AccountGrant:
        return await self._breaker.call(lambda: self._ledger.open_account(owner, idempotency_key))

    async def check_in(self, owner: Owner, idempotency_key: str) -> AccountGrant:
        return await self._breaker.call(lambda: self._ledger.check_in(owner, idempotency_key))

    async def grant(
        self, owner: Owner, amount: int, kind: GrantKind, reason: str, idempotency_key: str
    ) -> CreditGrant:
        return await self._breaker.call(
            lambda: self._ledger.grant(owner, amount, kind, reason, idempotency_key)
        )
