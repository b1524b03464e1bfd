"""Hands a service's workers to waiting jobs in fair order; admits, refuses and sheds work.

One job's way through it, as the generator and the upscaler use it:

1. `admit(claim, remaining)`: the job takes a place in its group (a tier, or the upscaler's
   one group), or is refused at once with RESOURCE_EXHAUSTED and a RetryInfo:
   - `WAIT_EXCEEDS_DEADLINE` when its expected wait (below) is longer than the caller's
     remaining deadline: it could not start in time, so it is not queued to fail later;
   - `QUEUE_FULL` (raised as `GroupFull`, which the service words) when every place of the
     group is taken and nothing may be shed for it.
   A full group sheds before it refuses: an interactive job takes the place of the newest
   waiting bulk job of the tenant holding the most places for its weight; any job takes the
   place of the newest waiting job of another tenant that holds more than its weighted share
   (never an interactive one for a bulk job). The shed job's call ends with RESOURCE_EXHAUSTED
   `SHED` and a RetryInfo; it had not started, so nothing was done for it.
2. `async with ticket.turn() as turn`: waits for a worker in the order of `FairOrder`, and
   holds it for the block. A job whose work goes on after its caller left (a render a worker
   process has started cannot be interrupted) calls `turn.hold_until(future)`: the worker is
   handed to the next job only once that future is done, so a pool never queues work itself.
3. Leaving the `with ticket` block gives the place back.

**Expected wait** of a new job (the metric, and admission's test): the work that would start
before it (`FairOrder.ahead`) spread over the workers it may use, after the soonest a busy one
frees (each running job's estimate less the time it has run); for a group with a running cap,
the same over the group's own running jobs and cap, whichever is longer. Estimates are recent
service times (`ServiceTimes`), so the figure follows the machine's real speed.

Every method runs on the event loop thread; only `hold_until`'s completion arrives from a pool's
thread, and it hops back onto the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from services.runtime.errors import ResourceExhausted
from services.runtime.fairshare.estimates import ServiceTimes
from services.runtime.fairshare.order import Claim, FairOrder, Lane, Urgency

__all__ = ["Dispatcher", "GroupFull", "GroupLimits", "Ticket", "Turn"]


@dataclass(frozen=True)
class GroupLimits:
    """What one group takes: `places` jobs admitted at once (running and waiting), of which at
    most `running` run at once (None: only the workers bound them)."""

    places: int
    running: int | None = None


class GroupFull(Exception):
    """Every place of the group is taken and none could be shed for the new job."""

    def __init__(self, claim: Claim, running: int, waiting: int) -> None:
        super().__init__(f"group {claim.group!r} is full")
        self.claim = claim
        self.running = running
        self.waiting = waiting


class _State(enum.Enum):
    PLACED = "placed"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    SHED = "shed"


class Turn:
    """A job's hold on a worker, from its start until the block ends (or what it holds ends)."""

    def __init__(self, ticket: Ticket, lane: Lane) -> None:
        self._ticket = ticket
        self.lane = lane

    def hold_until(self, future: Future[Any]) -> None:
        """Keeps the worker taken until `future` is done, even after the block ends."""
        self._ticket.held = future


class Ticket:
    """An admitted job's place in its group; a context manager giving the place back."""

    def __init__(self, dispatcher: Dispatcher, claim: Claim) -> None:
        self._dispatcher = dispatcher
        self.claim = claim
        self.state = _State.PLACED
        self.lane: Lane | None = None
        self.started = 0.0
        self.held: Future[Any] | None = None
        self.waiter: asyncio.Future[Lane] | None = None
        self.shed_error: ResourceExhausted | None = None

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._dispatcher._leave(self)

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[Turn]:
        """Waits for a worker and holds it for the block; ResourceExhausted (`SHED`) when the
        job is shed while it waits."""
        dispatcher = self._dispatcher
        if self.shed_error is not None:
            raise self.shed_error
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Lane] = loop.create_future()
        self.waiter = waiter
        self.state = _State.QUEUED
        dispatcher._queue(self)
        try:
            lane = await waiter
        except BaseException:
            if self.state is _State.QUEUED:
                dispatcher._withdraw(self)
            elif self.state is _State.RUNNING:
                # Started in the same moment the caller went away.
                dispatcher._release(self, finished=False)
            raise
        finished = False
        try:
            yield Turn(self, lane)
            finished = True
        finally:
            held = self.held
            if held is not None and not held.done():

                def release(_future: Future[Any]) -> None:
                    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                        loop.call_soon_threadsafe(dispatcher._release, self, False)

                held.add_done_callback(release)
            else:
                dispatcher._release(self, finished)


