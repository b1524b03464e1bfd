"""Requests whose bytes are not valid protobuf: INVALID_ARGUMENT with a plain message, never
UNKNOWN with a Python exception's text, whatever the shape of the method."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import structlog
from google.protobuf import wrappers_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2

from services.runtime.server import ServiceRegistration, create_server
from tests.log_lines import rpc_lines
from tests.rich_errors import details
from tests.tls import session_pki

SERVICE = "tiergen.test.EchoService"
GARBAGE = b"\xff\xff\xff"
Text = wrappers_pb2.StringValue
REFUSAL = "the request is not a valid google.protobuf.StringValue protobuf"
#: What Python's exception text would show.
LEAKS = ("DecodeError", "Error parsing", "Traceback", "<class", "Unexpected", "Wire format")


async def _echo(request: Text, context: Any) -> Text:
    return Text(value=request.value)


async def _repeat(request: Text, context: Any) -> AsyncIterator[Text]:
    for _ in range(2):
        yield Text(value=request.value)


async def _join(requests: AsyncIterator[Text], context: Any) -> Text:
    return Text(value="".join([request.value async for request in requests]))


async def _chat(requests: AsyncIterator[Text], context: Any) -> AsyncIterator[Text]:
    async for request in requests:
        yield Text(value=request.value)


def _registration() -> ServiceRegistration:
    codec: dict[str, Any] = {
        "request_deserializer": Text.FromString,
        "response_serializer": Text.SerializeToString,
    }
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(_echo, **codec),
            "Repeat": grpc.unary_stream_rpc_method_handler(_repeat, **codec),
            "Join": grpc.stream_unary_rpc_method_handler(_join, **codec),
            "Chat": grpc.stream_stream_rpc_method_handler(_chat, **codec),
        },
    )
    return ServiceRegistration(SERVICE, lambda server: server.add_generic_rpc_handlers((handler,)))


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    server, port = await create_server(session_pki().server("echo"), [_registration()])
    await server.start()
    try:
        # No serializers on the client: the bytes go out exactly as given.
        async with session_pki().channel(f"127.0.0.1:{port}") as opened:
            yield opened
    finally:
        await server.stop(0)


def _assert_refused(error: grpc.aio.AioRpcError, message: str = REFUSAL) -> None:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert error.details() == message
    assert not any(leak in (error.details() or "") for leak in LEAKS)
    assert details(error)[error_details_pb2.ErrorInfo].reason == "MALFORMED_REQUEST"


def _valid(text: str) -> bytes:
    return Text(value=text).SerializeToString()


async def test_a_unary_method_refuses_garbage(channel):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.unary_unary(f"/{SERVICE}/Echo")(GARBAGE, timeout=5)

    _assert_refused(caught.value)


async def test_a_server_streaming_method_refuses_garbage_before_any_message(channel):
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for reply in channel.unary_stream(f"/{SERVICE}/Repeat")(GARBAGE, timeout=5):
            received.append(reply)

    _assert_refused(caught.value)
    assert received == []


async def test_a_client_streaming_method_refuses_garbage_among_valid_messages(channel):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.stream_unary(f"/{SERVICE}/Join")(iter([_valid("a"), GARBAGE]), timeout=5)

    _assert_refused(caught.value)


async def test_a_bidirectional_method_answers_until_the_garbage(channel):
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        call = channel.stream_stream(f"/{SERVICE}/Chat")(iter([_valid("a"), GARBAGE]), timeout=5)
        async for reply in call:
            received.append(Text.FromString(reply).value)

    _assert_refused(caught.value)
    assert received == ["a"]


async def test_valid_messages_still_pass(channel):
    reply = await channel.unary_unary(f"/{SERVICE}/Echo")(_valid("hello"), timeout=5)
    joined = await channel.stream_unary(f"/{SERVICE}/Join")(iter([_valid("a"), _valid("b")]))

    assert Text.FromString(reply).value == "hello"
    assert Text.FromString(joined).value == "ab"


async def test_a_health_probe_refuses_garbage_too(channel):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.unary_unary("/grpc.health.v1.Health/Check")(GARBAGE, timeout=5)

    _assert_refused(
        caught.value, "the request is not a valid grpc.health.v1.HealthCheckRequest protobuf"
    )
    probe = health_pb2.HealthCheckRequest(service="").SerializeToString()
    reply = await channel.unary_unary("/grpc.health.v1.Health/Check")(probe, timeout=5)
    assert health_pb2.HealthCheckResponse.FromString(reply).status == (
        health_pb2.HealthCheckResponse.SERVING
    )


async def test_the_refusal_has_its_log_line_as_a_caller_error(channel):
    with structlog.testing.capture_logs() as logs:
        with pytest.raises(grpc.aio.AioRpcError):
            await channel.unary_unary(f"/{SERVICE}/Echo")(GARBAGE, timeout=5)
        lines = await rpc_lines(logs, 1)
    assert [(line["method"], line["code"]) for line in lines] == [
        (f"/{SERVICE}/Echo", "INVALID_ARGUMENT")
    ]
    assert lines[0]["log_level"] == "info"
