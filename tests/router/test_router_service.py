"""RouterService end to end over real gRPC: routing, credits, handovers, upscales, bad input.

The domain's own checks and charging rules are tested in milliseconds at the domain level
(tests/router/test_router_domain_*.py); here, what needs the real servers."""

from __future__ import annotations

import asyncio
import hashlib
import io
import uuid
from typing import Any

import grpc
import pytest
from PIL import Image
from prometheus_client import REGISTRY
from tiergen.common.v1 import common_pb2
from tiergen.router.v1 import router_pb2

SQUARE_1K = common_pb2.Resolution(
    size=common_pb2.IMAGE_SIZE_1K, aspect_ratio=common_pb2.ASPECT_RATIO_1_1
)


def spec(prompt: str = "a red fox in a snowy forest", **fields: Any) -> router_pb2.GenerationSpec:
    return router_pb2.GenerationSpec(prompt=prompt, **fields)


def key() -> str:
    return uuid.uuid4().hex


async def generate(suite, account: str, generation: router_pb2.GenerationSpec, idem: str = ""):
    request = router_pb2.GenerateRequest(
        account_id=account, idempotency_key=idem or key(), spec=generation
    )
    batch, finished, progress = None, [], 0
    async for event in suite.router.Generate(request):
        kind = event.WhichOneof("event")
        if kind == "batch":
            batch = event.batch
        elif kind == "progress":
            progress += 1
        else:
            finished.append(event.job)
    return batch, finished, progress


async def single(call) -> tuple[router_pb2.Job, router_pb2.Job]:
    accepted = final = None
    async for event in call:
        kind = event.WhichOneof("event")
        if kind == "accepted":
            accepted = event.accepted
        elif kind == "job":
            final = event.job
    return accepted, final


async def download(suite, account: str, asset_id: str) -> bytes:
    data = bytearray()
    info = None
    async for message in suite.router.GetAsset(
        router_pb2.GetAssetRequest(account_id=account, asset_id=asset_id)
    ):
        if message.WhichOneof("payload") == "info":
            info = message.info
        else:
            assert message.chunk.offset == len(data)
            data += message.chunk.data
    assert info is not None and hashlib.sha256(data).hexdigest() == info.sha256
    return bytes(data)


async def jobs_of(suite, account: str) -> list[router_pb2.Job]:
    reply = await suite.router.ListJobs(router_pb2.ListJobsRequest(account_id=account))
    return list(reply.jobs)


async def test_generate_charges_per_image_and_stores_assets(suite):
    account = await suite.open_account()
    batch, jobs, _ = await generate(
        suite, account, spec(tier="nano", n=3, resolution=SQUARE_1K, seed=7)
    )
    assert batch.decision.tier == "nano" and batch.decision.total_cost == 3 * 2
    assert len(batch.jobs) == 3 and not batch.replayed
    assert {job.status for job in jobs} == {router_pb2.JOB_STATUS_SUCCEEDED}
    assert sorted(job.seed for job in jobs) == [7, 8, 9]
    balance = await suite.balance(account)
    assert (balance.available, balance.held) == (400 - 6, 0)
    for job in jobs:
        data = await download(suite, account, job.asset.asset_id)
        with Image.open(io.BytesIO(data)) as image:
            assert image.size == (1024, 1024)
        assert job.cost == 2 and job.trace_id
    assert len(await jobs_of(suite, account)) == 3


async def test_auto_routing_by_stage_and_quote_without_charge(suite):
    account = await suite.open_account()
    explore = await suite.router.Quote(
        router_pb2.QuoteRequest(account_id=account, spec=spec(stage=common_pb2.STAGE_EXPLORE))
    )
    assert explore.decision.tier == "nano" and explore.decision.reasons
    refine = await suite.router.Quote(
        router_pb2.QuoteRequest(
            account_id=account,
            spec=spec('a poster that says "OPEN"', stage=common_pb2.STAGE_REFINE),
        )
    )
    assert refine.decision.tier in {"standard", "pro"} and refine.affordable
    assert (await suite.balance(account)).available == 400
    assert await jobs_of(suite, account) == []


async def test_promote_hands_the_image_over_and_records_lineage(suite):
    account = await suite.open_account()
    _, (parent,), _ = await generate(suite, account, spec(tier="nano", resolution=SQUARE_1K))
    accepted, child = await single(
        suite.router.Promote(
            router_pb2.PromoteRequest(
                account_id=account,
                idempotency_key=key(),
                job_id=parent.job_id,
                tier="standard",
                resolution=common_pb2.Resolution(size=common_pb2.IMAGE_SIZE_2K),
                prompt_addition=", brushed steel",
            )
        )
    )
    assert accepted.status == router_pb2.JOB_STATUS_QUEUED
    assert child.status == router_pb2.JOB_STATUS_SUCCEEDED
    assert (child.width, child.height, child.tier) == (2048, 2048, "standard")
    assert child.parent_job_id == parent.job_id and child.seed == parent.seed
    assert child.prompt == parent.prompt + ", brushed steel"
    assert child.kind == router_pb2.JOB_KIND_PROMOTE
    assert child.HasField("drift") and 0.0 <= child.drift < 0.5
    reply = await suite.router.GetJob(
        router_pb2.GetJobRequest(account_id=account, job_id=parent.job_id)
    )
    assert list(reply.job.child_job_ids) == [child.job_id]
    assert (await suite.balance(account)).available == 400 - 2 - child.cost


