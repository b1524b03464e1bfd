"""Prometheus metrics: the RPC figures every service records, its build, and the endpoint that
serves them.

Every service counts the RPCs it serves and times them under the names of gRPC's Prometheus
middleware (go-grpc-prometheus: `grpc_server_started_total`, `grpc_server_handled_total`,
`grpc_server_handling_seconds`, each with `grpc_type`), so stock dashboards and alerts apply;
the router counts its calls to the other services the same way (`grpc_client_*`, recorded by
`services.runtime.client_metrics`). Services add their own figures (credits moved, queue depth)
next to their domain code, on the same default registry. The endpoint is an HTTP server on its
own port (`TIERGEN_METRICS_PORT`), answering `GET /metrics` in the text format. The reference of
every metric is docs/metrics.md.
"""

from __future__ import annotations

import asyncio
import enum
import importlib.metadata
import os
import platform
from collections.abc import Mapping
from datetime import datetime
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import Counter, Gauge, Histogram, start_http_server

__all__ = [
    "COMMIT_VARIABLE",
    "MetricsEndpoint",
    "RpcMetrics",
    "RpcSide",
    "RpcType",
    "build_labels",
    "export_build_info",
    "export_certificate_expiry",
]

#: The commit the image was built from, set at build time (deploy/Dockerfile's TIERGEN_COMMIT).
COMMIT_VARIABLE = "TIERGEN_COMMIT"

#: Latency buckets of every RPC histogram: a nano sketch's milliseconds to a 4K render's minute.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_LABELS = ["grpc_service", "grpc_method", "grpc_type"]


class RpcType(enum.StrEnum):
    """The shape of an RPC, as the `grpc_type` label names it."""

    UNARY = "unary"
    CLIENT_STREAM = "client_stream"
    SERVER_STREAM = "server_stream"
    BIDI_STREAM = "bidi_stream"

    @classmethod
    def of(cls, request_streaming: bool, response_streaming: bool) -> RpcType:
        if request_streaming:
            return cls.BIDI_STREAM if response_streaming else cls.CLIENT_STREAM
        return cls.SERVER_STREAM if response_streaming else cls.UNARY


class RpcSide(enum.Enum):
    """Which end of an RPC the figures are of: the server serving it or the client calling."""

    SERVER = "server"
    CLIENT = "client"


def _families(side: str, what: str) -> tuple[Counter, Counter, Histogram]:
    started = Counter(
        f"grpc_{side}_started_total",
        f"RPCs {what} that started, by method and type.",
        _LABELS,
    )
    handled = Counter(
        f"grpc_{side}_handled_total",
        f"RPCs {what} that completed, by method, type and status code.",
        [*_LABELS, "grpc_code"],
    )
    handling = Histogram(
        f"grpc_{side}_handling_seconds",
        f"Time from the start of an RPC {what} to its status, by method and type.",
        _LABELS,
        buckets=_BUCKETS,
    )
    return started, handled, handling


_FAMILIES = {
    RpcSide.SERVER: _families("server", "served"),
    RpcSide.CLIENT: _families("client", "made to another service"),
}

_BUILD_INFO = Gauge(
    "tiergen_build_info",
    "Always 1: the service, its version, the commit it was built from, and the Python and grpcio"
    " it runs on.",
    ["service", "version", "commit", "python", "grpcio"],
)

_CERTIFICATE_EXPIRY = Gauge(
    "tiergen_tls_certificate_expiry_timestamp_seconds",
    "When the certificate this process presents expires (its notAfter, Unix time), by role:"
    " server (to its callers) or client (to the services it calls).",
    ["role"],
)


class RpcMetrics:
    """The figures of one method on one side, with its label children looked up once."""

    __slots__ = ("_handled", "_handled_family", "_handling", "_labels", "_started")

    def __init__(
        self,
        service: str,
        method: str,
        rpc_type: RpcType = RpcType.UNARY,
        side: RpcSide = RpcSide.SERVER,
    ) -> None:
        started, handled, handling = _FAMILIES[side]
        self._labels = (service, method, rpc_type.value)
        self._started = started.labels(*self._labels)
        self._handling = handling.labels(*self._labels)
        self._handled_family = handled
        self._handled: dict[grpc.StatusCode, Counter] = {}

    def start(self) -> None:
        """Counts an RPC that started; each is `observe`d once when it ends."""
        self._started.inc()

    def observe(self, code: grpc.StatusCode, seconds: float) -> None:
        counter = self._handled.get(code)
        if counter is None:
            counter = self._handled_family.labels(*self._labels, code.name)
            self._handled[code] = counter
        counter.inc()
        self._handling.observe(seconds)


def build_labels(service: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """What `tiergen_build_info` says of this process: the package's version from its metadata,
    the commit from TIERGEN_COMMIT ("unknown" when the image was built without it)."""
    environ = os.environ if environ is None else environ
    try:
        version = importlib.metadata.version("tiergen")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "service": service,
        "version": version,
        "commit": environ.get(COMMIT_VARIABLE, "").strip() or "unknown",
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
    }


def export_build_info(service: str) -> None:
    """Sets `tiergen_build_info` of `service` to 1 (a service does it when it starts)."""
    _BUILD_INFO.labels(**build_labels(service)).set(1)


def export_certificate_expiry(role: str, not_after: datetime) -> None:
    """Sets `tiergen_tls_certificate_expiry_timestamp_seconds` of `role` ("server" or "client")
    to `not_after`: called whenever a certificate is (re)loaded to be presented."""
    _CERTIFICATE_EXPIRY.labels(role).set(not_after.timestamp())


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
