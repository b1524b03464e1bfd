"""Every RouterService RPC against every kind of bad credential, and against a valid key of
another tenant, through a real suite.

For each RPC, the same request (naming tenant `t-main`'s account, job, batch, asset, key and
webhook endpoint) is
sent with no credential, a garbage `authorization` value, a garbage token, an unknown key, an
expired key, a revoked key, and a key of `t-main` holding every scope but the RPC's own. Each
is refused with its exact code and reason, writes a `call.refused` audit event, and leaves
nothing behind: `t-main`'s balance, jobs and keys are unchanged, and the refused call's
idempotency key, sent again with a good key, runs as new. Then a valid key of `t-other` sends
it: the answer is the one a name that exists nowhere gets, and `t-main` is untouched.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
import structlog
from PIL import Image
from tiergen.common.v1 import common_pb2
from tiergen.ledger.v1 import ledger_pb2
from tiergen.router.v1 import router_pb2, router_pb2_grpc

from services.router.access.keys import KeyStore
from services.router.access.scopes import METHOD_SCOPES, Scope
from services.runtime.status import from_rpc_error
from tests.router.conftest import InProcessSuite

OTHER = "t-other"
_STREAMING = {"Generate", "Promote", "Upscale", "Edit", "GetAsset"}
_1K = common_pb2.Resolution(size=common_pb2.IMAGE_SIZE_1K)
#: Where the endpoints made here point: loopback, where nothing listens.
_HOOK = "https://127.0.0.1:9/hook"


@pytest.fixture
def router_env() -> dict[str, str]:
    # Every call reads its key from the store (a revocation shows at once), and refusals are
    # answered at once: this test makes more than a hundred of them from one peer.
    return {
        "TIERGEN_ROUTER_KEY_CACHE_SECONDS": "0",
        "TIERGEN_ROUTER_MAX_REFUSAL_DELAY_SECONDS": "0",
        # The endpoints made here point at loopback, where nothing listens.
        "TIERGEN_ROUTER_WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
    }


@dataclass(frozen=True)
class World:
    """What `t-main` has: an account with a finished job, and a key."""

    account: str
    job_id: str
    batch_id: str
    asset_id: str
    width: int
    height: int
    key_prefix: str
    webhook_id: str


@dataclass(frozen=True)
class Names:
    """The ids a request names: `t-main`'s, or ones that exist nowhere."""

    account: str
    job_id: str
    batch_id: str
    asset_id: str
    key_prefix: str
    mask: bytes
    webhook_id: str


