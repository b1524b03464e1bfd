"""Detached batches and their webhooks through real processes: the suite as `tiergen up` runs
it, a loopback HTTPS receiver behind a CA made for the test (TIERGEN_ROUTER_WEBHOOK_CA_FILE),
and signatures checked by the test's own reading of the Standard Webhooks specification.

- A detached batch completes after its caller has gone, is charged for exactly what it
  delivered, and its events arrive signed; a receiver that fails three times gets the event
  once more per attempt, the same delivery id each time, until it takes it.
- A router SIGKILLed after its jobs finished, with their webhooks not yet delivered (one under
  way, the others waiting behind it), delivers them all after it restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from tiergen.common.v1 import common_pb2
from tiergen.router.v1 import router_pb2, router_pb2_grpc

from services.cli.suite import Suite
from services.runtime.credentials import bearer_interceptors
from services.runtime.tls import channel_credentials
from tests.webhook_receiver import Received, Receiver, ThrowawayCa, verify_signature

pytestmark = pytest.mark.slow

JOB_EVENTS = ["job.succeeded", "job.failed", "job.cancelled"]


def _webhook_env(ca: ThrowawayCa, **more: str) -> dict[str, str]:
    return {
        "TIERGEN_ROUTER_WEBHOOK_CA_FILE": str(ca.ca_file),
        "TIERGEN_ROUTER_WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
        "TIERGEN_ROUTER_WEBHOOK_RETRY_BASE_SECONDS": "0.1",
        "TIERGEN_ROUTER_WEBHOOK_POLL_SECONDS": "0.1",
        **more,
    }


@contextlib.asynccontextmanager
async def _router(suite: Suite, address: str | None = None) -> AsyncIterator[Any]:
    """A stub calling the suite's router (or the one at `address`) over TLS with its dev key."""
    channel = grpc.aio.secure_channel(
        address or suite.router,
        channel_credentials(suite.client_security),
        interceptors=bearer_interceptors(suite.api_key),
    )
    try:
        yield router_pb2_grpc.RouterServiceStub(channel)
    finally:
        await channel.close()


def _start_router(
    suite: Suite, data: Path, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], str]:
    """The suite's router started again on its store, as after a crash."""
    ready = data / "run" / "router-again.addr"
    ready.unlink(missing_ok=True)
    addresses = suite.addresses
    process_env = {
        **os.environ,
        **env,
        **suite.pki.server_env("router"),
        "TIERGEN_PORT": "0",
        "TIERGEN_READY_FILE": str(ready),
        "LEDGER_ADDR": addresses["ledger"],
        "GENERATOR_ADDR": addresses["generator"],
        "UPSCALER_ADDR": addresses["upscaler"],
        "TIERGEN_ROUTER_DSN": f"sqlite:///{data / 'router.db'}",
        "TIERGEN_ROUTER_ASSETS_DIR": str(data / "assets"),
    }
    with (data / "logs" / "router-again.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.router"], env=process_env, stdout=log, stderr=log
        )
    give_up = time.monotonic() + 60
    while not ready.exists():
        assert process.poll() is None, "the restarted router exited"
        assert time.monotonic() < give_up, "the restarted router did not start"
        time.sleep(0.05)
    return process, ready.read_text().strip()


async def _eventually(read: Callable[[], Awaitable[Any]], done: Callable[[Any], bool]) -> Any:
    give_up = time.monotonic() + 60
    while True:
        value = await read()
        if done(value):
            return value
        assert time.monotonic() < give_up, f"still {value}"
        await asyncio.sleep(0.1)


def _types(received: list[Received], path: str) -> list[str]:
    return [r.json["type"] for r in received if r.path == path]


