"""Benchmarks the router's Generate against a bare chain of gRPC hops; tracing, auth and TLS on
and off.

Run from the repository root: `python -m bench.router --json` (or `tiergen bench router --json`).
One run starts every process below on loopback, its files in a fresh temporary directory (under
`--data-dir`, default the system's), and stops them all at the end, also on failure, Ctrl-C or
SIGTERM:

- chain: three `python -m bench.chain` processes, A calling B and then C for each request:
  empty RPCs on the runtime's server and channels, so with the same interceptors as the suite.
- shape: three more `bench.chain` processes with the router's call shape and no work: a stream
  of six messages to the caller, Balance, Reserve, a stream of five from a generator-shaped
  process, and Capture: the call shape the benchmark was defined with, which the router has
  since made smaller (no Balance, no progress for a quick job; see `bench.chain`).
- router: the suite (ledger on SQLite, generator, upscaler, router on SQLite and a local asset
  directory), the generator's tiers all on the `instant` backend, which returns a solid-colour
  PNG of the requested size at no cost; one request is a Generate of one nano 1K image, so what
  is measured is the routing, the ledger's balance, hold and capture, the job store and the asset
  store, and the gRPC hops between them.
- router_untraced: a second suite, identical but with TIERGEN_TRACING=off in every process.
- router_auth_off: a third suite, identical to router but with TIERGEN_AUTH=off at the router.
- router_plaintext: a fourth suite, identical to router but with TIERGEN_INSECURE=true in every
  process and a plaintext client: no TLS on any hop.
- router_webhooks: a fifth suite, identical to router but for one webhook endpoint of the
  benchmark's tenant subscribed to every event (job.succeeded, job.failed, job.cancelled,
  batch.completed, credits.low), at a local HTTPS receiver (`bench.webhook_receiver`, its
  certificate from the run's CA, which TIERGEN_ROUTER_WEBHOOK_CA_FILE names): each Generate
  then sends two signed deliveries, its job's and its batch's. The receiver measures each
  event's delay from its moment (a job's finish_time) to its arrival, on the machine's clock.

Every process but router_plaintext's serves TLS with certificates of a CA the benchmark makes
in its directory (`bench.processes`), as a deployment does: the client calls the routers (and
chain A, and the shape's router) over TLS trusting that CA, and the routers call their
ledger, generator and upscaler over mutual TLS with the router's certificate, as do chain A
and the shape's router their next hops. Connections are long-lived, as in a deployment, so what
TLS costs is its encryption of every message and the handshake of the first call only.

Each router's store gets an API key before the router starts, made through the store's own API
as an operator makes a tenant's first key. Every call to every router carries that key (the
auth-off router ignores it), so the client does the same work for all three and router against
router_auth_off measures what checking the key costs the router: the key is cached after its
first check (TIERGEN_ROUTER_KEY_CACHE_SECONDS, default), as in any deployment.

Everything but router_untraced has the same telemetry: tracing on, spans recorded and exported
nowhere (OTEL_TRACES_EXPORTER=none), one canonical log line per RPC at level info into a file.
Each variant is driven from this process over one channel with 1 and with 16 concurrent
clients, each router client on its own funded account; within each round the variants
alternate, their order rotating, so a slow moment of the shared machine spreads over all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import signal
import ssl
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
from tiergen.common.v1 import common_pb2
from tiergen.ledger.v1 import ledger_pb2
from tiergen.router.v1 import router_pb2, router_pb2_grpc

from bench.chain import generate_callable, hop_callable
from bench.processes import PLAINTEXT, ProcessGroup, ServerProcess, cpu_seconds, report
from services.generator.tiers import DEFAULT_CATALOGUE_TOML
from services.router.access.keys import KeyStore
from services.router.access.scopes import Scope
from services.runtime.credentials import BearerToken

__all__ = ["main", "run"]

CONCURRENCY = (1, 16)
VARIANTS = (
    "chain",
    "shape",
    "router",
    "router_untraced",
    "router_auth_off",
    "router_plaintext",
    "router_webhooks",
)
#: The routers measured, with their tracing and authentication settings.
ROUTERS = {
    "router": {"TIERGEN_TRACING": "on", "TIERGEN_AUTH": "on"},
    "router_untraced": {"TIERGEN_TRACING": "off", "TIERGEN_AUTH": "on"},
    "router_auth_off": {"TIERGEN_TRACING": "on", "TIERGEN_AUTH": "off"},
    "router_plaintext": {"TIERGEN_TRACING": "on", "TIERGEN_AUTH": "on"},
    "router_webhooks": {"TIERGEN_TRACING": "on", "TIERGEN_AUTH": "on"},
}
#: The suites whose router has a webhook endpoint subscribed to every event.
_WEBHOOK_SUITES = frozenset({"router_webhooks"})
_EVERY_EVENT = ("job.succeeded", "job.failed", "job.cancelled", "batch.completed", "credits.low")
#: The suites whose every process serves and calls in plaintext.
_PLAINTEXT_SUITES = frozenset({"router_plaintext"})
#: Router Generates per second at 16 clients, as a share of the chain's requests: at least this.
RPS_TARGET_RATIO = 0.6
#: Router p50 at 1 client: at most the chain's p50 plus this.
P50_TARGET_EXTRA_MS = 3.0
#: Traced router throughput at 16 clients, as a share of the untraced one: at least this.
TRACING_TARGET_RATIO = 0.75
#: Router throughput at 16 clients with authentication on, as a share of it off: at least this.
AUTH_TARGET_RATIO = 0.95
#: Router throughput at 16 clients with TLS on every hop, as a share of plaintext: at least this.
MTLS_TARGET_RATIO = 0.85
#: Router throughput at 16 clients with a webhook endpoint subscribed to every event, as a share
#: of it without one: at least this.
WEBHOOKS_TARGET_RATIO = 0.95
#: What the benchmark's key may do: exactly the calls it makes.
_SCOPES = (Scope.IMAGES_WRITE, Scope.ACCOUNTS_WRITE, Scope.CREDITS_GRANT, Scope.WEBHOOKS_ADMIN)

_CALL_TIMEOUT = 10.0
_TIER = "nano"


@dataclass
class _Variant:
    """One thing measured: the processes that serve it and the client loop that drives it."""

    name: str
    processes: list[ServerProcess]
    client: _Client

    def cpu_seconds(self) -> float | None:
        total = 0.0
        for process in self.processes:
            seconds = process.cpu_seconds()
            if seconds is None:
                return None
            total += seconds
            if process.name.endswith("-router"):
                # A router's webhook dispatcher is a process of its own: its work is the
                # router's.
                total += _children_cpu_seconds(process.pid)
        return total


def _children_cpu_seconds(pid: int) -> float:
    """CPU time of the live children of process `pid` (none where /proc is missing)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0.0
    return sum(cpu_seconds(int(child)) or 0.0 for child in children)


