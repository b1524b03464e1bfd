"""The client side of the RPC metrics: `grpc_client_started_total`, `grpc_client_handled_total`
and `grpc_client_handling_seconds` of the calls a service makes to another, by method, type and
status code.

Recorded by interceptors that a channel is opened with (`open_channel(..., interceptors=...)`);
the router opens its channels to the ledger, generator and upscaler with them. A call is timed
from the moment it is made to its status: for a streaming call, until the stream's end, which a
done-callback learns of. Health checks and reflection are not counted, as on the server side.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc

from services.runtime.metrics import RpcMetrics, RpcSide, RpcType

__all__ = ["client_metrics_interceptors"]

#: Methods not counted: a dependency watcher's probes would drown the real calls.
_QUIET_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


class _ClientMetrics:
    """Looks up each method's figures once, and records a call's start and end."""

    _type: RpcType

    def __init__(self) -> None:
        self._methods: dict[str, RpcMetrics | None] = {}

    def _metrics(self, details: grpc.aio.ClientCallDetails) -> RpcMetrics | None:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        known = self._methods.get(method, False)
        if known is not False:
            return known  # type: ignore[return-value]
        metrics = None
        if not method.startswith(_QUIET_PREFIXES):
            service, _, name = method.lstrip("/").partition("/")
            metrics = RpcMetrics(service, name, self._type, RpcSide.CLIENT)
        self._methods[method] = metrics
        return metrics

    @staticmethod
    def _track(metrics: RpcMetrics, started: float, call: Any) -> Any:
        """Records `call`'s status once it ends."""

        async def record(done: Any) -> None:
            metrics.observe(await done.code(), time.perf_counter() - started)

        call.add_done_callback(lambda done: asyncio.ensure_future(record(done)))
        return call

    async def _stream(self, continuation: Any, details: Any, request: Any) -> Any:
        metrics = self._metrics(details)
        if metrics is None:
            return await continuation(details, request)
        started = time.perf_counter()
        metrics.start()
        try:
            call = await continuation(details, request)
        except grpc.aio.AioRpcError as error:
            metrics.observe(error.code(), time.perf_counter() - started)
            raise
        except BaseException:
            metrics.observe(grpc.StatusCode.CANCELLED, time.perf_counter() - started)
            raise
        return self._track(metrics, started, call)


class _UnaryUnary(_ClientMetrics, grpc.aio.UnaryUnaryClientInterceptor):
    _type = RpcType.UNARY

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        metrics = self._metrics(client_call_details)
        if metrics is None:
            return await continuation(client_call_details, request)
        started = time.perf_counter()
        metrics.start()
        # Awaited here, so that the figures are recorded before the caller hears the answer.
        try:
            call = await continuation(client_call_details, request)
            await call
        except grpc.aio.AioRpcError as error:
            metrics.observe(error.code(), time.perf_counter() - started)
            raise
        except BaseException:
            metrics.observe(grpc.StatusCode.CANCELLED, time.perf_counter() - started)
            raise
        metrics.observe(grpc.StatusCode.OK, time.perf_counter() - started)
        return call


class _UnaryStream(_ClientMetrics, grpc.aio.UnaryStreamClientInterceptor):
    _type = RpcType.SERVER_STREAM

    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await self._stream(continuation, client_call_details, request)


class _StreamUnary(_ClientMetrics, grpc.aio.StreamUnaryClientInterceptor):
    _type = RpcType.CLIENT_STREAM

    async def intercept_stream_unary(
        self,
        continuation: Any,
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await self._stream(continuation, client_call_details, request_iterator)


class _StreamStream(_ClientMetrics, grpc.aio.StreamStreamClientInterceptor):
    _type = RpcType.BIDI_STREAM

    async def intercept_stream_stream(
        self,
        continuation: Any,
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await self._stream(continuation, client_call_details, request_iterator)


def client_metrics_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """One interceptor per call shape (a grpc.aio channel files each interceptor under the first
    interface it implements), to pass to `open_channel`."""
    return [_UnaryUnary(), _UnaryStream(), _StreamUnary(), _StreamStream()]
