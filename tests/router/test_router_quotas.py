"""Quotas through real servers: each RPC that creates work is refused RESOURCE_EXHAUSTED over a
quota, with its QuotaFailure, RetryInfo and ErrorInfo, having held, charged and recorded
nothing, so that the same idempotency key runs once the quota allows (here: once a reload lifts
it); Quote counts as a request and the account calls do not; an account's quota and its
tenant's apply together; an override changes one tenant only; a bad file stops the start.

The quotas chosen refill in tens of seconds, far beyond a test's length: what is asserted is
counted, not timed."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from PIL import Image
from tiergen.common.v1 import common_pb2
from tiergen.router.v1 import router_pb2

from services.generator.tiers import DEFAULT_CATALOGUE_TOML
from services.router.server import create_server
from services.router.settings import RouterSettings
from services.runtime.errors import ResourceExhausted
from services.runtime.settings import ConfigError
from services.runtime.status import from_rpc_error
from tests.router.conftest import MAIN_TENANT, InProcessSuite
from tests.tls import session_pki

#: One image per account per minute: the parent of the handovers uses it up.
ONE_IMAGE_A_MINUTE = "[defaults.account]\nimages_per_minute = 1\n"


@pytest.fixture
def quotas() -> str:
    """The quota file's text; a test parametrizes it."""
    return ONE_IMAGE_A_MINUTE


@pytest.fixture
def quotas_file(tmp_path: Path, quotas: str) -> Path:
    path = tmp_path / "quotas.toml"
    path.write_text(quotas)
    return path


@pytest.fixture
def router_env(quotas_file: Path) -> dict[str, str]:
    return {
        "TIERGEN_ROUTER_QUOTAS_FILE": str(quotas_file),
        "TIERGEN_ROUTER_RELOAD_INTERVAL_SECONDS": "0.1",
    }


@pytest.fixture
def generator_env(tmp_path: Path) -> dict[str, str]:
    """Every tier on the instant backend: a render takes no time."""
    tiers = tmp_path / "tiers.toml"
    tiers.write_text(DEFAULT_CATALOGUE_TOML.replace('backend = "builtin"', 'backend = "instant"'))
    return {"TIERGEN_GENERATOR_TIERS_FILE": str(tiers)}


def spec(tier: str = "nano", n: int = 1) -> router_pb2.GenerationSpec:
    return router_pb2.GenerationSpec(
        prompt="a lighthouse at dusk",
        tier=tier,
        stage=common_pb2.STAGE_EXPLORE,
        resolution=common_pb2.Resolution(
            size=common_pb2.IMAGE_SIZE_1K, aspect_ratio=common_pb2.ASPECT_RATIO_1_1
        ),
        n=n,
    )


