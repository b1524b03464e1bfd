"""Prometheus metrics: the RPC figures every service records, and the endpoint that serves them.

Every service counts the RPCs it serves and times them under the names gRPC's Prometheus
middleware made familiar (`grpc_server_handled_total`, `grpc_server_handling_seconds`), so
existing dashboards and alerts apply. Services add their own figures (credits moved, queue
depth) next to their domain code, on the same default registry. The endpoint is an HTTP server
on its own port (`TIERGEN_METRICS_PORT`), answering `GET /metrics` in the text format.
"""

from __future__ import annotations

import asyncio
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import Counter, Histogram, start_http_server

__all__ = ["MetricsEndpoint", "RpcMetrics"]

_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by method and status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
)
_HANDLING = Histogram(
    "grpc_server_handling_seconds",
    "Time from an RPC's start to its status, by method.",
    ["grpc_service", "grpc_method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)


class RpcMetrics:
    """The figures of one method, with its label children looked up once."""

    __slots__ = ("_handled", "_handling", "_method", "_service")

    def __init__(self, service: str, method: str) -> None:
        self._service = service
        self._method = method
        self._handling = _HANDLING.labels(service, method)
        self._handled: dict[grpc.StatusCode, Counter] = {}

    def observe(self, code: grpc.StatusCode, seconds: float) -> None:
        counter = self._handled.get(code)
        if counter is None:
            counter = _HANDLED.labels(self._service, self._method, code.name)
            self._handled[code] = counter
        counter.inc()
        self._handling.observe(seconds)


class MetricsEndpoint:
    """The HTTP server of `/metrics`, on a thread of its own."""

    def __init__(self, server: WSGIServer) -> None:
        self._server = server

    @classmethod
    def start(cls, host: str, port: int) -> MetricsEndpoint:
        """Listen on `host:port` (port 0: any free port); OSError when it cannot."""
        server, _thread = start_http_server(port, addr=host)
        return cls(server)

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    async def stop(self) -> None:
        # shutdown() waits for the serving loop's next poll, up to half a second.
        await asyncio.to_thread(self._server.shutdown)
        self._server.server_close()
