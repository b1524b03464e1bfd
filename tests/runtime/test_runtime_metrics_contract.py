"""The runtime's side of the metrics contract: RPC figures by type on both ends of a real call,
the build a process says it runs, the certificates it presents (following a rotation), worker
processes read from /proc, and gauges read on the event loop when scraped."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.runtime import errors
from services.runtime.channels import open_channel
from services.runtime.client_metrics import client_metrics_interceptors
from services.runtime.collectors import LoopGauge, read_worker
from services.runtime.metrics import build_labels
from services.runtime.server import ServiceRegistration, create_server
from services.runtime.settings import PemFile, ServerTls
from services.runtime.tls import CertificateReloader, channel_credentials, load_key_pair
from tests.tls import session_pki

SERVICE = "tiergen.test.ContractService"


async def _answer(request: bytes, context: Any) -> bytes:
    if request == b"missing":
        raise errors.NotFound("no such thing")
    return request


async def _count(request: bytes, context: Any) -> AsyncIterator[bytes]:
    for number in range(int(request)):
        yield str(number).encode()


def _registration() -> ServiceRegistration:
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Answer": grpc.unary_unary_rpc_method_handler(_answer),
            "Count": grpc.unary_stream_rpc_method_handler(_count),
        },
    )
    return ServiceRegistration(SERVICE, lambda server: server.add_generic_rpc_handlers((handler,)))


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    """A served ContractService and a channel to it with the client metrics, as the router
    opens its channels."""
    server, port = await create_server(session_pki().server("contract"), [_registration()])
    await server.start()
    opened = open_channel(
        f"127.0.0.1:{port}",
        security=session_pki().security(),
        services=[SERVICE],
        interceptors=client_metrics_interceptors(),
    )
    try:
        yield opened
    finally:
        await opened.close()
        await server.stop(0)


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _figures(side: str, method: str, rpc_type: str, code: str) -> tuple[float, float, float]:
    labels = {"grpc_service": SERVICE, "grpc_method": method, "grpc_type": rpc_type}
    return (
        _sample(f"grpc_{side}_started_total", **labels),
        _sample(f"grpc_{side}_handled_total", **labels, grpc_code=code),
        _sample(f"grpc_{side}_handling_seconds_count", **labels),
    )


def _delta(after: tuple[float, ...], before: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(a - b for a, b in zip(after, before, strict=True))


async def test_both_ends_count_each_call_by_type_and_code(channel):
    answer = channel.unary_unary(f"/{SERVICE}/Answer")
    count = channel.unary_stream(f"/{SERVICE}/Count")
    cases = [
        (side, method, rpc_type, code)
        for side in ("server", "client")
        for method, rpc_type, code in (
            ("Answer", "unary", "OK"),
            ("Answer", "unary", "NOT_FOUND"),
            ("Count", "server_stream", "OK"),
        )
    ]
    before = {case: _figures(*case) for case in cases}

    for _ in range(2):
        assert await answer(b"hello") == b"hello"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await answer(b"missing")
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    streamed = [message async for message in count(b"3")]
    assert streamed == [b"0", b"1", b"2"]
    # The stream's end reaches the client's figures through a done-callback's task.
    for _ in range(100):
        if _figures("client", "Count", "server_stream", "OK")[1] > before[cases[5]][1]:
            break
        await asyncio.sleep(0)

    deltas = {case: _delta(_figures(*case), before[case]) for case in cases}
    for side in ("server", "client"):
        # started counts every call of the method; handled, the calls with that code.
        assert deltas[(side, "Answer", "unary", "OK")] == (3, 2, 3), side
        assert deltas[(side, "Answer", "unary", "NOT_FOUND")] == (3, 1, 3), side
        assert deltas[(side, "Count", "server_stream", "OK")] == (1, 1, 1), side


async def test_health_checks_are_not_counted_on_the_client(channel):
    await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())

    text = generate_latest(REGISTRY).decode()
    assert 'grpc_client_started_total{grpc_method="Check"' not in text


def test_the_build_names_the_commit_or_says_it_is_unknown():
    assert build_labels("ledger", {"TIERGEN_COMMIT": "0123abc"})["commit"] == "0123abc"
    assert build_labels("ledger", {"TIERGEN_COMMIT": "  "})["commit"] == "unknown"
    labels = build_labels("router", {})
    assert labels["commit"] == "unknown"
    assert labels["service"] == "router"
    assert labels["version"] == "0.1.0"
    assert labels["grpcio"] == grpc.__version__


def _expiry(role: str) -> float | None:
    return REGISTRY.get_sample_value(
        "tiergen_tls_certificate_expiry_timestamp_seconds", {"role": role}
    )


def _not_after(certificate: Path) -> float:
    pair = load_key_pair(
        PemFile(certificate, "TIERGEN_TLS_CERT_FILE"),
        PemFile(certificate.with_suffix(".key"), "TIERGEN_TLS_KEY_FILE"),
    )
    return pair.leaf.not_valid_after_utc.timestamp()


def test_the_servers_certificate_expiry_follows_a_rotation(tmp_path: Path):
    pki = session_pki()
    served_certificate, served_key = tmp_path / "tls.crt", tmp_path / "tls.key"
    first = pki.issue("spiffe://tiergen/ledger", days=10)
    second = pki.issue("spiffe://tiergen/ledger", days=90)
    for source, target in zip(first, (served_certificate, served_key), strict=True):
        target.write_bytes(source.read_bytes())
    reloader = CertificateReloader(
        ServerTls(
            PemFile(served_certificate, "TIERGEN_TLS_CERT_FILE"),
            PemFile(served_key, "TIERGEN_TLS_KEY_FILE"),
        )
    )
    assert _expiry("server") == _not_after(first[0])

    # Replaced as Kubernetes replaces a Secret's files: new inodes, swapped in at once.
    for source, target in zip(second, (served_certificate, served_key), strict=True):
        partial = target.with_suffix(".partial")
        partial.write_bytes(source.read_bytes())
        partial.replace(target)
    assert reloader.fetch() is not None

    assert _expiry("server") == _not_after(second[0])
    assert _not_after(second[0]) > _not_after(first[0])


def test_a_client_certificate_presented_is_exported_as_the_clients():
    pki = session_pki()
    certificate, key = pki.issue("spiffe://tiergen/router", days=45)

    channel_credentials(pki.security_of(certificate, key))

    assert _expiry("client") == _not_after(certificate)


def test_a_workers_cpu_and_memory_are_read_from_proc():
    if not Path("/proc/self/stat").exists():
        pytest.skip("no /proc on this system")
    sum(range(200_000))  # some CPU time of its own to report
    figures = read_worker(os.getpid())

    assert figures is not None
    assert figures.cpu_seconds > 0
    assert figures.resident_bytes > 10 * 1024 * 1024
    assert read_worker(2**22 + 1) is None  # above any pid Linux hands out


class _Owner:
    pass


async def test_a_loop_gauge_is_read_on_its_loop_and_left_out_when_it_cannot_be():
    gauge = LoopGauge("tiergen_test_loop_figure", "A figure for this test.", timeout=5)
    owner = _Owner()
    reads: list[int] = []

    async def read() -> float:
        reads.append(1)
        if len(reads) == 2:
            raise RuntimeError("the database is down")
        return 7.0

    def scraped() -> float | None:
        text = generate_latest(REGISTRY).decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "tiergen_test_loop_figure":
                    return sample.value
        return None

    try:
        gauge.track(owner, read)
        assert await asyncio.to_thread(scraped) == 7.0
        assert await asyncio.to_thread(scraped) is None  # the read failed: left out
        # Scraped on the loop itself, it cannot wait for the loop: left out, not deadlocked.
        assert scraped() is None
        gauge.forget(owner)
        assert await asyncio.to_thread(scraped) is None
        assert len(reads) == 2
    finally:
        REGISTRY.unregister(gauge)
