"""Benchmarks fair share: one tenant's sketches while another floods the generator with bulk work.

Run from the repository root: `python -m bench.fairness --json` (or `tiergen bench fairness
--json`). One run starts the suite as `tiergen up` does (ledger on SQLite, generator on the
built-in renderer, upscaler, router on SQLite and a local asset directory) on loopback, with
TLS on every hop from a CA made for the run (`bench.processes`), its files in a fresh temporary
directory (under `--data-dir`; `/dev/shm` takes the disk's fsync time out of the figures), and
stops every process at the end, also on failure, Ctrl-C or SIGTERM. The router's store gets one
API key for each of two tenants before it starts, as an operator makes a tenant's first key:

- **acme**, the bulk tenant: Generate batches of 4 at the refine stage, pro 2K and standard
  2K, each on a new idempotency key, from one funded account. Three clients send pro batches
  and five standard ones, each its next as soon as its last ended (0.5 s after a refusal): one
  more batch per tier than the router's admission places, so the generator's queues stay full
  and what it cannot take is refused with RESOURCE_EXHAUSTED before any credit is held. The
  generator is saturated; `bulk_offered_ratio` is what acme sent over what it got.
- **globex**, the victim: one Generate of one nano 1K image at the explore stage every 0.5 s
  (open loop: a slow answer does not delay the next request), from its own funded account.

Three phases, each measured `--seconds` (17) per round, in `--rounds` (3) rounds; figures pool
the rounds. **victim alone**: globex alone. **bulk alone**: acme alone. **contended**: both. A
round runs victim alone, contended, bulk alone, one flowing into the next (3 s unmeasured after
acme starts, while its queues fill; 1 s after globex starts), and the next round the other way,
so every phase borders the contended one and a drift in the machine's load spreads over all
three. A phase without acme starts only once every batch acme had in flight has ended.

Throughout, a probe reads from the router as a dashboard would, open loop, every
`_PROBE_INTERVAL` s: a ListJobs and a GetBalance of globex's account in turn (`router_read`),
and a `grpc.health.v1` Check on the router's port (`router_health`), the one clients and load
balancers use. Their latency is pooled per phase like the victim's.

Figures: `victim_p99_ms_alone` and `victim_p99_ms_contended` (globex's Generate latency, from the
call to the end of its stream, of the sketches sent in the phase; p99 is the nearest rank, so
with 102 sketches the second slowest), `bulk_throughput_share` (acme's images delivered per
second while contended, over alone), and `router_read_p99_ms_*` and `router_health_p99_ms_*`
(victim alone, contended). Targets: contended victim p99 at most twice alone; share at least
0.8; every read and health check answered, contended read and health p99 at most
`ROUTER_TARGET_RATIO` times alone.

Then, unless `--no-ratelimit`, the quotas' exactness across replicas is measured as
`bench.ratelimit` does (two routers over one PostgreSQL database, `--ratelimit-dsn`), and its
`ratelimit_*` figures and target join these.

`--interactive-workers` and `--bulk-nice` set the generator's TIERGEN_GENERATOR_INTERACTIVE_WORKERS
and TIERGEN_GENERATOR_BULK_NICE, to measure the ways of giving interactive work a processor
(docs/performance.md compares them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tiergen.common.v1 import common_pb2
from tiergen.ledger.v1 import ledger_pb2
from tiergen.router.v1 import router_pb2, router_pb2_grpc

from bench import ratelimit
from bench.processes import ProcessGroup, ServerProcess, report
from services.router.access.keys import KeyStore
from services.router.access.scopes import Scope
from services.runtime.credentials import BearerToken
from services.runtime.status import from_rpc_error

__all__ = ["main", "run"]

BULK_TENANT = "acme"
VICTIM_TENANT = "globex"
#: Victim contended p99 over alone: at most this.
VICTIM_TARGET_RATIO = 2.0
#: Bulk images per second contended over alone: at least this.
SHARE_TARGET = 0.8
#: The issue's own: the victim sends one sketch every half second.
VICTIM_INTERVAL = 0.5
#: Router reads and health checks contended: p99 at most this many times alone.
ROUTER_TARGET_RATIO = 2.0
BATCH = 4
#: acme's clients per kind of batch (tier, size): one more than the router's admission places
#: for each tier with the default catalogue (pro 9 places: 2 batches of 4; standard 18: 4).
BULK_LOOPS: dict[tuple[str, common_pb2.ImageSize], int] = {
    ("pro", common_pb2.IMAGE_SIZE_2K): 3,
    ("standard", common_pb2.IMAGE_SIZE_2K): 5,
}
_SCOPES = (
    Scope.IMAGES_WRITE,
    Scope.IMAGES_READ,
    Scope.ACCOUNTS_WRITE,
    Scope.ACCOUNTS_READ,
    Scope.CREDITS_GRANT,
)
_VICTIM_TIMEOUT = 10.0
_BULK_TIMEOUT = 120.0
#: How long a refused bulk client waits before it sends again.
_REFUSED_PAUSE = 0.5
#: Unmeasured load after acme starts (its queues fill) and after globex starts or stops.
_SETTLE_BULK = 3.0
_SETTLE_VICTIM = 1.0
#: How long a load may take to drain its calls once it stops sending.
_DRAIN_SECONDS = 120.0
#: How often the probe reads from the router, and how long it gives a read.
_PROBE_INTERVAL = 0.1
_PROBE_TIMEOUT = 10.0


@dataclass
class _Tally:
    """What one tenant's calls measured in one phase."""

    #: (when the call started, its latency), for every call that was answered.
    latencies_ms: list[tuple[float, float]] = field(default_factory=list)
    #: When each delivered image's job finished (monotonic), by tier.
    delivered: list[tuple[float, str]] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    failed_jobs: Counter[str] = field(default_factory=Counter)


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def _error_name(error: grpc.aio.AioRpcError) -> str:
    reason = from_rpc_error(error).reason
    return f"{error.code().name}:{reason}"