@dataclass
class _Sample:
    """What one variant measured, pooled over the rounds."""

    requests: int = 0
    seconds: float = 0.0
    server_cpu_seconds: float | None = 0.0
    client_cpu_seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)

    def add(self, other: _Sample) -> None:
        self.requests += other.requests
        self.seconds += other.seconds
        if self.server_cpu_seconds is None or other.server_cpu_seconds is None:
            self.server_cpu_seconds = None
        else:
            self.server_cpu_seconds += other.server_cpu_seconds
        self.client_cpu_seconds += other.client_cpu_seconds
        self.latencies_ms.extend(other.latencies_ms)

    def rps(self) -> float:
        return self.requests / self.seconds

    def p50_ms(self) -> float:
        return statistics.median(self.latencies_ms)

    def p99_ms(self) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]

    def server_cpu_ms(self) -> float | None:
        if self.server_cpu_seconds is None:
            return None
        return self.server_cpu_seconds / self.requests * 1000

    def client_cpu_ms(self) -> float:
        return self.client_cpu_seconds / self.requests * 1000


@dataclass
class _Budget:
    """When a measurement stops: at `stop_at` or after `requests` requests, whichever is first."""

    stop_at: float
    requests: int

    def take(self) -> bool:
        if self.requests <= 0 or time.perf_counter() >= self.stop_at:
            return False
        self.requests -= 1
        return True


#: One client's loop: requests while the budget lasts, each latency appended; how many it made.
_Client = Callable[[int, _Budget, list[float]], Awaitable[int]]


