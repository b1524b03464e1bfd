"""Fallback: an automatically routed generation whose tier is overloaded renders a tier lower."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import grpc
import pytest
from tiergen.common.v1 import common_pb2
from tiergen.generator.v1 import generator_pb2, generator_pb2_grpc
from tiergen.router.v1 import router_pb2

from services.generator.tiers import DEFAULT_CATALOGUE_TOML
from services.router.routing.policy import DEFAULT_POLICY_TOML
from tests.tls import session_pki

pytestmark = pytest.mark.slow

TWO_K = common_pb2.Resolution(size=common_pb2.IMAGE_SIZE_2K)


@pytest.fixture
def generator_env(tmp_path: Path) -> dict[str, str]:
    # One pro render at a time and no queue: a second one is RESOURCE_EXHAUSTED at once.
    tiers = DEFAULT_CATALOGUE_TOML.replace(
        "max_concurrency = 1\nqueue_limit = 8", "max_concurrency = 1\nqueue_limit = 0"
    )
    assert tiers != DEFAULT_CATALOGUE_TOML
    path = tmp_path / "tiers.toml"
    path.write_text(tiers)
    return {"TIERGEN_GENERATOR_TIERS_FILE": str(path)}


@pytest.fixture
def router_env(tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "policy.toml"
    path.write_text(DEFAULT_POLICY_TOML + '\n[fallback]\npro = "standard"\n')
    return {"TIERGEN_ROUTER_POLICY_FILE": str(path)}


async def _occupy_pro(suite) -> asyncio.Task[None]:
    """A pro 4K render held in flight directly on the generator, filling the tier; returns once
    the generator says it is rendering, so the tier's only place is taken."""
    rendering = asyncio.Event()

    async def render() -> None:
        async with session_pki().channel(suite.addresses["generator"]) as channel:
            spec = generator_pb2.RenderSpec(
                tier="pro",
                prompt="a crowded market",
                resolution=common_pb2.Resolution(size=common_pb2.IMAGE_SIZE_4K),
            )
            call = generator_pb2_grpc.GeneratorServiceStub(channel).Render(
                iter([generator_pb2.RenderRequest(spec=spec)])
            )
            async for response in call:
                progress = response.progress if response.HasField("progress") else None
                if progress is not None and progress.stage == "rendering":
                    rendering.set()

    task = asyncio.create_task(render())
    taken = asyncio.create_task(rendering.wait())
    await asyncio.wait({task, taken}, return_when=asyncio.FIRST_COMPLETED)
    taken.cancel()
    if not rendering.is_set():
        await task  # raises why the render ended
        pytest.fail("the render ended before it took the tier's place")
    return task


async def _generate(suite, account: str, spec: router_pb2.GenerationSpec):
    request = router_pb2.GenerateRequest(
        account_id=account, idempotency_key=uuid.uuid4().hex, spec=spec
    )
    jobs = []
    async for event in suite.router.Generate(request):
        if event.WhichOneof("event") == "job":
            jobs.append(event.job)
    return jobs


async def test_auto_routing_falls_back_and_charges_the_lower_tier(suite):
    account = await suite.open_account()
    busy = await _occupy_pro(suite)
    try:
        spec = router_pb2.GenerationSpec(
            prompt='a shop sign that says "OPEN"',
            stage=common_pb2.STAGE_REFINE,
            resolution=TWO_K,
        )
        quote = await suite.router.Quote(router_pb2.QuoteRequest(account_id=account, spec=spec))
        assert quote.decision.tier == "pro"
        (job,) = await _generate(suite, account, spec)
    finally:
        busy.cancel()
        await asyncio.gather(busy, return_exceptions=True)
    assert job.status == router_pb2.JOB_STATUS_SUCCEEDED
    assert job.tier == "standard" and job.cost == 12 < job.quoted_cost
    assert "rendered on standard by policy" in job.reasons[-1]
    balance = await suite.balance(account)
    assert (balance.available, balance.held) == (400 - 12, 0)


async def test_an_explicit_tier_is_honoured_and_fails_instead(suite):
    account = await suite.open_account()
    busy = await _occupy_pro(suite)
    try:
        spec = router_pb2.GenerationSpec(prompt="a harbour", tier="pro", resolution=TWO_K)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _generate(suite, account, spec)
    finally:
        busy.cancel()
        await asyncio.gather(busy, return_exceptions=True)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    balance = await suite.balance(account)
    assert (balance.available, balance.held) == (400, 0)
