"""What a Generate streams and calls: quick jobs stream no progress, slow ones a little, and the
balance is read only when the policy may downgrade to fit it."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from tiergen.common.v1 import common_pb2
from tiergen.router.v1 import router_pb2

from services.generator.tiers import DEFAULT_CATALOGUE_TOML
from services.router.operations.events import (
    BatchEvent,
    JobFinished,
    JobProgressed,
    ProgressCoalescer,
)

SQUARE_1K = common_pb2.Resolution(
    size=common_pb2.IMAGE_SIZE_1K, aspect_ratio=common_pb2.ASPECT_RATIO_1_1
)


@pytest.fixture
def generator_env(tmp_path: Path) -> dict[str, str]:
    """Every tier on the instant backend: a render takes no time."""
    tiers = tmp_path / "tiers.toml"
    tiers.write_text(DEFAULT_CATALOGUE_TOML.replace('backend = "builtin"', 'backend = "instant"'))
    return {"TIERGEN_GENERATOR_TIERS_FILE": str(tiers)}


async def stream(suite: Any, account: str, **fields: Any) -> list[router_pb2.GenerateResponse]:
    request = router_pb2.GenerateRequest(
        account_id=account,
        idempotency_key=uuid.uuid4().hex,
        spec=router_pb2.GenerationSpec(prompt="a lighthouse at dusk", **fields),
    )
    return [event async for event in suite.router.Generate(request)]


async def test_a_quick_image_streams_its_batch_and_its_job_only(suite):
    account = await suite.open_account()
    events = await stream(suite, account, tier="nano", resolution=SQUARE_1K)
    job = events[-1].job
    assert job.status == router_pb2.JOB_STATUS_SUCCEEDED
    took = job.finish_time.ToNanoseconds() - job.start_time.ToNanoseconds()
    kinds = [event.WhichOneof("event") for event in events]
    if took < 200_000_000:
        # Finished within one progress interval: no progress reaches the caller.
        assert kinds == ["batch", "job"]
    else:
        # A loaded machine made it slower: its latest progress at most every interval.
        assert kinds[0] == "batch" and kinds[-1] == "job"
        assert set(kinds[1:-1]) <= {"progress"} and len(kinds) - 2 <= took // 200_000_000 + 1
    balance = await suite.balance(account)
    assert (balance.available, balance.held) == (400 - 2, 0)


async def test_a_batch_of_quick_images_streams_every_job(suite):
    account = await suite.open_account()
    events = await stream(suite, account, tier="nano", resolution=SQUARE_1K, n=12)
    kinds = [event.WhichOneof("event") for event in events]
    assert kinds[0] == "batch" and kinds.count("job") == 12
    jobs = [event.job for event in events if event.WhichOneof("event") == "job"]
    assert {job.status for job in jobs} == {router_pb2.JOB_STATUS_SUCCEEDED}


@pytest.mark.parametrize("tier", ["pro", "auto"])
async def test_an_unaffordable_request_is_refused_by_its_hold(suite, tier):
    account = await suite.open_account()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream(
            suite,
            account,
            tier=tier,
            stage=common_pb2.STAGE_REFINE,
            resolution=common_pb2.Resolution(size=common_pb2.IMAGE_SIZE_4K),
            n=64,
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    status = rpc_status.from_call(caught.value)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    assert info.reason == "INSUFFICIENT_CREDITS"
    assert int(info.metadata["available"]) == 400
    required = int(info.metadata["required"])
    assert int(info.metadata["shortfall"]) == required - 400 > 0
    assert info.metadata["tier"]
    balance = await suite.balance(account)
    assert (balance.available, balance.held) == (400, 0)


async def test_a_request_that_may_be_downgraded_reads_the_balance(suite):
    account = await suite.open_account()
    # 30 pro images at 1K cost more than the 400 credits; 30 standard ones do not.
    events = await stream(
        suite, account, tier="pro", resolution=SQUARE_1K, n=30, allow_downgrade=True
    )
    decision = events[0].batch.decision
    assert decision.downgraded and decision.tier == "standard"
    jobs = [event.job for event in events if event.WhichOneof("event") == "job"]
    assert [job.status for job in jobs] == [router_pb2.JOB_STATUS_SUCCEEDED] * 30


class TestProgress:
    """How a batch's progress is coalesced on its way to the caller."""

    async def test_only_the_latest_progress_of_a_job_is_sent_after_the_interval(self) -> None:
        sent: list[BatchEvent | None] = []
        events = ProgressCoalescer(sent.append, 0.05)
        events.progress("job_a", "queued", 0.0)
        events.progress("job_b", "queued", 0.0)
        events.progress("job_a", "rendering", 0.1)
        assert sent == []
        await asyncio.sleep(0.1)
        assert sent == [
            JobProgressed("job_a", "rendering", 0.1),
            JobProgressed("job_b", "queued", 0.0),
        ]
        events.close()

    async def test_progress_of_a_finished_job_is_dropped(self, job: Any) -> None:
        sent: list[BatchEvent | None] = []
        events = ProgressCoalescer(sent.append, 0.05)
        events.progress(job.job_id, "rendering", 0.1)
        events.finished(job)
        await asyncio.sleep(0.1)
        assert sent == [JobFinished(job)]
        events.close()

    async def test_an_interval_of_zero_sends_every_event_at_once(self) -> None:
        sent: list[BatchEvent | None] = []
        events = ProgressCoalescer(sent.append, 0)
        events.progress("job_a", "queued", 0.0)
        events.progress("job_a", "rendering", 0.1)
        assert sent == [
            JobProgressed("job_a", "queued", 0.0),
            JobProgressed("job_a", "rendering", 0.1),
        ]

    async def test_closing_drops_what_is_pending(self) -> None:
        sent: list[BatchEvent | None] = []
        events = ProgressCoalescer(sent.append, 0.05)
        events.progress("job_a", "rendering", 0.1)
        events.close()
        await asyncio.sleep(0.1)
        assert sent == []

    @pytest.fixture
    def job(self) -> Any:
        from datetime import UTC, datetime

        from services.router.jobs.model import Job, JobKind, JobStatus, Owner
        from services.router.routing.catalogue import AspectRatio, Stage

        return Job(
            job_id="job_a",
            batch_id="bat_a",
            owner=Owner("tenant-a", "acct"),
            kind=JobKind.GENERATE,
            status=JobStatus.SUCCEEDED,
            tier="nano",
            stage=Stage.EXPLORE,
            prompt="p",
            seed=1,
            variation=0,
            size=None,
            aspect_ratio=AspectRatio.R1_1,
            width=1,
            height=1,
            quoted_cost=2,
            cost=2,
            parent_job_id=None,
            asset=None,
            reasons=(),
            strength=None,
            drift=None,
            upscale_factor=None,
            upscale_method=None,
            error=None,
            hold_id=None,
            create_time=datetime.now(UTC),
            start_time=None,
            finish_time=None,
            trace_id="",
        )
