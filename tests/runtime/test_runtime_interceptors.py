"""The server interceptor wraps each method's handler once and leaves probes alone."""

from __future__ import annotations

from typing import Any

import grpc

from services.runtime.interceptors import ServerTelemetryInterceptor


async def _echo(request: bytes, context: Any) -> bytes:
    return request


async def _count(request: bytes, context: Any) -> Any:
    yield request


def _details(method: str) -> grpc.HandlerCallDetails:
    class Details(grpc.HandlerCallDetails):
        def __init__(self) -> None:
            self.method = method
            self.invocation_metadata = ()

    return Details()


def _continuation(handler: grpc.RpcMethodHandler[Any, Any] | None) -> Any:
    async def continuation(details: grpc.HandlerCallDetails) -> Any:
        return handler

    return continuation


async def test_a_method_handler_is_wrapped_once():
    interceptor = ServerTelemetryInterceptor()
    handler = grpc.unary_unary_rpc_method_handler(_echo)

    first = await interceptor.intercept_service(_continuation(handler), _details("/s.S/Echo"))
    second = await interceptor.intercept_service(_continuation(handler), _details("/s.S/Echo"))

    assert first is second
    assert first is not handler
    assert first is not None and first.unary_unary is not _echo


async def test_a_new_handler_for_the_same_method_is_wrapped_anew():
    interceptor = ServerTelemetryInterceptor()
    old = grpc.unary_unary_rpc_method_handler(_echo)
    new = grpc.unary_unary_rpc_method_handler(_echo)

    before = await interceptor.intercept_service(_continuation(old), _details("/s.S/Echo"))
    after = await interceptor.intercept_service(_continuation(new), _details("/s.S/Echo"))

    assert before is not after


async def test_each_method_gets_its_own_wrapper_of_its_own_shape():
    interceptor = ServerTelemetryInterceptor()
    unary = grpc.unary_unary_rpc_method_handler(_echo)
    stream = grpc.unary_stream_rpc_method_handler(_count)

    wrapped_unary = await interceptor.intercept_service(_continuation(unary), _details("/s.S/A"))
    wrapped_stream = await interceptor.intercept_service(_continuation(stream), _details("/s.S/B"))

    assert wrapped_unary is not None and wrapped_unary.unary_unary is not None
    assert wrapped_stream is not None and wrapped_stream.unary_stream is not None
    assert wrapped_stream.unary_unary is None


async def test_probes_and_unknown_methods_pass_through():
    interceptor = ServerTelemetryInterceptor()
    health = grpc.unary_unary_rpc_method_handler(_echo)

    passed = await interceptor.intercept_service(
        _continuation(health), _details("/grpc.health.v1.Health/Check")
    )
    unknown = await interceptor.intercept_service(_continuation(None), _details("/s.S/Nope"))

    assert passed is health
    assert unknown is None