class _Tenant:
    """One tenant's account and its calls to the router."""

    def __init__(self, stub: Any, token: BearerToken, account: str) -> None:
        self._stub = stub
        self.metadata = (token.metadata,)
        self.account = account
        self._run = uuid.uuid4().hex[:8]
        self._sequence = 0

    async def fund(self) -> None:
        await self._stub.OpenAccount(
            router_pb2.OpenAccountRequest(account_id=self.account, idempotency_key="open"),
            timeout=10,
            metadata=self.metadata,
        )
        await self._stub.Grant(
            router_pb2.GrantRequest(
                account_id=self.account,
                amount=10**9,
                kind=ledger_pb2.GRANT_KIND_PURCHASE,
                reason="benchmark",
                idempotency_key="fund",
            ),
            timeout=10,
            metadata=self.metadata,
        )

    async def generate(
        self, spec: router_pb2.GenerationSpec, deadline: float, tally: _Tally
    ) -> bool:
        """One Generate read to its end; whether it was accepted (not refused outright)."""
        self._sequence += 1
        request = router_pb2.GenerateRequest(
            account_id=self.account,
            idempotency_key=f"{self._run}-{self._sequence}",
            spec=spec,
        )
        started = time.monotonic()
        try:
            async for event in self._stub.Generate(
                request, timeout=deadline, metadata=self.metadata
            ):
                if event.WhichOneof("event") != "job":
                    continue
                job = event.job
                if job.status == router_pb2.JOB_STATUS_SUCCEEDED:
                    tally.delivered.append((time.monotonic(), job.tier))
                else:
                    tally.failed_jobs[f"{job.error.code}:{job.error.reason}"] += 1
        except grpc.aio.AioRpcError as error:
            tally.errors[_error_name(error)] += 1
            return False
        tally.latencies_ms.append((started, (time.monotonic() - started) * 1000))
        return True


