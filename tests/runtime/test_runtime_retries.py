"""Client retries: every channel throttles them, and they never multiply across hops."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from services.runtime import errors
from services.runtime.channels import RETRY_THROTTLING, open_channel, service_config
from services.runtime.interceptors import RETRY_PUSHBACK, _Downstream
from services.runtime.server import Server, ServiceRegistration, create_server
from services.runtime.status import from_rpc_error
from tests.tls import session_pki

BACKEND = "tiergen.test.BackendService"
FRONT = "tiergen.test.FrontService"

#: open_channel's default attempts per call.
MAX_ATTEMPTS = 4


@pytest.mark.parametrize(
    ("services", "attempts"), [(["tiergen.ledger.v1.LedgerService"], 4), ([BACKEND, FRONT], 2)]
)
def test_every_service_config_throttles_retries(services, attempts):
    config = service_config(services, attempts)

    assert config["retryThrottling"] == {"maxTokens": 10, "tokenRatio": 0.1}
    assert all("retryPolicy" in method for method in config["methodConfig"])


def test_every_channel_is_opened_with_retry_throttling(monkeypatch):
    opened: list[dict[str, Any]] = []

    def secure_channel(target: str, credentials: Any, options: Any = None, **kwargs: Any) -> Any:
        opened.append(dict(options))
        return None

    monkeypatch.setattr(grpc.aio, "secure_channel", secure_channel)
    open_channel("127.0.0.1:1", security=session_pki().security(), services=[BACKEND])
    open_channel("127.0.0.1:2", security=session_pki().security(), services=[FRONT], max_attempts=2)

    for options in opened:
        assert options["grpc.enable_retries"] == 1
        assert json.loads(options["grpc.service_config"])["retryThrottling"] == RETRY_THROTTLING


Handler = Callable[[bytes, Any], Awaitable[bytes]]


async def _serve(service: str, unary: Handler, stream: Any) -> tuple[Server, str]:
    handler = grpc.method_handlers_generic_handler(
        service,
        {
            "Call": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
        },
    )
    registration = ServiceRegistration(
        service, lambda server: server.add_generic_rpc_handlers((handler,))
    )
    server, port = await create_server(session_pki().server(service), [registration])
    await server.start()
    return server, f"127.0.0.1:{port}"


class Hops:
    """A front server whose handlers call a backend that is always UNAVAILABLE, each through
    the project's channels; counts the attempts each receives."""

    def __init__(self) -> None:
        self.front_attempts = 0
        self.backend_attempts = 0
        self.front_fails_alone = False
        self._backend_channel: grpc.aio.Channel | None = None

    async def backend_call(self, request: bytes, context: Any) -> bytes:
        self.backend_attempts += 1
        raise errors.Unavailable("the backend's database is down")

    async def backend_stream(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        self.backend_attempts += 1
        raise errors.Unavailable("the backend's database is down")
        yield b"never"

    async def front_call(self, request: bytes, context: Any) -> bytes:
        self.front_attempts += 1
        if self.front_fails_alone:
            raise errors.Unavailable("the front's own worker died", reason="WORKER_DIED")
        assert self._backend_channel is not None
        try:
            reply: bytes = await self._backend_channel.unary_unary(f"/{BACKEND}/Call")(request)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None
        return reply

    async def front_stream(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        self.front_attempts += 1
        assert self._backend_channel is not None
        try:
            async for reply in self._backend_channel.unary_stream(f"/{BACKEND}/Stream")(request):
                yield reply
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None

    async def start(self) -> str:
        self._backend, backend = await _serve(BACKEND, self.backend_call, self.backend_stream)
        self._backend_channel = open_channel(
            backend, security=session_pki().security(), services=[BACKEND]
        )
        self._front, front = await _serve(FRONT, self.front_call, self.front_stream)
        return front

    async def stop(self) -> None:
        await self._front.stop(0)
        assert self._backend_channel is not None
        await self._backend_channel.close()
        await self._backend.stop(0)


@pytest.fixture
async def hops() -> AsyncIterator[tuple[Hops, grpc.aio.Channel]]:
    hops = Hops()
    front = await hops.start()
    try:
        async with open_channel(
            front, security=session_pki().security(), services=[FRONT]
        ) as client:
            yield hops, client
    finally:
        await hops.stop()


async def test_a_backend_that_is_down_is_retried_at_its_own_hop_only(hops):
    counts, client = hops

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.unary_unary(f"/{FRONT}/Call")(b"x", timeout=10)

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    # The front's channel retried the backend; the client did not retry the front. Without
    # the rule the client would repeat the front up to 4 times, each with its own retries.
    assert counts.backend_attempts == MAX_ATTEMPTS
    assert counts.front_attempts == 1
    assert (RETRY_PUSHBACK, "-1") in tuple(caught.value.trailing_metadata() or ())


async def test_a_streaming_call_is_retried_at_one_hop_only(hops):
    counts, client = hops

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in client.unary_stream(f"/{FRONT}/Stream")(b"x", timeout=10):
            pass

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert counts.backend_attempts == MAX_ATTEMPTS
    assert counts.front_attempts == 1


async def test_a_server_failing_on_its_own_is_still_retried(hops):
    counts, client = hops
    counts.front_fails_alone = True

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.unary_unary(f"/{FRONT}/Call")(b"x", timeout=10)

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert counts.front_attempts == MAX_ATTEMPTS
    assert counts.backend_attempts == 0


class _Stream:
    """A downstream stream as the RPC sees it when its done-callback has not run yet."""

    def __init__(self, code: grpc.StatusCode | None) -> None:
        self._code = code

    def done(self) -> bool:
        return self._code is not None

    async def code(self) -> grpc.StatusCode | None:
        return self._code


@pytest.mark.parametrize(
    ("code", "counts"),
    [(grpc.StatusCode.UNAVAILABLE, True), (grpc.StatusCode.NOT_FOUND, False), (None, False)],
)
async def test_a_finished_stream_counts_before_its_callback_runs(code, counts):
    downstream = _Downstream()
    downstream.watch(_Stream(code))

    assert await downstream.were_unavailable() is counts
