"""Provider failures through the router: the right status, and the hold released every time."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from tiergen.common.v1 import common_pb2
from tiergen.router.v1 import router_pb2

from services.runtime.status import from_rpc_error
from tests.generator.fake_providers import FakeGemini, Mode
from tests.router.gemini_tiers import standard_on_gemini

UNFINISHED = {router_pb2.JOB_STATUS_QUEUED, router_pb2.JOB_STATUS_RUNNING}


@pytest.fixture
def gemini() -> Iterator[FakeGemini]:
    with FakeGemini() as fake:
        yield fake


@pytest.fixture
def generator_env(tmp_path: Path, gemini: FakeGemini) -> dict[str, str]:
    """Overrides the suite's generator settings: the standard tier renders on the fake."""
    return standard_on_gemini(tmp_path, gemini, TIMEOUT_SECONDS="1.5", MAX_ATTEMPTS="2")


async def _generate(
    suite, account: str, key: str | None = None, deadline: float | None = None
) -> router_pb2.Job:
    request = router_pb2.GenerateRequest(
        account_id=account,
        idempotency_key=key or uuid.uuid4().hex,
        spec=router_pb2.GenerationSpec(
            prompt="a lighthouse at dawn",
            tier="standard",
            resolution=common_pb2.Resolution(size=common_pb2.IMAGE_SIZE_1K),
        ),
    )
    final = None
    async for event in suite.router.Generate(request, timeout=deadline):
        if event.WhichOneof("event") == "job":
            final = event.job
    assert final is not None
    return final


async def test_a_provider_render_is_charged_once(suite, gemini):
    account = await suite.open_account()
    job = await _generate(suite, account)
    assert job.status == router_pb2.JOB_STATUS_SUCCEEDED
    assert (job.width, job.height) == (1024, 1024)
    assert gemini.hits == 1
    balance = await suite.balance(account)
    assert (balance.available, balance.held) == (400 - job.cost, 0)


@pytest.mark.parametrize(
    ("mode", "code", "reason"),
    [
        # The provider may have rendered (and billed): the failure is the key's answer.
        (Mode.HANG, grpc.StatusCode.UNAVAILABLE, "PROVIDER_TIMEOUT"),
        (Mode.SAFETY_BLOCK, grpc.StatusCode.FAILED_PRECONDITION, "CONTENT_BLOCKED"),
        (Mode.NO_IMAGE, grpc.StatusCode.FAILED_PRECONDITION, "NO_IMAGE"),
    ],
)
async def test_provider_failures_release_the_hold(suite, gemini, mode, code, reason):
    account = await suite.open_account()
    gemini.fail(mode)
    key = uuid.uuid4().hex
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _generate(suite, account, key)
    assert caught.value.code() == code
    assert from_rpc_error(caught.value).reason == reason
    (job,) = (await suite.router.ListJobs(router_pb2.ListJobsRequest(account_id=account))).jobs
    assert job.status == router_pb2.JOB_STATUS_FAILED and job.cost == 0
    assert (job.error.code, job.error.reason) == (code.name, reason)
    balance = await suite.balance(account)
    assert (balance.available, balance.held) == (400, 0)
    # A retry with the key replays that failure; it does not render again.
    gemini.reset()
    replayed = await _generate(suite, account, key)
    assert (replayed.job_id, replayed.status) == (job.job_id, router_pb2.JOB_STATUS_FAILED)


@pytest.mark.parametrize(
    ("mode", "code", "reason"),
    [
        (Mode.RATE_LIMITED, grpc.StatusCode.RESOURCE_EXHAUSTED, "PROVIDER_RATE_LIMITED"),
        (Mode.SERVER_ERROR, grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
        (Mode.MALFORMED_BASE64, grpc.StatusCode.UNAVAILABLE, "PROVIDER_BAD_RESPONSE"),
    ],
)
async def test_a_refusal_before_any_work_leaves_the_key_free(suite, gemini, mode, code, reason):
    account = await suite.open_account()
    gemini.fail(mode, retry_after="0.1s" if mode is Mode.RATE_LIMITED else None)
    key = uuid.uuid4().hex
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _generate(suite, account, key)
    assert caught.value.code() == code
    assert from_rpc_error(caught.value).reason == reason
    # Nothing recorded, nothing held or charged.
    listing = await suite.router.ListJobs(router_pb2.ListJobsRequest(account_id=account))
    assert list(listing.jobs) == []
    balance = await suite.balance(account)
    assert (balance.available, balance.held) == (400, 0)
    # The same key, once the provider is back, runs and is charged once.
    gemini.reset()
    job = await _generate(suite, account, key)
    assert job.status == router_pb2.JOB_STATUS_SUCCEEDED
    balance = await suite.balance(account)
    assert (balance.available, balance.held) == (400 - job.cost, 0)


async def test_a_callers_deadline_ends_the_render_and_the_credits_still_settle(suite, gemini):
    account = await suite.open_account()
    gemini.fail(Mode.HANG)  # the provider would keep the render for its 1.5 s timeout
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _generate(suite, account, deadline=0.5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The job ends and then the hold settles although the caller's deadline has passed.
    for _ in range(100):
        balance = await suite.balance(account)
        listing = await suite.router.ListJobs(router_pb2.ListJobsRequest(account_id=account))
        (job,) = listing.jobs
        if balance.held == 0 and job.status not in UNFINISHED:
            break
        await asyncio.sleep(0.05)
    assert (balance.available, balance.held) == (400, 0)
    # The render's own call ends at the same deadline as the caller's: whichever the router
    # hears first, the job ends uncharged.
    ended = (job.status, job.error.code)
    assert ended in {
        (router_pb2.JOB_STATUS_CANCELLED, "CANCELLED"),
        (router_pb2.JOB_STATUS_FAILED, "DEADLINE_EXCEEDED"),
        (router_pb2.JOB_STATUS_FAILED, "CANCELLED"),
    }, ended
    assert job.cost == 0