async def test_a_detached_batch_outlives_its_caller_and_is_told_signed(tmp_path: Path) -> None:
    ca = ThrowawayCa(tmp_path / "receiver-pki")
    flaky = iter([500, 503, 500])
    receiver = Receiver(
        tls=ca.server_context(),
        answer=lambda request: next(flaky, 200) if request.path == "/flaky" else 204,
    )
    base = await receiver.start()
    data = tmp_path / "data"
    suite = Suite(data, extra_env=_webhook_env(ca))
    suite.start()
    try:
        async with _router(suite) as router:
            everything = await router.CreateWebhook(
                router_pb2.CreateWebhookRequest(
                    url=base + "/all", events=[*JOB_EVENTS, "batch.completed"]
                )
            )
            flaky_hook = await router.CreateWebhook(
                router_pb2.CreateWebhookRequest(url=base + "/flaky", events=["batch.completed"])
            )
            account = "detached-caller"
            await router.OpenAccount(
                router_pb2.OpenAccountRequest(account_id=account, idempotency_key="open")
            )
            spec = router_pb2.GenerationSpec(
                prompt='a "GRAND HOTEL" sign over a rainy street',
                tier="standard",
                n=3,
                resolution=common_pb2.Resolution(size=common_pb2.IMAGE_SIZE_2K),
            )
            responses = [
                response
                async for response in router.Generate(
                    router_pb2.GenerateRequest(
                        account_id=account, idempotency_key="detached", spec=spec, detach=True
                    )
                )
            ]
            (accepted,) = responses
            batch = accepted.batch
            assert batch.detached and len(batch.jobs) == 3
            assert {job.status for job in batch.jobs} == {router_pb2.JOB_STATUS_QUEUED}
            held = await router.GetBalance(router_pb2.GetBalanceRequest(account_id=account))
            assert held.balance.held == batch.decision.total_cost > 0
        # The caller has gone: its channel is closed, and the batch runs on.

        arrived = await receiver.wait_for(
            lambda r: (
                _types(r, "/all").count("job.succeeded") == 3
                and "batch.completed" in _types(r, "/all")
                and [x.status for x in r if x.path == "/flaky"] == [500, 503, 500, 200]
            ),
            within=120,
        )
        for request in arrived:
            secret = everything.secret if request.path == "/all" else flaky_hook.secret
            verify_signature(secret, request.headers, request.body)
        succeeded = {
            r.json["data"]["job_id"]: r.json["data"]
            for r in arrived
            if r.path == "/all" and r.json["type"] == "job.succeeded"
        }
        assert set(succeeded) == {job.job_id for job in batch.jobs}
        (completed,) = [
            r for r in arrived if r.path == "/all" and r.json["type"] == "batch.completed"
        ]
        charged = completed.json["data"]["charged"]
        assert charged == sum(data["cost"] for data in succeeded.values()) > 0
        flaky_attempts = [r for r in arrived if r.path == "/flaky"]
        assert len({r.headers["webhook-id"] for r in flaky_attempts}) == 1
        assert len({r.body for r in flaky_attempts}) == 1

        async with _router(suite) as router:
            jobs = (
                await router.ListJobs(
                    router_pb2.ListJobsRequest(account_id=account, batch_id=batch.batch_id)
                )
            ).jobs
            assert {job.status for job in jobs} == {router_pb2.JOB_STATUS_SUCCEEDED}
            assert sum(job.cost for job in jobs) == charged
            balance = (
                await router.GetBalance(router_pb2.GetBalanceRequest(account_id=account))
            ).balance
            assert (balance.available, balance.held) == (400 - charged, 0)

            async def flaky_delivery() -> router_pb2.WebhookDelivery:
                page = await router.ListWebhookDeliveries(
                    router_pb2.ListWebhookDeliveriesRequest(
                        webhook_id=flaky_hook.webhook.webhook_id
                    )
                )
                (only,) = page.deliveries
                return only

            delivery = await _eventually(
                flaky_delivery, lambda d: d.state == router_pb2.DELIVERY_STATE_DELIVERED
            )
            assert delivery.attempts == 4 and delivery.last_status_code == 200
            assert delivery.delivery_id == flaky_attempts[0].headers["webhook-id"]
            # A retry of the detached submission with its key is the same batch.
            again = [
                response
                async for response in router.Generate(
                    router_pb2.GenerateRequest(
                        account_id=account, idempotency_key="detached", spec=spec, detach=True
                    )
                )
            ]
            assert again[0].batch.replayed and again[0].batch.batch_id == batch.batch_id
    finally:
        suite.stop()
        await receiver.close()


