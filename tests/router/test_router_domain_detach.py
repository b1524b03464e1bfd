"""Detached batches at the router's domain, over in-memory ports: the call answers with the
accepted batch and ends; the batch runs on without it, is settled as an attached one is, holds
its tier's places until it ends, is drained at shutdown, and its key replays it."""

from __future__ import annotations

import asyncio

import pytest

from services.router.jobs.model import HoldState, JobStatus
from services.router.operations.batches import Submission
from services.router.operations.events import BatchAccepted
from services.router.routing.admission import TierCapacity
from services.router.routing.catalogue import ImageSize
from services.router.routing.policy import RouteRequest
from services.runtime.errors import NotFound, ResourceExhausted
from tests.router.fakes import RouterDomain, finished

REQUEST = RouteRequest(prompt="a harbour at dusk", tier="nano", size=ImageSize.K1, n=3)
DETACHED = Submission(detach=True)


@pytest.fixture
def domain() -> RouterDomain:
    return RouterDomain.build()


async def _settled(domain: RouterDomain, batch_id: str, owner: object) -> None:
    for _ in range(200):
        record = await domain.jobs.batch(owner, batch_id)  # type: ignore[arg-type]
        if record.batch.hold_state is not HoldState.OPEN:
            return
        await asyncio.sleep(0)
    raise AssertionError("the detached batch did not settle")


async def test_a_detached_call_answers_with_the_batch_and_the_work_goes_on(
    domain: RouterDomain,
) -> None:
    account = domain.ledger.open("acct")
    domain.renderer.gate = asyncio.Event()
    events = [e async for e in domain.router.generate(account, "k", REQUEST, None, DETACHED)]

    (accepted,) = events
    assert isinstance(accepted, BatchAccepted) and accepted.record.batch.detached
    batch_id = accepted.record.batch.batch_id
    # The call has ended; the renders are still waiting, the credits held.
    for _ in range(REQUEST.n):
        await domain.renderer.entered.get()
    assert domain.ledger.balance(account) == (400 - 6, 6)

    domain.renderer.gate.set()
    await _settled(domain, batch_id, account)
    record = await domain.jobs.batch(account, batch_id)
    assert {job.status for job in record.jobs} == {JobStatus.SUCCEEDED}
    assert (record.batch.hold_state, record.batch.captured) == (HoldState.CAPTURED, 6)
    assert domain.ledger.balance(account) == (400 - 6, 0)


async def test_a_retry_with_the_key_replays_the_detached_batch(domain: RouterDomain) -> None:
    account = domain.ledger.open("acct")
    domain.renderer.gate = asyncio.Event()
    (first,) = [e async for e in domain.router.generate(account, "k", REQUEST, None, DETACHED)]
    assert isinstance(first, BatchAccepted)
    # Detached again: the same batch at once, nothing held twice.
    (again,) = [e async for e in domain.router.generate(account, "k", REQUEST, None, DETACHED)]
    assert isinstance(again, BatchAccepted) and again.record.replayed
    assert again.record.batch.batch_id == first.record.batch.batch_id
    assert domain.ledger.balance(account) == (400 - 6, 6)
    # Attached, it follows the jobs to their end.
    domain.renderer.gate.set()
    record, jobs = await finished(domain.router.generate(account, "k", REQUEST))
    assert record.replayed and len(jobs) == REQUEST.n
    assert {job.status for job in jobs} == {JobStatus.SUCCEEDED}
    assert len(domain.renderer.orders) == REQUEST.n


async def test_a_detached_batch_refused_before_any_work_is_kept(domain: RouterDomain) -> None:
    account = domain.ledger.open("acct")
    busy = ResourceExhausted("queue full", retry_after=1.0, reason="QUEUE_FULL")
    domain.renderer.failures = [busy, busy, busy]
    (accepted,) = [e async for e in domain.router.generate(account, "k", REQUEST, None, DETACHED)]
    assert isinstance(accepted, BatchAccepted)
    batch_id = accepted.record.batch.batch_id
    await _settled(domain, batch_id, account)
    # Nobody is there to retry: the refusal is the key's answer, nothing charged.
    record = await domain.jobs.batch(account, batch_id)
    assert {job.status for job in record.jobs} == {JobStatus.FAILED}
    assert record.batch.hold_state is HoldState.RELEASED
    assert domain.ledger.balance(account) == (400, 0)
    (replayed,) = [e async for e in domain.router.generate(account, "k", REQUEST, None, DETACHED)]
    assert isinstance(replayed, BatchAccepted) and replayed.record.batch.batch_id == batch_id


async def test_a_detached_batch_holds_its_places_until_it_ends(domain: RouterDomain) -> None:
    account = domain.ledger.open("acct")
    domain.router.admission.configure({"nano": TierCapacity(places=3, retry_after_seconds=1)})
    domain.renderer.gate = asyncio.Event()
    [_ async for _ in domain.router.generate(account, "k", REQUEST, None, DETACHED)]
    assert domain.router.admission.taken("nano") == 3
    with pytest.raises(ResourceExhausted):
        [_ async for _ in domain.router.generate(account, "k2", REQUEST, None, DETACHED)]
    domain.renderer.gate.set()
    for _ in range(200):
        if domain.router.admission.taken("nano") == 0:
            break
        await asyncio.sleep(0)
    assert domain.router.admission.taken("nano") == 0


async def test_a_stopping_router_ends_detached_batches_and_settles_them(
    domain: RouterDomain,
) -> None:
    account = domain.ledger.open("acct")
    domain.renderer.gate = asyncio.Event()
    (accepted,) = [e async for e in domain.router.generate(account, "k", REQUEST, None, DETACHED)]
    assert isinstance(accepted, BatchAccepted)
    for _ in range(REQUEST.n):
        await domain.renderer.entered.get()
    await domain.router.drain(grace=0)
    await domain.router.close()
    record = await domain.jobs.batch(account, accepted.record.batch.batch_id)
    assert {(job.status, job.error.reason if job.error else "") for job in record.jobs} == {
        (JobStatus.FAILED, "SHUTTING_DOWN")
    }
    assert record.batch.hold_state is HoldState.RELEASED
    assert domain.ledger.balance(account) == (400, 0)


async def test_an_unknown_webhook_is_not_found_before_anything_is_held(
    domain: RouterDomain,
) -> None:
    account = domain.ledger.open("acct")
    named = Submission(detach=True, webhook_id="wh_01NOTHERE")
    with pytest.raises(NotFound) as caught:
        [_ async for _ in domain.router.generate(account, "k", REQUEST, None, named)]
    assert caught.value.reason == "WEBHOOK_NOT_FOUND"
    assert domain.ledger.balance(account) == (400, 0)
    assert await domain.jobs.find_batch(account, "k") is None
