"""Retries and overload as a client sees them: what an idempotency key records, what it does not,
and the answers that tell a client when and how to retry. On both job stores."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from tiergen.common.v1 import common_pb2
from tiergen.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from tiergen.router.v1 import router_pb2, router_pb2_grpc

from services.generator.tiers import DEFAULT_CATALOGUE_TOML
from services.router.jobs.migrations import SCHEMA
from services.router.server import create_server as create_router
from services.router.settings import RouterSettings
from services.runtime.migrations import upgrade
from services.runtime.status import from_rpc_error
from tests.postgres import fresh_schema, with_search_path
from tests.rich_errors import details
from tests.router.conftest import MAIN_TENANT, router_channel
from tests.tls import session_pki

SQUARE_1K = common_pb2.Resolution(size=common_pb2.IMAGE_SIZE_1K)
#: The nano tier takes 1 render running and 3 waiting: a burst of 40 overflows it.
SMALL_NANO = DEFAULT_CATALOGUE_TOML.replace(
    "max_concurrency = 2\nqueue_limit = 64", "max_concurrency = 1\nqueue_limit = 3"
)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def job_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The router's job store DSN: a file, or a fresh schema on the test PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'router.db'}"
        return
    with fresh_schema("router_retries", "the router's retry tests on PostgreSQL") as schema:
        upgrade(SCHEMA, with_search_path(schema))
        yield with_search_path(schema)


@pytest.fixture
def router_env(job_store: str) -> dict[str, str]:
    return {"TIERGEN_ROUTER_DSN": job_store}


@pytest.fixture
def generator_env(tmp_path: Path) -> dict[str, str]:
    tiers = tmp_path / "tiers.toml"
    tiers.write_text(SMALL_NANO)
    assert SMALL_NANO != DEFAULT_CATALOGUE_TOML
    return {"TIERGEN_GENERATOR_TIERS_FILE": str(tiers)}


def nano(prompt: str = "a lighthouse at dusk") -> router_pb2.GenerationSpec:
    return router_pb2.GenerationSpec(prompt=prompt, tier="nano", resolution=SQUARE_1K)


async def generate(
    stub: router_pb2_grpc.RouterServiceStub,
    account: str,
    key: str,
    spec: router_pb2.GenerationSpec,
    deadline: float | None = None,
) -> tuple[router_pb2.Batch, list[router_pb2.Job]]:
    request = router_pb2.GenerateRequest(account_id=account, idempotency_key=key, spec=spec)
    batch, jobs = None, []
    async for event in stub.Generate(request, timeout=deadline):
        if event.WhichOneof("event") == "batch":
            batch = event.batch
        elif event.WhichOneof("event") == "job":
            jobs.append(event.job)
    assert batch is not None
    return batch, jobs


async def jobs_of(suite: Any, account: str) -> list[router_pb2.Job]:
    reply = await suite.router.ListJobs(router_pb2.ListJobsRequest(account_id=account))
    return list(reply.jobs)


async def test_a_retry_under_a_deadline_replays(suite):
    account = await suite.open_account()
    key = uuid.uuid4().hex
    first, (job,) = await generate(suite.router, account, key, nano(), deadline=30)
    assert not first.replayed and job.status == router_pb2.JOB_STATUS_SUCCEEDED
    # Every retry has a different time left before its deadline, or none.
    for deadline in (30, 7.5, None):
        again, (same,) = await generate(suite.router, account, key, nano(), deadline=deadline)
        assert again.replayed and again.batch_id == first.batch_id
        assert same.job_id == job.job_id
    balance = await suite.balance(account)
    assert (balance.available, balance.held) == (400 - job.cost, 0)


async def test_a_burst_is_refused_for_overload_before_any_credit_is_held(suite):
    account = await suite.open_account()
    keys = [uuid.uuid4().hex for _ in range(40)]

    async def one(key: str) -> grpc.aio.AioRpcError | router_pb2.Job:
        try:
            _, (job,) = await generate(suite.router, account, key, nano(f"a fox, take {key}"))
        except grpc.aio.AioRpcError as error:
            return error
        return job

    outcomes = dict(zip(keys, await asyncio.gather(*(one(key) for key in keys)), strict=True))
    delivered = [o for o in outcomes.values() if isinstance(o, router_pb2.Job)]
    refused = {k: o for k, o in outcomes.items() if isinstance(o, grpc.aio.AioRpcError)}
    assert refused and delivered, "the burst should both fill and overflow the tier"
    assert all(job.status == router_pb2.JOB_STATUS_SUCCEEDED for job in delivered)
    for error in refused.values():
        # Never a credit shortfall: the account could pay for every one of them.
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
        assert from_rpc_error(error).reason == "QUEUE_FULL"
        found = details(error)
        assert found[error_details_pb2.RetryInfo].retry_delay.ToNanoseconds() > 0
        (violation,) = found[error_details_pb2.QuotaFailure].violations
        assert violation.subject == "tier:nano"
    # The refused calls recorded nothing and hold nothing.
    assert len(await jobs_of(suite, account)) == len(delivered)
    balance = await suite.balance(account)
    spent = sum(job.cost for job in delivered)
    assert (balance.available, balance.held) == (400 - spent, 0)

    # Each refused key, retried, runs now: the refusal was not its answer.
    for key in refused:
        batch, (job,) = await generate(suite.router, account, key, nano(f"a fox, take {key}"))
        assert not batch.replayed and job.status == router_pb2.JOB_STATUS_SUCCEEDED
    balance = await suite.balance(account)
    assert (balance.available, balance.held) == (400 - 2 * len(keys), 0)


_HUGE = "x" * (1 << 20)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        ("GetJob", "job_id"),
        ("GetJob", "account_id"),
        ("CancelJob", "batch_id"),
        ("SetShortlist", "job_id"),
        ("GetAsset", "asset_id"),
        ("Generate", "idempotency_key"),
        ("Generate", "spec.tier"),
        ("Promote", "job_id"),
        ("Upscale", "job_id"),
        ("Edit", "job_id"),
    ],
)
async def test_oversized_input_is_refused_without_being_echoed(suite, call, field):
    account = await suite.open_account()
    values = {"account_id": account, "idempotency_key": "k", "job_id": "job_1"}
    values[field.removeprefix("spec.")] = _HUGE
    stub = suite.router
    if call == "GetJob":
        request: Any = router_pb2.GetJobRequest(
            account_id=values["account_id"], job_id=values["job_id"]
        )
        answer: Any = stub.GetJob(request)
    elif call == "CancelJob":
        answer = stub.CancelJob(router_pb2.CancelJobRequest(account_id=account, batch_id=_HUGE))
    elif call == "SetShortlist":
        answer = stub.SetShortlist(
            router_pb2.SetShortlistRequest(account_id=account, job_id=_HUGE, shortlisted=True)
        )
    elif call == "GetAsset":
        answer = stub.GetAsset(router_pb2.GetAssetRequest(account_id=account, asset_id=_HUGE))
    elif call == "Generate":
        spec = nano()
        if field == "spec.tier":
            spec.tier = _HUGE
        answer = stub.Generate(
            router_pb2.GenerateRequest(
                account_id=account, idempotency_key=values["idempotency_key"], spec=spec
            )
        )
    else:
        request_class = getattr(router_pb2, f"{call}Request")
        answer = getattr(stub, call)(
            request_class(account_id=account, idempotency_key="k", job_id=_HUGE)
        )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if hasattr(answer, "__aiter__"):
            async for _ in answer:
                pass
        else:
            await answer
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert len(error.details()) < 400
    assert len(rpc_detail_bytes(error)) < 2000


def rpc_detail_bytes(error: grpc.aio.AioRpcError) -> bytes:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            return bytes(value)
    return b""


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("idempotency_key", "k\x00"),
        ("idempotency_key", "k\nk"),
        ("account_id", "acct\x00"),
        ("prompt", "a fox\x00 in snow"),
    ],
)
async def test_control_characters_are_refused_the_same_on_every_store(suite, field, value):
    account = await suite.open_account()
    values = {"account_id": account, "idempotency_key": uuid.uuid4().hex, "prompt": "a fox"}
    values[field] = value
    request = router_pb2.GenerateRequest(
        account_id=values["account_id"],
        idempotency_key=values["idempotency_key"],
        spec=nano(values["prompt"]),
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in suite.router.Generate(request):
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
    balance = await suite.balance(account)
    assert (balance.available, balance.held) == (400, 0)
    assert await jobs_of(suite, account) == []


async def _start_router(suite: Any, router_env: dict[str, str]) -> tuple[Any, str]:
    settings = RouterSettings.from_env(
        {
            **session_pki().env("router"),
            "TIERGEN_PORT": "0",
            "TIERGEN_SHUTDOWN_GRACE_SECONDS": "0",
            "LEDGER_ADDR": suite.addresses["ledger"],
            "GENERATOR_ADDR": suite.addresses["generator"],
            "UPSCALER_ADDR": suite.addresses["upscaler"],
            "TIERGEN_ROUTER_ASSETS_DIR": str(suite.data_dir / "assets"),
            **router_env,
        }
    )
    server, port = await create_router(settings)
    await server.start()
    return server, f"127.0.0.1:{port}"


async def test_a_stopping_router_says_so_and_the_key_runs_again(suite, router_env):
    account = await suite.open_account()
    key = uuid.uuid4().hex
    spec = router_pb2.GenerationSpec(
        prompt="a cathedral in fog",
        tier="pro",
        n=2,
        resolution=SQUARE_1K,
    )
    call = suite.router.Generate(
        router_pb2.GenerateRequest(account_id=account, idempotency_key=key, spec=spec)
    )
    assert (await call.read()).WhichOneof("event") == "batch"
    await suite.servers["router"].stop()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        while await call.read() is not grpc.aio.EOF:
            pass
    error = caught.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error
    assert from_rpc_error(error).reason == "SHUTTING_DOWN"
    assert "same idempotency key" in error.details()
    assert details(error)[error_details_pb2.RetryInfo].retry_delay.ToNanoseconds() > 0
    # Nothing charged, nothing left held.
    async with session_pki().channel(suite.addresses["ledger"]) as channel:
        ledger = ledger_pb2_grpc.LedgerServiceStub(channel)
        reply = await ledger.GetBalance(
            ledger_pb2.GetBalanceRequest(account_id=account, tenant=MAIN_TENANT)
        )
    assert (reply.balance.available, reply.balance.held) == (400, 0)

    # Another router over the same store runs the key anew.
    server, address = await _start_router(suite, router_env)
    try:
        async with router_channel(address, suite.api_key) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            batch, jobs = await generate(stub, account, key, spec)
            assert not batch.replayed
            assert [job.status for job in jobs] == [router_pb2.JOB_STATUS_SUCCEEDED] * 2
    finally:
        await server.stop(0)
