"""Shortlists and in-painting edits through the router."""

from __future__ import annotations

import io
import uuid

import grpc
import numpy as np
import pytest
from PIL import Image
from tiergen.common.v1 import common_pb2
from tiergen.router.v1 import router_pb2

SQUARE_1K = common_pb2.Resolution(size=common_pb2.IMAGE_SIZE_1K)


async def generate(suite, account: str, tier: str, n: int = 1) -> list[router_pb2.Job]:
    request = router_pb2.GenerateRequest(
        account_id=account,
        idempotency_key=uuid.uuid4().hex,
        spec=router_pb2.GenerationSpec(
            prompt="a harbour town at dusk", tier=tier, n=n, resolution=SQUARE_1K
        ),
    )
    return [e.job async for e in suite.router.Generate(request) if e.WhichOneof("event") == "job"]


async def image_of(suite, account: str, job: router_pb2.Job) -> np.ndarray:
    data = bytearray()
    request = router_pb2.GetAssetRequest(account_id=account, asset_id=job.asset.asset_id)
    async for message in suite.router.GetAsset(request):
        if message.WhichOneof("payload") == "chunk":
            data += message.chunk.data
    with Image.open(io.BytesIO(bytes(data))) as image:
        return np.asarray(image.convert("RGB"))


def left_half_mask(width: int, height: int) -> bytes:
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, (0, 0, width // 2, height))
    out = io.BytesIO()
    mask.save(out, format="PNG")
    return out.getvalue()


async def edit(suite, account: str, job_id: str, mask: bytes, prompt: str = "") -> router_pb2.Job:
    request = router_pb2.EditRequest(
        account_id=account,
        idempotency_key=uuid.uuid4().hex,
        job_id=job_id,
        mask=mask,
        prompt=prompt,
    )
    final = None
    async for event in suite.router.Edit(request):
        if event.WhichOneof("event") == "job":
            final = event.job
    assert final is not None
    return final


async def test_shortlist_marks_and_filters(suite):
    account = await suite.open_account()
    jobs = await generate(suite, account, "nano", n=3)
    for job in jobs[:2]:
        reply = await suite.router.SetShortlist(
            router_pb2.SetShortlistRequest(account_id=account, job_id=job.job_id, shortlisted=True)
        )
        assert reply.job.shortlisted
    listed = await suite.router.ListJobs(
        router_pb2.ListJobsRequest(account_id=account, shortlisted=True)
    )
    assert {j.job_id for j in listed.jobs} == {j.job_id for j in jobs[:2]}
    await suite.router.SetShortlist(
        router_pb2.SetShortlistRequest(account_id=account, job_id=jobs[0].job_id, shortlisted=False)
    )
    others = await suite.router.ListJobs(
        router_pb2.ListJobsRequest(account_id=account, shortlisted=False)
    )
    assert {j.job_id for j in others.jobs} == {jobs[0].job_id, jobs[2].job_id}
    stranger = await suite.open_account()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await suite.router.SetShortlist(
            router_pb2.SetShortlistRequest(
                account_id=stranger, job_id=jobs[1].job_id, shortlisted=False
            )
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    # Refused, and the owner's mark unchanged.
    owned = await suite.router.GetJob(
        router_pb2.GetJobRequest(account_id=account, job_id=jobs[1].job_id)
    )
    assert owned.job.shortlisted


async def test_edit_repaints_only_the_masked_region(suite):
    account = await suite.open_account()
    (parent,) = await generate(suite, account, "standard")
    before = (await suite.balance(account)).available
    child = await edit(
        suite, account, parent.job_id, left_half_mask(parent.width, parent.height), "neon city"
    )
    assert child.status == router_pb2.JOB_STATUS_SUCCEEDED
    assert child.kind == router_pb2.JOB_KIND_EDIT and child.parent_job_id == parent.job_id
    assert (child.tier, child.width, child.height) == ("standard", parent.width, parent.height)
    assert (await suite.balance(account)).available == before - child.cost
    old, new = await image_of(suite, account, parent), await image_of(suite, account, child)
    half = parent.width // 2
    assert np.array_equal(old[:, half:], new[:, half:])
    assert not np.array_equal(old[:, :half], new[:, :half])
