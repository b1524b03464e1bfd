"""A router killed mid-batch: on SQLite its restart fails the jobs and releases the hold; over a
shared PostgreSQL job store another replica does, once the dead one's lease runs out."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from tiergen.common.v1 import common_pb2
from tiergen.router.v1 import router_pb2, router_pb2_grpc

from services.cli.suite import Suite
from services.router.jobs.migrations import SCHEMA
from services.runtime.credentials import bearer_interceptors
from services.runtime.migrations import upgrade
from services.runtime.tls import channel_credentials
from tests.postgres import fresh_schema, with_search_path

pytestmark = pytest.mark.slow

#: A doomed batch: four 4K renders on the pro tier, far from done when its router is killed.
DOOMED = router_pb2.GenerationSpec(
    prompt="a city of glass towers",
    tier="pro",
    n=4,
    resolution=common_pb2.Resolution(size=common_pb2.IMAGE_SIZE_4K),
)


def _channel(suite: Suite, address: str, **kwargs: Any) -> grpc.aio.Channel:
    """A TLS channel to a router of the suite, trusting the suite's CA."""
    return grpc.aio.secure_channel(address, channel_credentials(suite.client_security), **kwargs)


def _start_router(suite: Suite, data: Path, **settings: str) -> tuple[subprocess.Popen[bytes], str]:
    """Another router process next to the suite's, on its job store unless `settings` say."""
    ready = data / "run" / "router-again.addr"
    ready.unlink(missing_ok=True)
    addresses = suite.addresses
    env = {
        **os.environ,
        **suite.pki.server_env("router"),
        "TIERGEN_PORT": "0",
        "TIERGEN_READY_FILE": str(ready),
        "LEDGER_ADDR": addresses["ledger"],
        "GENERATOR_ADDR": addresses["generator"],
        "UPSCALER_ADDR": addresses["upscaler"],
        "TIERGEN_ROUTER_DSN": f"sqlite:///{data / 'router.db'}",
        "TIERGEN_ROUTER_ASSETS_DIR": str(data / "assets"),
        **settings,
    }
    with (data / "logs" / "router-again.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.router"], env=env, stdout=log, stderr=log
        )
    give_up = time.monotonic() + 60
    while not ready.exists():
        assert process.poll() is None, "the restarted router exited"
        assert time.monotonic() < give_up, "the restarted router did not start"
        time.sleep(0.05)
    return process, ready.read_text().strip()


async def test_a_restarted_router_fails_abandoned_jobs_and_returns_their_credits(tmp_path):
    data = tmp_path / "data"
    suite = Suite(data)
    suite.start()
    restarted: subprocess.Popen[bytes] | None = None
    try:
        account = "crash-victim"
        async with _channel(
            suite, suite.router, interceptors=bearer_interceptors(suite.api_key)
        ) as channel:
            router = router_pb2_grpc.RouterServiceStub(channel)
            await router.OpenAccount(
                router_pb2.OpenAccountRequest(account_id=account, idempotency_key="open")
            )
            call = router.Generate(
                router_pb2.GenerateRequest(
                    account_id=account, idempotency_key="doomed", spec=DOOMED
                )
            )
            batch = (await call.read()).batch
            held = (
                await router.GetBalance(router_pb2.GetBalanceRequest(account_id=account))
            ).balance
            assert held.held == batch.decision.total_cost > 0
            # The router dies with the batch running: no chance to settle anything.
            suite.kill("router")
            call.cancel()

        restarted, address = _start_router(suite, data)
        async with _channel(
            suite, address, interceptors=bearer_interceptors(suite.api_key)
        ) as channel:
            router = router_pb2_grpc.RouterServiceStub(channel)
            listed = await router.ListJobs(router_pb2.ListJobsRequest(account_id=account))
            assert len(listed.jobs) == 4
            assert {job.status for job in listed.jobs} == {router_pb2.JOB_STATUS_FAILED}
            assert {job.error.reason for job in listed.jobs} == {"ROUTER_LOST"}
            balance = (
                await router.GetBalance(router_pb2.GetBalanceRequest(account_id=account))
            ).balance
            assert (balance.available, balance.held) == (400, 0)
            # The retry of the same request replays the failed batch and charges nothing.
            replay = router.Generate(
                router_pb2.GenerateRequest(
                    account_id=account, idempotency_key="doomed", spec=DOOMED
                )
            )
            first = await replay.read()
            assert first.batch.replayed and first.batch.batch_id == batch.batch_id
            replay.cancel()
    finally:
        if restarted is not None:
            restarted.send_signal(signal.SIGTERM)
            restarted.wait(30)
        suite.stop()