def _pending_deliveries(data: Path) -> list[tuple[str, str, int]]:
    with contextlib.closing(sqlite3.connect(data / "router.db")) as db:
        return list(
            db.execute(
                "SELECT delivery_id, event_type, attempts FROM webhook_deliveries"
                " WHERE state = 'pending' ORDER BY create_us"
            )
        )


async def test_a_router_killed_before_its_webhooks_went_out_sends_them_after_restart(
    tmp_path: Path,
) -> None:
    ca = ThrowawayCa(tmp_path / "receiver-pki")
    answering = asyncio.Event()
    # The first request is never answered while the router lives: the attempt under way holds
    # the endpoint's only slot, and the other deliveries wait behind it, unsent.
    receiver = Receiver(
        tls=ca.server_context(), answer=lambda _: 200 if answering.is_set() else None
    )
    base = await receiver.start()
    data = tmp_path / "data"
    env = _webhook_env(
        ca,
        TIERGEN_ROUTER_WEBHOOK_TIMEOUT_SECONDS="5",
        TIERGEN_ROUTER_WEBHOOK_MAX_IN_FLIGHT="1",
    )
    suite = Suite(data, extra_env=env)
    suite.start()
    restarted: subprocess.Popen[bytes] | None = None
    try:
        async with _router(suite) as router:
            hook = await router.CreateWebhook(
                router_pb2.CreateWebhookRequest(
                    url=base + "/hook", events=[*JOB_EVENTS, "batch.completed"]
                )
            )
            account = "killed-before-telling"
            await router.OpenAccount(
                router_pb2.OpenAccountRequest(account_id=account, idempotency_key="open")
            )
            spec = router_pb2.GenerationSpec(
                prompt="a lighthouse at dawn",
                tier="nano",
                n=2,
                resolution=common_pb2.Resolution(size=common_pb2.IMAGE_SIZE_1K),
            )
            events = [
                e
                async for e in router.Generate(
                    router_pb2.GenerateRequest(account_id=account, idempotency_key="k", spec=spec)
                )
            ]
            jobs = [e.job for e in events if e.WhichOneof("event") == "job"]
            assert {job.status for job in jobs} == {router_pb2.JOB_STATUS_SUCCEEDED}
            await receiver.wait_for(lambda r: len(r) == 1)
            await _eventually(
                lambda: router.GetBalance(router_pb2.GetBalanceRequest(account_id=account)),
                lambda reply: reply.balance.held == 0,
            )
        # Every event is recorded, none delivered; then the router dies without a word.
        pending = await _eventually(
            lambda: asyncio.to_thread(_pending_deliveries, data), lambda rows: len(rows) == 3
        )
        assert sorted(event for _, event, _ in pending) == [
            "batch.completed",
            "job.succeeded",
            "job.succeeded",
        ]
        assert {attempts for _, _, attempts in pending} == {0}
        assert len(receiver.received) == 1
        suite.kill("router")
        answering.set()

        restarted, address = _start_router(suite, data, env)
        arrived = await receiver.wait_for(
            lambda r: (
                {x.headers["webhook-id"] for x in r if x.status == 200}
                == {delivery_id for delivery_id, _, _ in pending}
            ),
            within=60,
        )
        for request in arrived:
            verify_signature(hook.secret, request.headers, request.body)
        told = {r.json["data"].get("job_id") for r in arrived if r.json["type"] == "job.succeeded"}
        assert told == {job.job_id for job in jobs}
        async with _router(suite, address) as router:

            async def states() -> set[int]:
                page = await router.ListWebhookDeliveries(router_pb2.ListWebhookDeliveriesRequest())
                return {d.state for d in page.deliveries}

            await _eventually(states, lambda s: s == {router_pb2.DELIVERY_STATE_DELIVERED})
    finally:
        if restarted is not None:
            restarted.send_signal(signal.SIGTERM)
            restarted.wait(30)
        suite.stop()
        await receiver.close()
