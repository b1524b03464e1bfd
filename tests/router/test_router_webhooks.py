"""Webhooks through a real suite (four servers on port 0) and a loopback HTTPS receiver: the
RPCs, signed deliveries of detached batches, retries, pausing, credits.low, rotating a signing
secret, and the tenancy and target rules that keep endpoints and deliveries their tenant's."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from tiergen.common.v1 import common_pb2
from tiergen.router.v1 import router_pb2

from services.runtime.status import from_rpc_error
from tests.router.conftest import EVERY_SCOPE, InProcessSuite, running_suite
from tests.webhook_receiver import Received, Receiver, ThrowawayCa, verify_signature

EVERY_EVENT = ["job.succeeded", "job.failed", "job.cancelled", "batch.completed", "credits.low"]
SPEC = router_pb2.GenerationSpec(
    prompt="a harbour at dusk",
    tier="nano",
    n=2,
    resolution=common_pb2.Resolution(size=common_pb2.IMAGE_SIZE_1K),
)


@pytest.fixture
def ca(tmp_path: Path) -> ThrowawayCa:
    return ThrowawayCa(tmp_path / "webhook-pki")


@pytest.fixture
def router_env(ca: ThrowawayCa) -> dict[str, str]:
    return {
        "TIERGEN_ROUTER_WEBHOOK_CA_FILE": str(ca.ca_file),
        "TIERGEN_ROUTER_WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
        "TIERGEN_ROUTER_WEBHOOK_RETRY_BASE_SECONDS": "0.05",
        "TIERGEN_ROUTER_WEBHOOK_POLL_SECONDS": "0.05",
        "TIERGEN_ROUTER_WEBHOOK_TIMEOUT_SECONDS": "2",
        "TIERGEN_ROUTER_WEBHOOK_PAUSE_AFTER_FAILURES": "5",
        "TIERGEN_ROUTER_WEBHOOK_PAUSE_AFTER_SECONDS": "0",
    }


@pytest.fixture
async def receiver(ca: ThrowawayCa) -> Any:
    receiver = Receiver(tls=ca.server_context())
    receiver.url = await receiver.start()  # type: ignore[attr-defined]
    yield receiver
    await receiver.close()


async def _failure(call: Any) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code(), from_rpc_error(error).reason
    raise AssertionError("the call succeeded")


async def _generate(
    suite: InProcessSuite, account: str, **fields: Any
) -> tuple[router_pb2.Batch, list[router_pb2.GenerateResponse]]:
    request = router_pb2.GenerateRequest(
        account_id=account, idempotency_key=uuid.uuid4().hex, spec=SPEC, **fields
    )
    responses = [response async for response in suite.router.Generate(request)]
    return responses[0].batch, responses


def _of_type(received: list[Received], event_type: str) -> list[Received]:
    return [r for r in received if r.json["type"] == event_type]


async def _eventually(read: Callable[[], Awaitable[Any]], done: Callable[[Any], bool]) -> Any:
    """What `read` gives once `done` holds of it (within 10 s)."""
    for _ in range(200):
        value = await read()
        if done(value):
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"still {value}")


async def test_a_detached_batch_is_told_signed_to_its_endpoint(
    suite: InProcessSuite, receiver: Any
) -> None:
    created = await suite.router.CreateWebhook(
        router_pb2.CreateWebhookRequest(
            url=f"{receiver.url}/hooks?token=t0p",
            events=EVERY_EVENT,
            description="render farm",
            credits_low_threshold=395,
        )
    )
    secret = created.secret
    assert secret.startswith("whsec_")
    webhook = created.webhook
    assert webhook.state == router_pb2.WEBHOOK_STATE_ACTIVE
    # Listed without its secret.
    listed = await suite.router.ListWebhooks(router_pb2.ListWebhooksRequest())
    assert [w.webhook_id for w in listed.webhooks] == [webhook.webhook_id]
    assert secret not in str(listed)

    account = await suite.open_account()
    batch, responses = await _generate(suite, account, detach=True)
    assert len(responses) == 1 and batch.detached and len(batch.jobs) == 2

    # Two jobs and the batch; the hold took the account from 400 to 396, above 395.
    arrived = await receiver.wait_for(
        lambda r: len(_of_type(r, "job.succeeded")) == 2 and _of_type(r, "batch.completed")
    )
    for request in arrived:
        verify_signature(secret, request.headers, request.body)
        assert request.path == "/hooks?token=t0p"
        assert request.headers["content-type"] == "application/json"
        assert request.json["data"]["account_id"] == account
        assert secret not in request.body.decode()
    jobs = {r.json["data"]["job_id"]: r.json["data"] for r in _of_type(arrived, "job.succeeded")}
    assert set(jobs) == {job.job_id for job in batch.jobs}
    assert {data["batch_id"] for data in jobs.values()} == {batch.batch_id}
    (completed,) = _of_type(arrived, "batch.completed")
    assert completed.json["data"]["jobs"] == {"succeeded": 2, "failed": 0, "cancelled": 0}
    assert completed.json["data"]["charged"] == sum(data["cost"] for data in jobs.values())
    # Each delivery has its own id, the header a receiver de-duplicates by.
    assert len({r.headers["webhook-id"] for r in arrived}) == len(arrived)

    finished = await suite.router.ListJobs(
        router_pb2.ListJobsRequest(account_id=account, batch_id=batch.batch_id)
    )
    assert {job.status for job in finished.jobs} == {router_pb2.JOB_STATUS_SUCCEEDED}
    balance = await suite.balance(account)
    assert (balance.available, balance.held) == (400 - completed.json["data"]["charged"], 0)

    deliveries = await _eventually(
        lambda: suite.router.ListWebhookDeliveries(
            router_pb2.ListWebhookDeliveriesRequest(webhook_id=webhook.webhook_id)
        ),
        lambda page: {d.state for d in page.deliveries} == {router_pb2.DELIVERY_STATE_DELIVERED},
    )
    assert len(deliveries.deliveries) == 3
    assert {d.last_status_code for d in deliveries.deliveries} == {204}


async def test_a_receiver_failing_three_times_gets_the_event_again_until_it_takes_it(
    suite: InProcessSuite, receiver: Any
) -> None:
    answers = iter([500, 503, 502])
    receiver.answer = lambda _: next(answers, 200)
    created = await suite.router.CreateWebhook(
        router_pb2.CreateWebhookRequest(url=receiver.url + "/", events=["batch.completed"])
    )
    account = await suite.open_account()
    batch, _ = await _generate(suite, account)
    arrived = await receiver.wait_for(lambda r: len(r) >= 4)
    assert [r.status for r in arrived] == [500, 503, 502, 200]
    assert len({r.headers["webhook-id"] for r in arrived}) == 1
    assert len({r.body for r in arrived}) == 1
    for request in arrived:
        verify_signature(created.secret, request.headers, request.body)
    assert arrived[0].json["data"]["batch_id"] == batch.batch_id

    async def delivery() -> router_pb2.WebhookDelivery:
        page = await suite.router.ListWebhookDeliveries(router_pb2.ListWebhookDeliveriesRequest())
        (only,) = page.deliveries
        return only

    delivery = await _eventually(delivery, lambda d: d.state == router_pb2.DELIVERY_STATE_DELIVERED)
    assert (delivery.attempts, delivery.last_status_code, delivery.last_error) == (4, 200, "")
    assert delivery.delivery_id == arrived[0].headers["webhook-id"]


async def test_an_endpoint_that_keeps_failing_is_paused_and_says_why(
    suite: InProcessSuite, receiver: Any
) -> None:
    receiver.answer = lambda _: 500
    created = await suite.router.CreateWebhook(
        router_pb2.CreateWebhookRequest(url=receiver.url + "/", events=["job.succeeded"])
    )
    account = await suite.open_account()
    await _generate(suite, account)

    async def webhook() -> router_pb2.Webhook:
        (only,) = (await suite.router.ListWebhooks(router_pb2.ListWebhooksRequest())).webhooks
        return only

    paused = await _eventually(webhook, lambda w: w.state == router_pb2.WEBHOOK_STATE_PAUSED)
    # At least the five of the rule: a round may record the failures of both deliveries.
    failures = re.match(r"(\d+) attempts in a row failed since ", paused.pause_reason)
    assert failures is not None and int(failures[1]) >= 5, paused.pause_reason
    assert paused.pause_reason.endswith("HTTP 500")
    sent = len(receiver.received)
    await asyncio.sleep(0.3)
    assert len(receiver.received) == sent, "nothing is sent to a paused endpoint"
    # Resumed once it is fixed: what waited is delivered.
    receiver.answer = lambda _: 200
    resumed = await suite.router.UpdateWebhook(
        router_pb2.UpdateWebhookRequest(webhook_id=created.webhook.webhook_id, paused=False)
    )
    assert resumed.webhook.state == router_pb2.WEBHOOK_STATE_ACTIVE
    assert resumed.webhook.pause_reason == "" and resumed.webhook.consecutive_failures == 0
    await receiver.wait_for(lambda r: any(x.status == 200 for x in r))


async def test_credits_low_and_a_batch_naming_its_endpoint(
    suite: InProcessSuite, receiver: Any
) -> None:
    everything = await suite.router.CreateWebhook(
        router_pb2.CreateWebhookRequest(
            url=receiver.url + "/all", events=EVERY_EVENT, credits_low_threshold=398
        )
    )
    named = await suite.router.CreateWebhook(
        router_pb2.CreateWebhookRequest(url=receiver.url + "/named", events=["batch.completed"])
    )
    account = await suite.open_account()
    # The hold of 2 x 2 credits takes 400 to 396: under 398.
    batch, _ = await _generate(suite, account, webhook_id=named.webhook.webhook_id)
    assert batch.webhook_id == named.webhook.webhook_id
    arrived = await receiver.wait_for(
        lambda r: _of_type(r, "credits.low") and _of_type(r, "batch.completed")
    )
    (low,) = _of_type(arrived, "credits.low")
    assert low.path == "/all"
    assert low.json["data"] == {
        "event_id": low.json["data"]["event_id"],
        "account_id": account,
        "available": 396,
        "threshold": 398,
        "batch_id": batch.batch_id,
    }
    verify_signature(everything.secret, low.headers, low.body)
    # The batch named its endpoint: its events went there only.
    assert {r.path for r in arrived if r.json["type"] != "credits.low"} == {"/named"}
    unknown = router_pb2.GenerateRequest(
        account_id=account, idempotency_key="x", spec=SPEC, webhook_id="wh_nothing"
    )
    assert await _failure(_drain(suite.router.Generate(unknown))) == (
        grpc.StatusCode.NOT_FOUND,
        "WEBHOOK_NOT_FOUND",
    )


async def _drain(call: Any) -> None:
    async for _ in call:
        pass


async def test_endpoints_and_deliveries_are_the_callers_tenants(
    suite: InProcessSuite, receiver: Any
) -> None:
    mine = await suite.router.CreateWebhook(
        router_pb2.CreateWebhookRequest(url=receiver.url + "/", events=["job.succeeded"])
    )
    await _generate(suite, await suite.open_account())
    await receiver.wait_for(lambda r: len(r) >= 2)
    webhook_id = mine.webhook.webhook_id

    other = await suite.stub_of("t-other")
    assert (await other.ListWebhooks(router_pb2.ListWebhooksRequest())).webhooks == []
    everything = await other.ListWebhookDeliveries(router_pb2.ListWebhookDeliveriesRequest())
    assert everything.deliveries == []
    for call in (
        other.ListWebhookDeliveries(router_pb2.ListWebhookDeliveriesRequest(webhook_id=webhook_id)),
        other.UpdateWebhook(router_pb2.UpdateWebhookRequest(webhook_id=webhook_id, paused=True)),
        other.DeleteWebhook(router_pb2.DeleteWebhookRequest(webhook_id=webhook_id)),
    ):
        assert await _failure(call) == (grpc.StatusCode.NOT_FOUND, "WEBHOOK_NOT_FOUND")

    # A key of this very tenant without webhooks:admin reads nothing.
    unscoped = await suite.stub_of(
        "t-main", [scope for scope in EVERY_SCOPE if scope != "webhooks:admin"]
    )
    for call in (
        unscoped.ListWebhooks(router_pb2.ListWebhooksRequest()),
        unscoped.ListWebhookDeliveries(router_pb2.ListWebhookDeliveriesRequest()),
    ):
        assert await _failure(call) == (grpc.StatusCode.PERMISSION_DENIED, "SCOPE_MISSING")
    (still,) = (await suite.router.ListWebhooks(router_pb2.ListWebhooksRequest())).webhooks
    assert still.state == router_pb2.WEBHOOK_STATE_ACTIVE

    deleted = await suite.router.DeleteWebhook(
        router_pb2.DeleteWebhookRequest(webhook_id=webhook_id)
    )
    assert deleted.webhook.webhook_id == webhook_id
    assert (await suite.router.ListWebhooks(router_pb2.ListWebhooksRequest())).webhooks == []


async def test_metadata_addresses_are_refused_even_where_private_targets_are_allowed(
    suite: InProcessSuite,
) -> None:
    for url in ("https://169.254.169.254/latest", "https://[fd00:ec2::254]/"):
        create = suite.router.CreateWebhook(
            router_pb2.CreateWebhookRequest(url=url, events=["job.failed"])
        )
        assert await _failure(create) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "WEBHOOK_TARGET_REFUSED",
        )


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1:8443/hook",
        "https://localhost/hook",
        "https://10.0.0.8/hook",
        "https://[::1]/hook",
        "https://169.254.169.254/",
        "http://example.com/hook",
    ],
)
async def test_without_the_operators_leave_private_targets_are_refused(
    tmp_path: Path, url: str
) -> None:
    async with running_suite(tmp_path, {}, {}) as suite:
        create = suite.router.CreateWebhook(
            router_pb2.CreateWebhookRequest(url=url, events=["job.failed"])
        )
        code, reason = await _failure(create)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert reason in ("WEBHOOK_TARGET_REFUSED", "WEBHOOK_URL_INVALID")
        assert (await suite.router.ListWebhooks(router_pb2.ListWebhooksRequest())).webhooks == []


async def test_a_detached_upscale_answers_with_the_accepted_job_and_finishes(
    suite: InProcessSuite,
) -> None:
    account = await suite.open_account()
    batch, _ = await _generate(suite, account)
    parent = batch.jobs[0].job_id
    await _eventually(
        lambda: suite.router.GetJob(router_pb2.GetJobRequest(account_id=account, job_id=parent)),
        lambda reply: reply.job.status == router_pb2.JOB_STATUS_SUCCEEDED,
    )
    request = router_pb2.UpscaleRequest(
        account_id=account, idempotency_key="up", job_id=parent, factor=2, detach=True
    )
    (accepted,) = [response async for response in suite.router.Upscale(request)]
    assert accepted.WhichOneof("event") == "accepted"
    job = await _eventually(
        lambda: suite.router.GetJob(
            router_pb2.GetJobRequest(account_id=account, job_id=accepted.accepted.job_id)
        ),
        lambda reply: reply.job.status == router_pb2.JOB_STATUS_SUCCEEDED,
    )
    assert job.job.parent_job_id == parent and job.job.cost > 0


def _signatures(request: Received) -> list[str]:
    return request.headers["webhook-signature"].split(" ")


def _verifies(secret: str, request: Received, signature: str) -> bool:
    """Whether `signature` alone, as the request's only one, verifies with `secret`."""
    try:
        verify_signature(secret, {**request.headers, "webhook-signature": signature}, request.body)
    except AssertionError:
        return False
    return True