def _bulk_spec(tier: str, size: common_pb2.ImageSize) -> router_pb2.GenerationSpec:
    return router_pb2.GenerationSpec(
        prompt="a lighthouse on a cliff at sunset, final render",
        tier=tier,
        stage=common_pb2.STAGE_REFINE,
        resolution=common_pb2.Resolution(size=size, aspect_ratio=common_pb2.ASPECT_RATIO_1_1),
        n=BATCH,
    )


_VICTIM_SPEC = router_pb2.GenerationSpec(
    prompt="a fox in the snow, quick sketch",
    tier="nano",
    stage=common_pb2.STAGE_EXPLORE,
    resolution=common_pb2.Resolution(
        size=common_pb2.IMAGE_SIZE_1K, aspect_ratio=common_pb2.ASPECT_RATIO_1_1
    ),
    n=1,
)


class _BulkLoad:
    """acme's load: for each tier of `BULK_LOOPS`, that many clients each sending a batch as
    soon as its last one ended (a refused one again after `_REFUSED_PAUSE`), so that the
    router's admission and the generator's queues stay full: the generator is saturated, and
    what is offered beyond what it takes is refused."""

    def __init__(self, tenant: _Tenant) -> None:
        self._tenant = tenant
        self.tally = _Tally()
        #: When each batch was sent: what was offered.
        self.sent: list[float] = []
        self._stop = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._stop.clear()
        self._loops = [
            asyncio.create_task(self._loop(tier, size))
            for (tier, size), clients in BULK_LOOPS.items()
            for _ in range(clients)
        ]

    async def stop(self) -> None:
        """Stops sending and waits for every batch in flight to end."""
        self._stop.set()
        await asyncio.wait_for(asyncio.gather(*self._loops), _DRAIN_SECONDS)

    async def _loop(self, tier: str, size: common_pb2.ImageSize) -> None:
        spec = _bulk_spec(tier, size)
        while not self._stop.is_set():
            self.sent.append(time.monotonic())
            if not await self._tenant.generate(spec, _BULK_TIMEOUT, self.tally):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), _REFUSED_PAUSE)


class _VictimLoad:
    """globex's load: one sketch every `VICTIM_INTERVAL` seconds, never waiting for an answer."""

    def __init__(self, tenant: _Tenant) -> None:
        self._tenant = tenant
        self.tally = _Tally()
        self._stop = asyncio.Event()
        self._pacer: asyncio.Task[None] | None = None
        self._calls: set[asyncio.Task[bool]] = set()

    def start(self) -> None:
        self._stop.clear()
        self._pacer = asyncio.create_task(self._pace())

    async def stop(self) -> None:
        """Stops sending and waits for every sketch in flight to end."""
        self._stop.set()
        if self._pacer is not None:
            await self._pacer
        if self._calls:
            await asyncio.wait_for(asyncio.gather(*self._calls), _DRAIN_SECONDS)

    async def _pace(self) -> None:
        started = time.monotonic()
        for sequence in itertools.count():
            delay = started + sequence * VICTIM_INTERVAL - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
            if self._stop.is_set():
                return
            call = asyncio.create_task(
                self._tenant.generate(_VICTIM_SPEC, _VICTIM_TIMEOUT, self.tally)
            )
            self._calls.add(call)
            call.add_done_callback(self._calls.discard)


