"""Benchmarks the ledger's Reserve+Capture through gRPC against the bare gRPC round trip.

Run from the repository root: `python -m bench.ledger --json` (or `tiergen bench ledger --json`).
One run starts four server processes and stops them at the end:

- echo: a server from the runtime's `create_server` with no services at all, called with
  grpc.health.v1 Health/Check. The runtime's telemetry interceptor skips health, so this is the
  bare gRPC round trip of an empty RPC on this machine: the baseline.
- runtime echo, for context: the same server with one service whose method returns its empty
  request. Every Tiergen RPC pays what this one does (the interceptor's span and log line), so
  it is the most any service on the runtime can reach.
- the ledger on SQLite (a fresh file in a temporary directory), `python -m services.ledger`.
- the ledger on PostgreSQL (a fresh schema, dropped at the end), `python -m services.ledger`.

Each is driven from this process over one channel, with 1 and with 16 concurrent clients; each
ledger client reserves 1 credit on its own account and captures it, and both RPCs count. The
variants alternate within each round, in an order that rotates every round, so a slow moment of
the shared machine spreads over all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tiergen.ledger.v1 import ledger_pb2, ledger_pb2_grpc

from bench.processes import ProcessGroup, ServerProcess
from services.ledger.migrations import SCHEMA as LEDGER_SCHEMA
from services.runtime.migrations import upgrade
from services.runtime.server import ServiceRegistration, create_server, serve_forever
from services.runtime.settings import ServerSettings

__all__ = ["main", "serve_echo", "serve_runtime_echo"]

DEFAULT_POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"
CONCURRENCY = (1, 16)
#: Ledger RPCs per second at 16 clients, as a share of the echo rate: at least this.
RPS_TARGET_RATIO = 0.6
#: Ledger p50 at 1 client: at most the echo p50 plus this.
P50_TARGET_EXTRA_MS = 1.0

_CALL_TIMEOUT = 10.0


ECHO_SERVICE = "tiergen.bench.v1.EchoService"
_ECHO_METHOD = f"/{ECHO_SERVICE}/Echo"


def serve_echo() -> None:
    """The echo process: the runtime's server with health and reflection and nothing else."""
    serve_forever("echo", lambda: create_server(ServerSettings.from_env("echo", os.environ), []))


async def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


def serve_runtime_echo() -> None:
    """The runtime echo process: one service, one method that answers its request."""
    handler = grpc.method_handlers_generic_handler(
        ECHO_SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
    )
    registration = ServiceRegistration(
        ECHO_SERVICE, lambda server: server.add_generic_rpc_handlers((handler,))
    )
    serve_forever(
        "echo",
        lambda: create_server(ServerSettings.from_env("echo", os.environ), [registration]),
    )


@dataclass
class _Server:
    """A server process of the benchmark and the channel that drives it."""

    name: str
    process: ServerProcess
    channel: grpc.aio.Channel

    def cpu_seconds(self) -> float | None:
        return self.process.cpu_seconds()


@dataclass
class _Sample:
    """What one variant measured, pooled over the rounds."""

    rpcs: int = 0
    seconds: float = 0.0
    cpu_seconds: float | None = 0.0
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)

    def add(self, other: _Sample) -> None:
        self.rpcs += other.rpcs
        self.seconds += other.seconds
        if self.cpu_seconds is None or other.cpu_seconds is None:
            self.cpu_seconds = None
        else:
            self.cpu_seconds += other.cpu_seconds
        for rpc, values in other.latencies_ms.items():
            self.latencies_ms.setdefault(rpc, []).extend(values)

    def p50_ms(self, rpc: str | None = None) -> float:
        values = (
            self.latencies_ms[rpc]
            if rpc is not None
            else [value for values in self.latencies_ms.values() for value in values]
        )
        return statistics.median(values)

    def rps(self) -> float:
        return self.rpcs / self.seconds

    def server_cpu_us_per_rpc(self) -> float | None:
        return None if self.cpu_seconds is None else self.cpu_seconds / self.rpcs * 1e6


#: One client's loop: calls until `stop_at`, recording each RPC's latency; the RPCs it made.
_Client = Callable[[int, float, dict[str, list[float]]], Awaitable[int]]


