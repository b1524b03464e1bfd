"""The lives of running batches at the router's domain, over in-memory ports: a router that
stops drains them as SHUTTING_DOWN, a caller or a router leaving before a batch ran leaves
nothing held, and a router that is gone has its batches recovered by another, while a live
router's are never taken. The leases run on a clock the test moves, and the background rounds
on an injected `sleep` the test ends: nothing waits for time."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any, cast

import pytest
from prometheus_client import REGISTRY

from services.router.assets.store import AssetInfo, AssetRef
from services.router.jobs.model import HoldState, Job, JobKind, JobStatus, Lease, NewJob, Owner
from services.router.operations.events import BatchAccepted, JobFinished
from services.router.routing.catalogue import ImageSize, Stage
from services.router.routing.policy import RouteRequest
from services.runtime.errors import Aborted, DeadlineExceeded, Unavailable
from tests.router.fakes import RouterDomain, finished

REQUEST = RouteRequest(prompt="a lighthouse at dawn", tier="standard", size=ImageSize.K1, n=2)
#: One 1K nano image as a router records it, for batches made behind the router's back.
GENERATE_AT_1K = NewJob(
    kind=JobKind.GENERATE,
    prompt="a lighthouse",
    seed=0,
    width=1024,
    height=1024,
    quoted_cost=2,
    tier="nano",
    stage=Stage.EXPLORE,
    size=ImageSize.K1,
)


@pytest.fixture
def domain() -> RouterDomain:
    return RouterDomain.build()


async def running_batch(
    domain: RouterDomain, account: Owner, key: str
) -> tuple[str, asyncio.Task[list[object]]]:
    """A batch whose renders wait at the renderer's gate, its events read by a task; returns
    its id and that task (which ends with the stream's error, if any)."""
    domain.renderer.gate = domain.renderer.gate or asyncio.Event()
    events = domain.router.generate(account, key, REQUEST)
    accepted = await anext(events)
    assert isinstance(accepted, BatchAccepted)

    async def read_the_rest() -> list[object]:
        seen: list[object] = []
        try:
            async for event in events:
                seen.append(event)
        except Exception as error:
            seen.append(error)
        return seen

    reader = asyncio.create_task(read_the_rest())
    for _ in range(REQUEST.n):
        await domain.renderer.entered.get()
    return accepted.record.batch.batch_id, reader


def recovered_total() -> float:
    return REGISTRY.get_sample_value("tiergen_router_batches_recovered_total") or 0.0


async def test_a_drain_ends_running_jobs_as_shutting_down_and_the_key_runs_again(
    domain: RouterDomain,
) -> None:
    account = domain.ledger.open("acct")
    batch_id, reader = await running_batch(domain, account, "k")

    await domain.router.drain(grace=0)

    *ended, error = await reader
    assert isinstance(error, Unavailable) and error.reason == "SHUTTING_DOWN"
    assert error.retry_after is not None and "same idempotency key" in error.message
    jobs = [event.job for event in ended if isinstance(event, JobFinished)]
    assert [(job.status, job.error and job.error.reason) for job in jobs] == [
        (JobStatus.FAILED, "SHUTTING_DOWN")
    ] * 2
    assert domain.ledger.balance(account) == (400, 0)
    # Refused before any work: forgotten, so that the key runs anew on another replica.
    assert await domain.jobs.find_batch(account, "k") is None

    with pytest.raises(Unavailable) as refused:
        await finished(domain.router.generate(account, "later", REQUEST))
    assert refused.value.reason == "SHUTTING_DOWN"
    assert domain.ledger.balance(account) == (400, 0) and len(domain.ledger.holds) == 1

    other = domain.replica()
    record, again = await finished(other.router.generate(account, "k", REQUEST))
    assert not record.replayed and record.batch.batch_id != batch_id
    assert [job.status for job in again] == [JobStatus.SUCCEEDED] * 2


async def test_a_caller_leaving_at_the_first_event_leaves_nothing_behind(
    domain: RouterDomain,
) -> None:
    account = domain.ledger.open("acct")
    events = domain.router.generate(account, "gone", REQUEST)
    first = await anext(events)
    assert isinstance(first, BatchAccepted)
    assert domain.ledger.held(account) > 0

    await events.aclose()

    record = await domain.jobs.batch(account, first.record.batch.batch_id)
    assert {job.status for job in record.jobs} == {JobStatus.CANCELLED}
    assert record.batch.hold_state is HoldState.RELEASED
    assert domain.ledger.balance(account) == (400, 0)


async def test_a_router_closing_before_a_batch_ran_ends_its_stream_and_returns_all(
    domain: RouterDomain,
) -> None:
    account = domain.ledger.open("acct")
    events = domain.router.generate(account, "closing", REQUEST)
    first = await anext(events)
    assert isinstance(first, BatchAccepted)

    # Before the batch's task has run a step: it is cancelled without ever starting.
    await domain.router.close()

    assert [event async for event in events] == []
    record = await domain.jobs.batch(account, first.record.batch.batch_id)
    assert {job.status for job in record.jobs} == {JobStatus.CANCELLED}
    assert record.batch.hold_state is HoldState.RELEASED
    assert domain.ledger.balance(account) == (400, 0)
    assert domain.renderer.orders == []


async def test_a_dead_routers_batch_is_recovered_by_another(domain: RouterDomain) -> None:
    account = domain.ledger.open("acct")
    batch_id, stalled = await running_batch(domain, account, "doomed")
    assert domain.ledger.held(account) > 0
    other = domain.replica()
    before = recovered_total()

    # Within its lease the batch is its router's; once the lease has run out, it is free.
    assert await other.router.recover() == 0
    domain.clock.advance(domain.limits.lease_seconds + 1)
    assert await other.router.recover() == 1

    assert recovered_total() == before + 1
    record = await domain.jobs.batch(account, batch_id)
    assert {job.status for job in record.jobs} == {JobStatus.FAILED}
    assert {(job.error.code, job.error.reason) for job in record.jobs if job.error} == {
        ("ABORTED", "ROUTER_LOST")
    }
    assert record.batch.hold_state is HoldState.RELEASED
    assert domain.ledger.settlements == [("release", record.batch.hold_id)]
    assert domain.ledger.balance(account) == (400, 0)

    # Had the router only stalled, what it finishes later changes nothing.
    assert domain.renderer.gate is not None
    domain.renderer.gate.set()
    *_, error = await stalled
    assert isinstance(error, Aborted) and error.reason == "ROUTER_LOST"
    after = await domain.jobs.batch(account, batch_id)
    assert after.jobs == record.jobs and after.batch == record.batch
    assert domain.ledger.balance(account) == (400, 0)


async def test_a_live_routers_batch_is_never_claimed(domain: RouterDomain) -> None:
    account = domain.ledger.open("acct")
    batch_id, reader = await running_batch(domain, account, "long")
    keeper = asyncio.create_task(domain.router.keep_leases())
    other = domain.replica()
    nap = await domain.sleeps.next()
    assert nap.seconds == domain.limits.lease_seconds / 3
    try:
        # Four leases long: without renewals the batch would have been free three times over.
        for _ in range(12):
            domain.clock.advance(nap.seconds)
            nap.end()
            nap = await domain.sleeps.next()  # renewed, and asleep until the next round
            assert await other.router.recover() == 0
        assert domain.renderer.gate is not None
        domain.renderer.gate.set()
        ended = await reader
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)

    assert [e.job.status for e in ended if isinstance(e, JobFinished)] == [JobStatus.SUCCEEDED] * 2
    record = await domain.jobs.batch(account, batch_id)
    assert record.batch.hold_state is HoldState.CAPTURED
    assert domain.ledger.settlements == [("capture", record.batch.hold_id)]
    assert domain.ledger.held(account) == 0