class _RouterProbe:
    """Reads from the router while the loads run, every `_PROBE_INTERVAL` s whatever the
    answers: ListJobs and GetBalance of an account in turn (`read`), and a health Check."""

    def __init__(self, channel: grpc.aio.Channel, tenant: _Tenant) -> None:
        self._router = router_pb2_grpc.RouterServiceStub(channel)  # type: ignore[no-untyped-call]
        self._health = health_pb2_grpc.HealthStub(channel)
        self._tenant = tenant
        self.read = _Tally()
        self.health = _Tally()
        self._pacer: asyncio.Task[None] | None = None
        self._calls: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._pacer = asyncio.create_task(self._pace())

    async def stop(self) -> None:
        if self._pacer is not None:
            self._pacer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pacer
        if self._calls:
            await asyncio.wait_for(asyncio.gather(*self._calls), _DRAIN_SECONDS)

    async def _pace(self) -> None:
        started = time.monotonic()
        account = self._tenant.account
        metadata = self._tenant.metadata
        reads = itertools.cycle(
            (
                lambda: self._router.ListJobs(
                    router_pb2.ListJobsRequest(account_id=account, page_size=10),
                    timeout=_PROBE_TIMEOUT,
                    metadata=metadata,
                ),
                lambda: self._router.GetBalance(
                    router_pb2.GetBalanceRequest(account_id=account),
                    timeout=_PROBE_TIMEOUT,
                    metadata=metadata,
                ),
            )
        )
        for sequence in itertools.count():
            await asyncio.sleep(max(0.0, started + sequence * _PROBE_INTERVAL - time.monotonic()))
            for call, tally in (
                (next(reads), self.read),
                (
                    lambda: self._health.Check(
                        health_pb2.HealthCheckRequest(), timeout=_PROBE_TIMEOUT
                    ),
                    self.health,
                ),
            ):
                task = asyncio.create_task(self._timed(call, tally))
                self._calls.add(task)
                task.add_done_callback(self._calls.discard)

    @staticmethod
    async def _timed(call: Any, tally: _Tally) -> None:
        started = time.monotonic()
        try:
            await call()
        except grpc.aio.AioRpcError as error:
            tally.errors[_error_name(error)] += 1
            return
        tally.latencies_ms.append((started, (time.monotonic() - started) * 1000))


@dataclass
class _Phase:
    """One kind of phase, pooled over the rounds: the windows in which it was measured."""

    windows: list[tuple[float, float]] = field(default_factory=list)

    async def measure(self, seconds: float) -> None:
        started = time.monotonic()
        await asyncio.sleep(seconds)
        self.windows.append((started, time.monotonic()))

    def covers(self, moment: float) -> bool:
        return any(start <= moment <= end for start, end in self.windows)

    @property
    def seconds(self) -> float:
        return sum(end - start for start, end in self.windows)

    def images_per_s(self, bulk: _BulkLoad) -> float:
        return sum(1 for at, _ in bulk.tally.delivered if self.covers(at)) / self.seconds

    def offered_images_per_s(self, bulk: _BulkLoad) -> float:
        return BATCH * sum(1 for at in bulk.sent if self.covers(at)) / self.seconds

    def latencies(self, tally: _Tally) -> list[float]:
        """The latency of every call of `tally` sent in one of the windows."""
        return [latency for at, latency in tally.latencies_ms if self.covers(at)]

    def delivered_by_tier(self, bulk: _BulkLoad) -> dict[str, int]:
        return dict(Counter(tier for at, tier in bulk.tally.delivered if self.covers(at)))


@dataclass
class _Phases:
    bulk_alone: _Phase = field(default_factory=_Phase)
    victim_alone: _Phase = field(default_factory=_Phase)
    contended: _Phase = field(default_factory=_Phase)


async def _round(
    forward: bool, bulk: _BulkLoad, victim: _VictimLoad, phases: _Phases, seconds: float
) -> None:
    """One round: each phase measured `seconds`, in one order or the other, so that every
    phase borders the contended one and a drift in the machine's load spreads over all three."""
    if forward:
        victim.start()
        await asyncio.sleep(_SETTLE_VICTIM)
        await phases.victim_alone.measure(seconds)
        bulk.start()
        await asyncio.sleep(_SETTLE_BULK)
        await phases.contended.measure(seconds)
        await victim.stop()
        await phases.bulk_alone.measure(seconds)
        await bulk.stop()
    else:
        bulk.start()
        await asyncio.sleep(_SETTLE_BULK)
        await phases.bulk_alone.measure(seconds)
        victim.start()
        await asyncio.sleep(_SETTLE_VICTIM)
        await phases.contended.measure(seconds)
        await bulk.stop()
        await asyncio.sleep(_SETTLE_VICTIM)
        await phases.victim_alone.measure(seconds)
        await victim.stop()