def _chain_client(channel: grpc.aio.Channel) -> _Client:
    hop = hop_callable(channel)

    async def run(client: int, budget: _Budget, latencies: list[float]) -> int:
        calls = 0
        while budget.take():
            started = time.perf_counter()
            await hop(b"", timeout=_CALL_TIMEOUT)
            latencies.append((time.perf_counter() - started) * 1000)
            calls += 1
        return calls

    return run


def _shape_client(channel: grpc.aio.Channel) -> _Client:
    generate = generate_callable(channel)

    async def run(client: int, budget: _Budget, latencies: list[float]) -> int:
        calls = 0
        while budget.take():
            started = time.perf_counter()
            async for _ in generate(b"g" * 66, timeout=_CALL_TIMEOUT):
                pass
            latencies.append((time.perf_counter() - started) * 1000)
            calls += 1
        return calls

    return run


def _router_client(channel: grpc.aio.Channel, variant: str, token: BearerToken) -> _Client:
    stub = router_pb2_grpc.RouterServiceStub(channel)  # type: ignore[no-untyped-call]
    # The key as each call's own metadata, not through a client interceptor: the channel has
    # none, and one would add its cost to the client, not to the router being measured.
    metadata = (token.metadata,)
    run_id = uuid.uuid4().hex[:8]
    sequence = iter(range(sys.maxsize))
    spec = router_pb2.GenerationSpec(
        prompt="a lighthouse at dusk, benchmark",
        tier=_TIER,
        stage=common_pb2.STAGE_EXPLORE,
        resolution=common_pb2.Resolution(
            size=common_pb2.IMAGE_SIZE_1K, aspect_ratio=common_pb2.ASPECT_RATIO_1_1
        ),
        n=1,
    )

    async def run(client: int, budget: _Budget, latencies: list[float]) -> int:
        calls = 0
        while budget.take():
            request = router_pb2.GenerateRequest(
                account_id=_account(variant, client),
                idempotency_key=f"{run_id}-{next(sequence)}",
                spec=spec,
            )
            started = time.perf_counter()
            final = None
            async for response in stub.Generate(request, timeout=_CALL_TIMEOUT, metadata=metadata):
                final = response
            latencies.append((time.perf_counter() - started) * 1000)
            if final is None or final.job.status != router_pb2.JOB_STATUS_SUCCEEDED:
                raise RuntimeError(f"{variant}: a Generate did not succeed; it ended with {final}")
            calls += 1
        return calls

    return run


def _account(variant: str, client: int) -> str:
    return f"bench-{variant}-{client}"


async def _fund_accounts(router: grpc.aio.Channel, variant: str, token: BearerToken) -> None:
    """One account per client, funded far beyond what a run spends, through the router: the
    credits land in the key's tenant (an auth-off router's `default`), where the accounts are."""
    stub = router_pb2_grpc.RouterServiceStub(router)  # type: ignore[no-untyped-call]
    metadata = (token.metadata,)
    for client in range(max(CONCURRENCY)):
        account_id = _account(variant, client)
        await stub.OpenAccount(
            router_pb2.OpenAccountRequest(account_id=account_id, idempotency_key="open"),
            timeout=_CALL_TIMEOUT,
            metadata=metadata,
        )
        await stub.Grant(
            router_pb2.GrantRequest(
                account_id=account_id,
                amount=10**9,
                kind=ledger_pb2.GRANT_KIND_PURCHASE,
                reason="benchmark",
                idempotency_key="fund",
            ),
            timeout=_CALL_TIMEOUT,
            metadata=metadata,
        )


async def _issue_key(processes: ProcessGroup, variant: str) -> BearerToken:
    """A key of tenant `bench` in the store of `variant`'s router, made before it starts."""
    store = await KeyStore.open(f"sqlite:///{processes.run_dir / variant / 'router.db'}")
    try:
        issued = await store.create("bench", _SCOPES, name="bench router")
    finally:
        await store.close()
    return BearerToken(issued.secret)


def _instant_tiers() -> str:
    """The default tier catalogue with every tier on the zero-cost `instant` backend."""
    text = DEFAULT_CATALOGUE_TOML.replace('backend = "builtin"', 'backend = "instant"')
    if 'backend = "instant"' not in text:
        raise RuntimeError("the default tier catalogue names no builtin backend to replace")
    return text


