"""Two router processes over one PostgreSQL database share each quota exactly: calls sent to
both at once are admitted as often as one router would admit them, not once per replica.

The quotas refill slowly (one image every 3 s, one request every 20 s), so the count admitted
is the burst plus at most what the measured time refilled: counted, with a bound from the
clock, never a latency asserted."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from tiergen.common.v1 import common_pb2
from tiergen.router.v1 import router_pb2, router_pb2_grpc

from services.generator.tiers import DEFAULT_CATALOGUE_TOML
from services.router.jobs.migrations import SCHEMA
from services.runtime.migrations import upgrade
from services.runtime.status import from_rpc_error
from tests.postgres import fresh_schema, with_search_path
from tests.router.conftest import (
    InProcessSuite,
    router_channel,
    router_replicas,
    running_suite,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

IMAGES_PER_MINUTE = 20
QUOTAS = f"""\
[tenants.t-main.tenant]
images_per_minute = {IMAGES_PER_MINUTE}

[tenants.t-rate.tenant]
requests_per_second = 0.05
"""
SPEC = router_pb2.GenerationSpec(
    prompt="a lighthouse at dusk",
    tier="nano",
    stage=common_pb2.STAGE_EXPLORE,
    resolution=common_pb2.Resolution(
        size=common_pb2.IMAGE_SIZE_1K, aspect_ratio=common_pb2.ASPECT_RATIO_1_1
    ),
    n=1,
)


@pytest.fixture
def database() -> Iterator[str]:
    with fresh_schema("router_quota_replicas", "the quota replica test") as schema:
        dsn = with_search_path(schema)
        upgrade(SCHEMA, dsn)
        yield dsn


@pytest.fixture
async def suite(tmp_path: Path, database: str) -> AsyncIterator[InProcessSuite]:
    tiers = tmp_path / "tiers.toml"
    tiers.write_text(DEFAULT_CATALOGUE_TOML.replace('backend = "builtin"', 'backend = "instant"'))
    generator_env = {"TIERGEN_GENERATOR_TIERS_FILE": str(tiers)}
    async with running_suite(tmp_path, {"TIERGEN_ROUTER_DSN": database}, generator_env) as running:
        yield running


async def admitted(call: object, subject: str) -> bool:
    """Whether the quota let the call through (what happened after is not the quota's)."""
    try:
        if hasattr(call, "__aiter__"):
            async for _ in call:
                pass
        else:
            await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        refusal = from_rpc_error(error)
        if refusal.reason == "QUOTA_EXCEEDED":
            assert [v.subject for v in getattr(refusal, "violations", [])] == [subject]
            return False
        # Past the quota, the generator's queue may still be full: not the quota's refusal.
        assert refusal.reason == "QUEUE_FULL", error
    return True


async def ready(stub: router_pb2_grpc.RouterServiceStub, account: str) -> None:
    """Waits until the replica routes (it has the generator's tiers)."""
    give_up = time.monotonic() + 30
    while True:
        try:
            await stub.Quote(router_pb2.QuoteRequest(account_id=account, spec=SPEC))
            return
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error
            assert time.monotonic() < give_up, "a replica never learned the tiers"
            await asyncio.sleep(0.1)


async def test_two_replicas_admit_what_one_would(
    suite: InProcessSuite, database: str, tmp_path: Path
) -> None:
    quotas = tmp_path / "quotas.toml"
    quotas.write_text(QUOTAS)
    accounts = [await suite.open_account() for _ in range(6)]
    rate_key = await suite.new_key("t-rate")
    for i in range(3):
        await suite.stub(rate_key).OpenAccount(
            router_pb2.OpenAccountRequest(account_id=f"rate-{i}", idempotency_key="open")
        )
    settings = {"TIERGEN_ROUTER_DB_POOL_SIZE": "4", "TIERGEN_ROUTER_QUOTAS_FILE": str(quotas)}
    with router_replicas(suite, database, 2, settings) as addresses:
        channels = [router_channel(address, suite.api_key) for address in addresses]
        rate_channels = [router_channel(address, rate_key) for address in addresses]
        try:
            stubs = [router_pb2_grpc.RouterServiceStub(c) for c in channels]  # type: ignore[no-untyped-call]
            rate_stubs = [router_pb2_grpc.RouterServiceStub(c) for c in rate_channels]  # type: ignore[no-untyped-call]
            # Every replica knows the generator's tiers before the clock starts (a Quote of
            # t-main counts against no quota of it).
            for stub in stubs:
                await ready(stub, accounts[0])

            started = time.monotonic()
            images = await asyncio.gather(
                *(
                    admitted(
                        stubs[i % 2].Generate(
                            router_pb2.GenerateRequest(
                                account_id=accounts[i % len(accounts)],
                                idempotency_key=uuid.uuid4().hex,
                                spec=SPEC,
                            )
                        ),
                        "tenant:t-main:images_per_minute",
                    )
                    for i in range(3 * IMAGES_PER_MINUTE)
                )
            )
            elapsed = time.monotonic() - started
            refilled = int(elapsed / (60 / IMAGES_PER_MINUTE))
            # Both replicas saw calls, and together admitted the burst (a limiter per replica
            # would have admitted twice as many).
            assert IMAGES_PER_MINUTE <= sum(images) <= IMAGES_PER_MINUTE + refilled, elapsed
            assert any(images[0::2]) and any(images[1::2])

            started = time.monotonic()
            quotes = await asyncio.gather(
                *(
                    admitted(
                        rate_stubs[i % 2].Quote(
                            router_pb2.QuoteRequest(account_id=f"rate-{i % 3}", spec=SPEC)
                        ),
                        "tenant:t-rate:requests_per_second",
                    )
                    for i in range(30)
                )
            )
            elapsed = time.monotonic() - started
            assert 1 <= sum(quotes) <= 1 + int(elapsed / 20), elapsed
        finally:
            for channel in [*channels, *rate_channels]:
                await channel.close()
