"""The webhook outbox on SQLite and PostgreSQL: a job's final state, a batch's settlement and a
hold under a credits.low threshold become deliveries for exactly the endpoints that want them,
of their own tenant only; attempts are taken, recorded, retried, failed and paused as the rules
say; a rotated-out secret signs beside the new one for its grace; endpoints and deliveries are
each tenant's own."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from services.router.assets.store import AssetInfo, AssetRef
from services.router.jobs.migrations import SCHEMA
from services.router.jobs.model import HoldBalance, HoldState, JobKind, NewJob, Owner
from services.router.jobs.sql_store import SqlJobStore
from services.router.routing.catalogue import ImageSize
from services.router.webhooks.model import (
    Attempt,
    DeliveryFilter,
    DeliveryState,
    EventType,
    Outcome,
    WebhookChanges,
    WebhookState,
)
from services.router.webhooks.schedule import RetryPolicy
from services.router.webhooks.store import WebhookStore
from services.runtime.errors import InvalidArgument, NotFound
from services.runtime.migrations import upgrade
from tests.postgres import Schemas, require_postgres, with_search_path

ACME, GLOBEX = "acme", "globex"
ALICE = Owner(ACME, "alice")
BOB_AT_GLOBEX = Owner(GLOBEX, "alice")
ASSET = AssetRef("cd" * 32, AssetInfo(1024, 1024, "image/png", 999))
EVERY_EVENT = frozenset(EventType)
URL = "https://hooks.example.com/tiergen?token=abc"
POLICY = RetryPolicy(base_seconds=1.0, max_delay_seconds=60.0, period_seconds=600.0)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    @property
    def us(self) -> int:
        return int(self.now.timestamp() * 1_000_000)


@pytest.fixture(scope="module")
def postgres_schemas() -> Iterator[Schemas]:
    schemas = Schemas(require_postgres("the webhook outbox tests"), "router_webhooks")
    yield schemas
    schemas.drop_all()


@dataclass
class Stores:
    jobs: SqlJobStore
    webhooks: WebhookStore
    clock: Clock
    woken: list[int]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    clock = Clock()
    if request.param == "sqlite":
        jobs = await SqlJobStore.open_sqlite(tmp_path / "router.db", clock=clock)
    else:
        schema = request.getfixturevalue("postgres_schemas").create()
        dsn = with_search_path(schema)
        upgrade(SCHEMA, dsn)
        jobs = await SqlJobStore.open_postgres(dsn, clock=clock, pool_size=2)
    woken: list[int] = []
    jobs.on_events(lambda: woken.append(1))
    try:
        yield Stores(jobs, WebhookStore(jobs.database, clock=clock), clock, woken)
    finally:
        await jobs.close()


def _job(variation: int = 0) -> NewJob:
    return NewJob(
        kind=JobKind.GENERATE,
        prompt="a lighthouse",
        seed=7 + variation,
        width=1024,
        height=1024,
        quoted_cost=2,
        tier="nano",
        size=ImageSize.K1,
        variation=variation,
    )


async def _batch(
    stores: Stores, owner: Owner = ALICE, n: int = 1, key: str = "k1", **options: Any
) -> Any:
    return await stores.jobs.create_batch(
        owner=owner,
        idempotency_key=key,
        fingerprint="fp-" + key,
        jobs=[_job(i) for i in range(n)],
        hold_id=f"hold-{key}",
        **options,
    )


async def _deliver(stores: Stores, job_id: str) -> None:
    stores.clock.advance(1)
    await stores.jobs.mark_running(job_id)
    stores.clock.advance(1)
    await stores.jobs.mark_succeeded(job_id, ASSET, 2)


def _body(attempt: Attempt) -> dict[str, Any]:
    return json.loads(attempt.payload)


class TestFanOut:
    async def test_a_tenant_without_endpoints_flags_nothing(self, stores: Stores) -> None:
        record = await _batch(stores)
        await _deliver(stores, record.jobs[0].job_id)
        await stores.jobs.settle_hold(record.batch.batch_id, HoldState.CAPTURED, 2)
        assert stores.woken == []
        assert await stores.webhooks.fan_out(POLICY) == []

    async def test_a_succeeded_job_and_its_settled_batch_reach_the_endpoint(
        self, stores: Stores
    ) -> None:
        issued = await stores.webhooks.create(ACME, URL, EVERY_EVENT, credits_low_threshold=10)
        stores.clock.advance(1)
        record = await _batch(stores, detached=True)
        job_id = record.jobs[0].job_id
        await _deliver(stores, job_id)
        assert stores.woken, "the job store told the dispatcher of the flagged event"
        (attempt,) = await stores.webhooks.fan_out(POLICY)
        assert attempt.event_type is EventType.JOB_SUCCEEDED
        assert (attempt.webhook_id, attempt.tenant, attempt.attempts) == (
            issued.webhook.webhook_id,
            ACME,
            0,
        )
        assert attempt.url == URL and attempt.secret == issued.secret
        body = _body(attempt)
        assert body["type"] == "job.succeeded"
        assert body["timestamp"].endswith("Z")
        data = body["data"]
        assert data["job_id"] == job_id and data["batch_id"] == record.batch.batch_id
        assert data["account_id"] == "alice" and data["asset_id"] == ASSET.asset_id
        assert data["cost"] == 2 and data["detached"] is True
        assert "secret" not in attempt.payload.decode() and URL not in attempt.payload.decode()
        # Fanned out once: the flag is cleared with the deliveries written.
        assert await stores.webhooks.fan_out(POLICY) == []

        await stores.jobs.settle_hold(record.batch.batch_id, HoldState.CAPTURED, 2)
        (completed,) = await stores.webhooks.fan_out(POLICY)
        data = _body(completed)["data"]
        assert completed.event_type is EventType.BATCH_COMPLETED
        assert data["jobs"] == {"succeeded": 1, "failed": 0, "cancelled": 0}
        assert data["job_ids"] == [job_id] and data["charged"] == 2

    async def test_only_the_events_an_endpoint_wants_and_only_its_tenants(
        self, stores: Stores
    ) -> None:
        failures = await stores.webhooks.create(ACME, URL, frozenset({EventType.JOB_FAILED}))
        theirs = await stores.webhooks.create(GLOBEX, URL, EVERY_EVENT, credits_low_threshold=5)
        stores.clock.advance(1)
        mine = await _batch(stores, n=2)
        await _deliver(stores, mine.jobs[0].job_id)
        await stores.jobs.mark_failed(mine.jobs[1].job_id, "INTERNAL", "BOOM", "it broke")
        # An attached batch's failure waits for its settlement (it may yet be forgotten).
        assert await stores.webhooks.fan_out(POLICY) == []
        await stores.jobs.settle_hold(mine.batch.batch_id, HoldState.CAPTURED, 2)
        (attempt,) = await stores.webhooks.fan_out(POLICY)
        assert attempt.webhook_id == failures.webhook.webhook_id
        assert _body(attempt)["data"]["error"] == {
            "code": "INTERNAL",
            "reason": "BOOM",
            "message": "it broke",
        }
        # Globex's namesake account's job goes to globex's endpoint alone.
        other = await _batch(stores, owner=BOB_AT_GLOBEX)
        await _deliver(stores, other.jobs[0].job_id)
        (attempt,) = await stores.webhooks.fan_out(POLICY)
        assert (attempt.webhook_id, attempt.tenant) == (theirs.webhook.webhook_id, GLOBEX)

    async def test_a_batch_naming_an_endpoint_tells_that_one_only(self, stores: Stores) -> None:
        first = await stores.webhooks.create(ACME, URL, EVERY_EVENT, credits_low_threshold=1)
        second = await stores.webhooks.create(ACME, URL + "2", EVERY_EVENT, credits_low_threshold=1)
        stores.clock.advance(1)
        named = await _batch(stores, webhook_id=second.webhook.webhook_id)
        assert named.batch.webhook_id == second.webhook.webhook_id
        await stores.jobs.cancel_batch(ALICE, named.batch.batch_id)
        (attempt,) = await stores.webhooks.fan_out(POLICY)
        assert attempt.event_type is EventType.JOB_CANCELLED
        assert attempt.webhook_id == second.webhook.webhook_id
        unnamed = await _batch(stores, key="k2")
        await _deliver(stores, unnamed.jobs[0].job_id)
        told = {a.webhook_id for a in await stores.webhooks.fan_out(POLICY)}
        assert told == {first.webhook.webhook_id, second.webhook.webhook_id}

    async def test_an_endpoint_is_not_told_of_what_happened_before_it_existed(
        self, stores: Stores
    ) -> None:
        await stores.webhooks.create(ACME, URL, frozenset({EventType.BATCH_COMPLETED}))
        record = await _batch(stores)
        await _deliver(stores, record.jobs[0].job_id)
        stores.clock.advance(5)
        late = await stores.webhooks.create(ACME, URL, frozenset({EventType.JOB_SUCCEEDED}))
        assert late.webhook.created_at > stores.clock.now - timedelta(seconds=1)
        assert await stores.webhooks.fan_out(POLICY) == []

    async def test_credits_low_when_a_hold_crosses_the_threshold(self, stores: Stores) -> None:
        low = await stores.webhooks.create(
            ACME, URL, frozenset({EventType.CREDITS_LOW}), credits_low_threshold=50
        )
        stores.clock.advance(1)
        # 60 -> 52: still above; 52 -> 44: under 50; 44 -> 36: already under.
        for key, before, after in (("a", 60, 52), ("b", 52, 44), ("c", 44, 36)):
            await _batch(stores, key=key, balance=HoldBalance(before, after))
        (attempt,) = await stores.webhooks.fan_out(POLICY)
        assert attempt.webhook_id == low.webhook.webhook_id
        body = _body(attempt)
        assert body["type"] == "credits.low"
        assert body["data"]["available"] == 44 and body["data"]["threshold"] == 50
        assert body["data"]["account_id"] == "alice"

    async def test_a_forgotten_batch_forgets_its_deliveries(self, stores: Stores) -> None:
        await stores.webhooks.create(ACME, URL, EVERY_EVENT, credits_low_threshold=1)
        stores.clock.advance(1)
        record = await _batch(stores)
        await stores.jobs.mark_failed(record.jobs[0].job_id, "RESOURCE_EXHAUSTED", "QUEUE_FULL", "")
        await stores.jobs.settle_hold(record.batch.batch_id, HoldState.RELEASED)
        assert len(await stores.webhooks.fan_out(POLICY)) == 2
        assert await stores.jobs.forget_batch(record.batch.batch_id)
        page = await stores.webhooks.deliveries(ACME)
        assert page.deliveries == ()


class TestAttempts:
    async def _one(self, stores: Stores, **options: Any) -> Attempt:
        await stores.webhooks.create(ACME, URL, frozenset({EventType.JOB_SUCCEEDED}), **options)
        stores.clock.advance(1)
        record = await _batch(stores, detached=True)
        await _deliver(stores, record.jobs[0].job_id)
        (attempt,) = await stores.webhooks.fan_out(POLICY)
        return attempt

    async def test_a_delivered_attempt_ends_the_delivery(self, stores: Stores) -> None:
        attempt = await self._one(stores)
        recorded = await stores.webhooks.record(
            [Outcome(attempt, stores.clock.us, True, 204)], POLICY
        )
        assert recorded.delivered == 1
        (delivery,) = (await stores.webhooks.deliveries(ACME)).deliveries
        assert delivery.state is DeliveryState.DELIVERED
        assert (delivery.attempts, delivery.last_status, delivery.last_error) == (1, 204, "")
        assert delivery.next_attempt_at is None and delivery.finished_at is not None
        # A late outcome of the same attempt changes nothing.
        again = await stores.webhooks.record([Outcome(attempt, stores.clock.us, False)], POLICY)
        assert (again.delivered, again.retried, again.failed) == (0, 0, 0)

    async def test_a_failed_attempt_is_retried_when_due_then_given_up(self, stores: Stores) -> None:
        attempt = await self._one(stores)
        # Taken at fan-out: not due again until its lease runs out.
        assert await stores.webhooks.take_due(POLICY, limit=10) == []
        seen = attempt.attempts
        while True:
            outcome = Outcome(attempt, stores.clock.us, False, 503, "HTTP 503")
            recorded = await stores.webhooks.record([outcome], POLICY, rand=lambda: 1.0)
            if recorded.failed:
                break
            assert recorded.retried == 1 and recorded.soonest_retry_us is not None
            (delivery,) = (await stores.webhooks.deliveries(ACME)).deliveries
            assert delivery.state is DeliveryState.PENDING
            assert delivery.last_error == "HTTP 503" and delivery.attempts == seen + 1
            assert await stores.webhooks.take_due(POLICY, limit=10) == []
            stores.clock.now = datetime.fromtimestamp(recorded.soonest_retry_us / 1_000_000, UTC)
            (attempt,) = await stores.webhooks.take_due(POLICY, limit=10)
            assert attempt.attempts == seen + 1
            seen += 1
        (delivery,) = (await stores.webhooks.deliveries(ACME)).deliveries
        assert delivery.state is DeliveryState.FAILED
        # 1, 2, 4, ... s, capped at 60 s, within 600 s of the event.
        assert 10 <= delivery.attempts <= 20
        assert await stores.webhooks.take_due(POLICY, limit=10) == []

    async def test_an_endpoint_failing_long_enough_is_paused_with_its_reason(
        self, stores: Stores
    ) -> None:
        policy = replace(POLICY, pause_after_failures=3, pause_after_seconds=0)
        attempt = await self._one(stores)
        recorded = await stores.webhooks.record(
            [Outcome(attempt, stores.clock.us, False, None, "timed out after 10 s")], policy
        )
        assert recorded.paused == []
        for _ in range(2):
            stores.clock.advance(120)
            (attempt,) = await stores.webhooks.take_due(policy, limit=10)
            recorded = await stores.webhooks.record(
                [Outcome(attempt, stores.clock.us, False, 500, "HTTP 500")], policy
            )
        ((tenant, webhook_id, reason),) = recorded.paused
        assert tenant == ACME and "3 attempts in a row failed" in reason and "HTTP 500" in reason
        (webhook,) = await stores.webhooks.list(ACME)
        assert webhook.state is WebhookState.PAUSED and webhook.pause_reason == reason
        # Paused: nothing is taken; resumed: what waits is sent.
        stores.clock.advance(120)
        assert await stores.webhooks.take_due(policy, limit=10) == []
        resumed = await stores.webhooks.update(ACME, webhook_id, WebhookChanges(paused=False))
        assert resumed.state is WebhookState.ACTIVE and resumed.consecutive_failures == 0
        assert len(await stores.webhooks.take_due(policy, limit=10)) == 1

    async def test_a_paused_endpoints_deliveries_fail_when_their_period_ends(
        self, stores: Stores
    ) -> None:
        attempt = await self._one(stores)
        await stores.webhooks.update(ACME, attempt.webhook_id, WebhookChanges(paused=True))
        stores.clock.advance(POLICY.period_seconds / 2)
        assert await stores.webhooks.expire_paused(POLICY) == 0
        stores.clock.advance(POLICY.period_seconds)
        assert await stores.webhooks.expire_paused(POLICY) == 1
        (delivery,) = (await stores.webhooks.deliveries(ACME)).deliveries
        assert delivery.state is DeliveryState.FAILED and "paused" in delivery.last_error

    async def test_the_outbox_age_is_its_oldest_pending_event(self, stores: Stores) -> None:
        assert await stores.webhooks.outbox_age_seconds() == 0.0
        attempt = await self._one(stores)
        stores.clock.advance(30)
        assert await stores.webhooks.outbox_age_seconds() == pytest.approx(30.0)
        await stores.webhooks.record([Outcome(attempt, stores.clock.us, True, 200)], POLICY)
        assert await stores.webhooks.outbox_age_seconds() == 0.0
        stores.clock.advance(3600)
        await stores.webhooks.purge(60)
        assert (await stores.webhooks.deliveries(ACME)).deliveries == ()


class TestSecretRotation:
    """A rotated-out secret signs beside the new one while its grace lasts, for every attempt
    taken after the rotation, retries of earlier events included."""

    async def _failed_once(self, stores: Stores) -> tuple[Any, Attempt]:
        """An endpoint, and the retry of its delivery that failed once, due now."""
        issued = await stores.webhooks.create(ACME, URL, frozenset({EventType.JOB_SUCCEEDED}))
        stores.clock.advance(1)
        record = await _batch(stores, detached=True)
        await _deliver(stores, record.jobs[0].job_id)
        (attempt,) = await stores.webhooks.fan_out(POLICY)
        assert (attempt.secret, attempt.previous_secret) == (issued.secret, None)
        failed = Outcome(attempt, stores.clock.us, False, 503, "HTTP 503")
        recorded = await stores.webhooks.record([failed], POLICY, rand=lambda: 1.0)
        assert recorded.soonest_retry_us is not None
        return issued, attempt

    async def test_a_retry_after_a_rotation_carries_both_secrets_until_the_grace_ends(
        self, stores: Stores
    ) -> None:
        issued, _ = await self._failed_once(stores)
        webhook_id = issued.webhook.webhook_id
        rotated = await stores.webhooks.rotate_secret(ACME, webhook_id, grace_seconds=60)
        assert rotated.secret != issued.secret and rotated.secret.startswith("whsec_")
        assert rotated.previous_expires_at == stores.clock.now + timedelta(seconds=60)
        assert rotated.webhook.rotation_grace_until == rotated.previous_expires_at
        assert rotated.webhook.updated_at == stores.clock.now
        assert rotated.secret not in repr(rotated) and issued.secret not in repr(rotated)
        assert (await stores.webhooks.get(ACME, webhook_id)).rotation_grace_until == (
            rotated.previous_expires_at
        )

        stores.clock.advance(30)
        (retry,) = await stores.webhooks.take_due(POLICY, limit=10)
        assert (retry.secret, retry.previous_secret) == (rotated.secret, issued.secret)
        assert rotated.secret not in repr(retry) and issued.secret not in repr(retry)

        # Its grace over, the old secret signs nothing, and the endpoint no longer says so.
        failed = Outcome(retry, stores.clock.us, False, 503, "HTTP 503")
        await stores.webhooks.record([failed], POLICY, rand=lambda: 1.0)
        stores.clock.advance(31)
        (late,) = await stores.webhooks.take_due(POLICY, limit=10)
        assert (late.secret, late.previous_secret) == (rotated.secret, None)
        (listed,) = await stores.webhooks.list(ACME)
        assert listed.rotation_grace_until is None

    async def test_no_grace_drops_every_old_secret_at_once(self, stores: Stores) -> None:
        issued, _ = await self._failed_once(stores)
        webhook_id = issued.webhook.webhook_id
        kept = await stores.webhooks.rotate_secret(ACME, webhook_id, grace_seconds=3600)
        # Rotating again replaces the one being rotated out: the first secret is gone too.
        final = await stores.webhooks.rotate_secret(ACME, webhook_id, grace_seconds=0)
        assert final.previous_expires_at is None and final.webhook.rotation_grace_until is None
        assert len({issued.secret, kept.secret, final.secret}) == 3
        stores.clock.advance(600)
        (retry,) = await stores.webhooks.take_due(POLICY, limit=10)
        assert (retry.secret, retry.previous_secret) == (final.secret, None)

    async def test_a_second_rotation_in_a_grace_keeps_only_the_secret_it_replaced(
        self, stores: Stores
    ) -> None:
        issued, _ = await self._failed_once(stores)
        webhook_id = issued.webhook.webhook_id
        first = await stores.webhooks.rotate_secret(ACME, webhook_id, grace_seconds=3600)
        second = await stores.webhooks.rotate_secret(ACME, webhook_id, grace_seconds=3600)
        stores.clock.advance(600)
        (retry,) = await stores.webhooks.take_due(POLICY, limit=10)
        assert (retry.secret, retry.previous_secret) == (second.secret, first.secret)

    async def test_a_negative_grace_is_refused(self, stores: Stores) -> None:
        issued = await stores.webhooks.create(ACME, URL, frozenset({EventType.JOB_FAILED}))
        with pytest.raises(InvalidArgument) as refused:
            await stores.webhooks.rotate_secret(ACME, issued.webhook.webhook_id, grace_seconds=-1)
        assert refused.value.violations[0].field == "grace_seconds"


class TestEndpointsAreTheTenants:
    async def test_another_tenants_endpoint_is_not_found_like_a_missing_one(
        self, stores: Stores
    ) -> None:
        issued = await stores.webhooks.create(ACME, URL, EVERY_EVENT, credits_low_threshold=1)
        webhook_id = issued.webhook.webhook_id
        for call in (
            lambda: stores.webhooks.get(GLOBEX, webhook_id),
            lambda: stores.webhooks.update(GLOBEX, webhook_id, WebhookChanges(paused=True)),
            lambda: stores.webhooks.delete(GLOBEX, webhook_id),
            lambda: stores.webhooks.rotate_secret(GLOBEX, webhook_id, grace_seconds=60),
            lambda: stores.webhooks.deliveries(GLOBEX, DeliveryFilter(webhook_id=webhook_id)),
        ):
            with pytest.raises(NotFound) as theirs:
                await call()
            assert theirs.value.reason == "WEBHOOK_NOT_FOUND"
        assert await stores.webhooks.list(GLOBEX) == []
        (listed,) = await stores.webhooks.list(ACME)
        assert listed.state is WebhookState.ACTIVE
        assert "secret" not in repr(listed) and URL not in repr(listed)
        assert issued.secret not in repr(issued)

    async def test_updates_and_deletion(self, stores: Stores) -> None:
        issued = await stores.webhooks.create(ACME, URL, frozenset({EventType.JOB_FAILED}))
        webhook_id = issued.webhook.webhook_id
        with pytest.raises(InvalidArgument) as missing:
            await stores.webhooks.update(
                ACME, webhook_id, WebhookChanges(events=frozenset({EventType.CREDITS_LOW}))
            )
        assert missing.value.reason == "WEBHOOK_THRESHOLD_REQUIRED"
        changed = await stores.webhooks.update(
            ACME,
            webhook_id,
            WebhookChanges(
                url=URL + "&v=2",
                events=frozenset({EventType.CREDITS_LOW}),
                credits_low_threshold=7,
                description="billing",
            ),
        )
        assert changed.url == URL + "&v=2" and changed.credits_low_threshold == 7
        assert changed.events == {EventType.CREDITS_LOW} and changed.description == "billing"
        deleted = await stores.webhooks.delete(ACME, webhook_id)
        assert deleted.webhook_id == webhook_id
        assert await stores.webhooks.list(ACME) == []
        with pytest.raises(NotFound):
            await stores.webhooks.delete(ACME, webhook_id)

    async def test_deliveries_page_newest_first_and_tokens_stay_with_their_listing(
        self, stores: Stores
    ) -> None:
        await stores.webhooks.create(ACME, URL, frozenset({EventType.JOB_CANCELLED}))
        stores.clock.advance(1)
        record = await _batch(stores, n=5, detached=True)
        for job in record.jobs:
            stores.clock.advance(1)
            await stores.jobs.cancel_job(ALICE, job.job_id)
        assert len(await stores.webhooks.fan_out(POLICY)) == 5
        first = await stores.webhooks.deliveries(ACME, page_size=3)
        assert len(first.deliveries) == 3 and first.next_page_token
        rest = await stores.webhooks.deliveries(ACME, page_size=3, page_token=first.next_page_token)
        assert len(rest.deliveries) == 2 and not rest.next_page_token
        jobs = [d.job_id for d in (*first.deliveries, *rest.deliveries)]
        assert jobs == [job.job_id for job in reversed(record.jobs)]
        with pytest.raises(InvalidArgument):
            await stores.webhooks.deliveries(GLOBEX, page_size=3, page_token=first.next_page_token)
        pending = DeliveryFilter(state=DeliveryState.PENDING)
        assert len((await stores.webhooks.deliveries(ACME, pending)).deliveries) == 5
        delivered = DeliveryFilter(state=DeliveryState.DELIVERED)
        assert (await stores.webhooks.deliveries(ACME, delivered)).deliveries == ()