def _spawn_suite(processes: ProcessGroup, variant: str) -> list[ServerProcess]:
    """The ledger, generator and upscaler of one suite; the router comes once they listen."""
    data = processes.run_dir / variant
    data.mkdir()
    tiers = data / "tiers.toml"
    tiers.write_text(_instant_tiers())
    common = {"TIERGEN_TRACING": ROUTERS[variant]["TIERGEN_TRACING"]}
    return [
        processes.spawn(
            f"{variant}-ledger",
            "services.ledger",
            {
                **common,
                **_transport(processes, variant, "ledger"),
                "TIERGEN_LEDGER_DSN": f"sqlite:///{data / 'ledger.db'}",
            },
        ),
        processes.spawn(
            f"{variant}-generator",
            "services.generator",
            {
                **common,
                **_transport(processes, variant, "generator"),
                "TIERGEN_GENERATOR_TIERS_FILE": str(tiers),
                "TIERGEN_GENERATOR_WORKERS": "1",
            },
        ),
        processes.spawn(
            f"{variant}-upscaler",
            "services.upscaler",
            {
                **common,
                **_transport(processes, variant, "upscaler"),
                "TIERGEN_UPSCALER_WORKERS": "1",
            },
        ),
    ]


def _transport(processes: ProcessGroup, variant: str, service: str) -> dict[str, str]:
    """How a process of `variant` serves and calls: plaintext, or TLS as `service`."""
    return dict(PLAINTEXT) if variant in _PLAINTEXT_SUITES else processes.tls_env(service)


def _spawn_router(
    processes: ProcessGroup, variant: str, ledger: str, generator: str, upscaler: str
) -> ServerProcess:
    data = processes.run_dir / variant
    return processes.spawn(
        f"{variant}-router",
        "services.router",
        {
            **ROUTERS[variant],
            **_transport(processes, variant, "router"),
            **(_webhook_env(processes) if variant in _WEBHOOK_SUITES else {}),
            "TIERGEN_ROUTER_DSN": f"sqlite:///{data / 'router.db'}",
            "TIERGEN_ROUTER_ASSETS_DIR": str(data / "assets"),
            "LEDGER_ADDR": ledger,
            "GENERATOR_ADDR": generator,
            "UPSCALER_ADDR": upscaler,
        },
    )


def _webhook_env(processes: ProcessGroup) -> dict[str, str]:
    """A router sending webhooks to the loopback receiver, whose certificate the run's CA
    signed."""
    return {
        "TIERGEN_ROUTER_WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
        "TIERGEN_ROUTER_WEBHOOK_CA_FILE": str(processes.pki.ca_file),
    }


async def _subscribe(router: grpc.aio.Channel, token: BearerToken, receiver: str) -> None:
    """One endpoint of the benchmark's tenant, subscribed to every event."""
    stub = router_pb2_grpc.RouterServiceStub(router)  # type: ignore[no-untyped-call]
    await stub.CreateWebhook(
        router_pb2.CreateWebhookRequest(
            url=f"{receiver}/hook",
            events=list(_EVERY_EVENT),
            description="bench receiver",
            credits_low_threshold=1,
        ),
        timeout=_CALL_TIMEOUT,
        metadata=(token.metadata,),
    )


async def _receiver_stats(
    processes: ProcessGroup, receiver: str, *, reset: bool = False
) -> dict[str, Any]:
    """The receiver's figures so far (see `bench.webhook_receiver`), started afresh if `reset`."""
    verify = ssl.create_default_context(cafile=str(processes.pki.ca_file))
    async with httpx.AsyncClient(verify=verify, trust_env=False, timeout=_CALL_TIMEOUT) as client:
        answer = await client.get(f"{receiver}/stats{'?reset' if reset else ''}")
        answer.raise_for_status()
        stats: dict[str, Any] = answer.json()
        return stats