async def test_recovery_takes_a_gone_routers_batch_at_its_next_round(domain: RouterDomain) -> None:
    account = domain.ledger.open("acct")
    batch_id, stalled = await running_batch(domain, account, "abandoned")
    other = domain.replica()
    watcher = asyncio.create_task(other.router.watch_abandoned())
    try:
        nap = await other.sleeps.next()
        assert nap.seconds == other.limits.claim_interval_seconds
        nap.end()
        nap = await other.sleeps.next()  # a round within the lease: nothing taken
        assert (await domain.jobs.batch(account, batch_id)).batch.hold_state is HoldState.OPEN

        domain.clock.advance(domain.limits.lease_seconds + 1)
        nap.end()
        await other.sleeps.next()  # the round after the lease ran out
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)

    record = await domain.jobs.batch(account, batch_id)
    assert {job.status for job in record.jobs} == {JobStatus.FAILED}
    assert record.batch.hold_state is HoldState.RELEASED
    assert domain.ledger.balance(account) == (400, 0)
    assert domain.renderer.gate is not None
    domain.renderer.gate.set()
    *_, error = await stalled
    assert isinstance(error, Aborted) and error.reason == "ROUTER_LOST"


async def test_routers_recovering_at_once_settle_each_batch_once(domain: RouterDomain) -> None:
    account = domain.ledger.open("acct")
    dead = Lease("dead-router", domain.limits.lease_seconds)
    holds = []
    for index in range(6):
        hold_id = (
            await domain.ledger.reserve(account, 4, f"hold-{index}", "abandoned", 900)
        ).hold_id
        new = NewJob(
            kind=JobKind.GENERATE,
            prompt="a lighthouse",
            seed=0,
            width=1024,
            height=1024,
            quoted_cost=2,
            tier="nano",
            stage=Stage.EXPLORE,
            size=ImageSize.K1,
        )
        record = await domain.jobs.create_batch(
            owner=account,
            idempotency_key=f"batch-{index}",
            fingerprint="fp",
            jobs=[new, replace(new, variation=1, seed=1)],
            hold_id=hold_id,
            lease=dead,
        )
        if index == 0:
            # One image delivered before its router died.
            delivered = record.jobs[0]
            await domain.jobs.mark_running(delivered.job_id)
            asset = AssetRef("ab" * 32, AssetInfo(1024, 1024, "image/png", 100))
            await domain.jobs.mark_succeeded(delivered.job_id, asset, 2)
        holds.append(hold_id)
    domain.clock.advance(dead.seconds + 1)
    b, c = domain.replica(), domain.replica()

    recovered = await asyncio.gather(b.router.recover(), c.router.recover())

    assert sum(recovered) == len(holds)
    assert sorted(domain.ledger.settlements) == sorted(
        [("capture", holds[0])] + [("release", hold_id) for hold_id in holds[1:]]
    )
    assert domain.ledger.balance(account) == (398, 0)


