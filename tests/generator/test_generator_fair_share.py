"""Fair share in a real generator (worker processes, gRPC): a tenant's sketch starts before
another tenant's bulk queue drains, the interactive lane starts it while the only shared
worker is busy, work that cannot start in time is refused at once, and bad settings stop the
start with one line."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from tiergen.common.v1 import common_pb2
from tiergen.generator.v1 import generator_pb2, generator_pb2_grpc

from services.generator.server import create_server
from services.generator.settings import GeneratorSettings
from services.runtime.fairshare import FairShareSettings, parse_weights
from services.runtime.settings import ConfigError
from tests.rich_errors import details
from tests.start_failures import refused_start
from tests.tls import session_pki

pytestmark = pytest.mark.slow

K1, K2 = common_pb2.IMAGE_SIZE_1K, common_pb2.IMAGE_SIZE_2K
INTERACTIVE, BULK = common_pb2.URGENCY_INTERACTIVE, common_pb2.URGENCY_BULK


@contextlib.asynccontextmanager
async def generator(workers: int, interactive_workers: int) -> AsyncIterator[Any]:
    settings = GeneratorSettings(
        server=session_pki().server("generator"),
        workers=workers,
        interactive_workers=interactive_workers,
        fair_share=FairShareSettings(parse_weights("acme=1,globex=1")),
    )
    server, port = await create_server(settings)
    await server.start()
    channel = session_pki().channel(f"127.0.0.1:{port}")
    try:
        yield generator_pb2_grpc.GeneratorServiceStub(channel)  # type: ignore[no-untyped-call]
    finally:
        await channel.close()
        await server.stop(0)


def render_request(
    tenant: str, tier: str, size: int, urgency: int, seed: int
) -> list[generator_pb2.RenderRequest]:
    spec = generator_pb2.RenderSpec(
        tier=tier,
        resolution=common_pb2.Resolution(size=size),  # type: ignore[arg-type]
        prompt="a lighthouse on a cliff at sunset",
        seed=seed,
        tenant=tenant,
        account_id=f"{tenant}-user",
        urgency=urgency,  # type: ignore[arg-type]
    )
    return [generator_pb2.RenderRequest(spec=spec)]


class Render:
    """One Render call in the background: when it started rendering and when it finished."""

    def __init__(
        self,
        stub: Any,
        sent: list[generator_pb2.RenderRequest],
        timeout: float = 60,
        rendering: asyncio.Event | None = None,
    ) -> None:
        self.rendering = rendering or asyncio.Event()
        self.finished_at: float | None = None
        self.task = asyncio.create_task(self._run(stub, sent, timeout))

    async def _run(
        self, stub: Any, sent: list[generator_pb2.RenderRequest], deadline: float
    ) -> None:
        async for message in stub.Render(iter(sent), timeout=deadline):
            if message.progress.stage == "rendering":
                self.rendering.set()
        self.finished_at = time.monotonic()


async def test_a_sketch_starts_before_another_tenants_bulk_queue_drains() -> None:
    # One worker, no lane: only the order of the queue can put the sketch first.
    async with generator(workers=1, interactive_workers=0) as stub:
        # Set once any of acme's renders is on the worker: the rest are queued behind it.
        rendering = asyncio.Event()
        bulk = [
            Render(stub, render_request("acme", "standard", K2, BULK, seed), rendering=rendering)
            for seed in range(6)
        ]
        await rendering.wait()
        sketch = Render(stub, render_request("globex", "nano", K1, INTERACTIVE, 1))
        await asyncio.gather(sketch.task, *(render.task for render in bulk))

    finished = sorted([*bulk, sketch], key=lambda render: render.finished_at or 0.0)
    # In arrival order the sketch would come last, after six 2K renders; it waits only for the
    # one already running (and, on a slow moment, the one that started as it arrived).
    assert finished.index(sketch) <= 2


async def test_the_lane_starts_a_sketch_while_the_only_shared_worker_renders() -> None:
    async with generator(workers=1, interactive_workers=1) as stub:
        long_render = Render(stub, render_request("acme", "pro", K2, BULK, 3))
        await long_render.rendering.wait()
        sketch = Render(stub, render_request("globex", "nano", K1, INTERACTIVE, 4))
        await sketch.task
        sketch_done = time.monotonic()
        assert long_render.finished_at is None, "the pro render ended before the sketch did"
        await long_render.task
    assert long_render.finished_at is not None and long_render.finished_at > sketch_done


async def test_a_render_that_could_not_start_in_time_is_refused_with_retry_info() -> None:
    async with generator(workers=1, interactive_workers=0) as stub:
        rendering = asyncio.Event()
        queue = [
            Render(stub, render_request("acme", "pro", K2, BULK, seed), rendering=rendering)
            for seed in range(4)
        ]
        await rendering.wait()
        # acme's next render would wait for its own three (about a second each) and the one
        # running: a caller giving it one second is told so now, not at its deadline.
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in stub.Render(
                iter(render_request("acme", "pro", K2, BULK, 9)), timeout=1.0
            ):
                pass
        refused_after = time.monotonic() - started
        for render in queue:
            render.task.cancel()
        await asyncio.gather(*(render.task for render in queue), return_exceptions=True)

    error = caught.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused_after < 0.5
    found = details(error)
    info = found[error_details_pb2.ErrorInfo]
    assert info.reason == "WAIT_EXCEEDS_DEADLINE"
    assert info.metadata["group"] == "pro"
    assert int(info.metadata["expected_wait_ms"]) > 1000
    delay = found[error_details_pb2.RetryInfo].retry_delay.ToTimedelta().total_seconds()
    assert delay > 1.0


def test_fair_share_settings_come_from_the_environment() -> None:
    settings = GeneratorSettings.from_env(
        {
            "TIERGEN_GENERATOR_TENANT_WEIGHTS": "acme=2,globex=1,*=0.5",
            "TIERGEN_GENERATOR_INTERACTIVE_BURST": "4",
            "TIERGEN_GENERATOR_INTERACTIVE_WORKERS": "2",
            "TIERGEN_GENERATOR_BULK_NICE": "0",
        }
    )
    weights = settings.fair_share.weights
    assert (weights.of("acme"), weights.of("globex"), weights.of("initech")) == (2.0, 1.0, 0.5)
    assert settings.fair_share.interactive_burst == 4
    assert (settings.interactive_workers, settings.bulk_nice) == (2, 0)
    defaults = GeneratorSettings.from_env({})
    assert (defaults.interactive_workers, defaults.bulk_nice) == (1, 10)
    assert defaults.fair_share == FairShareSettings()


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("TIERGEN_GENERATOR_TENANT_WEIGHTS", "acme=0", "TIERGEN_GENERATOR_TENANT_WEIGHTS: acme=0"),
        ("TIERGEN_GENERATOR_TENANT_WEIGHTS", "acme", "is not tenant=weight"),
        ("TIERGEN_GENERATOR_INTERACTIVE_BURST", "0", "TIERGEN_GENERATOR_INTERACTIVE_BURST=0"),
        ("TIERGEN_GENERATOR_INTERACTIVE_WORKERS", "17", "TIERGEN_GENERATOR_INTERACTIVE_WORKERS"),
        ("TIERGEN_GENERATOR_BULK_NICE", "20", "TIERGEN_GENERATOR_BULK_NICE=20"),
    ],
)
def test_bad_fair_share_settings_name_their_variable(
    variable: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        GeneratorSettings.from_env({variable: value})


def test_bad_weights_stop_the_start_with_one_line() -> None:
    environ = dict(os.environ, TIERGEN_GENERATOR_TENANT_WEIGHTS="acme=2,globex=-1")
    line, _ = refused_start("services.generator", environ)
    assert line["error"] == (
        "TIERGEN_GENERATOR_TENANT_WEIGHTS: globex=-1: the weight must be above 0 and at most 1000"
    )