@pytest.fixture
def router_dsn() -> Iterator[str]:
    """A job store DSN on a fresh schema of the test server, dropped afterwards."""
    with fresh_schema("router_recovery", "the replica recovery test") as name:
        upgrade(SCHEMA, with_search_path(name))
        yield with_search_path(name)


@pytest.mark.postgres
async def test_a_replica_takes_over_the_batch_of_a_killed_one(tmp_path, router_dsn):
    data = tmp_path / "data"
    leases = {
        "TIERGEN_ROUTER_DSN": router_dsn,
        "TIERGEN_ROUTER_LEASE_SECONDS": "2",
        "TIERGEN_ROUTER_DB_TIMEOUT_SECONDS": "1",
        "TIERGEN_ROUTER_CLAIM_INTERVAL_SECONDS": "0.2",
    }
    suite = Suite(data, extra_env=leases)
    suite.start()
    survivor: subprocess.Popen[bytes] | None = None
    try:
        survivor, address = _start_router(suite, data, **leases)
        account = "replica-crash-victim"
        async with _channel(
            suite, suite.router, interceptors=bearer_interceptors(suite.api_key)
        ) as channel:
            doomed = router_pb2_grpc.RouterServiceStub(channel)
            await doomed.OpenAccount(
                router_pb2.OpenAccountRequest(account_id=account, idempotency_key="open")
            )
            call = doomed.Generate(
                router_pb2.GenerateRequest(
                    account_id=account, idempotency_key="doomed", spec=DOOMED
                )
            )
            batch = (await call.read()).batch
            suite.kill("router")
            call.cancel()

        async with _channel(
            suite, address, interceptors=bearer_interceptors(suite.api_key)
        ) as channel:
            router = router_pb2_grpc.RouterServiceStub(channel)
            request = router_pb2.ListJobsRequest(account_id=account)
            unfinished = {router_pb2.JOB_STATUS_QUEUED, router_pb2.JOB_STATUS_RUNNING}
            give_up = time.monotonic() + 60
            jobs = (await router.ListJobs(request)).jobs
            while {job.status for job in jobs} & unfinished:
                assert time.monotonic() < give_up, "no replica took the batch over"
                await asyncio.sleep(0.2)
                jobs = (await router.ListJobs(request)).jobs
            assert {job.batch_id for job in jobs} == {batch.batch_id} and len(jobs) == 4
            # Images delivered before the kill are charged; the rest failed, uncharged.
            delivered = [job for job in jobs if job.status == router_pb2.JOB_STATUS_SUCCEEDED]
            failed = [job for job in jobs if job.status == router_pb2.JOB_STATUS_FAILED]
            assert len(delivered) + len(failed) == 4 and failed
            assert {(job.error.code, job.error.reason) for job in failed} == {
                ("ABORTED", "ROUTER_LOST")
            }
            balance_request = router_pb2.GetBalanceRequest(account_id=account)
            give_up = time.monotonic() + 60
            balance = (await router.GetBalance(balance_request)).balance
            while balance.held:
                assert time.monotonic() < give_up, "the hold was not settled"
                await asyncio.sleep(0.2)
                balance = (await router.GetBalance(balance_request)).balance
            assert balance.available == 400 - sum(job.cost for job in delivered)
    finally:
        if survivor is not None:
            survivor.send_signal(signal.SIGTERM)
            survivor.wait(30)
        suite.stop()
