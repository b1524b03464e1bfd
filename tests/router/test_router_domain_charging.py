"""The router's domain charging for what it delivers, in milliseconds over in-memory ports: the
routing decision reaches the jobs and the renders, each delivered image is charged at its
price, a failed job returns its credits, and a fallback tier renders at the fallback's price."""

from __future__ import annotations

from dataclasses import replace

import pytest

from services.router.jobs.model import HoldState, JobFilter, JobStatus
from services.router.routing.catalogue import ImageSize, Stage
from services.router.routing.policy import RouteRequest
from services.runtime.errors import FailedPrecondition, Internal, ResourceExhausted, Unavailable
from tests.router.fakes import RouterDomain, default_policy, finished

NANO = RouteRequest(prompt="a lighthouse at dusk", tier="nano", size=ImageSize.K1)
SIGN = 'a shop sign that says "OPEN"'


@pytest.fixture
def domain() -> RouterDomain:
    return RouterDomain.build()


@pytest.mark.parametrize(
    ("stage", "prompt", "tier"),
    [
        (Stage.EXPLORE, "a fox in snow", "nano"),
        (Stage.REFINE, "a fox in snow", "standard"),
        (Stage.REFINE, SIGN, "pro"),
    ],
)
async def test_the_routing_decision_reaches_the_jobs_and_the_renders(
    domain: RouterDomain, stage: Stage, prompt: str, tier: str
) -> None:
    account = domain.ledger.open("acct")
    request = RouteRequest(prompt=prompt, stage=stage, n=2)
    decision = domain.policy.decide(request)
    assert decision.tier == tier

    record, jobs = await finished(domain.router.generate(account, "k", request, seed=40))

    assert record.batch.decision == decision
    for job in record.jobs:
        assert (job.tier, job.size, job.aspect_ratio, job.stage) == (
            tier,
            decision.size,
            decision.aspect_ratio,
            stage,
        )
        assert (job.width, job.height) == (decision.width, decision.height)
        assert (job.quoted_cost, job.reasons) == (decision.unit_cost, decision.reasons)
    orders = sorted((o.seed, o.tier, o.size, o.request_id) for o in domain.renderer.orders)
    assert orders == [(40 + i, tier, decision.size, record.jobs[i].job_id) for i in range(2)]
    assert {job.status for job in jobs} == {JobStatus.SUCCEEDED}


async def test_each_delivered_image_is_charged_at_its_price(domain: RouterDomain) -> None:
    account = domain.ledger.open("acct")
    record, jobs = await finished(domain.router.generate(account, "k", replace(NANO, n=3), 7))

    assert sorted(job.seed for job in jobs) == [7, 8, 9]
    assert [job.cost for job in jobs] == [2, 2, 2]
    assert domain.ledger.balance(account) == (400 - 6, 0)
    settled = (await domain.jobs.batch(account, record.batch.batch_id)).batch
    assert (settled.hold_state, settled.captured) == (HoldState.CAPTURED, 6)
    assert domain.ledger.settlements == [("capture", record.batch.hold_id)]
    for job in jobs:
        assert job.asset is not None
        stored = await domain.assets.get_info(job.asset.asset_id)
        assert (stored.info.width, stored.info.height) == (1024, 1024)
        assert await domain.jobs.has_asset(account, job.asset.asset_id)
    assert len((await domain.router.list_jobs(account, JobFilter(), 0, "")).jobs) == 3


async def test_a_failed_job_releases_its_hold(domain: RouterDomain) -> None:
    account = domain.ledger.open("acct")
    domain.renderer.failures = [Internal("the renderer broke")]

    with pytest.raises(Internal, match="the renderer broke"):
        await finished(domain.router.generate(account, "k", NANO))

    record = await domain.jobs.find_batch(account, "k")
    assert record is not None, "a failure after work began is the key's answer"
    (job,) = record.jobs
    assert job.status is JobStatus.FAILED and job.cost == 0
    assert job.error is not None and job.error.code == "INTERNAL"
    assert (record.batch.hold_state, record.batch.captured) == (HoldState.RELEASED, 0)
    assert domain.ledger.settlements == [("release", record.batch.hold_id)]
    assert domain.ledger.balance(account) == (400, 0)


async def test_a_partial_batch_captures_only_what_was_delivered(domain: RouterDomain) -> None:
    account = domain.ledger.open("acct")
    domain.renderer.failures = [Internal("the first render broke")]

    record, jobs = await finished(domain.router.generate(account, "k", replace(NANO, n=3)))

    statuses = sorted(job.status.value for job in jobs)
    assert statuses == ["failed", "succeeded", "succeeded"]
    assert sum(job.cost for job in jobs) == 4
    assert domain.ledger.balance(account) == (400 - 4, 0)
    settled = (await domain.jobs.batch(account, record.batch.batch_id)).batch
    assert (settled.hold_state, settled.captured) == (HoldState.CAPTURED, 4)


async def test_an_overloaded_tier_falls_back_and_charges_the_lower_price() -> None:
    domain = RouterDomain.build(policy=replace(default_policy(), fallback={"pro": "standard"}))
    account = domain.ledger.open("acct")
    request = RouteRequest(prompt=SIGN, stage=Stage.REFINE, size=ImageSize.K2)
    assert domain.policy.decide(request).tier == "pro"
    domain.renderer.failures = [ResourceExhausted("pro is busy", reason="QUEUE_FULL")]

    _, (job,) = await finished(domain.router.generate(account, "k", request))

    standard = domain.policy.prices.price("standard", ImageSize.K2)
    assert [order.tier for order in domain.renderer.orders] == ["pro", "standard"]
    assert job.status is JobStatus.SUCCEEDED
    assert job.tier == "standard" and job.cost == standard == 12 < job.quoted_cost
    assert "rendered on standard by policy" in job.reasons[-1]
    assert domain.ledger.balance(account) == (400 - 12, 0)


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(ResourceExhausted("pro is busy", reason="QUEUE_FULL"), id="explicit tier"),
        pytest.param(
            Unavailable("timed out", reason="TIMEOUT", metadata={"ambiguous": "true"}),
            id="ambiguous failure",
        ),
    ],
)
async def test_no_fallback_for_an_explicit_tier_or_an_ambiguous_failure(
    error: ResourceExhausted | Unavailable,
) -> None:
    domain = RouterDomain.build(policy=replace(default_policy(), fallback={"pro": "standard"}))
    account = domain.ledger.open("acct")
    explicit = isinstance(error, ResourceExhausted)
    request = RouteRequest(
        prompt=SIGN, tier="pro" if explicit else "", stage=Stage.REFINE, size=ImageSize.K2
    )
    domain.renderer.failures = [error]

    with pytest.raises(type(error)):
        await finished(domain.router.generate(account, "k", request))

    assert [order.tier for order in domain.renderer.orders] == ["pro"]
    assert domain.ledger.balance(account) == (400, 0)


async def test_an_unaffordable_request_is_refused_by_its_hold(domain: RouterDomain) -> None:
    account = domain.ledger.open("acct")
    request = RouteRequest(prompt="a harbour", tier="pro", size=ImageSize.K4, n=64)

    with pytest.raises(FailedPrecondition) as caught:
        await finished(domain.router.generate(account, "k", request))

    assert caught.value.reason == "INSUFFICIENT_CREDITS"
    assert int(caught.value.metadata["available"]) == 400
    assert int(caught.value.metadata["required"]) > 400
    assert domain.ledger.balance(account) == (400, 0)
    assert domain.ledger.holds == {}
    assert (await domain.router.list_jobs(account, JobFilter(), 0, "")).jobs == ()
    assert domain.renderer.orders == []