async def _receiver_settled(processes: ProcessGroup, receiver: str) -> dict[str, Any]:
    """The receiver's figures once the deliveries still under way have arrived: when a second
    passes without one (at most 30 s)."""
    stats = await _receiver_stats(processes, receiver)
    give_up = time.monotonic() + 30
    while time.monotonic() < give_up:
        await asyncio.sleep(1.0)
        later = await _receiver_stats(processes, receiver)
        if later == stats:
            break
        stats = later
    return stats


async def _measure(variant: _Variant, clients: int, seconds: float, requests: int) -> _Sample:
    latencies: list[float] = []
    budget = _Budget(time.perf_counter() + seconds, requests)
    server_before = variant.cpu_seconds()
    client_before = time.process_time()
    started = time.perf_counter()
    calls = await asyncio.gather(*(variant.client(n, budget, latencies) for n in range(clients)))
    elapsed = time.perf_counter() - started
    client_cpu = time.process_time() - client_before
    server_after = variant.cpu_seconds()
    server_cpu = (
        None if server_before is None or server_after is None else server_after - server_before
    )
    return _Sample(sum(calls), elapsed, server_cpu, client_cpu, latencies)


def _rotated(names: Sequence[str], shift: int) -> Iterator[str]:
    shift %= len(names)
    yield from [*names[shift:], *names[:shift]]


async def _run(
    processes: ProcessGroup,
    rounds: int,
    seconds: float,
    warmup: float,
    requests: int,
    observed: dict[str, Any],
) -> dict[tuple[str, int], _Sample]:
    """The samples of every variant and count; `observed` gets the webhook receiver's figures
    and CPU."""
    # The chain's and the shape's hops are TLS as the routers' are: a router's certificate
    # calling, mutual TLS at the backends.
    backend, front = processes.tls_env("ledger"), processes.tls_env("router")
    chain_b = processes.spawn("chain-b", "bench.chain", backend)
    chain_c = processes.spawn("chain-c", "bench.chain", backend)
    shape_ledger = processes.spawn("shape-ledger", "bench.chain", backend)
    shape_generator = processes.spawn("shape-generator", "bench.chain", backend)
    suites = {name: _spawn_suite(processes, name) for name in ROUTERS}
    tokens = {name: await _issue_key(processes, name) for name in ROUTERS}
    # The platform's side of the webhooks: a certificate of the run's CA for 127.0.0.1.
    receiver = processes.spawn(
        "webhook-receiver", "bench.webhook_receiver", processes.tls_env("upscaler")
    )
    first = [chain_b, chain_c, shape_ledger, shape_generator, receiver]
    await asyncio.gather(*(p.ready() for p in [*first, *(p for s in suites.values() for p in s)]))
    chain_a = processes.spawn(
        "chain-a",
        "bench.chain",
        {**front, "CHAIN_NEXT_ADDRS": f"{chain_b.address},{chain_c.address}"},
    )
    shape_router = processes.spawn(
        "shape-router",
        "bench.chain",
        {
            **front,
            "SHAPE_LEDGER_ADDR": shape_ledger.address,
            "SHAPE_GENERATOR_ADDR": shape_generator.address,
        },
    )
    routers = {
        name: _spawn_router(processes, name, *(p.address for p in suite))
        for name, suite in suites.items()
    }
    await asyncio.gather(
        chain_a.ready(), shape_router.ready(), *(r.ready() for r in routers.values())
    )
    async with contextlib.AsyncExitStack() as channels:
        chain_channel = processes.aio_channel(chain_a.address)
        channels.push_async_callback(chain_channel.close)
        shape_channel = processes.aio_channel(shape_router.address)
        channels.push_async_callback(shape_channel.close)
        variants = {
            "chain": _Variant("chain", [chain_a, chain_b, chain_c], _chain_client(chain_channel)),
            "shape": _Variant(
                "shape",
                [shape_router, shape_ledger, shape_generator],
                _shape_client(shape_channel),
            ),
        }
        for name, router in routers.items():
            router_channel = (
                grpc.aio.insecure_channel(router.address)
                if name in _PLAINTEXT_SUITES
                else processes.aio_channel(router.address)
            )
            channels.push_async_callback(router_channel.close)
            await _fund_accounts(router_channel, name, tokens[name])
            if name in _WEBHOOK_SUITES:
                await _subscribe(router_channel, tokens[name], receiver.address)
            variants[name] = _Variant(
                name, [router, *suites[name]], _router_client(router_channel, name, tokens[name])
            )
        for variant in variants.values():
            await _measure(variant, max(CONCURRENCY), warmup, requests)
        # The warm-up's deliveries are not the measurement's.
        await _receiver_settled(processes, receiver.address)
        await _receiver_stats(processes, receiver.address, reset=True)
        receiver_cpu = receiver.cpu_seconds()
        samples = {(name, count): _Sample() for name in VARIANTS for count in CONCURRENCY}
        for round_number in range(rounds):
            for count in CONCURRENCY:
                for name in _rotated(VARIANTS, round_number):
                    sample = await _measure(variants[name], count, seconds, requests)
                    samples[(name, count)].add(sample)
        observed["receiver"] = await _receiver_settled(processes, receiver.address)
        after = receiver.cpu_seconds()
        observed["receiver_cpu_seconds"] = (
            None if receiver_cpu is None or after is None else after - receiver_cpu
        )
    return samples


