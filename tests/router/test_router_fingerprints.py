"""An idempotency key names one request: reused with any single field changed it is refused
(ALREADY_EXISTS), for every mutating RPC of the router; reused unchanged it replays.

One suite serves the whole module: each case is a fresh account, so cases do not meet.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from PIL import Image
from tiergen.common.v1 import common_pb2
from tiergen.router.v1 import router_pb2

from services.runtime.status import from_rpc_error
from tests.router.conftest import InProcessSuite, running_suite

pytestmark = pytest.mark.asyncio(loop_scope="module")

SQUARE_1K = common_pb2.Resolution(
    size=common_pb2.IMAGE_SIZE_1K, aspect_ratio=common_pb2.ASPECT_RATIO_1_1
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InProcessSuite]:
    data_dir: Path = tmp_path_factory.mktemp("fingerprints")
    async with running_suite(data_dir, {}, {}) as suite:
        yield suite


async def drain(call: Any) -> list[Any]:
    return [event async for event in call]


async def generated(suite: InProcessSuite, account: str, tier: str) -> router_pb2.Job:
    spec = router_pb2.GenerationSpec(prompt="a red fox", tier=tier, resolution=SQUARE_1K)
    request = router_pb2.GenerateRequest(
        account_id=account, idempotency_key=uuid.uuid4().hex, spec=spec
    )
    (job,) = [e.job for e in await drain(suite.router.Generate(request)) if e.HasField("job")]
    assert job.status == router_pb2.JOB_STATUS_SUCCEEDED
    return job


def mask(width: int, height: int, left: bool) -> bytes:
    image = Image.new("L", (width, height), 0)
    image.paste(255, (0, 0, width // 2, height) if left else (width // 2, 0, width, height))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def generate_request(account: str, key: str, **changes: Any) -> router_pb2.GenerateRequest:
    spec = router_pb2.GenerationSpec(
        prompt="a red fox in snow",
        tier="standard",
        stage=common_pb2.STAGE_EXPLORE,
        resolution=SQUARE_1K,
        n=1,
        seed=5,
        allow_downgrade=False,
        fidelity=router_pb2.FIDELITY_UNSPECIFIED,
    )
    for name, value in changes.items():
        if name == "size":
            spec.resolution.size = value
        elif name == "aspect_ratio":
            spec.resolution.aspect_ratio = value
        else:
            setattr(spec, name, value)
    return router_pb2.GenerateRequest(account_id=account, idempotency_key=key, spec=spec)


GENERATE_CHANGES: dict[str, Any] = {
    "prompt": "a grey wolf in snow",
    "tier": "pro",
    "stage": common_pb2.STAGE_VALIDATE,
    "size": common_pb2.IMAGE_SIZE_2K,
    "aspect_ratio": common_pb2.ASPECT_RATIO_16_9,
    "n": 2,
    "seed": 6,
    "allow_downgrade": True,
    "fidelity": router_pb2.FIDELITY_HIGH,
}


async def refused_as_reused(call: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await drain(call)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS, caught.value
    assert from_rpc_error(caught.value).reason == "IDEMPOTENCY_KEY_REUSED"


@pytest.mark.parametrize("field", sorted(GENERATE_CHANGES))
async def test_generate_key_reused_with_one_field_changed(shared, field):
    account = await shared.open_account()
    key = uuid.uuid4().hex
    original = await drain(shared.router.Generate(generate_request(account, key)))
    await refused_as_reused(
        shared.router.Generate(generate_request(account, key, **{field: GENERATE_CHANGES[field]}))
    )
    replay = await drain(shared.router.Generate(generate_request(account, key), timeout=60))
    assert replay[0].batch.replayed and replay[0].batch.batch_id == original[0].batch.batch_id


PROMOTE_CHANGES: dict[str, Callable[[router_pb2.PromoteRequest, str], None]] = {
    "job_id": lambda request, other: setattr(request, "job_id", other),
    "tier": lambda request, other: setattr(request, "tier", "pro"),
    "resolution.size": lambda request, other: setattr(
        request.resolution, "size", common_pb2.IMAGE_SIZE_2K
    ),
    "resolution.aspect_ratio": lambda request, other: setattr(
        request.resolution, "aspect_ratio", common_pb2.ASPECT_RATIO_4_3
    ),
    "prompt": lambda request, other: setattr(request, "prompt", "a white fox"),
    "prompt_addition": lambda request, other: setattr(request, "prompt_addition", ", at dusk"),
    "strength": lambda request, other: setattr(request, "strength", 0.5),
    "seed": lambda request, other: setattr(request, "seed", 4),
}


@pytest.mark.parametrize("field", sorted(PROMOTE_CHANGES))
async def test_promote_key_reused_with_one_field_changed(shared, field):
    account = await shared.open_account()
    parent, other = (
        await generated(shared, account, "nano"),
        await generated(shared, account, "nano"),
    )
    key = uuid.uuid4().hex

    def request() -> router_pb2.PromoteRequest:
        return router_pb2.PromoteRequest(
            account_id=account,
            idempotency_key=key,
            job_id=parent.job_id,
            tier="standard",
            resolution=SQUARE_1K,
            strength=0.6,
            seed=3,
        )

    original = await drain(shared.router.Promote(request()))
    changed = request()
    PROMOTE_CHANGES[field](changed, other.job_id)
    await refused_as_reused(shared.router.Promote(changed))
    replay = await drain(shared.router.Promote(request(), timeout=60))
    assert replay[0].accepted.job_id == original[0].accepted.job_id


UPSCALE_CHANGES: dict[str, Callable[[router_pb2.UpscaleRequest, str], None]] = {
    "job_id": lambda request, other: setattr(request, "job_id", other),
    "factor": lambda request, other: setattr(request, "factor", 1.5),
    "method": lambda request, other: setattr(request, "method", common_pb2.UPSCALE_METHOD_BICUBIC),
    "output_format": lambda request, other: setattr(
        request, "output_format", common_pb2.IMAGE_FORMAT_JPEG
    ),
    "quality": lambda request, other: setattr(request, "quality", 80),
}


@pytest.mark.parametrize("field", sorted(UPSCALE_CHANGES))
async def test_upscale_key_reused_with_one_field_changed(shared, field):
    account = await shared.open_account()
    parent, other = (
        await generated(shared, account, "nano"),
        await generated(shared, account, "nano"),
    )
    key = uuid.uuid4().hex

    def request() -> router_pb2.UpscaleRequest:
        return router_pb2.UpscaleRequest(
            account_id=account,
            idempotency_key=key,
            job_id=parent.job_id,
            factor=2,
            method=common_pb2.UPSCALE_METHOD_LANCZOS,
            output_format=common_pb2.IMAGE_FORMAT_PNG,
            quality=0,
        )

    original = await drain(shared.router.Upscale(request()))
    changed = request()
    UPSCALE_CHANGES[field](changed, other.job_id)
    await refused_as_reused(shared.router.Upscale(changed))
    replay = await drain(shared.router.Upscale(request(), timeout=60))
    assert replay[0].accepted.job_id == original[0].accepted.job_id


EDIT_CHANGES: dict[str, Callable[[router_pb2.EditRequest, router_pb2.Job], None]] = {
    "job_id": lambda request, other: setattr(request, "job_id", other.job_id),
    "mask": lambda request, other: setattr(request, "mask", mask(other.width, other.height, False)),
    "prompt": lambda request, other: setattr(request, "prompt", "a white fox"),
    "seed": lambda request, other: setattr(request, "seed", 9),
}


@pytest.mark.parametrize("field", sorted(EDIT_CHANGES))
async def test_edit_key_reused_with_one_field_changed(shared, field):
    account = await shared.open_account()
    parent = await generated(shared, account, "standard")
    other = await generated(shared, account, "standard")
    key = uuid.uuid4().hex

    def request() -> router_pb2.EditRequest:
        return router_pb2.EditRequest(
            account_id=account,
            idempotency_key=key,
            job_id=parent.job_id,
            mask=mask(parent.width, parent.height, True),
            prompt="a red fox",
            seed=8,
        )

    original = await drain(shared.router.Edit(request()))
    changed = request()
    EDIT_CHANGES[field](changed, other)
    await refused_as_reused(shared.router.Edit(changed))
    replay = await drain(shared.router.Edit(request(), timeout=60))
    assert replay[0].accepted.job_id == original[0].accepted.job_id


async def test_the_webhook_named_identifies_the_request_and_detaching_does_not(shared):
    account = await shared.open_account()
    key = uuid.uuid4().hex
    original = await drain(shared.router.Generate(generate_request(account, key)))
    named = generate_request(account, key)
    named.webhook_id = "wh_01ANOTHERENDPOINT"
    await refused_as_reused(shared.router.Generate(named))
    detached = generate_request(account, key)
    detached.detach = True
    (replay,) = await drain(shared.router.Generate(detached))
    assert replay.batch.replayed and replay.batch.batch_id == original[0].batch.batch_id