def left_half_mask(width: int = 1024, height: int = 1024) -> bytes:
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, (0, 0, width // 2, height))
    out = io.BytesIO()
    mask.save(out, format="PNG")
    return out.getvalue()


async def last(call: AsyncIterator[Any]) -> Any:
    final = None
    async for message in call:
        final = message
    return final


async def refused(call: Any) -> ResourceExhausted:
    """The call's refusal over a quota, with its details checked for what every one carries."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if hasattr(call, "__aiter__"):
            await last(call)
        else:
            await call
    error = caught.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    status = rpc_status.from_call(error)
    assert status is not None
    kinds = {detail.TypeName() for detail in status.details}
    assert {
        error_details_pb2.ErrorInfo.DESCRIPTOR.full_name,
        error_details_pb2.QuotaFailure.DESCRIPTOR.full_name,
        error_details_pb2.RetryInfo.DESCRIPTOR.full_name,
    } <= kinds
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            assert (info.domain, info.reason) == ("tiergen", "QUOTA_EXCEEDED")
    domain = from_rpc_error(error)
    assert isinstance(domain, ResourceExhausted)
    assert domain.retry_after is not None and domain.retry_after > 0
    return domain


async def until_not_refused(call: Callable[[], Any], *, give_up: float = 20.0) -> Any:
    """The answer of `call` once a quota no longer refuses it (a reload on its way)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + give_up
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as error:
            if from_rpc_error(error).reason != "QUOTA_EXCEEDED":
                raise
            assert loop.time() < deadline, "the quota never lifted"
            await asyncio.sleep(0.05)


async def job_ids(suite: InProcessSuite, account: str) -> list[str]:
    page = await suite.router.ListJobs(router_pb2.ListJobsRequest(account_id=account))
    return [job.job_id for job in page.jobs]


async def test_each_rpc_that_creates_work_is_refused_and_its_key_runs_later(
    suite: InProcessSuite, quotas_file: Path
) -> None:
    router = suite.router
    account = await suite.open_account()
    parent = (
        await last(
            router.Generate(
                router_pb2.GenerateRequest(
                    account_id=account, idempotency_key="parent", spec=spec("standard")
                )
            )
        )
    ).job
    assert parent.status == router_pb2.JOB_STATUS_SUCCEEDED
    before = await suite.balance(account)

    calls: dict[str, Callable[[], Any]] = {
        "Generate": lambda: router.Generate(
            router_pb2.GenerateRequest(account_id=account, idempotency_key="g", spec=spec())
        ),
        "Promote": lambda: router.Promote(
            router_pb2.PromoteRequest(
                account_id=account, idempotency_key="p", job_id=parent.job_id, tier="pro"
            )
        ),
        "Upscale": lambda: router.Upscale(
            router_pb2.UpscaleRequest(
                account_id=account, idempotency_key="u", job_id=parent.job_id, factor=2
            )
        ),
        "Edit": lambda: router.Edit(
            router_pb2.EditRequest(
                account_id=account,
                idempotency_key="e",
                job_id=parent.job_id,
                mask=left_half_mask(),
                prompt="a red door",
            )
        ),
    }
    for name, call in calls.items():
        refusal = await refused(call())
        ((subject, description),) = [(v.subject, v.description) for v in refusal.violations]
        assert subject == f"account:{MAIN_TENANT}/{account}:images_per_minute", name
        assert description.startswith(f"account {MAIN_TENANT}/{account} may start 1 images per")
        assert refusal.retry_after is not None and refusal.retry_after <= 60, name
        assert refusal.metadata["quota"] == "images_per_minute"

    # Nothing was held, charged or recorded.
    after = await suite.balance(account)
    assert (after.available, after.held) == (before.available, before.held)
    assert await job_ids(suite, account) == [parent.job_id]

    # Lifted by a reload, each same key runs: a new job, charged once.
    await asyncio.to_thread(quotas_file.write_text, "")

    def streamed(call: Callable[[], Any]) -> Callable[[], Any]:
        return lambda: last(call())

    finals = {name: await until_not_refused(streamed(call)) for name, call in calls.items()}
    assert all(final.job.status == router_pb2.JOB_STATUS_SUCCEEDED for final in finals.values())
    assert len(await job_ids(suite, account)) == 5
    charged = sum(final.job.cost for final in finals.values())
    assert (await suite.balance(account)).available == before.available - charged


@pytest.mark.parametrize("quotas", ["[defaults.account]\nrequests_per_second = 0.01\n"])
async def test_a_quote_counts_as_a_request_and_the_account_calls_do_not(
    suite: InProcessSuite,
) -> None:
    router = suite.router
    account = await suite.open_account()
    quote = router_pb2.QuoteRequest(account_id=account, spec=spec())
    await router.Quote(quote)
    refusal = await refused(router.Quote(quote))
    assert [v.subject for v in refusal.violations] == [
        f"account:{MAIN_TENANT}/{account}:requests_per_second"
    ]
    assert refusal.retry_after is not None and 99 < refusal.retry_after <= 100
    # Reads and account calls are not counted...
    await router.GetBalance(router_pb2.GetBalanceRequest(account_id=account))
    await router.CheckIn(router_pb2.CheckInRequest(account_id=account, idempotency_key="c"))
    await router.ListJobs(router_pb2.ListJobsRequest(account_id=account))
    # ...the calls that create work are.
    await refused(
        router.Generate(
            router_pb2.GenerateRequest(account_id=account, idempotency_key="g", spec=spec())
        )
    )
    # Another account of the tenant has its own.
    other = await suite.open_account()
    await router.Quote(router_pb2.QuoteRequest(account_id=other, spec=spec()))


@pytest.mark.parametrize(
    "quotas",
    [
        "[defaults.tenant]\nimages_per_minute = 3\n"
        "[defaults.account]\nimages_per_minute = 2\n"
        '[tenants.t-big.tenant]\nimages_per_minute = "unlimited"\n'
        '[tenants.t-big.account]\nimages_per_minute = "unlimited"\n'
    ],
)
async def test_the_account_and_its_tenant_and_an_overridden_tenant(
    suite: InProcessSuite,
) -> None:
    router = suite.router

    def generate(account: str, n: int, stub: Any = router) -> Any:
        return stub.Generate(
            router_pb2.GenerateRequest(
                account_id=account, idempotency_key=uuid.uuid4().hex, spec=spec(n=n)
            )
        )

    alice, bob, carol = [await suite.open_account() for _ in range(3)]
    assert (await last(generate(alice, 2))).job.status == router_pb2.JOB_STATUS_SUCCEEDED
    by_account = await refused(generate(alice, 1))
    assert [v.subject for v in by_account.violations] == [
        f"account:{MAIN_TENANT}/{alice}:images_per_minute"
    ]
    assert (await last(generate(bob, 1))).job.status == router_pb2.JOB_STATUS_SUCCEEDED
    by_tenant = await refused(generate(carol, 1))
    assert [v.subject for v in by_tenant.violations] == [f"tenant:{MAIN_TENANT}:images_per_minute"]
    assert by_tenant.metadata["level"] == "tenant"

    big = await suite.stub_of("t-big")
    await big.OpenAccount(router_pb2.OpenAccountRequest(account_id="dan", idempotency_key="o"))
    for _ in range(3):
        final = await last(generate("dan", 4, big))
        assert final.job.status == router_pb2.JOB_STATUS_SUCCEEDED


async def test_a_bad_file_stops_the_start_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "quotas.toml"
    path.write_text('[tenants.acme.account]\nconcurrent_jobs = "many"\n')
    settings = RouterSettings.from_env(
        {
            **session_pki().env("router"),
            "TIERGEN_ROUTER_QUOTAS_FILE": str(path),
            "TIERGEN_ROUTER_DSN": f"sqlite:///{tmp_path / 'router.db'}",
        }
    )
    with pytest.raises(ConfigError) as caught:
        await create_server(settings)
    message = str(caught.value)
    assert message.startswith(
        f"TIERGEN_ROUTER_QUOTAS_FILE={path}:2: tenants.acme.account.concurrent_jobs:"
    )
    assert "\n" not in message
    assert not (tmp_path / "router.db").exists(), "stopped before any store was opened"
