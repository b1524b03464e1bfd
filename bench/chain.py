"""The bare services of the router benchmark: gRPC hops that do no work, on the runtime's server.

`python -m bench.chain` serves two services on the runtime's `create_server` (so with the same
telemetry interceptor, health and reflection as every Tiergen service), and calls others over
the runtime's `open_channel` (so with the same client interceptors, deadlines and retry policy
as the router's channels), secured as a service's are: TLS from TIERGEN_TLS_* and
TIERGEN_CA_FILE, or plaintext with TIERGEN_INSECURE=true:

- `tiergen.bench.v1.ChainService/Hop` takes and returns an empty message. With
  CHAIN_NEXT_ADDRS set (`host:port,host:port`), each Hop first calls Hop on each of those
  addresses in turn. The benchmark's chain is A calling B and then C.
- `tiergen.bench.v1.ShapeService` has the router's call shape with none of its work: with
  SHAPE_LEDGER_ADDR and SHAPE_GENERATOR_ADDR set, Generate (one request, a stream of replies)
  calls Balance and Reserve on the ledger's address, streams Render from the generator's, and
  calls Capture, sending the caller the router's six messages of about their sizes on the way.
  It shows what the router's RPCs and messages cost before any routing, credits or storage.
  It keeps the call shape the benchmark was defined with; the router now skips the Balance call
  when a request cannot be downgraded and sends no progress for a job that finishes quickly, so
  a one-image Generate makes one RPC and streams four messages fewer than this.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc

from services.runtime.channels import open_channel
from services.runtime.server import Server, ServiceRegistration, create_server, serve_forever
from services.runtime.settings import ChannelSecurity, Env, ServerSettings

__all__ = [
    "CHAIN_SERVICE",
    "HOP_METHOD",
    "SHAPE_GENERATE_METHOD",
    "SHAPE_SERVICE",
    "create_chain_server",
    "generate_callable",
    "hop_callable",
    "main",
]

CHAIN_SERVICE = "tiergen.bench.v1.ChainService"
SHAPE_SERVICE = "tiergen.bench.v1.ShapeService"
HOP_METHOD = f"/{CHAIN_SERVICE}/Hop"
SHAPE_GENERATE_METHOD = f"/{SHAPE_SERVICE}/Generate"
#: The deadline of a downstream call when the inbound call has none; as the router's ledger calls.
_CALL_TIMEOUT = 30.0

# Sizes in bytes of the messages the router exchanges for a Generate of one nano 1K image on
# the instant backend, rounded: its stream to the caller, and its calls to the ledger and the
# generator.
_BATCH = b"b" * 320
_PROGRESS = b"p" * 45
_JOB = b"j" * 420
_LEDGER_REQUEST = b"l" * 80
_LEDGER_REPLY = b"r" * 120
_RENDER_REQUEST = b"s" * 100
_RENDER_PROGRESS = b"g" * 20
_RENDER_RESULT = b"i" * 150
_RENDER_CHUNK = b"c" * 260


def hop_callable(channel: grpc.aio.Channel) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    """ChainService/Hop on `channel`; the messages are raw bytes, an empty message being b""."""
    return channel.unary_unary(HOP_METHOD)


def generate_callable(
    channel: grpc.aio.Channel,
) -> grpc.aio.UnaryStreamMultiCallable[bytes, bytes]:
    """ShapeService/Generate on `channel`, raw bytes both ways."""
    return channel.unary_stream(SHAPE_GENERATE_METHOD)


def _addresses(raw: str) -> list[str]:
    return [address.strip() for address in raw.split(",") if address.strip()]


_Unary = grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]


class _ShapeCalls:
    """What a router-shaped Generate calls: the ledger-shaped and generator-shaped hops."""

    def __init__(self, ledger: grpc.aio.Channel, generator: grpc.aio.Channel) -> None:
        self.balance: _Unary = ledger.unary_unary(f"/{SHAPE_SERVICE}/Balance")
        self.reserve: _Unary = ledger.unary_unary(f"/{SHAPE_SERVICE}/Reserve")
        self.capture: _Unary = ledger.unary_unary(f"/{SHAPE_SERVICE}/Capture")
        self.render: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = generator.stream_stream(
            f"/{SHAPE_SERVICE}/Render"
        )

    async def generate(self) -> AsyncIterator[bytes]:
        await self.balance(_LEDGER_REQUEST)
        await self.reserve(_LEDGER_REQUEST)
        yield _BATCH
        yield _PROGRESS
        async for reply in self.render(iter([_RENDER_REQUEST])):
            if reply == _RENDER_PROGRESS:
                yield _PROGRESS
        yield _JOB
        await self.capture(_LEDGER_REQUEST)


async def create_chain_server(environ: Mapping[str, str]) -> tuple[Server, int]:
    """Both services: TIERGEN_* server settings, CHAIN_NEXT_ADDRS for the hops Hop calls, and
    SHAPE_LEDGER_ADDR and SHAPE_GENERATOR_ADDR for the calls Generate makes."""
    settings = ServerSettings.from_env("chain", environ)
    security = ChannelSecurity.from_env(environ)
    env = Env(environ)
    channels: list[grpc.aio.Channel] = []

    def connect(address: str, service: str) -> grpc.aio.Channel:
        channel = open_channel(
            address, security=security, services=[service], default_timeout=_CALL_TIMEOUT
        )
        channels.append(channel)
        return channel

    next_hops = [
        hop_callable(connect(address, CHAIN_SERVICE))
        for address in _addresses(env.string("CHAIN_NEXT_ADDRS", ""))
    ]
    ledger_address = env.optional_str("SHAPE_LEDGER_ADDR")
    generator_address = env.optional_str("SHAPE_GENERATOR_ADDR")
    shape_calls = (
        None
        if ledger_address is None or generator_address is None
        else _ShapeCalls(
            connect(ledger_address, SHAPE_SERVICE), connect(generator_address, SHAPE_SERVICE)
        )
    )

    async def hop(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        for call in next_hops:
            await call(b"")
        return b""

    async def generate(
        request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        if shape_calls is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "set SHAPE_LEDGER_ADDR and SHAPE_GENERATOR_ADDR to serve Generate",
            )
            return
        async for reply in shape_calls.generate():
            yield reply

    async def ledger_call(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return _LEDGER_REPLY

    async def render(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        async for _ in requests:
            pass
        for _ in range(3):
            yield _RENDER_PROGRESS
        yield _RENDER_RESULT
        yield _RENDER_CHUNK

    chain = grpc.method_handlers_generic_handler(
        CHAIN_SERVICE, {"Hop": grpc.unary_unary_rpc_method_handler(hop)}
    )
    shape = grpc.method_handlers_generic_handler(
        SHAPE_SERVICE,
        {
            "Generate": grpc.unary_stream_rpc_method_handler(generate),
            "Balance": grpc.unary_unary_rpc_method_handler(ledger_call),
            "Reserve": grpc.unary_unary_rpc_method_handler(ledger_call),
            "Capture": grpc.unary_unary_rpc_method_handler(ledger_call),
            "Render": grpc.stream_stream_rpc_method_handler(render),
        },
    )

    async def close_channels() -> None:
        for channel in channels:
            await channel.close()

    registrations = [_registration(CHAIN_SERVICE, chain), _registration(SHAPE_SERVICE, shape)]
    return await create_server(settings, registrations, on_stop=[close_channels])


def _registration(name: str, handler: grpc.GenericRpcHandler) -> ServiceRegistration:
    def add(server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((handler,))

    return ServiceRegistration(name, add)


def main() -> None:
    """Serves until SIGTERM, like every service's `__main__`."""
    serve_forever("chain", lambda: create_chain_server(os.environ))


if __name__ == "__main__":
    main()
