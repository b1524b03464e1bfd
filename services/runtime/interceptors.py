"""Server and client interceptors: a span per RPC, trace context across hops, the canonical log
line, error mapping, deadline propagation to downstream calls, retries kept to one hop, and
requests whose bytes do not parse refused as INVALID_ARGUMENT."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from google.protobuf.message import DecodeError
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from services.runtime.errors import InvalidArgument, TiergenError
from services.runtime.metrics import RpcMetrics, RpcType
from services.runtime.status import grpc_code, to_status
from services.runtime.tracing import current_trace_id

__all__ = [
    "RETRY_PUSHBACK",
    "Gate",
    "ServerTelemetryInterceptor",
    "client_interceptors",
    "outliving_the_caller",
    "remaining_deadline",
]

_tracer = trace.get_tracer("tiergen.runtime")
_log = structlog.get_logger("tiergen.rpc")

#: Monotonic deadline of the RPC being served, so downstream calls inherit it.
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "tiergen_deadline", default=None
)

#: The trailer by which a server tells its caller's channel whether to retry (gRFC A6
#: "pushback"); a negative value means never.
RETRY_PUSHBACK = "grpc-retry-pushback-ms"
_DO_NOT_RETRY = (RETRY_PUSHBACK, "-1")

#: The status code every channel's retry policy retries (`services.runtime.channels`).
_RETRYABLE = grpc.StatusCode.UNAVAILABLE


class _Downstream:
    """Whether the calls an RPC being served made to other services ended UNAVAILABLE.

    Such a call was already retried by its channel's policy. If the RPC then fails with
    UNAVAILABLE too, its caller must not retry it: each of its attempts would repeat all of
    ours, and the attempts of every hop would multiply.
    """

    __slots__ = ("_streams", "unavailable")

    def __init__(self) -> None:
        self.unavailable = False
        # Streaming calls whose end has not been recorded yet.
        self._streams: set[Any] = set()

    def watch(self, call: Any) -> None:
        self._streams.add(call)

    def ended(self, code: grpc.StatusCode, call: Any = None) -> None:
        if code is _RETRYABLE:
            self.unavailable = True
        self._streams.discard(call)

    async def were_unavailable(self) -> bool:
        if self.unavailable:
            return True
        # A stream's end is recorded by a callback that may run only after the handler has
        # already seen the stream fail; a finished call knows its code without waiting.
        for call in tuple(self._streams):
            if call.done() and await call.code() is _RETRYABLE:
                return True
        return False


#: The downstream calls of the RPC being served.
_downstream: contextvars.ContextVar[_Downstream | None] = contextvars.ContextVar(
    "tiergen_downstream", default=None
)

#: Methods served without spans or log lines: probes would drown the real traffic.
_QUIET_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")

_STATUS_CODE = "rpc.grpc.status_code"


def remaining_deadline(default: float) -> float:
    """Seconds a downstream call may take: `default` (the call's own timeout), capped by the
    inbound RPC's remaining time."""
    deadline = _deadline.get()
    if deadline is None:
        return default
    return max(0.0, min(default, deadline - time.monotonic()))


@contextlib.contextmanager
def outliving_the_caller() -> Iterator[None]:
    """Downstream calls in the block are bounded by their own timeouts only, not by the inbound
    RPC's deadline: for work that must finish although the caller stopped waiting, such as
    settling the credits of what was delivered."""
    token = _deadline.set(None)
    try:
        yield
    finally:
        _deadline.reset(token)


def _split_method(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").partition("/")
    return service, name


@dataclass(frozen=True)
class _Method:
    """What every span, log line and metric of one method shares, worked out once per method."""

    path: str
    span_name: str
    attributes: Mapping[str, str]
    metrics: RpcMetrics

    @classmethod
    def of(cls, path: str, rpc_type: RpcType = RpcType.UNARY) -> _Method:
        service, _, name = path.lstrip("/").partition("/")
        return cls(
            path,
            path.lstrip("/"),
            {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
            RpcMetrics(service, name, rpc_type),
        )


class _ServedRpc:
    """The telemetry of one inbound RPC: its span, timing and canonical log line."""

    __slots__ = ("_context", "_downstream", "_method", "_peer", "_span", "_start", "_token")

    def __init__(self, method: _Method, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self._method = method
        self._context = context
        # Read now: asking a cancelled call for its peer later can crash grpc's core.
        self._peer = context.peer()
        self._start = time.perf_counter()
        method.metrics.start()
        carrier = {key: value for key, value in (context.invocation_metadata() or ())}
        parent = propagate.extract(carrier)
        self._span = _tracer.start_span(
            method.span_name, context=parent, kind=SpanKind.SERVER, attributes=method.attributes
        )
        self._token = otel_context.attach(trace.set_span_in_context(self._span, parent))
        structlog.contextvars.clear_contextvars()
        remaining = context.time_remaining()
        _deadline.set(None if remaining is None else time.monotonic() + remaining)
        self._downstream = _Downstream()
        _downstream.set(self._downstream)

    def end(self, code: grpc.StatusCode, error: BaseException | None = None) -> None:
        span = self._span
        seconds = time.perf_counter() - self._start
        self._method.metrics.observe(code, seconds)
        fields: dict[str, Any] = {
            "method": self._method.path,
            "code": code.name,
            "duration_ms": round(seconds * 1000, 3),
            "peer": self._peer,
        }
        span.set_attribute(_STATUS_CODE, code.value[0])
        # A successful RPC leaves the span's status unset, as OpenTelemetry's conventions ask.
        if code is not grpc.StatusCode.OK:
            span.set_status(Status(StatusCode.ERROR, str(error or code.name)))
            if error is not None:
                fields["error"] = str(error)
            if isinstance(error, TiergenError):
                fields["reason"] = error.reason
        if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
            _log.error("rpc", **fields)
        else:
            _log.info("rpc", **fields)
        span.end()
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
            trailers = tuple(status.trailing_metadata)
            if status.code is _RETRYABLE and await self._downstream.were_unavailable():
                trailers = (*trailers, _DO_NOT_RETRY)
            self.end(grpc_code(exc), exc)
            await self._context.abort(status.code, status.details, trailers)
        if isinstance(exc, grpc.aio.AbortError):
            self.end(self._context.code() or grpc.StatusCode.UNKNOWN, exc)
            return
        self._span.record_exception(exc)
        _log.exception("unhandled error", method=self._method.path)
        self.end(grpc.StatusCode.INTERNAL, exc)
        await self._context.abort(
            grpc.StatusCode.INTERNAL, f"internal error (trace {current_trace_id() or 'none'})"
        )


#: Runs before a call's handler, inside its span and log line: `(method path, context)`. It admits
#: the call by returning, or refuses it by raising a TiergenError (the router's access checks).
Gate = Callable[[str, grpc.aio.ServicerContext[Any, Any]], Awaitable[None]]


class ServerTelemetryInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler so each RPC gets a span, a log line and mapped errors, and a request
    that is not a valid message is refused with INVALID_ARGUMENT. With a `gate`, every call
    but health and reflection passes it first.

    A method's handler is wrapped once, on its first call, not again for every call.
    """

    def __init__(self, gate: Gate | None = None) -> None:
        self._gate = gate
        # Method -> (its handler as registered, that handler wrapped). A handler that differs
        # from the one wrapped (a service registered anew) is wrapped anew.
        self._wrapped: dict[
            str, tuple[grpc.RpcMethodHandler[Any, Any], grpc.RpcMethodHandler[Any, Any]]
        ] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None:
            return handler
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = _guard_decoding(handler)
        if not method.startswith(_QUIET_PREFIXES):
            rpc_type = RpcType.of(handler.request_streaming, handler.response_streaming)
            wrapped = _wrap_handler(wrapped, _Method.of(method, rpc_type), self._gate)
        self._wrapped[method] = (handler, wrapped)
        return wrapped


class _Undecodable:
    """What a request's deserializer returns for bytes that do not parse, so that the handler,
    which has a context to answer with, refuses the call.

    grpc.aio calls the deserializer outside any handler and answers its exception with UNKNOWN
    and the Python exception's text.
    """

    __slots__ = ("status",)

    def __init__(self, message_name: str | None) -> None:
        what = f"a valid {message_name} protobuf" if message_name else "a valid protobuf message"
        self.status = to_status(
            InvalidArgument(f"the request is not {what}", reason="MALFORMED_REQUEST")
        )

    async def refuse(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        status = self.status
        await context.abort(status.code, status.details, status.trailing_metadata)


async def _checked(
    requests: AsyncIterator[Any],
    context: grpc.aio.ServicerContext[Any, Any],
    undecodable: _Undecodable,
) -> AsyncIterator[Any]:
    """The messages of a request stream; the call is refused at the first that did not parse."""
    async for request in requests:
        if request is undecodable:
            await undecodable.refuse(context)
        yield request


def _guard_behavior(behavior: Any, undecodable: _Undecodable, request_streaming: bool) -> Any:
    """`behavior` refusing undecodable requests, of the same kind (coroutine or async generator)
    as `behavior`, since grpc.aio serves the two kinds differently."""

    def requests(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return _checked(request, context, undecodable) if request_streaming else request

    if inspect.isasyncgenfunction(behavior):

        async def stream(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            if request is undecodable:
                await undecodable.refuse(context)
            async for response in behavior(requests(request, context), context):
                yield response

        return stream

    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if request is undecodable:
            await undecodable.refuse(context)
        return await behavior(requests(request, context), context)

    return call


def _guard_decoding(handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler` answering INVALID_ARGUMENT, without Python's exception text, for a request
    message that is not valid protobuf."""
    deserializer = handler.request_deserializer
    behavior = (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )
    if deserializer is None or not (
        inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)
    ):
        return handler
    # A generated deserializer is the message class's FromString.
    message = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    undecodable = _Undecodable(getattr(message, "full_name", None))

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError:
            return undecodable

    guarded = _guard_behavior(behavior, undecodable, handler.request_streaming)
    factory = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming)]
    return factory(
        guarded, request_deserializer=decode, response_serializer=handler.response_serializer
    )


def _wrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any], method: _Method, gate: Gate | None
) -> grpc.RpcMethodHandler[Any, Any]:
    if handler.response_streaming:
        behavior = handler.unary_stream or handler.stream_stream
        factory = (
            grpc.unary_stream_rpc_method_handler
            if handler.unary_stream
            else grpc.stream_stream_rpc_method_handler
        )
        return factory(
            _wrap_streaming(behavior, method, gate),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    behavior = handler.unary_unary or handler.stream_unary
    factory = (
        grpc.unary_unary_rpc_method_handler
        if handler.unary_unary
        else grpc.stream_unary_rpc_method_handler
    )
    return factory(
        _wrap_unary(behavior, method, gate),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _wrap_unary(behavior: Any, method: _Method, gate: Gate | None) -> Callable[..., Awaitable[Any]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        rpc = _ServedRpc(method, context)
        try:
            if gate is not None:
                await gate(method.path, context)
            response = await behavior(request, context)
        except BaseException as exc:
            await rpc.fail(exc)
            raise
        rpc.end(grpc.StatusCode.OK)
        return response

    return handle


def _wrap_streaming(
    behavior: Any, method: _Method, gate: Gate | None
) -> Callable[..., AsyncIterator[Any]]:
    async def handle(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        rpc = _ServedRpc(method, context)
        try:
            if gate is not None:
                await gate(method.path, context)
            async for response in behavior(request, context):
                yield response
        except BaseException as exc:
            await rpc.fail(exc)
            raise
        rpc.end(grpc.StatusCode.OK)

    return handle


class _ClientTelemetry:
    """Starts a client span, injects its trace context, inherits the inbound deadline, and
    tells the RPC being served how its downstream calls ended."""

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
        # An explicit timeout is a bound of its own, never a way past the caller's deadline.
        own = self._default_timeout if details.timeout is None else details.timeout
        timeout = remaining_deadline(own)
        return span, grpc.aio.ClientCallDetails(
            details.method, timeout, metadata, details.credentials, details.wait_for_ready
        )

    @staticmethod
    def _end(span: Any, code: grpc.StatusCode, message: str = "") -> None:
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code is not grpc.StatusCode.OK:
            span.set_status(Status(StatusCode.ERROR, message or code.name))
        span.end()

    async def _end_when_done(self, span: Any, call: Any, downstream: _Downstream | None) -> None:
        code = await call.code()
        self._end(span, code, await call.details())
        if downstream is not None:
            downstream.ended(code, call)

    def _track(self, span: Any, call: Any) -> Any:
        downstream = _downstream.get()
        if downstream is not None:
            downstream.watch(call)
        call.add_done_callback(
            lambda done: asyncio.ensure_future(self._end_when_done(span, done, downstream))
        )
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
            downstream = _downstream.get()
            if downstream is not None:
                downstream.ended(exc.code())
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
