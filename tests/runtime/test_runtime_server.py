"""The shared server: error mapping, health, reflection, tracing, deadlines and the log line."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import structlog
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from services.runtime import errors
from services.runtime.channels import open_channel
from services.runtime.interceptors import remaining_deadline
from services.runtime.server import ServiceRegistration, create_server
from services.runtime.status import from_rpc_error
from tests.log_lines import rpc_lines
from tests.rich_errors import bad_fields, details
from tests.tls import session_pki

SERVICE = "tiergen.test.ProbeService"


async def _raise(request: bytes, context: Any) -> bytes:
    kind = request.decode()
    if kind == "precondition":
        raise errors.FailedPrecondition(
            "not enough credits",
            reason="INSUFFICIENT_CREDITS",
            metadata={"available": "3", "required": "7"},
        )
    if kind == "invalid":
        raise errors.InvalidArgument("prompt is empty", field="spec.prompt")
    if kind == "exhausted":
        raise errors.ResourceExhausted("queue full", retry_after=1.5)
    if kind == "bug":
        raise RuntimeError("secret internals")
    if kind == "deadline":
        return f"{remaining_deadline(100.0):.3f}".encode()
    structlog.contextvars.bind_contextvars(job_id="job_123")
    return b"ok:" + request


async def _count(request: bytes, context: Any) -> AsyncIterator[bytes]:
    for i in range(int(request.decode())):
        yield str(i).encode()
    raise errors.NotFound("ran out")


async def _forward(request: bytes, context: Any) -> bytes:
    """Calls the probe service again, to see trace context and deadlines cross a hop."""
    target = request.decode()
    async with open_channel(
        target, security=session_pki().security(), services=[SERVICE]
    ) as channel:
        reply: bytes = await channel.unary_unary(f"/{SERVICE}/Raise")(b"deadline")
        return reply


async def _traceparent(request: Any, context: Any) -> bytes:
    if not isinstance(request, bytes):
        async for _ in request:
            pass
    return dict(context.invocation_metadata()).get("traceparent", "").encode()


async def _traceparent_stream(request: Any, context: Any) -> AsyncIterator[bytes]:
    yield await _traceparent(request, context)


def _registration() -> ServiceRegistration:
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Raise": grpc.unary_unary_rpc_method_handler(_raise),
            "Count": grpc.unary_stream_rpc_method_handler(_count),
            "Forward": grpc.unary_unary_rpc_method_handler(_forward),
            "UnaryUnary": grpc.unary_unary_rpc_method_handler(_traceparent),
            "UnaryStream": grpc.unary_stream_rpc_method_handler(_traceparent_stream),
            "StreamUnary": grpc.stream_unary_rpc_method_handler(_traceparent),
            "StreamStream": grpc.stream_stream_rpc_method_handler(_traceparent_stream),
        },
    )
    return ServiceRegistration(SERVICE, lambda server: server.add_generic_rpc_handlers((handler,)))


@pytest.fixture
async def probe() -> AsyncIterator[tuple[str, grpc.aio.Channel]]:
    server, port = await create_server(session_pki().server("probe"), [_registration()])
    await server.start()
    target = f"127.0.0.1:{port}"
    channel = session_pki().channel(target)
    try:
        yield target, channel
    finally:
        await channel.close()
        await server.stop(0)


async def test_failed_precondition_carries_error_info(probe):
    _, channel = probe
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.unary_unary(f"/{SERVICE}/Raise")(b"precondition")
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details() == "not enough credits"
    info = details(caught.value)[error_details_pb2.ErrorInfo]
    assert info.reason == "INSUFFICIENT_CREDITS"
    assert info.domain == "tiergen"
    assert dict(info.metadata) == {"available": "3", "required": "7"}
    rebuilt = from_rpc_error(caught.value)
    assert isinstance(rebuilt, errors.FailedPrecondition)
    assert rebuilt.reason == "INSUFFICIENT_CREDITS"
    assert rebuilt.metadata["required"] == "7"


async def test_invalid_argument_names_the_field(probe):
    _, channel = probe
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.unary_unary(f"/{SERVICE}/Raise")(b"invalid")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(caught.value) == ["spec.prompt"]
    rebuilt = from_rpc_error(caught.value)
    assert isinstance(rebuilt, errors.InvalidArgument)
    assert rebuilt.violations[0].field == "spec.prompt"


async def test_resource_exhausted_carries_retry_info(probe):
    _, channel = probe
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.unary_unary(f"/{SERVICE}/Raise")(b"exhausted")
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    rebuilt = from_rpc_error(caught.value)
    assert isinstance(rebuilt, errors.ResourceExhausted)
    assert rebuilt.retry_after == pytest.approx(1.5)


async def test_unexpected_error_is_internal_without_leaking(probe):
    _, channel = probe
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.unary_unary(f"/{SERVICE}/Raise")(b"bug")
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (caught.value.details() or "")
    assert "trace" in (caught.value.details() or "")


async def test_streaming_error_after_messages(probe):
    _, channel = probe
    call = channel.unary_stream(f"/{SERVICE}/Count")(b"3")
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for message in call:
            received.append(message)
    assert received == [b"0", b"1", b"2"]
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_health_serving_then_not_serving_on_stop():
    server, port = await create_server(session_pki().server("probe"), [_registration()])
    await server.start()
    async with session_pki().channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        await server.set_serving(False)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE))
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        # The overall status (the liveness probe) stays up while only a dependency is down.
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stopped: list[str] = []

    async def hook() -> None:
        stopped.append("closed")

    server.add_stop_hook(hook)
    await server.stop(0)
    assert stopped == ["closed"]


async def test_reflection_lists_the_services(probe):
    _, channel = probe
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    async for reply in stub.ServerReflectionInfo(iter([request])):
        names = {s.name for s in reply.list_services_response.service}
        break
    assert {SERVICE, "grpc.health.v1.Health"} <= names


def spans_ended(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch, wanted: set[tuple[str, SpanKind]]
) -> asyncio.Event:
    """An event set once every span `wanted` names (name, kind) has ended: a server span may
    end after its caller has the answer."""
    loop = asyncio.get_running_loop()
    ended = asyncio.Event()
    export = spans.export

    def exporting(batch: Any) -> Any:
        result = export(batch)
        if wanted <= {(span.name, span.kind) for span in spans.get_finished_spans()}:
            loop.call_soon_threadsafe(ended.set)
        return result

    monkeypatch.setattr(spans, "export", exporting)
    return ended


async def test_trace_context_and_deadline_cross_a_hop(probe, spans, monkeypatch):
    target, channel = probe
    hop = {
        (f"{SERVICE}/Forward", SpanKind.SERVER),
        (f"{SERVICE}/Raise", SpanKind.CLIENT),
        (f"{SERVICE}/Raise", SpanKind.SERVER),
    }
    ended = spans_ended(spans, monkeypatch, hop)
    reply = await channel.unary_unary(f"/{SERVICE}/Forward")(target.encode(), timeout=5.0)
    # The inner call inherited the outer deadline (5 s), not its own 100 s default.
    assert 0 < float(reply.decode()) < 6.0
    try:
        async with asyncio.timeout(5):
            await ended.wait()
    except TimeoutError:
        done = {(span.name, span.kind) for span in spans.get_finished_spans()}
        pytest.fail(f"these spans never ended: {hop - done}")
    finished = {(s.name, s.kind): s for s in spans.get_finished_spans()}
    outer = finished[(f"{SERVICE}/Forward", SpanKind.SERVER)]
    client = finished[(f"{SERVICE}/Raise", SpanKind.CLIENT)]
    inner = finished[(f"{SERVICE}/Raise", SpanKind.SERVER)]
    assert outer.context.trace_id == client.context.trace_id == inner.context.trace_id
    assert client.parent is not None and client.parent.span_id == outer.context.span_id
    assert inner.parent is not None and inner.parent.span_id == client.context.span_id


async def test_one_canonical_log_line_per_rpc(probe):
    _, channel = probe
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        await channel.unary_unary(f"/{SERVICE}/Raise")(b"hello")
        with pytest.raises(grpc.aio.AioRpcError):
            await channel.unary_unary(f"/{SERVICE}/Raise")(b"precondition")
        lines = await rpc_lines(logs, 2)
    assert [line["code"] for line in lines] == ["OK", "FAILED_PRECONDITION"]
    assert lines[0]["method"] == f"/{SERVICE}/Raise"
    assert lines[0]["job_id"] == "job_123"
    assert lines[1]["reason"] == "INSUFFICIENT_CREDITS"
    assert "job_id" not in lines[1]


async def test_every_call_shape_carries_the_trace_context(probe, spans):
    target, _ = probe
    tracer = trace.get_tracer("tests")
    async with open_channel(
        target, security=session_pki().security(), services=[SERVICE]
    ) as channel:
        with tracer.start_as_current_span("root") as root:
            trace_id = format(root.get_span_context().trace_id, "032x")
            headers = [
                await channel.unary_unary(f"/{SERVICE}/UnaryUnary")(b"x"),
                await channel.stream_unary(f"/{SERVICE}/StreamUnary")(iter([b"x"])),
            ]
            async for reply in channel.unary_stream(f"/{SERVICE}/UnaryStream")(b"x"):
                headers.append(reply)
            async for reply in channel.stream_stream(f"/{SERVICE}/StreamStream")(iter([b"x"])):
                headers.append(reply)
    assert len(headers) == 4
    assert all(header.decode().split("-")[1] == trace_id for header in headers), headers
