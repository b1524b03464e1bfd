"""Under a flood of generations the router still answers reads and health checks.

A flood of Generates larger than the tier's places runs through the real suite: some render,
the rest are refused with RESOURCE_EXHAUSTED before anything is held. While any of them is in
flight, the router keeps answering GetBalance, ListJobs, GetJob and `grpc.health.v1` Check on
its port, every one of them with OK and SERVING, and the credits add up once the flood ends.
"""

from __future__ import annotations

import asyncio

from grpc_health.v1 import health_pb2, health_pb2_grpc
from tiergen.common.v1 import common_pb2
from tiergen.router.v1 import router_pb2

from tests.router.conftest import InProcessSuite, router_channel

FLOOD = 200
SPEC = router_pb2.GenerationSpec(
    prompt="a harbour at dawn, quick sketch",
    tier="nano",
    resolution=common_pb2.Resolution(size=common_pb2.IMAGE_SIZE_1K),
)


async def test_reads_and_health_are_answered_while_generations_flood_the_router(
    suite: InProcessSuite,
) -> None:
    account = await suite.open_account()
    first = await suite.generate_outcome(account, SPEC)
    assert first == ("JOB_STATUS_SUCCEEDED", "")
    (known,) = (await suite.router.ListJobs(router_pb2.ListJobsRequest(account_id=account))).jobs
    health_channel = router_channel(suite.addresses["router"], None)
    health = health_pb2_grpc.HealthStub(health_channel)
    try:
        flood = [asyncio.create_task(suite.generate_outcome(account, SPEC)) for _ in range(FLOOD)]
        answered: list[str] = []
        while not all(task.done() for task in flood):
            balance = await suite.router.GetBalance(
                router_pb2.GetBalanceRequest(account_id=account), timeout=10
            )
            assert balance.balance.available >= 0
            listing = await suite.router.ListJobs(
                router_pb2.ListJobsRequest(account_id=account, page_size=5), timeout=10
            )
            assert listing.jobs
            job = await suite.router.GetJob(
                router_pb2.GetJobRequest(account_id=account, job_id=known.job_id), timeout=10
            )
            assert job.job.status == router_pb2.JOB_STATUS_SUCCEEDED
            status = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert status.status == health_pb2.HealthCheckResponse.SERVING
            answered.append("round")
        outcomes = [task.result() for task in flood]
    finally:
        await health_channel.close()
    refused = [o for o in outcomes if o[0] == "RESOURCE_EXHAUSTED"]
    delivered = [o for o in outcomes if o == ("JOB_STATUS_SUCCEEDED", "")]
    assert refused, "the flood never filled the tier: it proves nothing"
    assert set(refused) == {("RESOURCE_EXHAUSTED", "QUEUE_FULL")}, refused
    assert len(refused) + len(delivered) == FLOOD, outcomes
    assert len(answered) >= 3, "the reads ran while the flood was in flight"
    # Nothing refused was held or charged: every delivered image, and only they, was paid.
    balance = await suite.balance(account)
    assert balance.held == 0
    assert balance.consumed == 2 * (len(delivered) + 1)