class Dispatcher:
    """The workers of one service (or one backend of it) and the jobs waiting for them.

    `shared_workers` take any work (None: unbounded, only the groups' running caps bound it);
    `interactive_workers` more take only interactive work. `on_refusal(claim, reason)` hears of
    every refusal and shed job, for the service's metrics.
    """

    def __init__(
        self,
        *,
        order: FairOrder,
        groups: Mapping[str, GroupLimits],
        estimates: ServiceTimes,
        shared_workers: int | None,
        interactive_workers: int = 0,
        subject: str = "the service",
        clock: Callable[[], float] = time.monotonic,
        on_refusal: Callable[[Claim, str], None] | None = None,
    ) -> None:
        if shared_workers is not None and shared_workers < 1:
            raise ValueError("shared_workers must be at least 1, or None for unbounded")
        if interactive_workers < 0:
            raise ValueError("interactive_workers must be 0 or more")
        self._order = order
        self._groups = dict(groups)
        self._estimates = estimates
        self._shared = shared_workers
        self._lanes = interactive_workers
        self._subject = subject
        self._clock = clock
        self._on_refusal = on_refusal or (lambda _claim, _reason: None)
        self._placed: dict[str, list[Ticket]] = {group: [] for group in self._groups}
        self._queued: dict[Claim, Ticket] = {}
        self._running: dict[Lane, list[Ticket]] = {lane: [] for lane in Lane}

    @property
    def estimates(self) -> ServiceTimes:
        return self._estimates

    def estimate(self, work: str) -> float:
        """Expected seconds on a worker of a job of kind `work`."""
        return self._estimates.estimate(work)

    def admitted(self, group: str) -> int:
        """Jobs holding a place in `group`: running, or waiting for a worker."""
        return len(self._placed[group])

    def running(self, group: str | None = None) -> int:
        """Jobs holding a worker (in `group`, when given)."""
        return sum(
            1
            for tickets in self._running.values()
            for ticket in tickets
            if group is None or ticket.claim.group == group
        )

    def waiting(self) -> int:
        """Jobs queued for a worker."""
        return len(self._queued)

    def admit(self, claim: Claim, remaining: float | None = None) -> Ticket:
        """A place for `claim`, `remaining` seconds before its caller's deadline (None: no
        deadline). ResourceExhausted (`WAIT_EXCEEDS_DEADLINE`) or GroupFull otherwise."""
        if remaining is not None:
            wait = self.expected_wait(claim.tenant, claim.urgency, claim.group)
            if wait > remaining:
                self._on_refusal(claim, "WAIT_EXCEEDS_DEADLINE")
                raise _too_late(self._subject, claim, wait, remaining)
        placed = self._placed[claim.group]
        if len(placed) >= self._groups[claim.group].places:
            victim = self._victim(claim)
            if victim is None:
                self._on_refusal(claim, "QUEUE_FULL")
                running = self.running(claim.group)
                raise GroupFull(claim, running, len(placed) - running)
            self._shed(victim)
        ticket = Ticket(self, claim)
        placed.append(ticket)
        return ticket

    def expected_wait(self, tenant: str, urgency: Urgency, group: str) -> float:
        """Seconds a new job of `tenant` at `urgency` in `group` is expected to wait for a
        worker now (see the module's docstring)."""
        now = self._clock()
        wait = 0.0
        if self._shared is not None:
            lanes = [Lane.SHARED]
            workers = self._shared
            if urgency is Urgency.INTERACTIVE and self._lanes:
                lanes.append(Lane.INTERACTIVE)
                workers += self._lanes
            busy = [ticket for lane in lanes for ticket in self._running[lane]]
            first = 0.0 if len(busy) < workers else _soonest(busy, now)
            wait = first + self._order.ahead(tenant, urgency) / workers
        cap = self._groups[group].running
        if cap is not None:
            busy = [
                t for tickets in self._running.values() for t in tickets if t.claim.group == group
            ]
            first = 0.0 if len(busy) < cap else _soonest(busy, now)
            wait = max(wait, first + self._order.ahead(tenant, urgency, group) / cap)
        return wait

    # What the tickets call.

    def _queue(self, ticket: Ticket) -> None:
        self._queued[ticket.claim] = ticket
        self._order.add(ticket.claim)
        self._dispatch()

    def _withdraw(self, ticket: Ticket) -> None:
        """A queued job whose caller left: out of the order, back to holding only its place."""
        self._order.remove(ticket.claim)
        self._queued.pop(ticket.claim, None)
        ticket.state = _State.PLACED

    def _release(self, ticket: Ticket, finished: bool) -> None:
        """A job let go of its worker; a finished job's time teaches the estimates."""
        if ticket.state is not _State.RUNNING or ticket.lane is None:
            return
        self._running[ticket.lane].remove(ticket)
        ticket.state = _State.DONE
        if finished:
            self._estimates.observe(ticket.claim.work, self._clock() - ticket.started)
        self._dispatch()

    def _leave(self, ticket: Ticket) -> None:
        """The job's call is over: its place is free (its worker may still be held)."""
        if ticket.state is _State.QUEUED:
            self._withdraw(ticket)
        placed = self._placed[ticket.claim.group]
        if ticket in placed:
            placed.remove(ticket)

    # Starting and shedding.

    def _eligible(self, claim: Claim) -> bool:
        cap = self._groups[claim.group].running
        return cap is None or self.running(claim.group) < cap

    def _dispatch(self) -> None:
        """Starts waiting jobs while a worker is free and one may take it: work-conserving."""
        while True:
            started = False
            if len(self._running[Lane.INTERACTIVE]) < self._lanes:
                started |= self._start_next(Lane.INTERACTIVE)
            if self._shared is None or len(self._running[Lane.SHARED]) < self._shared:
                started |= self._start_next(Lane.SHARED)
            if not started:
                return

    def _start_next(self, lane: Lane) -> bool:
        while (claim := self._order.next(lane, self._eligible)) is not None:
            ticket = self._queued.pop(claim)
            waiter = ticket.waiter
            if waiter is None or waiter.done():
                # Its caller left in this same moment; the ticket's own code tidies up.
                ticket.state = _State.PLACED
                continue
            ticket.state = _State.RUNNING
            ticket.lane = lane
            ticket.started = self._clock()
            self._running[lane].append(ticket)
            waiter.set_result(lane)
            return True
        return False

    def _victim(self, claim: Claim) -> Ticket | None:
        """The waiting job to shed so that `claim` gets a place, or None (see the docstring)."""
        placed = self._placed[claim.group]
        held = Counter(ticket.claim.tenant for ticket in placed)
        waiting = [t for t in placed if t.state in (_State.PLACED, _State.QUEUED)]

        def share(tenant: str) -> float:
            return held[tenant] / self._order.weight(tenant)

        def newest_of(tenant: str, tickets: list[Ticket]) -> Ticket:
            # Bulk before interactive, then the latest to arrive.
            return max(
                (t for t in tickets if t.claim.tenant == tenant),
                key=lambda t: (t.claim.urgency is Urgency.BULK, t.claim.sequence),
            )

        if claim.urgency is Urgency.INTERACTIVE:
            bulk = [t for t in waiting if t.claim.urgency is Urgency.BULK]
            if bulk:
                tenant = max({t.claim.tenant for t in bulk}, key=lambda u: (share(u), u))
                return newest_of(tenant, bulk)
        mine = (held[claim.tenant] + 1) / self._order.weight(claim.tenant)
        others = [
            t
            for t in waiting
            if t.claim.tenant != claim.tenant
            and (claim.urgency is Urgency.INTERACTIVE or t.claim.urgency is Urgency.BULK)
        ]
        over = {t.claim.tenant for t in others if share(t.claim.tenant) > mine}
        if not over:
            return None
        tenant = max(over, key=lambda u: (share(u), u))
        return newest_of(tenant, others)

    def _shed(self, victim: Ticket) -> None:
        claim = victim.claim
        self._on_refusal(claim, "SHED")
        retry_after = max(
            0.1, round(self.expected_wait(claim.tenant, claim.urgency, claim.group), 1)
        )
        error = ResourceExhausted(
            f"{self._subject} shed this waiting job to make room for other tenants' or more"
            f" urgent work; retry in {retry_after:g} s",
            retry_after=retry_after,
            reason="SHED",
            metadata={"group": claim.group, "urgency": claim.urgency.value},
        )
        victim.shed_error = error
        if victim.state is _State.QUEUED:
            self._order.remove(claim)
            self._queued.pop(claim, None)
            if victim.waiter is not None and not victim.waiter.done():
                victim.waiter.set_exception(error)
        victim.state = _State.SHED
        self._placed[claim.group].remove(victim)


def _soonest(busy: list[Ticket], now: float) -> float:
    """Seconds until the first of the busy workers is expected to be free."""
    return min(max(0.0, ticket.claim.cost - (now - ticket.started)) for ticket in busy)


def _too_late(subject: str, claim: Claim, wait: float, remaining: float) -> ResourceExhausted:
    retry_after = max(0.1, round(wait, 1))
    return ResourceExhausted(
        f"{subject} expects this job to wait {wait:.2f} s for a worker, past the caller's"
        f" deadline in {max(0.0, remaining):.2f} s; retry with a longer deadline or in"
        f" {retry_after:g} s",
        retry_after=retry_after,
        reason="WAIT_EXCEEDS_DEADLINE",
        metadata={
            "group": claim.group,
            "urgency": claim.urgency.value,
            "expected_wait_ms": str(round(wait * 1000)),
            "deadline_ms": str(round(max(0.0, remaining) * 1000)),
        },
    )
