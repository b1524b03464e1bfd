"""Planning promotes, upscales, edits and generations at the router's domain, over in-memory
ports: what a handover hands over, and every check that refuses a request before anything is
held or recorded (strength, factor, output size, mask, a parent not succeeded, a parent of
another account or another tenant's namesake, a bad generation)."""

from __future__ import annotations

import asyncio
import io
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from PIL import Image

from services.router.jobs.model import Job, JobFilter, JobKind, JobStatus, Owner
from services.router.operations.events import BatchAccepted
from services.router.operations.planning import EditRequest, Handover, UpscaleRequest
from services.router.routing.catalogue import ImageSize
from services.router.routing.policy import RouteRequest
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from tests.router.fakes import TENANT, RouterDomain, finished


@pytest.fixture
def domain() -> RouterDomain:
    return RouterDomain.build()


async def jobs_of(domain: RouterDomain, account: Owner) -> tuple[Job, ...]:
    return (await domain.router.list_jobs(account, JobFilter(), 0, "")).jobs


def left_half_mask(width: int, height: int) -> bytes:
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, (0, 0, width // 2, height))
    out = io.BytesIO()
    mask.save(out, format="PNG")
    return out.getvalue()


def truncated_mask(width: int, height: int) -> bytes:
    """A PNG whose header says `width` x `height` but whose pixel data stops a third of the way."""
    noise = np.random.default_rng(7).integers(0, 2, (height, width), dtype=np.uint8) * 255
    out = io.BytesIO()
    Image.fromarray(noise, mode="L").save(out, format="PNG")
    return out.getvalue()[: len(out.getvalue()) // 3]


def black_mask(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (width, height), 0).save(out, format="PNG")
    return out.getvalue()


async def test_promote_hands_the_image_over_and_records_lineage(domain: RouterDomain) -> None:
    account = domain.ledger.open("acct")
    parent = await domain.delivered(account, "nano")
    assert parent.asset is not None
    handover = Handover(
        job_id=parent.job_id, tier="standard", size=ImageSize.K2, prompt_addition=", brushed steel"
    )

    record, (child,) = await finished(domain.router.promote(account, "promote", handover))

    assert record.jobs[0].status is JobStatus.QUEUED
    assert child.status is JobStatus.SUCCEEDED and child.kind is JobKind.PROMOTE
    assert (child.width, child.height, child.tier) == (2048, 2048, "standard")
    assert (child.parent_job_id, child.seed) == (parent.job_id, parent.seed)
    assert child.prompt == parent.prompt + ", brushed steel"
    assert child.strength == 0.6 and child.drift == domain.renderer.drift
    order = domain.renderer.orders[-1]
    assert order.reference == await domain.assets.read(parent.asset.asset_id)
    assert (order.reference_sha256, order.strength) == (parent.asset.asset_id, 0.6)
    _, children = await domain.router.get_job(account, parent.job_id)
    assert [job.job_id for job in children] == [child.job_id]
    assert domain.ledger.balance(account) == (400 - 2 - child.cost, 0)


async def test_upscale_and_edit_make_linked_jobs(domain: RouterDomain) -> None:
    account = domain.ledger.open("acct")
    parent = await domain.delivered(account, "standard")
    assert parent.asset is not None
    source = await domain.assets.read(parent.asset.asset_id)

    _, (upscaled,) = await finished(
        domain.router.upscale(account, "upscale", UpscaleRequest(parent.job_id, factor=2))
    )
    assert upscaled.kind is JobKind.UPSCALE and upscaled.parent_job_id == parent.job_id
    assert (upscaled.width, upscaled.height) == (2048, 2048)
    assert domain.upscaler.orders[-1].data == source

    mask = left_half_mask(parent.width, parent.height)
    edit = EditRequest(parent.job_id, mask, prompt="neon city")
    _, (edited,) = await finished(domain.router.edit(account, "edit", edit))
    assert edited.kind is JobKind.EDIT and edited.parent_job_id == parent.job_id
    assert (edited.tier, edited.width, edited.height) == ("standard", 1024, 1024)
    order = domain.renderer.orders[-1]
    assert (order.mask, order.reference, order.prompt) == (mask, source, "neon city")

    charged = parent.cost + upscaled.cost + edited.cost
    assert domain.ledger.balance(account) == (400 - charged, 0)


async def test_bad_handovers_and_upscales_change_nothing(domain: RouterDomain) -> None:
    account = domain.ledger.open("acct")
    parent = await domain.delivered(account, "standard")

    async def promote(tier: str, **fields: Any) -> InvalidArgument:
        handover = Handover(job_id=parent.job_id, tier=tier, **fields)
        with pytest.raises(InvalidArgument) as caught:
            await finished(domain.router.promote(account, f"promote-{tier}-{fields}", handover))
        return caught.value

    assert (await promote("nano")).reason == "PROMOTE_NOT_HIGHER"
    await promote("standard")
    for strength in (-0.1, 1.5):
        error = await promote("pro", strength=strength)
        assert error.violations[0].field == "strength"

    with pytest.raises(InvalidArgument):
        await finished(domain.router.upscale(account, "up-1", UpscaleRequest(parent.job_id, 4.5)))
    handover = Handover(job_id=parent.job_id, tier="pro", size=ImageSize.K4)
    _, (four_k,) = await finished(domain.router.promote(account, "four-k", handover))
    spent = 400 - domain.ledger.balance(account)[0]
    with pytest.raises(InvalidArgument) as caught:
        await finished(domain.router.upscale(account, "up-2", UpscaleRequest(four_k.job_id, 4)))
    assert caught.value.reason == "OUTPUT_TOO_LARGE"

    assert domain.ledger.balance(account) == (400 - spent, 0)
    assert len(await jobs_of(domain, account)) == 2
    assert len(domain.ledger.holds) == 2


async def test_a_cancelled_job_cannot_be_promoted(domain: RouterDomain) -> None:
    account = domain.ledger.open("acct")
    domain.renderer.gate = asyncio.Event()
    request = RouteRequest(prompt="a harbour", tier="pro", size=ImageSize.K2, n=4)
    events = domain.router.generate(account, "k", request)
    accepted = await anext(events)
    assert isinstance(accepted, BatchAccepted)
    last = accepted.record.jobs[-1]

    (cancelled,) = await domain.router.cancel(account, job_id=last.job_id)
    assert cancelled.status is JobStatus.CANCELLED
    domain.renderer.gate.set()
    rest = [event async for event in events]
    assert rest, "the other jobs still finish"

    with pytest.raises(FailedPrecondition) as caught:
        await finished(domain.router.promote(account, "p", Handover(last.job_id, tier="pro")))
    assert caught.value.reason == "JOB_NOT_SUCCEEDED"
    assert caught.value.metadata["status"] == "cancelled"
    jobs = await jobs_of(domain, account)
    delivered = sum(job.cost for job in jobs if job.status is JobStatus.SUCCEEDED)
    assert delivered == 3 * domain.policy.prices.price("pro", ImageSize.K2)
    assert domain.ledger.balance(account) == (400 - delivered, 0)


@pytest.mark.parametrize(
    ("stranger_id", "stranger_tenant"),
    [("stranger", TENANT), ("owner", "tenant-b")],
    ids=["another account", "the same account id in another tenant"],
)
async def test_another_owners_job_is_not_found_for_anything(
    domain: RouterDomain, stranger_id: str, stranger_tenant: str
) -> None:
    owner = domain.ledger.open("owner")
    stranger = domain.ledger.open(stranger_id, tenant=stranger_tenant)
    job = await domain.delivered(owner, "standard")
    await domain.router.set_shortlisted(owner, job.job_id, True)
    assert job.asset is not None
    mask = left_half_mask(job.width, job.height)

    attempts = {
        "promote": finished(domain.router.promote(stranger, "a", Handover(job.job_id, "pro"))),
        "upscale": finished(domain.router.upscale(stranger, "b", UpscaleRequest(job.job_id))),
        "edit": finished(domain.router.edit(stranger, "c", EditRequest(job.job_id, mask))),
        "get": domain.router.get_job(stranger, job.job_id),
        "cancel": domain.router.cancel(stranger, job_id=job.job_id),
        "cancel batch": domain.router.cancel(stranger, batch_id=job.batch_id),
        "shortlist": domain.router.set_shortlisted(stranger, job.job_id, False),
        "asset": domain.router.open_asset(stranger, job.asset.asset_id),
    }
    for name, attempt in attempts.items():
        with pytest.raises(NotFound):
            await attempt
            pytest.fail(f"{name} answered a stranger")

    assert domain.ledger.balance(stranger) == (400, 0)
    assert await jobs_of(domain, stranger) == ()
    assert await domain.jobs.get(owner, job.job_id) == replace(job, shortlisted=True)
    assert domain.ledger.balance(owner) == (400 - job.cost, 0)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("nano", "TIER_CANNOT_INPAINT"),
        ("wrong size", "MASK_SIZE_MISMATCH"),
        ("not an image", "MASK_NOT_AN_IMAGE"),
        ("truncated", "MASK_NOT_AN_IMAGE"),
        ("selects nothing", "MASK_EMPTY"),
        ("empty", None),
    ],
)
async def test_bad_edits_change_nothing(domain: RouterDomain, case: str, reason: str | None):
    account = domain.ledger.open("acct")
    parent = await domain.delivered(account, "nano" if case == "nano" else "standard")
    mask = {
        "nano": lambda: left_half_mask(parent.width, parent.height),
        "wrong size": lambda: left_half_mask(512, 512),
        "not an image": lambda: b"not a png",
        "truncated": lambda: truncated_mask(parent.width, parent.height),
        "selects nothing": lambda: black_mask(parent.width, parent.height),
        "empty": lambda: b"",
    }[case]()
    before = domain.ledger.balance(account)

    with pytest.raises(InvalidArgument) as caught:
        await finished(domain.router.edit(account, "edit", EditRequest(parent.job_id, mask)))

    if reason:
        assert caught.value.reason == reason
    assert caught.value.violations[0].field == "mask" or case == "nano"
    assert domain.ledger.balance(account) == (before[0], 0)
    assert len(await jobs_of(domain, account)) == 1


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"tier": "ultra"}, "tier"),
        ({"n": -1}, "n"),
        ({"n": 65}, "n"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 2001}, "prompt"),
        ({"size": ImageSize.K2}, "size"),
    ],
)
async def test_bad_generate_requests_change_nothing(
    domain: RouterDomain, changes: dict[str, Any], field: str
) -> None:
    account = domain.ledger.open("acct")
    request = replace(RouteRequest(prompt="a red fox in a snowy forest", tier="nano"), **changes)

    with pytest.raises(InvalidArgument) as caught:
        await finished(domain.router.generate(account, "k", request))

    assert field in [violation.field for violation in caught.value.violations]
    assert domain.ledger.balance(account) == (400, 0)
    assert await jobs_of(domain, account) == ()
    assert domain.ledger.holds == {}
