"""API keys through RouterService, on a router whose keys are in SQLite or PostgreSQL: a tenant's
administrators create, list, rotate and revoke their own keys; a rotated key works through its
grace and no longer; expired, revoked, missing and foreign credentials are refused."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tiergen.router.v1 import router_pb2, router_pb2_grpc

from services.router.access.keys import KeyStore
from services.router.jobs.migrations import SCHEMA
from services.runtime.migrations import upgrade
from services.runtime.status import from_rpc_error
from tests.postgres import fresh_schema, with_search_path
from tests.router.conftest import EVERY_SCOPE, InProcessSuite, running_suite
from tests.tls import session_pki

#: A job id no one has: a call about it that reaches the handler is NOT_FOUND.
NO_JOB = router_pb2.GetJobRequest(account_id="acct-probe", job_id="job-none")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def router_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The router's database: a file, or a fresh schema on the test PostgreSQL."""
    if request.param == "sqlite":
        yield {}
        return
    with fresh_schema("router_access", "the API key RPC tests on PostgreSQL") as schema:
        upgrade(SCHEMA, with_search_path(schema))
        yield {"TIERGEN_ROUTER_DSN": with_search_path(schema)}


async def _code(call: object) -> tuple[grpc.StatusCode, str]:
    """The status code and ErrorInfo reason a call ended with; (OK, "") when it succeeded."""
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return error.code(), from_rpc_error(error).reason
    return grpc.StatusCode.OK, ""


async def _admitted(stub: router_pb2_grpc.RouterServiceStub) -> bool:
    """Whether a call with `stub`'s key gets past the gate (to the handler's NOT_FOUND)."""
    code, reason = await _code(stub.GetJob(NO_JOB))
    if code == grpc.StatusCode.UNAUTHENTICATED:
        assert reason == "CREDENTIAL_INVALID"
        return False
    assert code == grpc.StatusCode.NOT_FOUND, (code, reason)
    return True


async def _refused_within(stub: router_pb2_grpc.RouterServiceStub, seconds: float) -> float:
    """Seconds until calls with `stub`'s key are refused; fails past `seconds`."""
    start = time.monotonic()
    while await _admitted(stub):
        assert time.monotonic() - start < seconds, f"still admitted after {seconds} s"
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def test_a_tenant_manages_its_keys_through_the_rpcs(suite: InProcessSuite) -> None:
    with structlog.testing.capture_logs() as logs:
        created = await suite.router.CreateApiKey(
            router_pb2.CreateApiKeyRequest(scopes=["images:read"], name="reader")
        )
    key = created.api_key
    assert created.secret.startswith(key.prefix + "_")
    assert (key.tenant, list(key.scopes), key.name) == ("t-main", ["images:read"], "reader")
    assert not key.HasField("expire_time") and not key.HasField("revoke_time")
    reader = suite.stub(created.secret)
    assert await _admitted(reader)
    # The reader may read, and nothing else.
    assert await _code(reader.ListApiKeys(router_pb2.ListApiKeysRequest())) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "SCOPE_MISSING",
    )

    listed = await suite.router.ListApiKeys(router_pb2.ListApiKeysRequest())
    assert [k.prefix for k in listed.api_keys] == [key.prefix, suite.api_key[:12]]
    assert created.secret not in str(listed) and suite.api_key not in str(listed)

    revoked = await suite.router.RevokeApiKey(router_pb2.RevokeApiKeyRequest(prefix=key.prefix))
    assert revoked.api_key.HasField("revoke_time")
    # This router changed it: refused at once, not at the end of the cache bound.
    assert not await _admitted(reader)
    listed = await suite.router.ListApiKeys(router_pb2.ListApiKeysRequest())
    assert [k.prefix for k in listed.api_keys] == [suite.api_key[:12]]
    everything = await suite.router.ListApiKeys(
        router_pb2.ListApiKeysRequest(include_inactive=True)
    )
    assert {k.prefix for k in everything.api_keys} == {key.prefix, suite.api_key[:12]}

    (event,) = [log for log in logs if log.get("action") == "key.created"]
    assert (event["tenant"], event["prefix"], event["by"]) == (
        "t-main",
        key.prefix,
        suite.api_key[:12],
    )
    assert "trace_id" in event
    assert created.secret not in repr(logs)


async def test_a_rotated_key_works_through_its_grace_and_then_stops(
    suite: InProcessSuite,
) -> None:
    created = await suite.router.CreateApiKey(
        router_pb2.CreateApiKeyRequest(scopes=["images:read", "images:write"], name="worker")
    )
    old = suite.stub(created.secret)
    with structlog.testing.capture_logs() as logs:
        rotated = await suite.router.RotateApiKey(
            router_pb2.RotateApiKeyRequest(prefix=created.api_key.prefix, grace_seconds=2)
        )
    assert rotated.api_key.replaces == created.api_key.prefix
    assert list(rotated.api_key.scopes) == ["images:read", "images:write"]
    assert rotated.replaced.prefix == created.api_key.prefix
    assert rotated.replaced.HasField("expire_time")
    new = suite.stub(rotated.secret)
    assert await _admitted(new)
    assert await _admitted(old)
    waited = await _refused_within(old, seconds=10)
    assert waited > 0.5
    assert await _admitted(new)
    (event,) = [log for log in logs if log.get("action") == "key.rotated"]
    assert (event["prefix"], event["new_prefix"]) == (
        created.api_key.prefix,
        rotated.api_key.prefix,
    )
    assert rotated.secret not in repr(logs)


