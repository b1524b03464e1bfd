"""The bare services of the router benchmark: the chain's hops and the router-shaped Generate."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.trace import SpanKind

from bench.chain import create_chain_server, generate_callable, hop_callable
from services.runtime.server import Server
from tests.tls import session_pki

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
async def servers() -> AsyncIterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in reversed(started):
        await server.stop(0)


async def _start(servers: list[Server], **environ: str) -> str:
    server, port = await create_chain_server(
        {**session_pki().env("ledger"), "TIERGEN_HOST": "127.0.0.1", "TIERGEN_PORT": "0", **environ}
    )
    await server.start()
    servers.append(server)
    return f"127.0.0.1:{port}"


async def test_a_hop_calls_each_next_hop_in_one_trace(servers, spans):
    b = await _start(servers)
    c = await _start(servers)
    a = await _start(servers, CHAIN_NEXT_ADDRS=f"{b}, {c}")

    async with session_pki().channel(a) as channel:
        reply = await hop_callable(channel)(b"", timeout=10)

    assert reply == b""
    finished = spans.get_finished_spans()
    served = [s for s in finished if s.kind is SpanKind.SERVER]
    called = [s for s in finished if s.kind is SpanKind.CLIENT]
    assert [s.name for s in served] == ["tiergen.bench.v1.ChainService/Hop"] * 3
    assert len(called) == 2
    assert len({s.context.trace_id for s in finished}) == 1


async def test_the_shape_streams_the_routers_six_messages(servers, spans):
    ledger = await _start(servers)
    generator = await _start(servers)
    router = await _start(servers, SHAPE_LEDGER_ADDR=ledger, SHAPE_GENERATOR_ADDR=generator)

    async with session_pki().channel(router) as channel:
        replies = [reply async for reply in generate_callable(channel)(b"spec", timeout=10)]

    assert [len(reply) for reply in replies] == [320, 45, 45, 45, 45, 420]
    names = [s.name for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert sorted(name.rsplit("/", 1)[1] for name in names) == [
        "Balance",
        "Capture",
        "Generate",
        "Render",
        "Reserve",
    ]


async def test_generate_needs_both_addresses(servers):
    ledger = await _start(servers)
    router = await _start(servers, SHAPE_LEDGER_ADDR=ledger)

    async with session_pki().channel(router) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            async for _ in generate_callable(channel)(b"spec", timeout=10):
                pass

    assert failure.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "SHAPE_GENERATOR_ADDR" in (failure.value.details() or "")


@pytest.fixture
def hop_processes(tmp_path: Path) -> Iterator[list[tuple[subprocess.Popen[bytes], Path]]]:
    started: list[tuple[subprocess.Popen[bytes], Path]] = []
    yield started
    for process, _ in started:
        process.send_signal(signal.SIGTERM)
    for process, _ in started:
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _spawn(
    started: list[tuple[subprocess.Popen[bytes], Path]], tmp: Path, name: str, **environ: str
) -> str:
    ready = tmp / f"{name}.addr"
    log = tmp / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.chain"],
            env={
                **os.environ,
                **session_pki().env("ledger"),
                "TIERGEN_HOST": "127.0.0.1",
                "TIERGEN_PORT": "0",
                "TIERGEN_READY_FILE": str(ready),
                **environ,
            },
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    started.append((process, log))
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"{name} did not start"
        time.sleep(0.05)
    return ready.read_text().strip()


@pytest.mark.slow
async def test_a_hop_with_tracing_off_hands_the_callers_trace_on(hop_processes, tmp_path):
    traced = _spawn(hop_processes, tmp_path, "traced", TIERGEN_TRACING="on")
    _spawn(hop_processes, tmp_path, "untraced", TIERGEN_TRACING="off", CHAIN_NEXT_ADDRS=traced)
    untraced = (tmp_path / "untraced.addr").read_text().strip()

    async with session_pki().channel(untraced) as channel:
        await hop_callable(channel)(b"", timeout=10, metadata=(("traceparent", TRACEPARENT),))
        await hop_callable(channel)(b"", timeout=10)
    for process, _ in hop_processes:
        process.send_signal(signal.SIGTERM)
        process.wait(20)

    def rpc_lines(name: str) -> list[dict[str, str]]:
        lines = (tmp_path / f"{name}.log").read_text().splitlines()
        records = [json.loads(line) for line in lines if line.startswith("{")]
        return [record for record in records if record["event"] == "rpc"]

    first, second = rpc_lines("untraced")
    assert first["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert "trace_id" not in second
    downstream = rpc_lines("traced")
    assert downstream[0]["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert downstream[1]["trace_id"] != "0af7651916cd43dd8448eb211c80319c"