def _mask(width: int, height: int) -> bytes:
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, (0, 0, width // 2, height))
    out = io.BytesIO()
    mask.save(out, format="PNG")
    return out.getvalue()


def _spec() -> router_pb2.GenerationSpec:
    # A tier that can in-paint, so that an Edit sent with a good key runs.
    return router_pb2.GenerationSpec(prompt="a lighthouse at dawn", tier="standard", resolution=_1K)


#: RPC -> the request it sends about `names`, under idempotency key `key`.
REQUESTS: dict[str, Callable[[Names, str], Any]] = {
    "Quote": lambda n, k: router_pb2.QuoteRequest(account_id=n.account, spec=_spec()),
    "Generate": lambda n, k: router_pb2.GenerateRequest(
        account_id=n.account, idempotency_key=k, spec=_spec()
    ),
    "Promote": lambda n, k: router_pb2.PromoteRequest(
        account_id=n.account, idempotency_key=k, job_id=n.job_id, tier="pro"
    ),
    "Upscale": lambda n, k: router_pb2.UpscaleRequest(
        account_id=n.account, idempotency_key=k, job_id=n.job_id, factor=2
    ),
    "Edit": lambda n, k: router_pb2.EditRequest(
        account_id=n.account, idempotency_key=k, job_id=n.job_id, mask=n.mask
    ),
    "CancelJob": lambda n, k: router_pb2.CancelJobRequest(
        account_id=n.account, batch_id=n.batch_id
    ),
    "SetShortlist": lambda n, k: router_pb2.SetShortlistRequest(
        account_id=n.account, job_id=n.job_id, shortlisted=True
    ),
    "GetJob": lambda n, k: router_pb2.GetJobRequest(account_id=n.account, job_id=n.job_id),
    "ListJobs": lambda n, k: router_pb2.ListJobsRequest(account_id=n.account, batch_id=n.batch_id),
    "GetAsset": lambda n, k: router_pb2.GetAssetRequest(account_id=n.account, asset_id=n.asset_id),
    "OpenAccount": lambda n, k: router_pb2.OpenAccountRequest(
        account_id=n.account, idempotency_key=k
    ),
    "CheckIn": lambda n, k: router_pb2.CheckInRequest(account_id=n.account, idempotency_key=k),
    "GetBalance": lambda n, k: router_pb2.GetBalanceRequest(account_id=n.account),
    "Grant": lambda n, k: router_pb2.GrantRequest(
        account_id=n.account,
        amount=1000,
        kind=ledger_pb2.GRANT_KIND_PURCHASE,
        reason="bought",
        idempotency_key=k,
    ),
    "CreateApiKey": lambda n, k: router_pb2.CreateApiKeyRequest(
        scopes=["images:read"], name=f"made-{k[:8]}"
    ),
    "ListApiKeys": lambda n, k: router_pb2.ListApiKeysRequest(include_inactive=True),
    "RotateApiKey": lambda n, k: router_pb2.RotateApiKeyRequest(prefix=n.key_prefix),
    "RevokeApiKey": lambda n, k: router_pb2.RevokeApiKeyRequest(prefix=n.key_prefix),
    "CreateWebhook": lambda n, k: router_pb2.CreateWebhookRequest(
        url=_HOOK, events=["job.failed"], description=f"made-{k[:8]}"
    ),
    "ListWebhooks": lambda n, k: router_pb2.ListWebhooksRequest(),
    "UpdateWebhook": lambda n, k: router_pb2.UpdateWebhookRequest(
        webhook_id=n.webhook_id, description=f"changed-{k[:8]}"
    ),
    "DeleteWebhook": lambda n, k: router_pb2.DeleteWebhookRequest(webhook_id=n.webhook_id),
    "RotateWebhookSecret": lambda n, k: router_pb2.RotateWebhookSecretRequest(
        webhook_id=n.webhook_id
    ),
    "ListWebhookDeliveries": lambda n, k: router_pb2.ListWebhookDeliveriesRequest(
        webhook_id=n.webhook_id
    ),
}


async def _call(
    stub: router_pb2_grpc.RouterServiceStub,
    rpc: str,
    request: Any,
    metadata: tuple[tuple[str, str], ...] | None = None,
) -> tuple[grpc.StatusCode, str]:
    """The code and ErrorInfo reason `rpc` ended with; (OK, "") when it succeeded."""
    method = getattr(stub, rpc)
    try:
        if rpc in _STREAMING:
            async for _ in method(request, metadata=metadata):
                pass
        else:
            await method(request, metadata=metadata)
    except grpc.aio.AioRpcError as error:
        return error.code(), from_rpc_error(error).reason
    return grpc.StatusCode.OK, ""


async def _world(suite: InProcessSuite) -> World:
    account = await suite.open_account()
    request = router_pb2.GenerateRequest(
        account_id=account, idempotency_key=uuid.uuid4().hex, spec=_spec()
    )
    jobs = [e.job async for e in suite.router.Generate(request) if e.WhichOneof("event") == "job"]
    (job,) = jobs
    assert job.status == router_pb2.JOB_STATUS_SUCCEEDED
    keys = await suite.router.ListApiKeys(router_pb2.ListApiKeysRequest())
    webhook = await suite.router.CreateWebhook(
        router_pb2.CreateWebhookRequest(url=_HOOK, events=["job.succeeded"])
    )
    return World(
        account,
        job.job_id,
        job.batch_id,
        job.asset.asset_id,
        job.width,
        job.height,
        keys.api_keys[0].prefix,
        webhook.webhook.webhook_id,
    )


async def _snapshot(suite: InProcessSuite, world: World) -> tuple[Any, ...]:
    """Everything of `t-main` a call could change."""
    balance = await suite.balance(world.account)
    jobs = await suite.router.ListJobs(router_pb2.ListJobsRequest(account_id=world.account))
    keys = await suite.router.ListApiKeys(router_pb2.ListApiKeysRequest(include_inactive=True))
    webhooks = await suite.router.ListWebhooks(router_pb2.ListWebhooksRequest())
    return (
        (balance.available, balance.held, balance.total, balance.purchased),
        [(job.job_id, job.status, job.shortlisted) for job in jobs.jobs],
        [
            (key.prefix, key.HasField("revoke_time"), key.expire_time.seconds)
            for key in keys.api_keys
        ],
        [
            (
                hook.webhook_id,
                hook.url,
                hook.description,
                hook.state,
                hook.update_time.ToMicroseconds(),
                hook.HasField("secret_rotation_expire_time"),
            )
            for hook in webhooks.webhooks
        ],
    )


Case = tuple[str, router_pb2_grpc.RouterServiceStub, Any, grpc.StatusCode, str]


async def _bad_credentials(suite: InProcessSuite, rpc: str) -> list[Case]:
    """(case, stub, metadata, expected code, expected reason) for every bad credential."""
    keys = await KeyStore.open(suite.router_dsn, pool_size=1)
    try:
        revoked = await keys.create("t-main", list(Scope), name="revoked")
        await keys.revoke("t-main", revoked.prefix)
    finally:
        await keys.close()
    a_year_ago = datetime.now(UTC) - timedelta(days=365)
    past = await KeyStore.open(suite.router_dsn, pool_size=1, clock=lambda: a_year_ago)
    try:
        expired = await past.create("t-main", list(Scope), name="expired", ttl_seconds=86_400)
    finally:
        await past.close()
    unscoped = await suite.new_key(
        "t-main", [scope for scope in Scope if scope is not METHOD_SCOPES[rpc]], name="unscoped"
    )
    bare = suite.stub(None)
    missing = grpc.StatusCode.UNAUTHENTICATED
    return [
        ("no credential", bare, None, missing, "CREDENTIAL_MISSING"),
        ("another scheme", bare, (("authorization", "Basic dXNlcjpwYXNz"),), missing,
         "CREDENTIAL_MALFORMED"),
        ("garbage token", suite.stub("garbage"), None, missing, "CREDENTIAL_INVALID"),
        ("unknown key", suite.stub("tgk_0badc0de_" + "A" * 43), None, missing,
         "CREDENTIAL_INVALID"),
        ("expired key", suite.stub(expired.secret), None, missing, "CREDENTIAL_INVALID"),
        ("revoked key", suite.stub(revoked.secret), None, missing, "CREDENTIAL_INVALID"),
        ("key without the scope", suite.stub(unscoped), None, grpc.StatusCode.PERMISSION_DENIED,
         "SCOPE_MISSING"),
    ]  # fmt: skip


@pytest.mark.parametrize("rpc", sorted(METHOD_SCOPES))
async def test_a_bad_credential_is_refused_with_nothing_left_behind(
    suite: InProcessSuite, rpc: str
) -> None:
    world = await _world(suite)
    names = Names(
        world.account,
        world.job_id,
        world.batch_id,
        world.asset_id,
        world.key_prefix,
        _mask(world.width, world.height),
        world.webhook_id,
    )
    cases = await _bad_credentials(suite, rpc)
    before = await _snapshot(suite, world)
    refused_keys = []

    for case, stub, metadata, code, reason in cases:
        key = f"refused-{uuid.uuid4().hex}"
        refused_keys.append(key)
        with structlog.testing.capture_logs() as logs:
            answer = await _call(stub, rpc, REQUESTS[rpc](names, key), metadata)
        assert answer == (code, reason), case
        audits = [e for e in logs if e.get("action") == "call.refused"]
        assert len(audits) == 1, case
        assert audits[0]["method"] == f"/tiergen.router.v1.RouterService/{rpc}"
        assert (audits[0]["code"], audits[0]["reason"]) == (code.name, reason)
        assert audits[0]["peer"] and audits[0]["trace_id"]

    assert await _snapshot(suite, world) == before
    # No refused call recorded its idempotency key: sent again with a good key, it runs anew.
    again = REQUESTS[rpc](names, refused_keys[0])
    if rpc == "Generate":
        first = await anext(aiter(suite.router.Generate(again)))
        assert not first.batch.replayed
    elif rpc in ("Promote", "Upscale", "Edit"):
        assert await _call(suite.router, rpc, again) == (grpc.StatusCode.OK, "")
        listed = await suite.router.ListJobs(router_pb2.ListJobsRequest(account_id=names.account))
        assert len(listed.jobs) == len(before[1]) + 1
    elif rpc in ("OpenAccount", "CheckIn", "Grant"):
        assert not (await getattr(suite.router, rpc)(again)).replayed


@pytest.mark.parametrize("rpc", sorted(METHOD_SCOPES))
async def test_another_tenant_sees_nothing_of_this_one(suite: InProcessSuite, rpc: str) -> None:
    world = await _world(suite)
    mask = _mask(world.width, world.height)
    theirs = Names(
        world.account,
        world.job_id,
        world.batch_id,
        world.asset_id,
        world.key_prefix,
        mask,
        world.webhook_id,
    )
    nowhere = Names(
        f"nobody-{uuid.uuid4().hex[:8]}",
        f"job_{uuid.uuid4().hex}",
        f"batch_{uuid.uuid4().hex}",
        uuid.uuid4().hex * 2,
        "tgk_" + uuid.uuid4().hex[:8],
        mask,
        "wh_" + uuid.uuid4().hex,
    )
    other = await suite.stub_of(OTHER)
    before = await _snapshot(suite, world)

    with structlog.testing.capture_logs() as logs:
        about_theirs = await _call(other, rpc, REQUESTS[rpc](theirs, uuid.uuid4().hex))
        about_nothing = await _call(other, rpc, REQUESTS[rpc](nowhere, uuid.uuid4().hex))

    # The same answer as for names that exist nowhere: nothing says t-main's exist.
    assert about_theirs == about_nothing
    assert not [e for e in logs if e.get("action") == "call.refused"]
    assert await _snapshot(suite, world) == before