async def test_a_rotated_secret_signs_beside_the_new_one_until_its_grace_ends(
    suite: InProcessSuite, receiver: Any
) -> None:
    created = await suite.router.CreateWebhook(
        router_pb2.CreateWebhookRequest(url=receiver.url + "/", events=["batch.completed"])
    )
    webhook_id = created.webhook.webhook_id
    assert not created.webhook.HasField("secret_rotation_expire_time")
    account = await suite.open_account()

    async def next_delivery() -> Received:
        seen = len(receiver.received)
        await _generate(suite, account)
        arrived = await receiver.wait_for(lambda r: len(r) > seen)
        return arrived[seen]

    # A rotation with the default grace: the new secret is answered once; the old one keeps
    # signing, second, for 24 hours.
    rotated = await suite.router.RotateWebhookSecret(
        router_pb2.RotateWebhookSecretRequest(webhook_id=webhook_id)
    )
    new, old = rotated.secret, created.secret
    assert new.startswith("whsec_") and new != old
    grace = rotated.previous_secret_expire_time.seconds - rotated.webhook.update_time.seconds
    assert grace == 86400
    assert rotated.webhook.secret_rotation_expire_time == rotated.previous_secret_expire_time
    listed = await suite.router.ListWebhooks(router_pb2.ListWebhooksRequest())
    assert listed.webhooks[0].secret_rotation_expire_time == rotated.previous_secret_expire_time
    assert new not in str(listed) and old not in str(listed)

    both = await next_delivery()
    first, second = _signatures(both)
    assert _verifies(new, both, first) and not _verifies(old, both, first)
    assert _verifies(old, both, second) and not _verifies(new, both, second)
    # Any Standard Webhooks receiver accepts it with either secret.
    verify_signature(new, both.headers, both.body)
    verify_signature(old, both.headers, both.body)

    # A leaked secret: grace 0 stops the one being replaced at once, and the older one too.
    leaked = await suite.router.RotateWebhookSecret(
        router_pb2.RotateWebhookSecretRequest(webhook_id=webhook_id, grace_seconds=0)
    )
    assert not leaked.HasField("previous_secret_expire_time")
    assert not leaked.webhook.HasField("secret_rotation_expire_time")
    only = await next_delivery()
    (signature,) = _signatures(only)
    assert _verifies(leaked.secret, only, signature)
    assert not _verifies(new, only, signature) and not _verifies(old, only, signature)

    # A grace of one second: once it has passed, only the new secret signs.
    short = await suite.router.RotateWebhookSecret(
        router_pb2.RotateWebhookSecretRequest(webhook_id=webhook_id, grace_seconds=1)
    )
    assert short.HasField("previous_secret_expire_time")

    async def webhook() -> router_pb2.Webhook:
        return (await suite.router.ListWebhooks(router_pb2.ListWebhooksRequest())).webhooks[0]

    await _eventually(webhook, lambda w: not w.HasField("secret_rotation_expire_time"))
    after = await next_delivery()
    (signature,) = _signatures(after)
    assert _verifies(short.secret, after, signature)
    assert not _verifies(leaked.secret, after, signature)