async def test_upscale_makes_a_linked_job(suite):
    account = await suite.open_account()
    _, (parent,), _ = await generate(suite, account, spec(tier="nano", resolution=SQUARE_1K))
    _, upscaled = await single(
        suite.router.Upscale(
            router_pb2.UpscaleRequest(
                account_id=account, idempotency_key=key(), job_id=parent.job_id, factor=2
            )
        )
    )
    assert upscaled.status == router_pb2.JOB_STATUS_SUCCEEDED
    assert (upscaled.width, upscaled.height) == (2048, 2048)
    assert upscaled.kind == router_pb2.JOB_KIND_UPSCALE and upscaled.parent_job_id == parent.job_id
    data = await download(suite, account, upscaled.asset.asset_id)
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (2048, 2048)
    assert (await suite.balance(account)).available == 400 - 2 - upscaled.cost


async def test_missing_idempotency_key_is_invalid(suite):
    account = await suite.open_account()
    request = router_pb2.GenerateRequest(account_id=account, spec=spec(tier="nano"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in suite.router.Generate(request):
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_jobs_of_another_account_are_not_found(suite):
    owner, stranger = await suite.open_account(), await suite.open_account()
    _, (job,), _ = await generate(suite, owner, spec(tier="nano", resolution=SQUARE_1K))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await suite.router.GetJob(router_pb2.GetJobRequest(account_id=stranger, job_id=job.job_id))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await single(
            suite.router.Promote(
                router_pb2.PromoteRequest(
                    account_id=stranger, idempotency_key=key(), job_id=job.job_id, tier="pro"
                )
            )
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await download(suite, stranger, job.asset.asset_id)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert (await suite.balance(stranger)).available == 400


async def test_unknown_job_is_not_found(suite):
    account = await suite.open_account()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await suite.router.GetJob(router_pb2.GetJobRequest(account_id=account, job_id="job_nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_caller_going_away_stops_the_batch_and_charges_only_delivered(suite):
    account = await suite.open_account()
    request = router_pb2.GenerateRequest(
        account_id=account,
        idempotency_key=key(),
        spec=spec(tier="pro", n=6, resolution=common_pb2.Resolution(size=common_pb2.IMAGE_SIZE_2K)),
    )
    call = suite.router.Generate(request)
    assert (await call.read()).WhichOneof("event") == "batch"
    call.cancel()
    for _ in range(100):  # the router settles the hold once every job is final
        balance = await suite.balance(account)
        if balance.held == 0:
            break
        await asyncio.sleep(0.1)
    jobs = await jobs_of(suite, account)
    assert all(
        j.status in (router_pb2.JOB_STATUS_SUCCEEDED, router_pb2.JOB_STATUS_CANCELLED) for j in jobs
    )
    assert any(j.status == router_pb2.JOB_STATUS_CANCELLED for j in jobs)
    delivered = sum(j.cost for j in jobs if j.status == router_pb2.JOB_STATUS_SUCCEEDED)
    assert (balance.available, balance.held) == (400 - delivered, 0)


async def test_a_generator_outage_records_nothing_and_releases_the_hold(suite):
    account = await suite.open_account()
    await suite.servers["generator"].stop(0)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await generate(suite, account, spec(tier="nano", resolution=SQUARE_1K))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    # Refused before any work: not the key's answer, so no job stands for it.
    assert await jobs_of(suite, account) == []
    balance = await suite.balance(account)
    assert (balance.available, balance.held) == (400, 0)


def _router_metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _captured(tenant: str = "t-main") -> float:
    """Credits captured for `tenant`, over every tier."""
    return sum(
        sample.value
        for family in REGISTRY.collect()
        if family.name == "tiergen_router_credits_captured"
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels["tenant"] == tenant
    )


async def test_delivered_and_cancelled_jobs_and_captured_credits_are_counted(suite):
    account = await suite.open_account()
    succeeded = {"kind": "generate", "tier": "nano", "status": "succeeded"}
    cancelled = {"kind": "generate", "tier": "pro", "status": "cancelled"}
    before = (
        _router_metric("tiergen_router_jobs_total", **succeeded),
        _router_metric("tiergen_router_jobs_total", **cancelled),
        _captured(),
    )

    _, finished, _ = await generate(suite, account, spec(tier="nano", n=3, resolution=SQUARE_1K))
    call = suite.router.Generate(
        router_pb2.GenerateRequest(
            account_id=account,
            idempotency_key=key(),
            spec=spec(
                tier="pro", n=6, resolution=common_pb2.Resolution(size=common_pb2.IMAGE_SIZE_2K)
            ),
        )
    )
    assert (await call.read()).WhichOneof("event") == "batch"
    call.cancel()
    for _ in range(100):  # the router settles the hold once every job is final
        if (await suite.balance(account)).held == 0:
            break
        await asyncio.sleep(0.1)

    jobs = await jobs_of(suite, account)
    pro_cancelled = sum(
        1 for j in jobs if j.tier == "pro" and j.status == router_pb2.JOB_STATUS_CANCELLED
    )
    charged = sum(j.cost for j in jobs if j.status == router_pb2.JOB_STATUS_SUCCEEDED)
    assert pro_cancelled > 0 and len(finished) == 3
    after = (
        _router_metric("tiergen_router_jobs_total", **succeeded),
        _router_metric("tiergen_router_jobs_total", **cancelled),
        _captured(),
    )
    assert (after[0] - before[0], after[1] - before[1], after[2] - before[2]) == (
        3,
        pro_cancelled,
        charged,
    )