async def _start_server(
    processes: ProcessGroup,
    name: str,
    module: str,
    environ: dict[str, str],
    arguments: Sequence[str] = (),
) -> _Server:
    # Each serves mutual TLS, as the ledger does in a deployment; the benchmark calls as the
    # router.
    process = processes.spawn(name, module, {**processes.tls_env("ledger"), **environ}, arguments)
    address = await process.ready()
    return _Server(name, process, processes.aio_channel(address))


def _echo_client(channel: grpc.aio.Channel) -> _Client:
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest()

    async def run(client: int, stop_at: float, latencies: dict[str, list[float]]) -> int:
        checks = latencies.setdefault("check", [])
        calls = 0
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            await stub.Check(request, timeout=_CALL_TIMEOUT)
            checks.append((time.perf_counter() - started) * 1000)
            calls += 1
        return calls

    return run


def _runtime_echo_client(channel: grpc.aio.Channel) -> _Client:
    echo: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(_ECHO_METHOD)

    async def run(client: int, stop_at: float, latencies: dict[str, list[float]]) -> int:
        echoes = latencies.setdefault("echo", [])
        calls = 0
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            await echo(b"", timeout=_CALL_TIMEOUT)
            echoes.append((time.perf_counter() - started) * 1000)
            calls += 1
        return calls

    return run


def _ledger_client(channel: grpc.aio.Channel, run_id: str) -> _Client:
    stub = ledger_pb2_grpc.LedgerServiceStub(channel)  # type: ignore[no-untyped-call]
    sequence = iter(range(sys.maxsize))

    async def run(client: int, stop_at: float, latencies: dict[str, list[float]]) -> int:
        reserves = latencies.setdefault("reserve", [])
        captures = latencies.setdefault("capture", [])
        calls = 0
        while time.perf_counter() < stop_at:
            job = next(sequence)
            started = time.perf_counter()
            reserved = await stub.Reserve(
                ledger_pb2.ReserveRequest(
                    account_id=f"bench-{client}",
                    amount=1,
                    idempotency_key=f"{run_id}-{job}",
                    memo=f"job {job}",
                ),
                timeout=_CALL_TIMEOUT,
            )
            middle = time.perf_counter()
            await stub.Capture(
                ledger_pb2.CaptureRequest(
                    hold_id=reserved.hold.hold_id, amount=1, idempotency_key="settle"
                ),
                timeout=_CALL_TIMEOUT,
            )
            ended = time.perf_counter()
            reserves.append((middle - started) * 1000)
            captures.append((ended - middle) * 1000)
            calls += 2
        return calls

    return run


async def _prepare_ledger(channel: grpc.aio.Channel) -> None:
    """Open one account per client, funded far beyond what a run spends."""
    stub = ledger_pb2_grpc.LedgerServiceStub(channel)  # type: ignore[no-untyped-call]
    for client in range(max(CONCURRENCY)):
        account_id = f"bench-{client}"
        await stub.OpenAccount(
            ledger_pb2.OpenAccountRequest(account_id=account_id, idempotency_key="open"),
            timeout=_CALL_TIMEOUT,
        )
        await stub.Grant(
            ledger_pb2.GrantRequest(
                account_id=account_id,
                amount=10**9,
                kind=ledger_pb2.GRANT_KIND_PURCHASE,
                reason="benchmark",
                idempotency_key="fund",
            ),
            timeout=_CALL_TIMEOUT,
        )


async def _measure(server: _Server, client: _Client, clients: int, seconds: float) -> _Sample:
    latencies: dict[str, list[float]] = {}
    cpu_before = server.cpu_seconds()
    started = time.perf_counter()
    stop_at = started + seconds
    calls = await asyncio.gather(*(client(n, stop_at, latencies) for n in range(clients)))
    elapsed = time.perf_counter() - started
    cpu_after = server.cpu_seconds()
    cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return _Sample(sum(calls), elapsed, cpu, latencies)