async def test_a_key_gives_only_scopes_it_holds(suite: InProcessSuite) -> None:
    limited = await suite.stub_of("t-main", ["keys:admin", "images:read"])
    assert await _code(
        limited.CreateApiKey(router_pb2.CreateApiKeyRequest(scopes=["images:write"]))
    ) == (grpc.StatusCode.PERMISSION_DENIED, "SCOPE_NOT_HELD")
    # Rotating a broader key would hand its scopes over with the new secret.
    assert await _code(
        limited.RotateApiKey(router_pb2.RotateApiKeyRequest(prefix=suite.api_key[:12]))
    ) == (grpc.StatusCode.PERMISSION_DENIED, "SCOPE_NOT_HELD")
    created = await limited.CreateApiKey(router_pb2.CreateApiKeyRequest(scopes=["images:read"]))
    assert list(created.api_key.scopes) == ["images:read"]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (router_pb2.CreateApiKeyRequest(scopes=[]), "scopes"),
        (router_pb2.CreateApiKeyRequest(scopes=["images:paint"]), "scopes"),
        (router_pb2.CreateApiKeyRequest(scopes=["images:read"], ttl_seconds=-1), "ttl_seconds"),
        (router_pb2.CreateApiKeyRequest(scopes=["images:read"], name="x" * 101), "name"),
    ],
)
async def test_a_bad_request_names_its_field(suite: InProcessSuite, request_, field) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await suite.router.CreateApiKey(request_)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = from_rpc_error(refused.value)
    assert [v.field for v in error.violations] == [field]  # type: ignore[attr-defined]


async def test_another_tenants_keys_are_out_of_sight(suite: InProcessSuite) -> None:
    other = await suite.stub_of("t-other")
    listed = await other.ListApiKeys(router_pb2.ListApiKeysRequest(include_inactive=True))
    assert [k.tenant for k in listed.api_keys] == ["t-other"]
    answers = []
    for prefix in (suite.api_key[:12], "tgk_00000000"):
        for call in (
            other.RevokeApiKey(router_pb2.RevokeApiKeyRequest(prefix=prefix)),
            other.RotateApiKey(router_pb2.RotateApiKeyRequest(prefix=prefix)),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            answers.append(
                (refused.value.code(), (refused.value.details() or "").replace(prefix, "PREFIX"))
            )
    assert len(set(answers)) == 1 and answers[0][0] == grpc.StatusCode.NOT_FOUND
    # The suite's key is untouched.
    assert await _admitted(suite.router)


async def test_expired_revoked_missing_and_unknown_credentials_are_refused(
    suite: InProcessSuite,
) -> None:
    past = datetime.now(UTC) - timedelta(hours=1)
    store = await KeyStore.open(suite.router_dsn, clock=lambda: past, pool_size=1)
    try:
        expired = await store.create("t-main", EVERY_SCOPE, ttl_seconds=60)
    finally:
        await store.close()
    assert not await _admitted(suite.stub(expired.secret))
    assert not await _admitted(suite.stub("tgk_00000000_" + "A" * 43))
    assert not await _admitted(suite.stub(suite.api_key[:13] + "B" * 43))
    assert await _code(suite.stub(None).GetJob(NO_JOB)) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "CREDENTIAL_MISSING",
    )
    # Health stays open to probes without a credential.
    async with session_pki().channel(suite.addresses["router"], None) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        await health.Check(health_pb2.HealthCheckRequest(service=""))


async def test_authentication_off_is_loud_and_acts_as_default(tmp_path: Path) -> None:
    with structlog.testing.capture_logs() as logs:
        async with running_suite(tmp_path, {"TIERGEN_AUTH": "off"}, {}) as suite:
            bare = suite.stub(None)
            created = await bare.CreateApiKey(
                router_pb2.CreateApiKeyRequest(scopes=["images:read"])
            )
    assert created.api_key.tenant == "default"
    warnings = [log for log in logs if "authentication is OFF" in log["event"]]
    assert [w["log_level"] for w in warnings] == ["warning"]


async def test_no_secret_reaches_a_span(suite: InProcessSuite, spans) -> None:
    created = await suite.router.CreateApiKey(
        router_pb2.CreateApiKeyRequest(scopes=["images:read"])
    )
    await _admitted(suite.stub(created.secret))
    await _admitted(suite.stub(created.api_key.prefix + "_" + "C" * 43))
    finished = spans.get_finished_spans()
    assert finished
    recorded = repr([(span.name, dict(span.attributes or {}), span.events) for span in finished])
    for secret in (created.secret, suite.api_key):
        assert secret not in recorded and secret[13:] not in recorded


async def test_a_calls_span_names_its_tenant_and_credential(suite: InProcessSuite, spans) -> None:
    await _code(suite.router.GetJob(NO_JOB))
    (served,) = [s for s in spans.get_finished_spans() if s.name.endswith("RouterService/GetJob")]
    attributes = dict(served.attributes or {})
    assert attributes["tiergen.tenant"] == "t-main"
    assert attributes["tiergen.credential"] == suite.api_key[:12]
