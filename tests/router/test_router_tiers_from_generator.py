"""The router routes to the tiers the generator reports, over real servers: a feature or a tier
the generator does not offer is refused before any credit is held, a router whose generator has
not answered is not ready and says CATALOGUE_UNKNOWN, and a changed answer is swapped in."""

from __future__ import annotations

import contextlib
import io
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from tiergen.common.v1 import common_pb2
from tiergen.router.v1 import router_pb2, router_pb2_grpc

from services.generator.server import create_server as create_generator
from services.generator.settings import GeneratorSettings
from services.generator.tiers import DEFAULT_CATALOGUE_TOML
from services.ledger.server import create_server as create_ledger
from services.ledger.settings import LedgerSettings
from services.router.downstream.grpc_clients import GENERATOR_SERVICE, GrpcRenderer
from services.router.routing.catalogue import TierCatalogue
from services.router.routing.catalogue_watch import CatalogueWatcher
from services.router.server import SERVICE_NAME
from services.router.server import create_server as create_router
from services.router.settings import RouterSettings
from services.runtime.channels import open_channel
from services.runtime.server import Server
from services.upscaler.server import create_server as create_upscaler
from services.upscaler.settings import UpscalerSettings
from tests.rich_errors import bad_fields, details
from tests.router.conftest import issue_key, router_channel, running_suite
from tests.router.generator_tiers import reported_tiers
from tests.tls import session_pki

SQUARE_1K = common_pb2.Resolution(size=common_pb2.IMAGE_SIZE_1K)
#: The embedded catalogue with in-painting turned off on the standard tier.
STANDARD_WITHOUT_INPAINTING = DEFAULT_CATALOGUE_TOML.replace(
    "max_reference_images = 4\ntext_rendering = true\ninpainting = true",
    "max_reference_images = 4\ntext_rendering = true\ninpainting = false",
)
#: The embedded catalogue without its pro tier.
WITHOUT_PRO = DEFAULT_CATALOGUE_TOML[: DEFAULT_CATALOGUE_TOML.index("[tiers.pro]")]


def tiers_file(directory: Path, text: str) -> dict[str, str]:
    assert text != DEFAULT_CATALOGUE_TOML
    path = directory / f"tiers-{uuid.uuid4().hex[:6]}.toml"
    path.write_text(text)
    return {"TIERGEN_GENERATOR_TIERS_FILE": str(path)}


def spec(tier: str) -> router_pb2.GenerationSpec:
    return router_pb2.GenerationSpec(prompt="a harbour at dusk", tier=tier, resolution=SQUARE_1K)


async def generate(suite: Any, account: str, tier: str) -> router_pb2.Job:
    request = router_pb2.GenerateRequest(
        account_id=account, idempotency_key=uuid.uuid4().hex, spec=spec(tier)
    )
    jobs = [e.job async for e in suite.router.Generate(request) if e.WhichOneof("event") == "job"]
    assert [job.status for job in jobs] == [router_pb2.JOB_STATUS_SUCCEEDED]
    return jobs[0]


