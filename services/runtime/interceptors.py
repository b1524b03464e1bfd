"""Server and client interceptors: a span per RPC, trace context across hops, the canonical log
line, error mapping, and deadline propagation to downstream calls."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import structlog
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from services.runtime.errors import TiergenError
from services.runtime.status import grpc_code, to_status
from services.runtime.tracing import current_trace_id

__all__ = ["ServerTelemetryInterceptor", "client_interceptors", "remaining_deadline"]

_tracer = trace.get_tracer("tiergen.runtime")
_log = structlog.get_logger("tiergen.rpc")

#: Monotonic deadline of the RPC being served, so downstream calls inherit it.
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "tiergen_deadline", default=None
)

#: Methods served without spans or log lines: probes would drown the real traffic.
_QUIET_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


def remaining_deadline(default: float) -> float:
    """Seconds a downstream call may take: the inbound RPC's remaining time, capped by `default`."""
    deadline = _deadline.get()
    if deadline is None:
        return default
    return max(0.0, min(default, deadline - time.monotonic()))


def _split_method(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").partition("/")
    return service, name


class _ServedRpc:
    """The telemetry of one inbound RPC: its span, timing and canonical log line."""

    __slots__ = ("_context", "_method", "_peer", "_span", "_start", "_token")

    def __init__(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self._method = method
        self._context = context
        # Read now: asking a cancelled call for its peer later can crash grpc's core.
        self._peer = context.peer()
        self._start = time.perf_counter()
        carrier = {key: value for key, value in (context.invocation_metadata() or ())}
        parent = propagate.extract(carrier)
        service, name = _split_method(method)
        self._span = _tracer.start_span(
            method.lstrip("/"),
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
        )
        self._token = otel_context.attach(trace.set_span_in_context(self._span, parent))
        structlog.contextvars.clear_contextvars()
        remaining = context.time_remaining()
        _deadline.set(None if remaining is None else time.monotonic() + remaining)

    def end(self, code: grpc.StatusCode, error: BaseException | None = None) -> None:
        self._span.set_attribute("rpc.grpc.status_code", code.value[0])
        fields: dict[str, Any] = {
            "method": self._method,
            "code": code.name,
            "duration_ms": round((time.perf_counter() - self._start) * 1000, 3),
            "peer": self._peer,
        }
        if code is grpc.StatusCode.OK:
            self._span.set_status(Status(StatusCode.OK))
        else:
            self._span.set_status(Status(StatusCode.ERROR, str(error or code.name)))
            if error is not None:
                fields["error"] = str(error)
            if isinstance(error, TiergenError):
                fields["reason"] = error.reason
        if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
            _log.error("rpc", **fields)
        else:
            _log.info("rpc", **fields)
        self._span.end()
        # A streaming handler closed from another context cannot detach; the span is ended.
        with contextlib.suppress(ValueError):
            otel_context.detach(self._token)

    async def fail(self, exc: BaseException) -> None:
        """Ends the RPC for `exc` and turns domain errors into rich gRPC statuses."""
        if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
            self.end(grpc.StatusCode.CANCELLED, exc)
            return
        if isinstance(exc, TiergenError):
            status = to_status(exc)
            self.end(grpc_code(exc), exc)
            await self._context.abort(status.code, status.details, status.trailing_metadata)
        if isinstance(exc, grpc.aio.AbortError):
            self.end(self._context.code() or grpc.StatusCode.UNKNOWN, exc)
            return
        self._span.record_exception(exc)
        _log.exception("unhandled error", method=self._method)
        self.end(grpc.StatusCode.INTERNAL, exc)
        await self._context.abort(
            grpc.StatusCode.INTERNAL, f"internal error (trace {current_trace_id() or 'none'})"
        )


class ServerTelemetryInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler so each RPC gets a span, a log line and mapped errors."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(_QUIET_PREFIXES):
            return handler
        if handler.response_streaming:
            behavior = handler.unary_stream or handler.stream_stream
            wrapped_stream = _wrap_streaming(behavior, method)
            factory = (
                grpc.unary_stream_rpc_method_handler
                if handler.unary_stream
                else grpc.stream_stream_rpc_method_handler
            )
            return factory(
                wrapped_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        behavior = handler.unary_unary or handler.stream_unary
        wrapped = _wrap_unary(behavior, method)
        factory = (
            grpc.unary_unary_rpc_method_handler
            if handler.unary_unary
            else grpc.stream_unary_rpc_method_handler
        )
        return factory(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _wrap_unary(behavior: Any, method: str) -> Callable[..., Awaitable[Any]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        rpc = _ServedRpc(method, context)
        try:
            response = await behavior(request, context)
        except BaseException as exc:
            await rpc.fail(exc)
            raise
        rpc.end(grpc.StatusCode.OK)
        return response

    return handle


def _wrap_streaming(behavior: Any, method: str) -> Callable[..., AsyncIterator[Any]]:
    async def handle(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        rpc = _ServedRpc(method, context)
        try:
            async for response in behavior(request, context):
                yield response
        except BaseException as exc:
            await rpc.fail(exc)
            raise
        rpc.end(grpc.StatusCode.OK)

    return handle


class _ClientTelemetry:
    """Starts a client span, injects its trace context, and inherits the inbound deadline."""

    def __init__(self, default_timeout: float) -> None:
        self._default_timeout = default_timeout

    def _begin(self, details: grpc.aio.ClientCallDetails) -> tuple[Any, grpc.aio.ClientCallDetails]:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        service, name = _split_method(method)
        span = _tracer.start_span(
            method.lstrip("/"),
            kind=SpanKind.CLIENT,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
        )
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        metadata = grpc.aio.Metadata(*(details.metadata or ()), *carrier.items())
        timeout = details.timeout
        if timeout is None:
            timeout = remaining_deadline(self._default_timeout)
        return span, grpc.aio.ClientCallDetails(
            details.method, timeout, metadata, details.credentials, details.wait_for_ready
        )

    @staticmethod
    def _end(span: Any, code: grpc.StatusCode, message: str = "") -> None:
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code is not grpc.StatusCode.OK:
            span.set_status(Status(StatusCode.ERROR, message or code.name))
        span.end()

    async def _end_when_done(self, span: Any, call: Any) -> None:
        self._end(span, await call.code(), await call.details())

    def _track(self, span: Any, call: Any) -> Any:
        call.add_done_callback(lambda done: asyncio.ensure_future(self._end_when_done(span, done)))
        return call


class _UnaryUnaryTelemetry(_ClientTelemetry, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        span, details = self._begin(client_call_details)
        try:
            call = await continuation(details, request)
            await call
        except grpc.aio.AioRpcError as exc:
            self._end(span, exc.code(), exc.details() or "")
            raise
        except BaseException:
            self._end(span, grpc.StatusCode.CANCELLED)
            raise
        self._end(span, grpc.StatusCode.OK)
        return call


class _UnaryStreamTelemetry(_ClientTelemetry, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        span, details = self._begin(client_call_details)
        return self._track(span, await continuation(details, request))


class _StreamUnaryTelemetry(_ClientTelemetry, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self,
        continuation: Any,
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        span, details = self._begin(client_call_details)
        return self._track(span, await continuation(details, request_iterator))


class _StreamStreamTelemetry(_ClientTelemetry, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self,
        continuation: Any,
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        span, details = self._begin(client_call_details)
        return self._track(span, await continuation(details, request_iterator))


def client_interceptors(default_timeout: float) -> list[grpc.aio.ClientInterceptor]:
    """One interceptor per call shape.

    A grpc.aio channel files each interceptor under the first interface it implements, so one
    object implementing all four would only ever see unary-unary calls.
    """
    return [
        _UnaryUnaryTelemetry(default_timeout),
        _UnaryStreamTelemetry(default_timeout),
        _StreamUnaryTelemetry(default_timeout),
        _StreamStreamTelemetry(default_timeout),
    ]
