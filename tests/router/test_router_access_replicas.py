"""Two router processes over one PostgreSQL database: a key revoked or rotated out through one is
refused by the other within TIERGEN_ROUTER_KEY_CACHE_SECONDS plus one store read."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from tiergen.router.v1 import router_pb2, router_pb2_grpc

from services.router.jobs.migrations import SCHEMA
from services.runtime.migrations import upgrade
from tests.postgres import fresh_schema, with_search_path
from tests.router.conftest import (
    InProcessSuite,
    router_channel,
    router_replicas,
    running_suite,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

#: The replicas' cache bound, and how much longer than it a refusal may take to arrive: one
#: store read and the polling interval, with room for two shared cores under load.
CACHE_SECONDS = 1.0
MARGIN_SECONDS = 2.0
NO_JOB = router_pb2.GetJobRequest(account_id="acct-probe", job_id="job-none")


@pytest.fixture
def database() -> Iterator[str]:
    with fresh_schema("router_replicas", "the replica revocation test") as schema:
        dsn = with_search_path(schema)
        upgrade(SCHEMA, dsn)
        yield dsn


@pytest.fixture
async def suite(tmp_path: Path, database: str) -> AsyncIterator[InProcessSuite]:
    async with running_suite(tmp_path, {"TIERGEN_ROUTER_DSN": database}, {}) as running:
        yield running


async def _admitted(stub: router_pb2_grpc.RouterServiceStub) -> bool:
    try:
        await stub.GetJob(NO_JOB)
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.UNAUTHENTICATED:
            return False
        assert error.code() == grpc.StatusCode.NOT_FOUND, error
    return True


async def _seconds_until_refused(stub: router_pb2_grpc.RouterServiceStub) -> float:
    start = time.monotonic()
    while await _admitted(stub):
        assert time.monotonic() - start < 30, "never refused"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def test_a_revocation_and_a_rotation_reach_the_other_replica_within_the_bound(
    suite: InProcessSuite, database: str
) -> None:
    revoked = await suite.new_key("t-main", ["images:read"])
    rotated = await suite.new_key("t-main", ["images:read"])
    settings = {
        "TIERGEN_ROUTER_DB_POOL_SIZE": "2",
        "TIERGEN_ROUTER_KEY_CACHE_SECONDS": str(CACHE_SECONDS),
    }
    with router_replicas(suite, database, 2, settings) as (first, second):
        channels = []
        try:

            def stub(address: str, key: str) -> router_pb2_grpc.RouterServiceStub:
                channel = router_channel(address, key)
                channels.append(channel)
                return router_pb2_grpc.RouterServiceStub(channel)

            admin = stub(first, suite.api_key)
            on_second = {key: stub(second, key) for key in (revoked, rotated)}
            on_first = stub(first, revoked)
            # Both replicas know both keys now, and cache them.
            for key_stub in (*on_second.values(), on_first):
                assert await _admitted(key_stub)

            await admin.RevokeApiKey(router_pb2.RevokeApiKeyRequest(prefix=revoked[:12]))
            # The replica that revoked it refuses it at once...
            assert not await _admitted(on_first)
            # ...and the other within its cache bound and one read.
            waited = await _seconds_until_refused(on_second[revoked])
            assert waited < CACHE_SECONDS + MARGIN_SECONDS

            # A key rotated out with a grace of 1 s: refused by the other replica once the grace
            # is over, within the same bound.
            await admin.RotateApiKey(
                router_pb2.RotateApiKeyRequest(prefix=rotated[:12], grace_seconds=1)
            )
            waited = await _seconds_until_refused(on_second[rotated])
            assert waited < 1 + CACHE_SECONDS + MARGIN_SECONDS
        finally:
            for channel in channels:
                await channel.close()