@contextlib.asynccontextmanager
async def _postgres_schema(dsn: str) -> AsyncIterator[str]:
    """A fresh schema for the run, dropped afterwards; the DSN that puts it first on the path."""
    schema = f"bench_ledger_{uuid.uuid4().hex[:12]}"
    async with await psycopg.AsyncConnection.connect(
        dsn, autocommit=True, connect_timeout=5
    ) as connection:
        await connection.execute(f'CREATE SCHEMA "{schema}"')
    separator = "&" if "?" in dsn else "?"
    schema_dsn = f"{dsn}{separator}options=-csearch_path%3D{schema}"
    try:
        # The ledger refuses a PostgreSQL schema that is not current: migrate, as an operator.
        await asyncio.to_thread(upgrade, LEDGER_SCHEMA, schema_dsn)
        yield schema_dsn
    finally:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as connection:
            await connection.execute(f'DROP SCHEMA "{schema}" CASCADE')


async def run(postgres_dsn: str, rounds: int, seconds: float, warmup: float) -> dict[str, Any]:
    """Start the servers, measure every variant `rounds` times, stop them; the figures."""
    run_id = uuid.uuid4().hex[:8]
    async with contextlib.AsyncExitStack() as stack:
        run_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-ledger-")))
        postgres = await stack.enter_async_context(_postgres_schema(postgres_dsn))
        processes = ProcessGroup(run_dir)
        stack.push_async_callback(asyncio.to_thread, processes.stop)
        servers = await asyncio.gather(
            _start_server(processes, "echo", "bench.ledger", {}, ("serve-echo",)),
            _start_server(processes, "runtime_echo", "bench.ledger", {}, ("serve-runtime-echo",)),
            _start_server(
                processes,
                "sqlite",
                "services.ledger",
                {"TIERGEN_LEDGER_DSN": f"sqlite:///{run_dir / 'ledger.db'}"},
            ),
            _start_server(
                processes, "postgres", "services.ledger", {"TIERGEN_LEDGER_DSN": postgres}
            ),
        )
        for server in servers:
            stack.push_async_callback(server.channel.close)
        echo, runtime_echo, sqlite, postgresql = servers
        clients = {
            "echo": _echo_client(echo.channel),
            "runtime_echo": _runtime_echo_client(runtime_echo.channel),
            "sqlite": _ledger_client(sqlite.channel, run_id),
            "postgres": _ledger_client(postgresql.channel, run_id),
        }
        for ledger in (sqlite, postgresql):
            await _prepare_ledger(ledger.channel)
        for server in servers:
            await _measure(server, clients[server.name], max(CONCURRENCY), warmup)
        samples = {(server.name, count): _Sample() for server in servers for count in CONCURRENCY}
        for round_ in range(rounds):
            # The order rotates every round, so a change in the machine's load hits every
            # variant alike.
            shift = round_ % len(servers)
            order = [*servers[shift:], *servers[:shift]]
            for count in CONCURRENCY:
                for server in order:
                    sample = await _measure(server, clients[server.name], count, seconds)
                    samples[(server.name, count)].add(sample)
    return _figures(samples, rounds, seconds)


