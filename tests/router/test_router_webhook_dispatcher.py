"""The dispatcher's attempts against a loopback receiver: what counts as delivered, what a
failure is told as (never the URL), redirects not followed, timeouts, and the address rules
applied when connecting."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from services.router.assets.store import AssetInfo, AssetRef
from services.router.jobs.model import JobKind, NewJob, Owner
from services.router.jobs.sql_store import SqlJobStore
from services.router.routing.catalogue import ImageSize
from services.router.webhooks.dispatcher import DispatchLimits, WebhookDispatcher
from services.router.webhooks.model import DeliveryState, EventType
from services.router.webhooks.schedule import RetryPolicy
from services.router.webhooks.store import WebhookStore
from services.router.webhooks.targets import DeliveryTransport, client_ssl_context
from tests.webhook_receiver import Receiver, ThrowawayCa, verify_signature

OWNER = Owner("acme", "alice")
ASSET = AssetRef("ef" * 32, AssetInfo(64, 64, "image/png", 10))
POLICY = RetryPolicy(timeout_seconds=0.5, base_seconds=60, period_seconds=3600)


@dataclass
class World:
    jobs: SqlJobStore
    store: WebhookStore
    ca: ThrowawayCa


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    jobs = await SqlJobStore.open_sqlite(tmp_path / "router.db")
    try:
        yield World(jobs, WebhookStore(jobs.database), ThrowawayCa(tmp_path / "pki"))
    finally:
        await jobs.close()


def _dispatcher(
    world: World, *, allow_private: bool = True, resolve: Any = None
) -> WebhookDispatcher:
    options = {} if resolve is None else {"resolve": resolve}
    transport = DeliveryTransport(
        client_ssl_context(world.ca.ca_file), allow_private=allow_private, **options
    )
    return WebhookDispatcher(
        world.store, transport, policy=POLICY, limits=DispatchLimits(coalesce_seconds=0)
    )


async def _one_event(world: World, url: str) -> str:
    issued = await world.store.create("acme", url, frozenset({EventType.JOB_SUCCEEDED}))
    record = await world.jobs.create_batch(
        owner=OWNER,
        idempotency_key="k",
        fingerprint="f",
        jobs=[
            NewJob(
                kind=JobKind.GENERATE,
                prompt="p",
                seed=1,
                width=64,
                height=64,
                quoted_cost=2,
                tier="nano",
                size=ImageSize.K1,
            )
        ],
        hold_id="h",
    )
    await world.jobs.mark_running(record.jobs[0].job_id)
    await world.jobs.mark_succeeded(record.jobs[0].job_id, ASSET, 2)
    return issued.secret


async def _attempted(world: World, dispatcher: WebhookDispatcher) -> Any:
    await dispatcher.run_round()
    await dispatcher.idle()
    (delivery,) = (await world.store.deliveries("acme")).deliveries
    return delivery


async def test_a_2xx_answer_delivers_a_signed_body(world: World) -> None:
    receiver = Receiver(tls=world.ca.server_context(), answer=lambda _: 202)
    base = await receiver.start()
    dispatcher = _dispatcher(world)
    try:
        secret = await _one_event(world, base + "/in")
        delivery = await _attempted(world, dispatcher)
        assert delivery.state is DeliveryState.DELIVERED and delivery.last_status == 202
        (request,) = receiver.received
        verify_signature(secret, request.headers, request.body)
        assert request.headers["webhook-id"] == delivery.delivery_id
        assert request.headers["user-agent"].startswith("tiergen-webhooks/")
    finally:
        await dispatcher.stop()
        await receiver.close()


async def test_a_redirect_is_not_followed(world: World) -> None:
    receiver = Receiver(tls=world.ca.server_context(), answer=lambda _: 307)
    base = await receiver.start()
    dispatcher = _dispatcher(world)
    try:
        await _one_event(world, base + "/moved")
        delivery = await _attempted(world, dispatcher)
        assert delivery.state is DeliveryState.PENDING
        assert delivery.last_error == "HTTP 307: redirects are not followed"
        assert len(receiver.received) == 1
    finally:
        await dispatcher.stop()
        await receiver.close()


async def test_a_receiver_that_does_not_answer_times_out(world: World) -> None:
    receiver = Receiver(tls=world.ca.server_context(), answer=lambda _: None)
    base = await receiver.start()
    dispatcher = _dispatcher(world)
    try:
        await _one_event(world, base + "/slow")
        delivery = await _attempted(world, dispatcher)
        assert delivery.last_error == "timed out after 0.5 s"
        assert delivery.last_status is None and delivery.attempts == 1
    finally:
        await dispatcher.stop()
        await receiver.close()


async def test_failures_are_told_without_the_url(world: World) -> None:
    dispatcher = _dispatcher(world)
    try:
        # Nothing listens on port 9; the token in the URL is the receiver's secret.
        await _one_event(world, "https://127.0.0.1:9/hook?token=SECRET-TOKEN")
        delivery = await _attempted(world, dispatcher)
        assert delivery.last_error.startswith("the connection failed")
        assert "SECRET-TOKEN" not in delivery.last_error and "127.0.0.1" not in delivery.last_error
    finally:
        await dispatcher.stop()


async def test_an_untrusted_certificate_is_a_failure(world: World, tmp_path: Path) -> None:
    stranger = ThrowawayCa(tmp_path / "stranger")
    receiver = Receiver(tls=stranger.server_context())
    base = await receiver.start()
    dispatcher = _dispatcher(world)
    try:
        await _one_event(world, base + "/in")
        delivery = await _attempted(world, dispatcher)
        assert "certificate is not trusted" in delivery.last_error
        assert receiver.received == []
    finally:
        await dispatcher.stop()
        await receiver.close()


async def test_an_address_refused_at_connection_time(world: World) -> None:
    receiver = Receiver(tls=world.ca.server_context())
    base = await receiver.start()
    port = base.rsplit(":", 1)[1]

    async def rebound(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    dispatcher = _dispatcher(world, allow_private=False, resolve=rebound)
    try:
        # Saved while it resolved elsewhere; it now resolves to loopback.
        await _one_event(world, f"https://hooks.example.com:{port}/in")
        delivery = await _attempted(world, dispatcher)
        assert delivery.last_error == "refused: its host resolves to a loopback address"
        assert receiver.received == []
    finally:
        await dispatcher.stop()
        await receiver.close()
