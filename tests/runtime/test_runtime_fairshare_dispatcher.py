"""Handing out workers on an event loop: admission by deadline with RetryInfo, shedding bulk
work first, the interactive lane, and workers held until the job's process lets go."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import Future

import pytest

from services.runtime.errors import ResourceExhausted
from services.runtime.fairshare import (
    Claim,
    Dispatcher,
    FairOrder,
    GroupFull,
    GroupLimits,
    Lane,
    ServiceTimes,
    Ticket,
    Urgency,
    parse_weights,
)

BULK, INTERACTIVE = Urgency.BULK, Urgency.INTERACTIVE


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def dispatcher(
    clock: Clock,
    *,
    workers: int = 1,
    lanes: int = 0,
    places: int = 8,
    weights: str = "",
    refusals: list[tuple[str, str]] | None = None,
) -> Dispatcher:
    return Dispatcher(
        order=FairOrder(parse_weights(weights)),
        groups={"g": GroupLimits(places=places)},
        estimates=ServiceTimes(lambda _work: 1.0),
        shared_workers=workers,
        interactive_workers=lanes,
        subject="the test service",
        clock=clock,
        on_refusal=None if refusals is None else lambda c, why: refusals.append((c.tenant, why)),
    )


def claim(tenant: str, urgency: Urgency = BULK, cost: float = 1.0, account: str = "a") -> Claim:
    return Claim(tenant, account, urgency, "g", cost, "work")


class Job:
    """A job that takes a worker and keeps it until told to finish."""

    def __init__(self, ticket: Ticket) -> None:
        self.ticket = ticket
        self.lane: Lane | None = None
        self.started = asyncio.Event()
        self.finish = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        with self.ticket:
            async with self.ticket.turn() as turn:
                self.lane = turn.lane
                self.started.set()
                await self.finish.wait()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def retry_after(error: ResourceExhausted) -> float:
    assert error.retry_after is not None
    return error.retry_after


async def test_work_that_cannot_start_before_its_deadline_is_refused_at_once(clock: Clock) -> None:
    refusals: list[tuple[str, str]] = []
    service = dispatcher(clock, refusals=refusals)
    running = Job(service.admit(claim("acme", cost=2.0)))
    await settle()
    waiting = Job(service.admit(claim("acme", cost=2.0)))
    await settle()
    clock.now += 0.5

    # The running job has 1.5 s left and acme's other job 2 s: a new one of acme's starts in
    # 3.5 s. A caller with 3 s left is refused now, not queued to fail at its deadline.
    with pytest.raises(ResourceExhausted) as caught:
        service.admit(claim("acme"), remaining=3.0)
    error = caught.value
    assert error.reason == "WAIT_EXCEEDS_DEADLINE"
    assert retry_after(error) == 3.5
    assert error.metadata["expected_wait_ms"] == "3500"
    assert error.metadata["deadline_ms"] == "3000"
    assert refusals == [("acme", "WAIT_EXCEEDS_DEADLINE")]
    # With time enough it is admitted; so is another tenant's, which goes before acme's queue.
    with service.admit(claim("acme"), remaining=4.0):
        pass
    assert service.expected_wait("globex", BULK, "g") == pytest.approx(1.5)
    with service.admit(claim("globex"), remaining=2.0):
        pass
    for job in (running, waiting):
        job.finish.set()
    await asyncio.gather(running.task, waiting.task)


async def test_interactive_work_expects_no_wait_for_bulk_queues(clock: Clock) -> None:
    service = dispatcher(clock, lanes=1)
    bulk = [Job(service.admit(claim("acme", cost=4.0))) for _ in range(3)]
    await settle()

    assert service.expected_wait("globex", INTERACTIVE, "g") == 0.0
    assert service.expected_wait("globex", BULK, "g") == pytest.approx(4.0)
    sketch = Job(service.admit(claim("globex", INTERACTIVE, 0.05), remaining=0.5))
    await sketch.started.wait()
    assert sketch.lane is Lane.INTERACTIVE
    sketch.finish.set()
    for job in bulk:
        job.finish.set()
    await asyncio.gather(sketch.task, *(job.task for job in bulk))


async def test_a_lane_starts_a_sketch_while_every_shared_worker_is_busy(clock: Clock) -> None:
    service = dispatcher(clock, workers=1, lanes=1)
    long_render = Job(service.admit(claim("acme", cost=4.0)))
    await long_render.started.wait()
    first = Job(service.admit(claim("globex", INTERACTIVE, 0.05)))
    await first.started.wait()
    assert (long_render.lane, first.lane) == (Lane.SHARED, Lane.INTERACTIVE)

    # Lane and shared worker both busy: the next sketch waits for whichever frees first.
    second = Job(service.admit(claim("globex", INTERACTIVE, 0.05)))
    await settle()
    assert not second.started.is_set()
    first.finish.set()
    await second.started.wait()
    assert second.lane is Lane.INTERACTIVE

    # A bulk job never takes the lane, even when it is free.
    second.finish.set()
    more_bulk = Job(service.admit(claim("acme")))
    await settle()
    assert not more_bulk.started.is_set()
    long_render.finish.set()
    await more_bulk.started.wait()
    assert more_bulk.lane is Lane.SHARED
    more_bulk.finish.set()
    await asyncio.gather(long_render.task, first.task, second.task, more_bulk.task)


async def test_a_worker_is_held_until_the_process_lets_go(clock: Clock) -> None:
    service = dispatcher(clock)
    background: Future[None] = Future()
    first = service.admit(claim("acme"))
    with first:
        async with first.turn() as turn:
            turn.hold_until(background)
    # The call is over, its place is free, but its worker process is still busy.
    assert service.admitted("g") == 0
    assert service.running() == 1
    second = Job(service.admit(claim("acme")))
    await settle()
    assert not second.started.is_set()

    background.set_result(None)  # as a pool's thread would
    await second.started.wait()
    second.finish.set()
    await second.task


async def test_a_caller_that_leaves_while_waiting_is_withdrawn(clock: Clock) -> None:
    service = dispatcher(clock)
    running = Job(service.admit(claim("acme")))
    await running.started.wait()
    leaving = Job(service.admit(claim("globex")))
    await settle()
    assert service.waiting() == 1

    leaving.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving.task
    assert (service.waiting(), service.admitted("g")) == (0, 1)
    running.finish.set()
    await running.task
    assert service.running() == 0


async def test_a_full_group_sheds_waiting_bulk_work_for_interactive_work(clock: Clock) -> None:
    refusals: list[tuple[str, str]] = []
    service = dispatcher(clock, places=3, refusals=refusals)
    running = Job(service.admit(claim("acme")))
    await running.started.wait()
    older = Job(service.admit(claim("acme")))
    newer = Job(service.admit(claim("acme")))
    await settle()

    sketch = Job(service.admit(claim("globex", INTERACTIVE, 0.05)))

    with pytest.raises(ResourceExhausted) as caught:
        await newer.task
    assert caught.value.reason == "SHED"
    assert retry_after(caught.value) > 0
    assert refusals == [("acme", "SHED")]
    running.finish.set()
    await sketch.started.wait()  # before acme's older job: interactive first
    assert not older.started.is_set()
    sketch.finish.set()
    await older.started.wait()
    older.finish.set()
    await asyncio.gather(running.task, older.task, sketch.task)


async def test_a_full_group_sheds_for_a_tenant_under_its_share(clock: Clock) -> None:
    service = dispatcher(clock, places=4, weights="acme=1,globex=1")
    jobs = [Job(service.admit(claim("acme"))) for _ in range(4)]
    await settle()

    # globex holds nothing, acme all four places: acme's newest waiting job makes room, and
    # again for globex's second (acme 3, globex 1 is still over an even share).
    globex = [Job(service.admit(claim("globex"))) for _ in range(2)]
    for shed in jobs[-2:]:
        with pytest.raises(ResourceExhausted, match="shed"):
            await shed.task
    # Two each now: neither is over its share, so a third of globex's must wait for a place,
    with pytest.raises(GroupFull):
        service.admit(claim("globex"))
    # and a job of acme's own never displaces acme's others.
    with pytest.raises(GroupFull):
        service.admit(claim("acme"))
    kept = [*jobs[:2], *globex]
    for job in kept:
        job.finish.set()
    await asyncio.gather(*(job.task for job in kept))


async def test_bulk_work_never_sheds_interactive_work(clock: Clock) -> None:
    service = dispatcher(clock, places=2)
    running = Job(service.admit(claim("acme", INTERACTIVE)))
    waiting = Job(service.admit(claim("acme", INTERACTIVE)))
    await settle()

    with pytest.raises(GroupFull):
        service.admit(claim("globex", BULK))
    for job in (running, waiting):
        job.finish.set()
    await asyncio.gather(running.task, waiting.task)


async def test_finished_jobs_teach_the_estimates(clock: Clock) -> None:
    service = dispatcher(clock)
    ticket = service.admit(claim("acme"))
    with ticket:
        async with ticket.turn():
            clock.now += 3.0
    # A fifth of the way from the first guess (1 s) to what the job took (3 s).
    assert service.estimate("work") == pytest.approx(1.4)


def _tickets(service: Dispatcher, count: int) -> Iterator[Ticket]:
    for _ in range(count):
        yield service.admit(claim("acme"))


async def test_unbounded_workers_start_everything_under_the_group_cap(clock: Clock) -> None:
    service = Dispatcher(
        order=FairOrder(),
        groups={"g": GroupLimits(places=10, running=3)},
        estimates=ServiceTimes(lambda _work: 1.0),
        shared_workers=None,
        clock=clock,
    )
    jobs = [Job(ticket) for ticket in _tickets(service, 5)]
    await settle()
    assert sum(job.started.is_set() for job in jobs) == 3
    for job in jobs:
        job.finish.set()
    await asyncio.gather(*(job.task for job in jobs))
    assert service.running() == 0