async def run(
    rounds: int, seconds: float, warmup: float, requests: int, data_dir: Path | None = None
) -> dict[str, Any]:
    """Start the processes, measure every variant `rounds` times, stop them; the figures.

    The processes keep their files in a fresh directory under `data_dir` (the system's
    temporary directory when None), removed at the end.
    """
    task = asyncio.current_task()
    assert task is not None
    # SIGTERM stops the benchmark as Ctrl-C does: through the `finally` that stops the servers.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    with tempfile.TemporaryDirectory(prefix="bench-router-", dir=data_dir) as run_dir:
        processes = ProcessGroup(
            Path(run_dir), {"TIERGEN_LOG_LEVEL": "info", "OTEL_TRACES_EXPORTER": "none"}
        )
        observed: dict[str, Any] = {}
        try:
            samples = await _run(processes, rounds, seconds, warmup, requests, observed)
        finally:
            await asyncio.to_thread(processes.stop)
    figures = _figures(samples, rounds, seconds, requests)
    figures.update(_webhook_figures(samples, observed))
    figures["method"]["data_dir"] = str(data_dir or tempfile.gettempdir())
    return figures


def _figures(
    samples: dict[tuple[str, int], _Sample], rounds: int, seconds: float, requests: int
) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for name in VARIANTS:
        prefix, suffix = _figure_name(name)
        for count in CONCURRENCY:
            sample = samples[(name, count)]
            figures[f"{prefix}_rps_{count}{suffix}"] = round(sample.rps(), 1)
            figures[f"{prefix}_p50_ms_{count}{suffix}"] = round(sample.p50_ms(), 3)
            figures[f"{prefix}_p99_ms_{count}{suffix}"] = round(sample.p99_ms(), 3)
            server_cpu = sample.server_cpu_ms()
            figures[f"{prefix}_server_cpu_ms_per_request_{count}{suffix}"] = (
                None if server_cpu is None else round(server_cpu, 3)
            )
            figures[f"{prefix}_client_cpu_ms_per_request_{count}{suffix}"] = round(
                sample.client_cpu_ms(), 3
            )
    rps_ratio = figures["router_rps_16"] / figures["chain_rps_16"]
    p50_extra = figures["router_p50_ms_1"] - figures["chain_p50_ms_1"]
    tracing_ratio = figures["router_rps_16"] / figures["router_rps_16_untraced"]
    auth_ratio = figures["router_rps_16"] / figures["router_rps_16_auth_off"]
    mtls_ratio = figures["router_rps_16"] / figures["router_rps_16_plaintext"]
    webhooks_ratio = figures["router_rps_16_webhooks"] / figures["router_rps_16"]
    figures["webhooks_rps_ratio_16"] = round(webhooks_ratio, 3)
    figures["webhooks_rps_ratio_1"] = round(
        figures["router_rps_1_webhooks"] / figures["router_rps_1"], 3
    )
    figures["router_rps_ratio_16"] = round(rps_ratio, 3)
    figures["router_p50_extra_ms_1"] = round(p50_extra, 3)
    figures["tracing_rps_ratio_16"] = round(tracing_ratio, 3)
    figures["auth_rps_ratio_16"] = round(auth_ratio, 3)
    figures["auth_p50_extra_ms_1"] = round(
        figures["router_p50_ms_1"] - figures["router_p50_ms_1_auth_off"], 3
    )
    figures["mtls_rps_ratio_16"] = round(mtls_ratio, 3)
    figures["mtls_rps_ratio_1"] = round(
        figures["router_rps_1"] / figures["router_rps_1_plaintext"], 3
    )
    figures["mtls_p50_extra_ms_1"] = round(
        figures["router_p50_ms_1"] - figures["router_p50_ms_1_plaintext"], 3
    )
    figures["shape_rps_ratio_16"] = round(figures["shape_rps_16"] / figures["chain_rps_16"], 3)
    figures["shape_p50_extra_ms_1"] = round(
        figures["shape_p50_ms_1"] - figures["chain_p50_ms_1"], 3
    )
    figures["router_rps_ratio_to_shape_16"] = round(
        figures["router_rps_16"] / figures["shape_rps_16"], 3
    )
    targets = {
        f"router_rps_16_at_least_{RPS_TARGET_RATIO:g}_of_chain": rps_ratio >= RPS_TARGET_RATIO,
        f"router_p50_1_at_most_chain_plus_{P50_TARGET_EXTRA_MS:g}_ms": (
            p50_extra <= P50_TARGET_EXTRA_MS
        ),
        f"router_rps_16_at_least_{TRACING_TARGET_RATIO:g}_of_untraced": (
            tracing_ratio >= TRACING_TARGET_RATIO
        ),
        f"router_rps_16_at_least_{AUTH_TARGET_RATIO:g}_of_auth_off": (
            auth_ratio >= AUTH_TARGET_RATIO
        ),
        f"router_rps_16_at_least_{MTLS_TARGET_RATIO:g}_of_plaintext": (
            mtls_ratio >= MTLS_TARGET_RATIO
        ),
        f"router_rps_16_with_webhooks_at_least_{WEBHOOKS_TARGET_RATIO:g}_of_without": (
            webhooks_ratio >= WEBHOOKS_TARGET_RATIO
        ),
    }
    figures["targets"] = targets
    figures["targets_met"] = all(targets.values())
    figures["method"] = {
        "chain": "client -> A, A -> B then A -> C: empty unary RPCs on the runtime's server "
        "and channels; one request is one call to A",
        "shape": "the router's RPCs and messages with no work behind them: a Generate stream of "
        "6 messages calling Balance, Reserve, a Render stream of 5 messages, and Capture",
        "router": "Generate of one nano 1K image, generator on the instant backend, ledger and "
        "job store on SQLite, local assets; one request is one whole Generate stream",
        "telemetry": "chain, shape and router: tracing on, OTEL_TRACES_EXPORTER=none (spans "
        "recorded, exported nowhere), log level info; router_untraced: TIERGEN_TRACING=off "
        "everywhere",
        "auth": "router and router_untraced: TIERGEN_AUTH on, every call with an API key made "
        "in the router's store before it started, cached by the router after its first check "
        "(TIERGEN_ROUTER_KEY_CACHE_SECONDS default); router_auth_off: TIERGEN_AUTH=off, the "
        "same calls and key, ignored",
        "tls": "chain, shape, router, router_untraced and router_auth_off: TLS on every port "
        "(ECDSA P-256 certificates of a CA made for the run), mutual TLS on every hop behind "
        "the front process, connections kept open; router_plaintext: TIERGEN_INSECURE=true in "
        "every process, a plaintext client",
        "webhooks": "router_webhooks: the router suite with one endpoint subscribed to every "
        "event at a loopback HTTPS receiver (a separate process, not counted in server_cpu); "
        "two deliveries per Generate; delays from each event's moment to its arrival",
        "server_cpu": "user + system CPU of the variant's main processes per request, the "
        "router's webhook dispatcher process included",
        "rounds": rounds,
        "seconds_per_measurement": seconds,
        "max_requests_per_measurement": requests,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
    }
    return figures