async def test_a_recovered_batch_settles_in_its_owners_tenant(domain: RouterDomain) -> None:
    # The same account id in two tenants, each with a batch its dead router left delivered.
    owners = [domain.ledger.open("acct"), domain.ledger.open("acct", tenant="tenant-b")]
    dead = Lease("dead-router", domain.limits.lease_seconds)
    for index, owner in enumerate(owners):
        reserved = await domain.ledger.reserve(owner, 2 + index, f"hold-{index}", "abandoned", 900)
        hold_id = reserved.hold_id
        record = await domain.jobs.create_batch(
            owner=owner,
            idempotency_key="same-key",
            fingerprint="fp",
            jobs=[replace(GENERATE_AT_1K, seed=index, quoted_cost=2 + index)],
            hold_id=hold_id,
            lease=dead,
        )
        (job,) = record.jobs
        await domain.jobs.mark_running(job.job_id)
        asset = AssetRef("ab" * 32, AssetInfo(1024, 1024, "image/png", 100))
        await domain.jobs.mark_succeeded(job.job_id, asset, job.quoted_cost)
    domain.clock.advance(dead.seconds + 1)

    assert await domain.replica().router.recover() == 2

    # Each hold was captured in its own tenant (the fake ledger finds no hold in another).
    assert [kind for kind, _ in domain.ledger.settlements] == ["capture", "capture"]
    assert domain.ledger.balance(owners[0]) == (400 - 2, 0)
    assert domain.ledger.balance(owners[1]) == (400 - 3, 0)


class SlowStore:
    """One method of the job store made to wait until `go` is set; `entered` gets the job id
    of each call that reached it."""

    def __init__(self, domain: RouterDomain, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
        self.go = asyncio.Event()
        self.entered: asyncio.Queue[str] = asyncio.Queue()
        method = getattr(domain.jobs, name)

        async def slow(job_id: str, *args: Any) -> Job:
            await self.entered.put(job_id)
            await self.go.wait()
            return cast(Job, await method(job_id, *args))

        monkeypatch.setattr(domain.jobs, name, slow)

    async def all_entered(self, count: int) -> None:
        for _ in range(count):
            await self.entered.get()


async def ends_as(domain: RouterDomain, account: Owner, batch_id: str, status: JobStatus) -> None:
    """Every job of the batch ended as `status`, and its credits all returned."""
    record = await domain.jobs.batch(account, batch_id)
    assert {job.status for job in record.jobs} == {status}
    assert record.batch.hold_state is HoldState.RELEASED
    assert domain.ledger.balance(account) == (400, 0)


async def test_a_caller_cancelled_twice_still_ends_every_job_before_the_credits_settle(
    domain: RouterDomain, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server may cancel a handler again while it is recording a cancellation (a deadline,
    # then the channel closing): the second must not cut the first's bookkeeping short.
    account = domain.ledger.open("acct")
    batch_id, reader = await running_batch(domain, account, "twice")
    store = SlowStore(domain, monkeypatch, "mark_cancelled")

    reader.cancel()
    await store.all_entered(REQUEST.n)
    reader.cancel()
    await asyncio.sleep(0)
    store.go.set()
    with pytest.raises(asyncio.CancelledError):
        await reader
    await ends_as(domain, account, batch_id, JobStatus.CANCELLED)


async def test_a_job_failing_as_its_caller_leaves_still_records_its_end_before_the_settling(
    domain: RouterDomain, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The render fails at the caller's deadline (the same deadline) just as the caller's
    # cancellation arrives: the cancellation lands while the failure is being recorded.
    account = domain.ledger.open("acct")
    domain.renderer.failures = [DeadlineExceeded("the render ran out of time")] * REQUEST.n
    store = SlowStore(domain, monkeypatch, "mark_failed")
    events = domain.router.generate(account, "late", REQUEST)
    accepted = await anext(events)
    assert isinstance(accepted, BatchAccepted)

    async def read_the_rest() -> None:
        async for _ in events:
            pass

    reader = asyncio.create_task(read_the_rest())
    await store.all_entered(REQUEST.n)
    reader.cancel()
    await asyncio.sleep(0)
    store.go.set()
    with pytest.raises(asyncio.CancelledError):
        await reader
    await ends_as(domain, account, accepted.record.batch.batch_id, JobStatus.FAILED)