async def _issue_keys(processes: ProcessGroup) -> dict[str, BearerToken]:
    """A key for each tenant in the router's store, made before the router starts."""
    store = await KeyStore.open(f"sqlite:///{processes.run_dir / 'router.db'}")
    try:
        tokens = {}
        for tenant in (BULK_TENANT, VICTIM_TENANT):
            issued = await store.create(tenant, _SCOPES, name=f"bench fairness {tenant}")
            tokens[tenant] = BearerToken(issued.secret)
    finally:
        await store.close()
    return tokens


def _spawn_backends(
    processes: ProcessGroup, interactive_workers: int, bulk_nice: int, workers: int
) -> list[ServerProcess]:
    data = processes.run_dir
    return [
        processes.spawn(
            "ledger",
            "services.ledger",
            {
                **processes.tls_env("ledger"),
                "TIERGEN_LEDGER_DSN": f"sqlite:///{data / 'ledger.db'}",
            },
        ),
        processes.spawn(
            "generator",
            "services.generator",
            {
                **processes.tls_env("generator"),
                "TIERGEN_GENERATOR_WORKERS": str(workers),
                "TIERGEN_GENERATOR_INTERACTIVE_WORKERS": str(interactive_workers),
                "TIERGEN_GENERATOR_BULK_NICE": str(bulk_nice),
            },
        ),
        processes.spawn(
            "upscaler",
            "services.upscaler",
            {**processes.tls_env("upscaler"), "TIERGEN_UPSCALER_WORKERS": "1"},
        ),
    ]


async def _run(processes: ProcessGroup, options: argparse.Namespace) -> dict[str, Any]:
    ledger, generator, upscaler = _spawn_backends(
        processes, options.interactive_workers, options.bulk_nice, options.workers
    )
    tokens = await _issue_keys(processes)
    await asyncio.gather(ledger.ready(), generator.ready(), upscaler.ready())
    router = processes.spawn(
        "router",
        "services.router",
        {
            **processes.tls_env("router"),
            "TIERGEN_ROUTER_DSN": f"sqlite:///{processes.run_dir / 'router.db'}",
            "TIERGEN_ROUTER_ASSETS_DIR": str(processes.run_dir / "assets"),
            "LEDGER_ADDR": ledger.address,
            "GENERATOR_ADDR": generator.address,
            "UPSCALER_ADDR": upscaler.address,
        },
    )
    await router.ready()
    channel = processes.aio_channel(router.address)
    try:
        stub = router_pb2_grpc.RouterServiceStub(channel)  # type: ignore[no-untyped-call]
        bulk = _Tenant(stub, tokens[BULK_TENANT], "bulk-account")
        victim = _Tenant(stub, tokens[VICTIM_TENANT], "sketch-account")
        await bulk.fund()
        await victim.fund()
        await _wait_for_catalogue(victim)
        # Untimed: every worker's first render, and the router's first of each kind.
        warm = _Tally()
        await asyncio.gather(
            *(victim.generate(_VICTIM_SPEC, _VICTIM_TIMEOUT, warm) for _ in range(4)),
            *(bulk.generate(_bulk_spec(*kind), _BULK_TIMEOUT, warm) for kind in BULK_LOOPS),
        )
        bulk_load, victim_load, phases = _BulkLoad(bulk), _VictimLoad(victim), _Phases()
        probe = _RouterProbe(channel, victim)
        probe.start()
        try:
            for round_number in range(options.rounds):
                await _round(round_number % 2 == 0, bulk_load, victim_load, phases, options.seconds)
        finally:
            await probe.stop()
    finally:
        await channel.close()
    return _figures(options, bulk_load, victim_load, probe, phases)