def _webhook_figures(
    samples: dict[tuple[str, int], _Sample], observed: dict[str, Any]
) -> dict[str, Any]:
    """What the receiver measured of the router_webhooks suite's deliveries: how long from a
    job's end (its finish_time) to its job.succeeded's arrival, and from a batch's settlement to
    its batch.completed's; how many arrived of how many Generates; its CPU per delivery."""
    events = observed.get("receiver", {}).get("events", {})
    jobs = events.get("job.succeeded", {})
    batches = events.get("batch.completed", {})
    generates = sum(samples[("router_webhooks", count)].requests for count in CONCURRENCY)
    received = sum(figures["count"] for figures in events.values())
    receiver_cpu = observed.get("receiver_cpu_seconds")
    return {
        "webhook_job_delay_p50_ms": jobs.get("p50_ms"),
        "webhook_job_delay_p99_ms": jobs.get("p99_ms"),
        "webhook_job_delay_max_ms": jobs.get("max_ms"),
        "webhook_batch_delay_p50_ms": batches.get("p50_ms"),
        "webhook_batch_delay_p99_ms": batches.get("p99_ms"),
        "webhook_generates": generates,
        "webhook_events_received": received,
        "webhook_duplicates_received": observed.get("receiver", {}).get("duplicates"),
        "webhook_receiver_cpu_ms_per_event": (
            None
            if receiver_cpu is None or not received
            else round(receiver_cpu / received * 1000, 3)
        ),
    }


