"""Deadlines across hops: a caller's deadline bounds every call its server makes downstream,
even one given an explicit, longer timeout; only work that must outlive the caller escapes it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from services.runtime.channels import open_channel
from services.runtime.interceptors import outliving_the_caller
from services.runtime.server import Server, ServiceRegistration, create_server
from tests.tls import session_pki

BACKEND = "tiergen.test.DeadlineBackend"
FRONT = "tiergen.test.DeadlineFront"
#: What the front asks of each downstream call, as the router's clients do.
EXPLICIT_TIMEOUT = 30.0
CALLER_DEADLINE = 2.0
#: gRPC sends a deadline as a timeout rounded up to a few significant digits.
ROUNDING = 0.1


class Hops:
    """A front whose handlers call a backend with an explicit timeout; the backend records the
    time each call had left when it arrived."""

    def __init__(self) -> None:
        self.seen: list[float] = []
        self._servers: list[Server] = []
        self._channel: grpc.aio.Channel | None = None

    async def _serve(self, service: str, methods: dict[str, Any]) -> str:
        handler = grpc.method_handlers_generic_handler(service, methods)
        registration = ServiceRegistration(
            service, lambda server: server.add_generic_rpc_handlers((handler,))
        )
        server, port = await create_server(session_pki().server(service), [registration])
        await server.start()
        self._servers.append(server)
        return f"127.0.0.1:{port}"

    async def backend_call(self, request: bytes, context: Any) -> bytes:
        self.seen.append(context.time_remaining())
        return b""

    async def backend_stream(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        self.seen.append(context.time_remaining())
        yield b""

    async def front_call(self, request: bytes, context: Any) -> bytes:
        assert self._channel is not None
        call = self._channel.unary_unary(f"/{BACKEND}/Call")
        if request == b"outlive":
            with outliving_the_caller():
                return bytes(await call(b"", timeout=EXPLICIT_TIMEOUT))
        return bytes(await call(b"", timeout=EXPLICIT_TIMEOUT))

    async def front_stream(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        assert self._channel is not None
        stream = self._channel.unary_stream(f"/{BACKEND}/Stream")
        async for reply in stream(b"", timeout=EXPLICIT_TIMEOUT):
            yield reply

    async def start(self) -> str:
        backend = await self._serve(
            BACKEND,
            {
                "Call": grpc.unary_unary_rpc_method_handler(self.backend_call),
                "Stream": grpc.unary_stream_rpc_method_handler(self.backend_stream),
            },
        )
        self._channel = open_channel(backend, security=session_pki().security(), services=[BACKEND])
        return await self._serve(
            FRONT,
            {
                "Call": grpc.unary_unary_rpc_method_handler(self.front_call),
                "Stream": grpc.unary_stream_rpc_method_handler(self.front_stream),
            },
        )

    async def stop(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        for server in reversed(self._servers):
            await server.stop(0)


@pytest.fixture
async def hops() -> AsyncIterator[tuple[Hops, grpc.aio.Channel]]:
    hops = Hops()
    front = await hops.start()
    channel = session_pki().channel(front)
    try:
        yield hops, channel
    finally:
        await channel.close()
        await hops.stop()


async def test_an_explicit_timeout_does_not_outlast_the_callers_deadline(hops):
    hops_, channel = hops
    await channel.unary_unary(f"/{FRONT}/Call")(b"", timeout=CALLER_DEADLINE)
    await channel.unary_stream(f"/{FRONT}/Stream")(b"", timeout=CALLER_DEADLINE).read()
    assert len(hops_.seen) == 2
    assert all(0 < left <= CALLER_DEADLINE + ROUNDING for left in hops_.seen), hops_.seen


async def test_without_a_caller_deadline_the_explicit_timeout_holds(hops):
    hops_, channel = hops
    await channel.unary_unary(f"/{FRONT}/Call")(b"")
    (left,) = hops_.seen
    assert CALLER_DEADLINE + ROUNDING < left <= EXPLICIT_TIMEOUT + ROUNDING


async def test_work_that_outlives_the_caller_keeps_its_own_timeout(hops):
    hops_, channel = hops
    await channel.unary_unary(f"/{FRONT}/Call")(b"outlive", timeout=CALLER_DEADLINE)
    (left,) = hops_.seen
    assert CALLER_DEADLINE + ROUNDING < left <= EXPLICIT_TIMEOUT + ROUNDING