#: Rotations of bad input: the request's fields, and the field and reason it is refused with.
BAD_ROTATIONS = [
    ({}, "webhook_id", "ID_REQUIRED"),
    ({"webhook_id": "wh_\x00"}, "webhook_id", "MALFORMED_ID"),
    ({"webhook_id": "w" * 300}, "webhook_id", "MALFORMED_ID"),
    ({"webhook_id": "wh_1", "grace_seconds": -1}, "grace_seconds", "OUT_OF_RANGE"),
    ({"webhook_id": "wh_1", "grace_seconds": 604801}, "grace_seconds", "OUT_OF_RANGE"),
]


async def test_a_rotation_of_bad_input_is_refused_naming_the_field(suite: InProcessSuite) -> None:
    for fields, field, reason in BAD_ROTATIONS:
        request = router_pb2.RotateWebhookSecretRequest(**fields)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await suite.router.RotateWebhookSecret(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, fields
        error = from_rpc_error(caught.value)
        assert error.reason == reason, fields
        assert [violation.field for violation in error.violations] == [field], fields
    # A well-formed id of no endpoint, with the longest grace there is.
    request = router_pb2.RotateWebhookSecretRequest(webhook_id="wh_nothing", grace_seconds=604800)
    assert await _failure(suite.router.RotateWebhookSecret(request)) == (
        grpc.StatusCode.NOT_FOUND,
        "WEBHOOK_NOT_FOUND",
    )
