"""Idempotency keys at the router's domain, over in-memory ports: a retry replays a finished or
a running batch and is never charged twice, a key reused for another request is refused, and a
call refused before any work (overload, a backend unreachable, no place at admission) holds
and records nothing, so that its key runs anew."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from services.router.jobs.model import JobFilter, JobStatus
from services.router.operations.events import BatchAccepted
from services.router.operations.planning import Handover
from services.router.routing.admission import TierCapacity
from services.router.routing.catalogue import ImageSize
from services.router.routing.policy import RouteRequest
from services.runtime.errors import AlreadyExists, ResourceExhausted, TiergenError, Unavailable
from tests.router.fakes import RouterDomain, finished, finished_jobs

NANO = RouteRequest(prompt="a lighthouse at dusk", tier="nano", size=ImageSize.K1)


@pytest.fixture
def domain() -> RouterDomain:
    return RouterDomain.build()


async def test_a_retry_with_the_same_key_replays_and_never_charges_twice(
    domain: RouterDomain,
) -> None:
    account = domain.ledger.open("acct")
    request = replace(NANO, n=2)
    first, first_jobs = await finished(domain.router.generate(account, "retry-key", request))
    again, again_jobs = await finished(domain.router.generate(account, "retry-key", request))

    assert again.replayed and not first.replayed
    assert again.batch.batch_id == first.batch.batch_id
    assert sorted(j.job_id for j in again_jobs) == sorted(j.job_id for j in first_jobs)
    assert domain.ledger.balance(account) == (400 - 4, 0)
    assert len(domain.renderer.orders) == 2 and len(domain.ledger.holds) == 1

    with pytest.raises(AlreadyExists) as caught:
        await finished(domain.router.generate(account, "retry-key", replace(NANO, prompt="a fox")))
    assert caught.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert caught.value.metadata["batch_id"] == first.batch.batch_id
    (job, *_) = first_jobs
    with pytest.raises(AlreadyExists):
        await finished(domain.router.promote(account, "retry-key", Handover(job.job_id, "pro")))
    assert domain.ledger.balance(account) == (400 - 4, 0)
    assert len(domain.ledger.holds) == 1


async def test_a_retry_of_a_running_batch_follows_the_original(domain: RouterDomain) -> None:
    account = domain.ledger.open("acct")
    domain.renderer.gate = asyncio.Event()
    request = replace(NANO, n=2)
    original = domain.router.generate(account, "k", request)
    accepted = await anext(original)
    assert isinstance(accepted, BatchAccepted)
    rest = asyncio.create_task(finished_jobs(original))
    for _ in range(2):
        await domain.renderer.entered.get()

    retry = domain.router.generate(account, "k", request)
    replayed = await anext(retry)
    assert isinstance(replayed, BatchAccepted) and replayed.record.replayed
    assert replayed.record.batch.batch_id == accepted.record.batch.batch_id
    domain.renderer.gate.set()
    again = await finished_jobs(retry)

    assert {job.status for job in again} == {JobStatus.SUCCEEDED}
    assert sorted(j.job_id for j in again) == sorted(j.job_id for j in await rest)
    assert len(domain.renderer.orders) == 2 and len(domain.ledger.holds) == 1
    assert domain.ledger.balance(account) == (400 - 4, 0)


@pytest.mark.parametrize(
    "refusal",
    [
        ResourceExhausted("nano is busy", reason="QUEUE_FULL", retry_after=1.0),
        Unavailable("the generator is unreachable", reason="BACKEND_UNAVAILABLE"),
    ],
    ids=["overloaded", "unreachable"],
)
async def test_a_refusal_before_any_work_forgets_the_batch_and_the_key_runs_again(
    domain: RouterDomain, refusal: TiergenError
) -> None:
    account = domain.ledger.open("acct")
    domain.renderer.failures = [refusal]

    with pytest.raises(type(refusal)):
        await finished(domain.router.generate(account, "k", NANO))

    assert await domain.jobs.find_batch(account, "k") is None
    assert (await domain.router.list_jobs(account, JobFilter(), 0, "")).jobs == ()
    (hold_id,) = domain.ledger.holds
    assert domain.ledger.settlements == [("release", hold_id)]
    assert domain.ledger.balance(account) == (400, 0)

    record, (job,) = await finished(domain.router.generate(account, "k", NANO))
    assert not record.replayed and job.status is JobStatus.SUCCEEDED
    assert domain.ledger.balance(account) == (400 - 2, 0)


async def test_an_ambiguous_failure_is_the_keys_answer(domain: RouterDomain) -> None:
    account = domain.ledger.open("acct")
    # The backend may have rendered, and billed, the image: the key keeps this answer.
    domain.renderer.failures = [
        Unavailable("the render timed out", reason="TIMEOUT", metadata={"ambiguous": "true"})
    ]
    with pytest.raises(Unavailable):
        await finished(domain.router.generate(account, "k", NANO))

    record, (job,) = await finished(domain.router.generate(account, "k", NANO))
    assert record.replayed and job.status is JobStatus.FAILED
    assert len(domain.renderer.orders) == 1
    assert domain.ledger.balance(account) == (400, 0)


async def test_a_refusal_at_admission_holds_and_records_nothing(domain: RouterDomain) -> None:
    account = domain.ledger.open("acct")
    domain.router.admission.configure({"nano": TierCapacity(places=1, retry_after_seconds=2.0)})
    domain.renderer.gate = asyncio.Event()
    first = domain.router.generate(account, "first", NANO)
    assert isinstance(await anext(first), BatchAccepted)
    rest = asyncio.create_task(finished_jobs(first))
    await domain.renderer.entered.get()

    second = asyncio.create_task(finished(domain.router.generate(account, "second", NANO)))
    rendering = asyncio.create_task(domain.renderer.entered.get())
    await asyncio.wait({second, rendering}, return_when=asyncio.FIRST_COMPLETED)
    rendering.cancel()
    assert second.done(), "a call found no place in the tier, yet its render started"
    with pytest.raises(ResourceExhausted) as caught:
        await second

    assert caught.value.reason == "QUEUE_FULL" and caught.value.retry_after == 2.0
    assert len(domain.ledger.holds) == 1 and domain.ledger.held(account) == 2
    assert await domain.jobs.find_batch(account, "second") is None
    assert len(domain.renderer.orders) == 1

    domain.renderer.gate.set()
    await rest
    record, (job,) = await finished(domain.router.generate(account, "second", NANO))
    assert not record.replayed and job.status is JobStatus.SUCCEEDED
    assert domain.ledger.balance(account) == (400 - 4, 0)
