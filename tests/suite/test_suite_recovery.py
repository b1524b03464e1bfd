"""A router killed mid-batch: on restart its jobs are failed and its hold is released."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from tiergen.common.v1 import common_pb2
from tiergen.router.v1 import router_pb2, router_pb2_grpc

from services.cli.suite import Suite

pytestmark = pytest.mark.slow


def _start_router(suite: Suite, data: Path) -> tuple[subprocess.Popen[bytes], str]:
    ready = data / "run" / "router-again.addr"
    ready.unlink(missing_ok=True)
    addresses = suite.addresses
    env = dict(
        os.environ,
        TIERGEN_PORT="0",
        TIERGEN_READY_FILE=str(ready),
        LEDGER_ADDR=addresses["ledger"],
        GENERATOR_ADDR=addresses["generator"],
        UPSCALER_ADDR=addresses["upscaler"],
        TIERGEN_ROUTER_DSN=f"sqlite:///{data / 'router.db'}",
        TIERGEN_ROUTER_ASSETS_DIR=str(data / "assets"),
    )
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
        async with grpc.aio.insecure_channel(suite.router) as channel:
            router = router_pb2_grpc.RouterServiceStub(channel)
            await router.OpenAccount(
                router_pb2.OpenAccountRequest(account_id=account, idempotency_key="open")
            )
            call = router.Generate(
                router_pb2.GenerateRequest(
                    account_id=account,
                    idempotency_key="doomed",
                    spec=router_pb2.GenerationSpec(
                        prompt="a city of glass towers",
                        tier="pro",
                        n=4,
                        resolution=common_pb2.Resolution(size=common_pb2.IMAGE_SIZE_4K),
                    ),
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
        async with grpc.aio.insecure_channel(address) as channel:
            router = router_pb2_grpc.RouterServiceStub(channel)
            listed = await router.ListJobs(router_pb2.ListJobsRequest(account_id=account))
            assert len(listed.jobs) == 4
            assert {job.status for job in listed.jobs} == {router_pb2.JOB_STATUS_FAILED}
            assert {job.error.reason for job in listed.jobs} == {"ROUTER_RESTARTED"}
            balance = (
                await router.GetBalance(router_pb2.GetBalanceRequest(account_id=account))
            ).balance
            assert (balance.available, balance.held) == (400, 0)
            # The retry of the same request replays the failed batch and charges nothing.
            replay = router.Generate(
                router_pb2.GenerateRequest(
                    account_id=account,
                    idempotency_key="doomed",
                    spec=router_pb2.GenerationSpec(
                        prompt="a city of glass towers",
                        tier="pro",
                        n=4,
                        resolution=common_pb2.Resolution(size=common_pb2.IMAGE_SIZE_4K),
                    ),
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