async def refusal(call: Any) -> grpc.aio.AioRpcError:
    """The error a call (unary or streaming) ends with, having sent nothing before it."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if isinstance(call, grpc.aio.UnaryStreamCall):
            async for event in call:
                pytest.fail(f"the call answered {event} before it was refused")
        else:
            await call
    return caught.value


def reason_of(error: grpc.aio.AioRpcError) -> str:
    return str(details(error)[error_details_pb2.ErrorInfo].reason)


def mask(width: int, height: int) -> bytes:
    image = Image.new("L", (width, height), 0)
    image.paste(255, (0, 0, width // 2, height))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


async def jobs_of(suite: Any, account: str) -> list[router_pb2.Job]:
    reply = await suite.router.ListJobs(router_pb2.ListJobsRequest(account_id=account))
    return list(reply.jobs)


async def test_the_router_reads_the_tiers_the_generator_reports(suite: Any) -> None:
    async with session_pki().channel(suite.addresses["generator"]) as channel:
        assert await GrpcRenderer(channel, 10, 1 << 20).tiers() == reported_tiers()


async def test_an_edit_on_a_tier_the_generator_cannot_inpaint_on_holds_nothing(
    tmp_path: Path,
) -> None:
    generator_env = tiers_file(tmp_path, STANDARD_WITHOUT_INPAINTING)
    async with running_suite(tmp_path, {}, generator_env) as suite:
        account = await suite.open_account()
        parent = await generate(suite, account, "standard")
        before = await suite.balance(account)

        error = await refusal(
            suite.router.Edit(
                router_pb2.EditRequest(
                    account_id=account,
                    idempotency_key=uuid.uuid4().hex,
                    job_id=parent.job_id,
                    mask=mask(parent.width, parent.height),
                )
            )
        )

        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason_of(error) == "TIER_CANNOT_INPAINT"
        assert bad_fields(error) == ["job_id"]
        after = await suite.balance(account)
        assert (after.available, after.held) == (before.available, 0)
        assert [job.job_id for job in await jobs_of(suite, account)] == [parent.job_id]


async def test_a_tier_removed_at_the_generator_is_refused_before_any_hold(
    tmp_path: Path,
) -> None:
    async with running_suite(tmp_path, {}, tiers_file(tmp_path, WITHOUT_PRO)) as suite:
        account = await suite.open_account()
        generation = router_pb2.GenerateRequest(
            account_id=account, idempotency_key=uuid.uuid4().hex, spec=spec("pro")
        )
        error = await refusal(suite.router.Generate(generation))
        assert (error.code(), reason_of(error)) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "UNKNOWN_TIER",
        )
        assert bad_fields(error) == ["spec.tier"]
        quote = await refusal(
            suite.router.Quote(router_pb2.QuoteRequest(account_id=account, spec=spec("pro")))
        )
        assert (reason_of(quote), bad_fields(quote)) == ("UNKNOWN_TIER", ["spec.tier"])

        parent = await generate(suite, account, "nano")
        before = await suite.balance(account)
        promote = await refusal(
            suite.router.Promote(
                router_pb2.PromoteRequest(
                    account_id=account,
                    idempotency_key=uuid.uuid4().hex,
                    job_id=parent.job_id,
                    tier="pro",
                )
            )
        )
        assert (reason_of(promote), bad_fields(promote)) == ("UNKNOWN_TIER", ["tier"])
        after = await suite.balance(account)
        assert (after.available, after.held) == (before.available, 0)
        assert [job.job_id for job in await jobs_of(suite, account)] == [parent.job_id]


async def test_field_paths_are_the_requests_own(suite: Any) -> None:
    account = await suite.open_account()
    bad = router_pb2.GenerationSpec(
        prompt="", tier="nano", n=65, resolution=common_pb2.Resolution(size=2)
    )
    error = await refusal(suite.router.Quote(router_pb2.QuoteRequest(account_id=account, spec=bad)))
    assert bad_fields(error) == ["spec.prompt", "spec.n", "spec.resolution"]
    parent = await generate(suite, account, "nano")
    promote = await refusal(
        suite.router.Promote(
            router_pb2.PromoteRequest(
                account_id=account,
                idempotency_key=uuid.uuid4().hex,
                job_id=parent.job_id,
                tier="standard",
                resolution=common_pb2.Resolution(size=common_pb2.IMAGE_SIZE_4K),
            )
        )
    )
    assert (reason_of(promote), bad_fields(promote)) == ("SIZE_NOT_OFFERED", ["resolution"])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _start(factory: Any, settings: Any) -> tuple[Server, str]:
    server, port = await factory(settings)
    await server.start()
    return server, f"127.0.0.1:{port}"


@contextlib.asynccontextmanager
async def router_without_generator(
    tmp_path: Path,
) -> AsyncIterator[tuple[Server, str, int, str]]:
    """A ledger, an upscaler and a router whose generator's port has nothing listening yet;
    yields the router, its address, the generator's port and an API key of the router's."""
    env = {"TIERGEN_PORT": "0", "TIERGEN_SHUTDOWN_GRACE_SECONDS": "0"}
    tls = session_pki().env
    generator_port = _free_port()
    servers: list[Server] = []
    try:
        ledger, ledger_addr = await _start(
            create_ledger,
            LedgerSettings.from_env(
                {**env, **tls("ledger"), "TIERGEN_LEDGER_DSN": f"sqlite:///{tmp_path}/l.db"}
            ),
        )
        servers.append(ledger)
        upscaler, upscaler_addr = await _start(
            create_upscaler, UpscalerSettings.from_env({**env, **tls("upscaler")})
        )
        servers.append(upscaler)
        router_settings = RouterSettings.from_env(
            {
                **env,
                **tls("router"),
                "LEDGER_ADDR": ledger_addr,
                "GENERATOR_ADDR": f"127.0.0.1:{generator_port}",
                "UPSCALER_ADDR": upscaler_addr,
                "TIERGEN_ROUTER_DSN": f"sqlite:///{tmp_path / 'router.db'}",
                "TIERGEN_ROUTER_ASSETS_DIR": str(tmp_path / "assets"),
                "TIERGEN_ROUTER_CATALOGUE_INTERVAL_SECONDS": "0.05",
            }
        )
        api_key = await issue_key(router_settings.jobs_dsn)
        router, router_addr = await _start(create_router, router_settings)
        servers.append(router)
        yield router, router_addr, generator_port, api_key
    finally:
        for server in reversed(servers):
            await server.stop(0)


async def _serving(health: health_pb2_grpc.HealthStub, service: str) -> None:
    """Returns once `service` reports SERVING, from the health Watch stream (no polling)."""
    request = health_pb2.HealthCheckRequest(service=service)
    async for reply in health.Watch(request):
        if reply.status == health_pb2.HealthCheckResponse.SERVING:
            return


@pytest.mark.timeout(60)
async def test_a_router_whose_generator_is_down_is_not_ready_until_it_answers(
    tmp_path: Path,
) -> None:
    async with (
        router_without_generator(tmp_path) as (_, router_addr, generator_port, api_key),
        router_channel(router_addr, api_key) as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        router = router_pb2_grpc.RouterServiceStub(channel)
        readiness = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        liveness = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert readiness.status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert liveness.status == health_pb2.HealthCheckResponse.SERVING

        # Calls that need no tier work; those that do are UNAVAILABLE, with a retry delay.
        account = "acct-catalogue"
        await router.OpenAccount(
            router_pb2.OpenAccountRequest(account_id=account, idempotency_key="open")
        )
        for call in (
            router.Quote(router_pb2.QuoteRequest(account_id=account, spec=spec("nano"))),
            router.Generate(
                router_pb2.GenerateRequest(
                    account_id=account, idempotency_key="first", spec=spec("nano")
                )
            ),
        ):
            error = await refusal(call)
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert reason_of(error) == "CATALOGUE_UNKNOWN"
            assert details(error)[error_details_pb2.RetryInfo].retry_delay.ToNanoseconds() > 0
        balance = await router.GetBalance(router_pb2.GetBalanceRequest(account_id=account))
        assert (balance.balance.available, balance.balance.held) == (400, 0)

        generator, _ = await _start(
            create_generator,
            GeneratorSettings.from_env(
                {
                    **session_pki().env("generator"),
                    "TIERGEN_PORT": str(generator_port),
                    "TIERGEN_SHUTDOWN_GRACE_SECONDS": "0",
                }
            ),
        )
        try:
            await _serving(health, SERVICE_NAME)
            request = router_pb2.GenerateRequest(
                account_id=account, idempotency_key="first", spec=spec("nano")
            )
            events = [event async for event in router.Generate(request)]
            assert events[-1].job.status == router_pb2.JOB_STATUS_SUCCEEDED
        finally:
            await generator.stop(0)


async def test_a_changed_answer_is_swapped_in(tmp_path: Path) -> None:
    """One watcher over one channel, before and after the generator behind it is redeployed
    with another catalogue on the same address."""
    port = _free_port()
    env = {
        **session_pki().env("generator"),
        "TIERGEN_PORT": str(port),
        "TIERGEN_SHUTDOWN_GRACE_SECONDS": "0",
    }
    adopted: list[TierCatalogue] = []
    ready: list[bool] = []

    async def record_ready(serving: bool) -> None:
        ready.append(serving)

    channel = open_channel(
        f"127.0.0.1:{port}", security=session_pki().security(), services=[GENERATOR_SERVICE]
    )
    watcher = CatalogueWatcher(
        GrpcRenderer(channel, 10, 1 << 20), adopted.append, ready=record_ready, interval=3600
    )
    try:
        generator, _ = await _start(create_generator, GeneratorSettings.from_env(env))
        try:
            await watcher.refresh()
            await watcher.refresh()  # the same answer changes nothing
        finally:
            await generator.stop(0)
        await watcher.refresh()  # the generator is gone: the last catalogue stays
        assert watcher.catalogue == reported_tiers()

        redeployed = {**env, **tiers_file(tmp_path, WITHOUT_PRO)}
        generator, _ = await _start(create_generator, GeneratorSettings.from_env(redeployed))
        try:
            await channel.channel_ready()
            await watcher.refresh()
        finally:
            await generator.stop(0)
    finally:
        await channel.close()

    assert adopted == [reported_tiers(), reported_tiers(WITHOUT_PRO)]
    assert ready == [True]
