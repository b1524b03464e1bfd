"""One trace across every service: the four processes export to a loopback OTLP collector."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.cli.demo import run_demo
from services.cli.suite import Suite

pytestmark = pytest.mark.slow

#: (caller, callee) pairs that one pipeline run must show as client span -> server span.
SERVICE_EDGES = {
    ("tiergen-router", "tiergen-ledger"),
    ("tiergen-router", "tiergen-generator"),
    ("tiergen-router", "tiergen-upscaler"),
}


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every exported span with the name of the service that exported it."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []

    async def Export(self, request: Any, context: Any) -> Any:
        for resource_spans in request.resource_spans:
            service = next(
                a.value.string_value
                for a in resource_spans.resource.attributes
                if a.key == "service.name"
            )
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    self.spans.append(
                        {
                            "service": service,
                            "name": span.name,
                            "kind": span.kind,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_id": span.parent_span_id.hex(),
                        }
                    )
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, int]]:
    server = grpc.aio.server()
    servicer = Collector()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield servicer, port
    finally:
        await server.stop(0)


async def test_one_pipeline_is_one_trace_across_every_service(
    tmp_path: Path, collector: tuple[Collector, int], spans: InMemorySpanExporter
) -> None:
    sink, port = collector
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    suite = Suite(tmp_path / "data", extra_env=env)
    # Start and stop off the event loop: the collector answers the services' exports on it.
    await asyncio.to_thread(suite.start)
    try:
        await run_demo(
            suite.router,
            tmp_path / "out",
            lambda _line: None,
            token=suite.api_key,
            security=suite.client_security,
            variations=2,
        )
    finally:
        codes = await asyncio.to_thread(suite.stop)  # a graceful stop flushes every span
    assert all(code == 0 for code in codes.values()), codes

    (root,) = [s for s in spans.get_finished_spans() if s.name == "tiergen.demo"]
    trace_id = format(root.context.trace_id, "032x")
    exported = [s for s in sink.spans if s["trace_id"] == trace_id]
    assert {s["service"] for s in exported} == {
        "tiergen-router",
        "tiergen-ledger",
        "tiergen-generator",
        "tiergen-upscaler",
    }
    by_id = {s["span_id"]: s for s in exported}
    client_kind, server_kind = 3, 2  # OTLP SpanKind values
    edges = set()
    for span in exported:
        parent = by_id.get(span["parent_id"])
        if span["kind"] == server_kind and parent is not None and parent["kind"] == client_kind:
            assert parent["name"] == span["name"], (parent, span)
            edges.add((parent["service"], span["service"]))
    assert edges >= SERVICE_EDGES

    # The router's own work hangs off its server spans, which hang off the demo's client calls.
    router_servers = [
        s for s in exported if s["service"] == "tiergen-router" and s["kind"] == server_kind
    ]
    assert {s["name"].rsplit("/", 1)[1] for s in router_servers} >= {
        "OpenAccount",
        "Generate",
        "Promote",
        "Upscale",
        "GetAsset",
        "CheckIn",
    }
    assert all(s["parent_id"] for s in router_servers)