def _figure_name(variant: str) -> tuple[str, str]:
    """How a variant's figures are named: `router_untraced` gives `router_rps_16_untraced`."""
    for suffix in ("_untraced", "_auth_off", "_plaintext", "_webhooks"):
        if variant.endswith(suffix):
            return variant.removesuffix(suffix), suffix
    return variant, ""


def _table(figures: dict[str, Any]) -> str:
    lines = [
        f"{'variant':<16} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'server cpu/req':>15}"
    ]
    for name in VARIANTS:
        prefix, suffix = _figure_name(name)
        for count in CONCURRENCY:
            lines.append(
                f"{name:<16} {count:>7} {figures[f'{prefix}_rps_{count}{suffix}']:>8} "
                f"{figures[f'{prefix}_p50_ms_{count}{suffix}']:>8} "
                f"{figures[f'{prefix}_p99_ms_{count}{suffix}']:>8} "
                f"{figures[f'{prefix}_server_cpu_ms_per_request_{count}{suffix}']!s:>12} ms"
            )
    lines.append(
        f"router/chain req/s at 16: {figures['router_rps_ratio_16']}; router p50 at 1 minus "
        f"chain's: {figures['router_p50_extra_ms_1']} ms; traced/untraced req/s at 16: "
        f"{figures['tracing_rps_ratio_16']}; shape/chain req/s at 16: "
        f"{figures['shape_rps_ratio_16']}; auth on/off req/s at 16: "
        f"{figures['auth_rps_ratio_16']}; mTLS/plaintext req/s at 16: "
        f"{figures['mtls_rps_ratio_16']}; with/without webhooks req/s at 16: "
        f"{figures['webhooks_rps_ratio_16']}; job end to webhook arrival p50/p99: "
        # Measured by the receiver, so absent from figures made without one.
        f"{figures.get('webhook_job_delay_p50_ms')}/{figures.get('webhook_job_delay_p99_ms')} ms"
    )
    for name, met in figures["targets"].items():
        lines.append(f"{'met' if met else 'MISSED':<7} {name}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its figures (`targets_met` says whether the targets hold)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="per variant, count and round")
    parser.add_argument("--warmup", type=float, default=1.0, help="untimed, per variant")
    parser.add_argument(
        "--max-requests", type=int, default=10_000, help="most requests of one measurement"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="where the databases, assets and logs go (default: the system's temporary "
        "directory); /dev/shm takes the disk's fsync time out of the figures",
    )
    arguments = parser.parse_args(argv)
    if arguments.rounds < 1 or arguments.seconds <= 0 or arguments.max_requests < 1:
        parser.error("--rounds, --seconds and --max-requests must be positive")
    if arguments.data_dir is not None and not arguments.data_dir.is_dir():
        parser.error(f"--data-dir {arguments.data_dir} is not a directory")
    return report(
        run(
            arguments.rounds,
            arguments.seconds,
            arguments.warmup,
            arguments.max_requests,
            arguments.data_dir,
        ),
        arguments.json,
        _table,
    )


if __name__ == "__main__":
    sys.exit(main())