async def _wait_for_catalogue(tenant: _Tenant) -> None:
    """Until the router has read the generator's tiers (it answers UNAVAILABLE before)."""
    deadline = time.monotonic() + 30
    while True:
        tally = _Tally()
        if await tenant.generate(_VICTIM_SPEC, _VICTIM_TIMEOUT, tally):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the router never served a Generate: {dict(tally.errors)}")
        await asyncio.sleep(0.2)


def _latency_figures(phase: _Phase, tally: _Tally, calls: str) -> dict[str, Any]:
    latencies = phase.latencies(tally)
    if not latencies:
        raise RuntimeError(f"the {calls} all failed: {dict(tally.errors)}")
    return {
        "p50_ms": round(statistics.median(latencies), 1),
        "p90_ms": round(_percentile(latencies, 0.9), 1),
        "p99_ms": round(_percentile(latencies, 0.99), 1),
        "max_ms": round(max(latencies), 1),
        "requests": len(latencies),
    }


def _bulk_figures(phase: _Phase, bulk: _BulkLoad) -> dict[str, Any]:
    return {
        "images_per_s": round(phase.images_per_s(bulk), 3),
        "offered_images_per_s": round(phase.offered_images_per_s(bulk), 3),
        "images_by_tier": phase.delivered_by_tier(bulk),
    }


