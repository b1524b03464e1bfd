"""The Prometheus endpoint: RPC counts and latencies of a real server, read over HTTP."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from services.runtime import errors
from services.runtime.server import Server, ServiceRegistration, create_server
from services.runtime.settings import ConfigError, ServerSettings
from tests.tls import session_pki

SERVICE = "tiergen.test.MeteredService"


async def _answer(request: bytes, context: Any) -> bytes:
    if request == b"missing":
        raise errors.NotFound("no such thing")
    return request


def _registration() -> ServiceRegistration:
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Answer": grpc.unary_unary_rpc_method_handler(_answer)}
    )
    return ServiceRegistration(SERVICE, lambda server: server.add_generic_rpc_handlers((handler,)))


@pytest.fixture
async def metered() -> AsyncIterator[tuple[Server, grpc.aio.Channel]]:
    server, port = await create_server(
        session_pki().server("metered", metrics_port=0), [_registration()]
    )
    await server.start()
    channel = session_pki().channel(f"127.0.0.1:{port}")
    try:
        yield server, channel
    finally:
        await channel.close()
        await server.stop(0)


async def _samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    response.raise_for_status()
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def _handled(samples: dict[Any, float], code: str) -> float:
    labels = (
        ("grpc_code", code),
        ("grpc_method", "Answer"),
        ("grpc_service", SERVICE),
        ("grpc_type", "unary"),
    )
    return samples.get(("grpc_server_handled_total", labels), 0.0)


def _handling_count(samples: dict[Any, float]) -> float:
    labels = (("grpc_method", "Answer"), ("grpc_service", SERVICE), ("grpc_type", "unary"))
    return samples.get(("grpc_server_handling_seconds_count", labels), 0.0)


async def test_every_rpc_is_counted_by_method_and_code_and_timed(metered):
    server, channel = metered
    assert server.metrics_port
    answer = channel.unary_unary(f"/{SERVICE}/Answer")
    before = await _samples(server.metrics_port)

    for _ in range(3):
        await answer(b"hello")
    with pytest.raises(grpc.aio.AioRpcError):
        await answer(b"missing")

    after = await _samples(server.metrics_port)
    assert _handled(after, "OK") - _handled(before, "OK") == 3
    assert _handled(after, "NOT_FOUND") - _handled(before, "NOT_FOUND") == 1
    assert _handling_count(after) - _handling_count(before) == 4


async def test_health_checks_are_not_counted(metered):
    server, channel = metered
    assert server.metrics_port
    await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())

    samples = await _samples(server.metrics_port)
    services = {dict(labels).get("grpc_service") for name, labels in samples}
    assert "grpc.health.v1.Health" not in services


async def test_the_endpoint_closes_with_the_server():
    server, _ = await create_server(session_pki().server("metered", metrics_port=0), [])
    await server.start()
    port = server.metrics_port
    assert port
    await server.stop(0)

    with pytest.raises(httpx.ConnectError):
        await _samples(port)


async def test_without_a_port_no_endpoint_is_served():
    server, _ = await create_server(session_pki().server("metered"), [])
    await server.start()
    try:
        assert server.metrics_port is None
    finally:
        await server.stop(0)


async def test_a_port_in_use_is_a_configuration_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        server, _ = await create_server(session_pki().server("metered", metrics_port=busy), [])
        with pytest.raises(ConfigError, match=f"TIERGEN_METRICS_PORT={busy}"):
            await server.start()
        await server.stop(0)


@pytest.mark.parametrize("value", ["metrics", "-1", "70000"])
def test_a_bad_metrics_port_names_the_variable(value):
    with pytest.raises(ConfigError, match="TIERGEN_METRICS_PORT"):
        ServerSettings.from_env("ledger", {"TIERGEN_METRICS_PORT": value})


def test_the_metrics_port_is_read_from_the_environment():
    assert ServerSettings.from_env("ledger", {"TIERGEN_METRICS_PORT": "9090"}).metrics_port == 9090
    assert ServerSettings.from_env("ledger", {}).metrics_port is None
