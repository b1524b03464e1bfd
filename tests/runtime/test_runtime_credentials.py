"""The bearer credential on the wire: every call shape carries it, next to the call's own
metadata, and the token never shows in a repr, a str or an error."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from services.runtime.channels import open_channel
from services.runtime.credentials import BearerToken, bearer_interceptors
from services.runtime.server import Server, ServiceRegistration, create_server
from tests.tls import session_pki

SERVICE = "tiergen.test.Credentials"
KEY = "tgk_3f9a2c1d_" + "s3cret-Part_of-the-key-0123456789abcdefghij"


def _seen(context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    """What a handler reports: its `authorization` and `x-tag` entries, one a line, and whether
    trace context came along."""
    metadata = context.invocation_metadata() or ()
    wanted = [f"{key}={value}" for key, value in metadata if key in ("authorization", "x-tag")]
    wanted += ["traced" for key, _ in metadata if key == "traceparent"]
    return "\n".join(sorted(wanted)).encode()


async def _unary_unary(request: bytes, context: Any) -> bytes:
    return _seen(context)


async def _unary_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield _seen(context)


async def _stream_unary(requests: AsyncIterator[bytes], context: Any) -> bytes:
    async for _ in requests:
        pass
    return _seen(context)


async def _stream_stream(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for _ in requests:
        pass
    yield _seen(context)


@pytest.fixture
async def address() -> AsyncIterator[str]:
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "UnaryUnary": grpc.unary_unary_rpc_method_handler(_unary_unary),
            "UnaryStream": grpc.unary_stream_rpc_method_handler(_unary_stream),
            "StreamUnary": grpc.stream_unary_rpc_method_handler(_stream_unary),
            "StreamStream": grpc.stream_stream_rpc_method_handler(_stream_stream),
        },
    )
    registration = ServiceRegistration(
        SERVICE, lambda server: server.add_generic_rpc_handlers((handler,))
    )
    server: Server
    server, port = await create_server(session_pki().server(SERVICE), [registration])
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


async def _every_shape(channel: grpc.aio.Channel, **call: Any) -> list[str]:
    """What the server saw on one call of each shape, in the order of the shapes."""

    async def two() -> AsyncIterator[bytes]:
        yield b"a"
        yield b"b"

    seen = [
        await channel.unary_unary(f"/{SERVICE}/UnaryUnary")(b"", timeout=10, **call),
        await channel.unary_stream(f"/{SERVICE}/UnaryStream")(b"", timeout=10, **call).read(),
        await channel.stream_unary(f"/{SERVICE}/StreamUnary")(two(), timeout=10, **call),
        await channel.stream_stream(f"/{SERVICE}/StreamStream")(two(), timeout=10, **call).read(),
    ]
    return [bytes(reply).decode() for reply in seen]


async def test_every_call_shape_carries_the_token_and_keeps_its_own_metadata(address):
    interceptors = bearer_interceptors(BearerToken(KEY))
    async with session_pki().channel(address, interceptors=interceptors) as channel:
        bare = await _every_shape(channel)
        tagged = await _every_shape(channel, metadata=(("x-tag", "kept"),))
    assert bare == [f"authorization=Bearer {KEY}"] * 4
    assert tagged == [f"authorization=Bearer {KEY}\nx-tag=kept"] * 4


async def test_a_call_with_a_credential_of_its_own_sends_only_that_one(address):
    other = BearerToken("tgk_0000beef_another-key")
    async with session_pki().channel(address, interceptors=bearer_interceptors(KEY)) as channel:
        seen = await _every_shape(channel, metadata=(other.metadata,))
    assert seen == [f"authorization=Bearer {other.secret}"] * 4


async def test_open_channel_sends_the_token_with_its_own_interceptors(address):
    async with open_channel(
        address, security=session_pki().security(), services=[SERVICE], token=BearerToken(KEY)
    ) as channel:
        seen = await _every_shape(channel, metadata=(("x-tag", "kept"),))
    # The runtime's tracing interceptors still ran: trace context came along too.
    assert seen == [f"authorization=Bearer {KEY}\ntraced\nx-tag=kept"] * 4


async def test_without_a_token_open_channel_sends_none(address):
    async with open_channel(
        address, security=session_pki().security(), services=[SERVICE]
    ) as channel:
        assert await _every_shape(channel) == ["traced"] * 4


def test_the_token_never_shows_in_its_repr_str_or_errors():
    token = BearerToken(f"  {KEY}\n")
    assert token.secret == KEY  # a key file's line end is not part of the key
    for shown in (repr(token), str(token), f"{token}", f"{[token]}"):
        assert "s3cret" not in shown
        assert "tgk_3f9a2c1d" in shown
    jwt = BearerToken("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ3ZWIifQ.c2lnbmF0dXJl")
    assert str(jwt) == "BearerToken(token)"


@pytest.mark.parametrize("bad", ["", "  \n", "tgk_3f9a2c1d_a b", "tgk_3f9a2c1d_\x00x", "é" * 8])
def test_a_malformed_token_is_refused_without_quoting_it(bad):
    with pytest.raises(ValueError) as refused:
        BearerToken(bad)
    assert bad.strip() not in str(refused.value) or not bad.strip()


def test_a_token_file_is_read_without_its_line_end(tmp_path):
    path = tmp_path / "key"
    path.write_text(KEY + "\n")
    assert BearerToken.from_file(path).secret == KEY