def _figures(
    options: argparse.Namespace,
    bulk: _BulkLoad,
    victim: _VictimLoad,
    probe: _RouterProbe,
    phases: _Phases,
) -> dict[str, Any]:
    victim_alone = _latency_figures(phases.victim_alone, victim.tally, "victim's sketches")
    victim_contended = _latency_figures(phases.contended, victim.tally, "victim's sketches")
    router = {
        f"{kind}_{phase_name}": _latency_figures(phase, tally, f"router's {kind}s")
        for kind, tally in (("read", probe.read), ("health", probe.health))
        for phase_name, phase in (("alone", phases.victim_alone), ("contended", phases.contended))
    }
    router_ratios = {
        kind: router[f"{kind}_contended"]["p99_ms"] / router[f"{kind}_alone"]["p99_ms"]
        for kind in ("read", "health")
    }
    router_unanswered = sum(probe.read.errors.values()) + sum(probe.health.errors.values())
    bulk_alone = _bulk_figures(phases.bulk_alone, bulk)
    bulk_contended = _bulk_figures(phases.contended, bulk)
    alone_images = bulk_alone["images_per_s"]
    share = bulk_contended["images_per_s"] / alone_images if alone_images else 0.0
    ratio = victim_contended["p99_ms"] / victim_alone["p99_ms"]
    offered_ratio = bulk_alone["offered_images_per_s"] / alone_images if alone_images else 0.0
    targets = {
        f"victim_p99_contended_at_most_{VICTIM_TARGET_RATIO:g}x_alone": ratio
        <= VICTIM_TARGET_RATIO,
        f"bulk_throughput_share_at_least_{SHARE_TARGET:g}": share >= SHARE_TARGET,
        "router_reads_and_health_all_answered": router_unanswered == 0,
        **{
            f"router_{kind}_p99_contended_at_most_{ROUTER_TARGET_RATIO:g}x_alone": ratio
            <= ROUTER_TARGET_RATIO
            for kind, ratio in router_ratios.items()
        },
    }
    return {
        "victim_p99_ms_alone": victim_alone["p99_ms"],
        "victim_p99_ms_contended": victim_contended["p99_ms"],
        "victim_p99_ratio": round(ratio, 3),
        "bulk_throughput_share": round(share, 3),
        "bulk_images_per_s_alone": alone_images,
        "bulk_images_per_s_contended": bulk_contended["images_per_s"],
        # The benchmark's own condition, not a target: the issue asks for at least twice.
        "bulk_offered_ratio": round(offered_ratio, 2),
        "bulk_offered_at_least_2x": offered_ratio >= 2.0,
        "router_read_p99_ms_alone": router["read_alone"]["p99_ms"],
        "router_read_p99_ms_contended": router["read_contended"]["p99_ms"],
        "router_health_p99_ms_alone": router["health_alone"]["p99_ms"],
        "router_health_p99_ms_contended": router["health_contended"]["p99_ms"],
        "victim_alone": victim_alone,
        "victim_contended": victim_contended,
        "router": router,
        "router_errors": {
            "read": dict(probe.read.errors),
            "health": dict(probe.health.errors),
        },
        "bulk_alone": bulk_alone,
        "bulk_contended": bulk_contended,
        "victim_errors": dict(victim.tally.errors),
        "victim_failed_jobs": dict(victim.tally.failed_jobs),
        "bulk_refused": dict(bulk.tally.errors),
        "bulk_failed_jobs": dict(bulk.tally.failed_jobs),
        "targets": targets,
        "targets_met": all(targets.values()),
        "method": {
            "suite": "ledger and router on SQLite, generator on the built-in renderer, local "
            "assets; TLS on every hop (mutual to the backends), as a deployment; tracing on, "
            "spans exported nowhere, logs at info into files",
            "generator": {
                "workers": options.workers,
                "interactive_workers": options.interactive_workers,
                "bulk_nice": options.bulk_nice,
            },
            "bulk": f"{BULK_TENANT}: Generate n={BATCH} at refine, "
            + ", ".join(
                f"{clients} clients of {tier} {common_pb2.ImageSize.Name(size)}"
                for (tier, size), clients in BULK_LOOPS.items()
            )
            + f", each sending again as its last batch ends ({_REFUSED_PAUSE} s after a"
            " refusal)",
            "victim": f"{VICTIM_TENANT}: Generate n=1 nano 1K explore every {VICTIM_INTERVAL} s,"
            " open loop; latency from the call to the end of its stream",
            "rounds": options.rounds,
            "seconds_per_phase_and_round": options.seconds,
            "settle_seconds": {"bulk": _SETTLE_BULK, "victim": _SETTLE_VICTIM},
            "router_probe": f"every {_PROBE_INTERVAL} s, open loop: ListJobs (page of 10) and"
            " GetBalance of globex's account in turn, and a grpc.health.v1 Check, on the"
            " router's port; 'alone' is the victim-alone phase",
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
            "load_average": os.getloadavg(),
        },
    }


async def run(options: argparse.Namespace) -> dict[str, Any]:
    """Start the suite, measure the phases, stop every process; the figures."""
    task = asyncio.current_task()
    assert task is not None
    # SIGTERM stops the benchmark as Ctrl-C does: through the `finally` that stops the servers.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    with tempfile.TemporaryDirectory(prefix="bench-fairness-", dir=options.data_dir) as run_dir:
        processes = ProcessGroup(
            Path(run_dir),
            {"TIERGEN_LOG_LEVEL": "info", "OTEL_TRACES_EXPORTER": "none"},
        )
        try:
            figures = await _run(processes, options)
        finally:
            await asyncio.to_thread(processes.stop)
    if options.ratelimit:
        limits = await ratelimit.run(
            options.ratelimit_limit,
            options.ratelimit_seconds,
            ratelimit.DEFAULT_WARMUP,
            options.ratelimit_dsn,
            options.data_dir,
        )
        targets = {**figures["targets"], **limits.pop("targets")}
        figures["method"]["ratelimit"] = limits.pop("method")
        figures.update(limits, targets=targets, targets_met=all(targets.values()))
    return figures


