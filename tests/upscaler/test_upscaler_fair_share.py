"""Fair share in a real upscaler (worker processes, gRPC): another tenant's job starts before a
tenant's queue drains, work that cannot start in time is refused at once with a RetryInfo, and
bad fair-share settings stop the start with one line."""

from __future__ import annotations

import asyncio
import io
import os
import time
from functools import cache
from typing import Any

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from PIL import Image
from tiergen.common.v1 import common_pb2
from tiergen.upscaler.v1 import upscaler_pb2

from services.runtime.settings import ConfigError
from services.upscaler.settings import UpscalerSettings
from tests.rich_errors import details
from tests.start_failures import refused_start
from tests.tls import session_pki
from tests.upscaler.test_upscaler_servicer import request, serving, slow_input, stub_for

pytestmark = pytest.mark.slow

ONE_WORKER = UpscalerSettings(
    workers=1,
    queue_limit=8,
    tile_size=64,
    server=session_pki().server("upscaler"),
)


@cache
def medium_input() -> bytes:
    """A 512x512 noisy PNG: a 4x upscale of it is about half a second of work."""
    noise = np.random.default_rng(3).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "PNG")
    return buffer.getvalue()


def tiny_input() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def owned(
    data: bytes, tenant: str, urgency: int = common_pb2.URGENCY_BULK, **fields: Any
) -> list[upscaler_pb2.UpscaleRequest]:
    return request(data, 4.0, tenant=tenant, account_id=f"{tenant}-user", urgency=urgency, **fields)


class Call:
    """One Upscale call in the background: whether it is upscaling, and when it finished."""

    def __init__(
        self,
        stub: Any,
        sent: list[upscaler_pb2.UpscaleRequest],
        working: asyncio.Event | None = None,
    ) -> None:
        self.working = working or asyncio.Event()
        self.finished_at: float | None = None
        self.task = asyncio.create_task(self._run(stub, sent))

    async def _run(self, stub: Any, sent: list[upscaler_pb2.UpscaleRequest]) -> None:
        async for message in stub.Upscale(iter(sent), timeout=60):
            if message.progress.stage in ("decoding", "upscaling", "encoding"):
                self.working.set()
        self.finished_at = time.monotonic()


async def test_another_tenants_job_starts_before_a_tenants_queue_drains() -> None:
    async with serving(ONE_WORKER) as channel:
        stub = stub_for(channel)
        # Set once any of acme's jobs is on the worker: the rest are queued behind it.
        working = asyncio.Event()
        queue = [Call(stub, owned(medium_input(), "acme"), working) for _ in range(5)]
        await working.wait()
        other = Call(stub, owned(tiny_input(), "globex"))
        await asyncio.gather(other.task, *(call.task for call in queue))

    finished = sorted([*queue, other], key=lambda call: call.finished_at or 0.0)
    # In arrival order globex's job would be last; it waits for the job already running (and,
    # on a slow moment, the one that started as it arrived).
    assert finished.index(other) <= 2


async def test_an_upscale_that_could_not_start_in_time_is_refused_with_retry_info() -> None:
    async with serving(ONE_WORKER) as channel:
        stub = stub_for(channel)
        slow = Call(stub, owned(slow_input(), "acme", method=common_pb2.UPSCALE_METHOD_ENHANCE))
        await slow.working.wait()
        waiting = Call(stub, owned(medium_input(), "acme"))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in stub.Upscale(iter(owned(tiny_input(), "acme")), timeout=0.8):
                pass
        refused_after = time.monotonic() - started
        for call in (slow, waiting):
            call.task.cancel()
        await asyncio.gather(slow.task, waiting.task, return_exceptions=True)

    error = caught.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused_after < 0.5
    found = details(error)
    assert found[error_details_pb2.ErrorInfo].reason == "WAIT_EXCEEDS_DEADLINE"
    delay = found[error_details_pb2.RetryInfo].retry_delay.ToTimedelta().total_seconds()
    assert delay > 0.8


def test_fair_share_settings_come_from_the_environment() -> None:
    settings = UpscalerSettings.from_env(
        {
            "TIERGEN_UPSCALER_TENANT_WEIGHTS": "acme=3",
            "TIERGEN_UPSCALER_INTERACTIVE_BURST": "2",
        }
    )
    assert settings.fair_share.weights.of("acme") == 3.0
    assert settings.fair_share.weights.of("globex") == 1.0
    assert settings.fair_share.interactive_burst == 2


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("TIERGEN_UPSCALER_TENANT_WEIGHTS", "acme=x", "TIERGEN_UPSCALER_TENANT_WEIGHTS: acme="),
        ("TIERGEN_UPSCALER_INTERACTIVE_BURST", "none", "TIERGEN_UPSCALER_INTERACTIVE_BURST="),
    ],
)
def test_bad_fair_share_settings_name_their_variable(
    variable: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        UpscalerSettings.from_env({variable: value})


def test_bad_weights_stop_the_start_with_one_line() -> None:
    environ = dict(os.environ, TIERGEN_UPSCALER_TENANT_WEIGHTS="acme=1,acme=2")
    line, _ = refused_start("services.upscaler", environ)
    assert line["error"] == "TIERGEN_UPSCALER_TENANT_WEIGHTS: tenant 'acme' is listed twice"