def _figures(
    samples: dict[tuple[str, int], _Sample], rounds: int, seconds: float
) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for count in CONCURRENCY:
        echo = samples[("echo", count)]
        figures[f"echo_rps_{count}"] = round(echo.rps(), 1)
        figures[f"echo_p50_ms_{count}"] = round(echo.p50_ms(), 3)
        figures[f"echo_server_cpu_us_per_rpc_{count}"] = _rounded(echo.server_cpu_us_per_rpc())
        runtime = samples[("runtime_echo", count)]
        figures[f"runtime_echo_rps_{count}"] = round(runtime.rps(), 1)
        figures[f"runtime_echo_p50_ms_{count}"] = round(runtime.p50_ms(), 3)
        figures[f"runtime_echo_server_cpu_us_per_rpc_{count}"] = _rounded(
            runtime.server_cpu_us_per_rpc()
        )
        for store in ("sqlite", "postgres"):
            ledger = samples[(store, count)]
            figures[f"ledger_rpcs_per_s_{count}_{store}"] = round(ledger.rps(), 1)
            figures[f"ledger_p50_ms_{count}_{store}"] = round(ledger.p50_ms(), 3)
            figures[f"ledger_reserve_p50_ms_{count}_{store}"] = round(ledger.p50_ms("reserve"), 3)
            figures[f"ledger_capture_p50_ms_{count}_{store}"] = round(ledger.p50_ms("capture"), 3)
            figures[f"ledger_server_cpu_us_per_rpc_{count}_{store}"] = _rounded(
                ledger.server_cpu_us_per_rpc()
            )
    targets: dict[str, bool] = {}
    figures["runtime_echo_rps_ratio_16"] = round(
        figures["runtime_echo_rps_16"] / figures["echo_rps_16"], 3
    )
    for store in ("sqlite", "postgres"):
        ratio = figures[f"ledger_rpcs_per_s_16_{store}"] / figures["echo_rps_16"]
        extra = figures[f"ledger_p50_ms_1_{store}"] - figures["echo_p50_ms_1"]
        figures[f"ledger_rps_ratio_16_{store}"] = round(ratio, 3)
        figures[f"ledger_p50_extra_ms_1_{store}"] = round(extra, 3)
        targets[f"rps_16_{store}_at_least_{RPS_TARGET_RATIO:g}_of_echo"] = ratio >= RPS_TARGET_RATIO
        targets[f"p50_1_{store}_at_most_echo_plus_{P50_TARGET_EXTRA_MS:g}_ms"] = (
            extra <= P50_TARGET_EXTRA_MS
        )
    figures["targets"] = targets
    figures["targets_met"] = all(targets.values())
    figures["method"] = {
        "echo": "grpc.health.v1 Health/Check on a runtime server with no services; the "
        "telemetry interceptor skips health, so it is the bare gRPC round trip",
        "runtime_echo": "an empty unary RPC through the runtime's interceptor (span, log line)",
        "ledger": "Reserve then Capture of 1 credit per client loop; both RPCs count",
        "rounds": rounds,
        "seconds_per_measurement": seconds,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
    }
    return figures


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _table(figures: dict[str, Any]) -> str:
    lines = [f"{'variant':<18} {'clients':>7} {'rpc/s':>9} {'p50 ms':>8} {'server cpu/rpc':>15}"]
    for count in CONCURRENCY:
        lines.append(
            f"{'echo':<18} {count:>7} {figures[f'echo_rps_{count}']:>9} "
            f"{figures[f'echo_p50_ms_{count}']:>8} "
            f"{figures[f'echo_server_cpu_us_per_rpc_{count}']!s:>12} us"
        )
        lines.append(
            f"{'runtime echo':<18} {count:>7} {figures[f'runtime_echo_rps_{count}']:>9} "
            f"{figures[f'runtime_echo_p50_ms_{count}']:>8} "
            f"{figures[f'runtime_echo_server_cpu_us_per_rpc_{count}']!s:>12} us"
        )
        for store in ("sqlite", "postgres"):
            lines.append(
                f"{'ledger ' + store:<18} {count:>7} "
                f"{figures[f'ledger_rpcs_per_s_{count}_{store}']:>9} "
                f"{figures[f'ledger_p50_ms_{count}_{store}']:>8} "
                f"{figures[f'ledger_server_cpu_us_per_rpc_{count}_{store}']!s:>12} us"
            )
    for name, met in figures["targets"].items():
        lines.append(f"{'met' if met else 'MISSED':<7} {name}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its figures (`targets_met` says whether the targets hold)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--postgres-dsn",
        default=os.environ.get("TIERGEN_BENCH_POSTGRES_DSN", DEFAULT_POSTGRES_DSN),
        help="server for the PostgreSQL ledger (a fresh schema is made and dropped)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="per variant and round")
    parser.add_argument("--warmup", type=float, default=1.0, help="untimed, per variant")
    arguments = parser.parse_args(argv)
    try:
        figures = asyncio.run(
            run(arguments.postgres_dsn, arguments.rounds, arguments.seconds, arguments.warmup)
        )
    except psycopg.OperationalError as error:
        print(f"bench.ledger: PostgreSQL is unreachable ({error})", file=sys.stderr)
        return 2
    print(json.dumps(figures, indent=2) if arguments.json else _table(figures))
    return 0


#: The benchmark's own servers, run as `python -m bench.ledger SERVER`.
_SERVERS = {"serve-echo": serve_echo, "serve-runtime-echo": serve_runtime_echo}

if __name__ == "__main__":
    if sys.argv[1:2] and sys.argv[1] in _SERVERS:
        _SERVERS[sys.argv[1]]()
    else:
        sys.exit(main())