def _table(figures: dict[str, Any]) -> str:
    alone, contended = figures["victim_alone"], figures["victim_contended"]
    lines = [
        f"victim (nano 1K every {VICTIM_INTERVAL} s)  alone: p50 {alone['p50_ms']} ms, p99"
        f" {alone['p99_ms']} ms; contended: p50 {contended['p50_ms']} ms, p99"
        f" {contended['p99_ms']} ms ({figures['victim_p99_ratio']}x)",
        f"bulk images/s  alone: {figures['bulk_images_per_s_alone']}; contended:"
        f" {figures['bulk_images_per_s_contended']} (share {figures['bulk_throughput_share']});"
        f" offered {figures['bulk_alone']['offered_images_per_s']}/s alone"
        f" ({figures['bulk_offered_ratio']}x what it got"
        + ("" if figures["bulk_offered_at_least_2x"] else "; LESS THAN 2x: not saturated")
        + ")",
        f"router p99 alone/contended: reads {figures['router_read_p99_ms_alone']}/"
        f"{figures['router_read_p99_ms_contended']} ms, health"
        f" {figures['router_health_p99_ms_alone']}/{figures['router_health_p99_ms_contended']} ms",
        f"victim errors: {figures['victim_errors'] or 'none'}; bulk refused:"
        f" {figures['bulk_refused'] or 'none'}; router probe errors:"
        f" {figures['router_errors']}",
    ]
    if "ratelimit_accepted_per_s" in figures:
        lines.append(ratelimit.summary(figures))
    for name, met in figures["targets"].items():
        lines.append(f"{'met' if met else 'MISSED':<7} {name}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its figures (`targets_met` says whether the targets hold)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three phases, pooled")
    parser.add_argument(
        "--seconds",
        type=float,
        default=17.0,
        help="measured length of each phase per round (3 x 17 s: 102 sketches, so that p99 is"
        " not simply the slowest)",
    )
    parser.add_argument("--workers", type=int, default=2, help="TIERGEN_GENERATOR_WORKERS")
    parser.add_argument(
        "--interactive-workers",
        type=int,
        default=1,
        help="TIERGEN_GENERATOR_INTERACTIVE_WORKERS (0: no interactive lane)",
    )
    parser.add_argument(
        "--bulk-nice", type=int, default=10, help="TIERGEN_GENERATOR_BULK_NICE (0: none)"
    )
    parser.add_argument(
        "--data-dir", type=Path, help="where the databases, assets and logs go (default: tmp)"
    )
    parser.add_argument(
        "--no-ratelimit",
        dest="ratelimit",
        action="store_false",
        help="skip the quotas' exactness across two routers (needs PostgreSQL)",
    )
    parser.add_argument(
        "--ratelimit-limit",
        type=float,
        default=ratelimit.DEFAULT_LIMIT,
        help="requests per second of the rate-limited tenant (N)",
    )
    parser.add_argument(
        "--ratelimit-seconds",
        type=float,
        default=ratelimit.DEFAULT_SECONDS,
        help="measured seconds of the rate-limit run, after its warm-up",
    )
    parser.add_argument(
        "--ratelimit-dsn",
        default=ratelimit.DEFAULT_DSN,
        help="the PostgreSQL server of the rate-limit run (a schema is made and dropped)",
    )
    options = parser.parse_args(argv)
    if options.rounds < 1:
        parser.error("--rounds must be at least 1")
    if options.seconds <= 0 or options.ratelimit_seconds <= 0 or options.ratelimit_limit <= 0:
        parser.error("--seconds, --ratelimit-seconds and --ratelimit-limit must be positive")
    if options.data_dir is not None and not options.data_dir.is_dir():
        parser.error(f"--data-dir {options.data_dir} is not a directory")
    return report(run(options), options.json, _table)


if __name__ == "__main__":
    sys.exit(main())
