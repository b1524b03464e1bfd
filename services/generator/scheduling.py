"""Renders off the event loop: admission per tier, fair order between tenants, worker processes.

A tier runs at most `max_concurrency` renders at once and lets `queue_limit` more wait; one more
is refused at once with ResourceExhausted, unless a waiting render may be shed for it (bulk for
interactive work, a tenant over its weighted share for one under it). A render whose caller's
deadline would pass before it could start is refused at once too. Admitted renders wait for a
worker in fair order (`services.runtime.fairshare`): tenants by weight, accounts evenly,
interactive work first within a bound. Renders run in worker processes (rendering is
pure-Python and numpy work that holds the GIL, so threads would not use a second core):

- `TIERGEN_GENERATOR_WORKERS` shared workers take any render. They run at the niceness
  `TIERGEN_GENERATOR_BULK_NICE`, so the operating system prefers any other process of the
  service when both want a core.
- `TIERGEN_GENERATOR_INTERACTIVE_WORKERS` more (a lane) take only interactive renders, at normal
  priority. When every shared worker is busy with a multi-second pro render, a nano sketch still
  starts at once on the lane, and the kernel's scheduler time-slices it with the bulk renders in
  the lane's favour. A queue alone cannot do that: the sketch would wait for a render to end.
  An idle lane costs nothing, and bulk work keeps every core when no sketch is waiting.

A render a worker has started cannot be interrupted: when its caller goes away it runs to the
end in the background, keeping its worker (so no pool ever queues work of its own), and its
image is dropped. A render waiting for a worker is withdrawn.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from concurrent.futures import Executor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import structlog
from prometheus_client import Counter, Gauge, Histogram

from services.generator.picture import Backend, Picture
from services.generator.renderer import RenderResult, RenderSpec, render
from services.generator.tiers import Quality, RenderRequest, Tier, TierCatalogue
from services.runtime.collectors import executor_pids, forget_workers, track_workers
from services.runtime.errors import QuotaViolation, ResourceExhausted, Unavailable
from services.runtime.fairshare import (
    Claim,
    Dispatcher,
    FairOrder,
    FairShareSettings,
    GroupFull,
    GroupLimits,
    Lane,
    Requester,
    ServiceTimes,
    Ticket,
    Turn,
    Urgency,
)
from services.runtime.resolution import ImageSize
from services.runtime.workers import end_with_server

__all__ = [
    "BuiltinBackend",
    "RenderPool",
    "RenderScheduler",
    "Rendered",
    "observe_render",
    "prepare_worker",
    "run_render",
    "timed_turn",
    "work_kind",
]

_log = structlog.get_logger("tiergen.generator")

_RENDERS = Gauge(
    "tiergen_generator_renders",
    "Renders admitted to a tier, by state: running, or waiting for a turn (the queue depth).",
    ["tier", "state"],
)
_EXPECTED_WAIT = Gauge(
    "tiergen_generator_expected_wait_seconds",
    "Seconds a new render of a tenant with nothing queued would wait for a worker, by tier and"
    " urgency: the work ahead of it over the workers, from recent render times.",
    ["tier", "urgency"],
)
_REFUSED = Counter(
    "tiergen_generator_refused_total",
    "Renders refused at admission or shed while waiting, by tier, urgency and reason"
    " (QUEUE_FULL, WAIT_EXCEEDS_DEADLINE, SHED).",
    ["tier", "urgency", "reason"],
)
#: From a nano sketch's tenth of a second to a 4K pro render's minutes.
_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
_RENDER_SECONDS = Histogram(
    "tiergen_generator_render_seconds",
    "Time a render took on its backend (a worker process or a provider), by tier; renders that"
    " succeeded.",
    ["tier"],
    buckets=_SECONDS_BUCKETS,
)
_QUEUE_WAIT = Histogram(
    "tiergen_generator_queue_wait_seconds",
    "Time an admitted render waited for a worker before it started, by tier and urgency.",
    ["tier", "urgency"],
    buckets=_SECONDS_BUCKETS,
)


@contextlib.asynccontextmanager
async def timed_turn(ticket: Ticket) -> AsyncIterator[Turn]:
    """`ticket.turn()`, with the time it waited for its worker observed in
    `tiergen_generator_queue_wait_seconds` (renders shed or withdrawn meanwhile are not)."""
    queued = time.perf_counter()
    async with ticket.turn() as turn:
        claim = ticket.claim
        _QUEUE_WAIT.labels(claim.group, claim.urgency.value).observe(time.perf_counter() - queued)
        yield turn


def observe_render(tier: str, seconds: float) -> None:
    """Records a render of `tier` that succeeded in `seconds`."""
    _RENDER_SECONDS.labels(tier).observe(seconds)


@dataclass(frozen=True)
class Rendered:
    """A render's result and the time its worker spent painting and encoding it."""

    result: RenderResult
    seconds: float


def prepare_worker(server_pid: int, nice: int = 0) -> None:
    """Initializer of each worker process: ignores Ctrl-C, ends with its server `server_pid`,
    lowers its own priority by `nice`, and pays a first render's one-off costs before any caller
    does.

    A fresh process spends about 60 ms more on its first render (fonts, numpy, Pillow plugins);
    a tiny picture at every quality moves that cost to start-up.
    """
    # Ctrl-C reaches the whole process group; the server drains and stops its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    end_with_server(server_pid)
    if nice:
        os.nice(nice)
    for quality in Quality:
        render(RenderSpec('warm "up"', 0, 64, 64, quality, draw_text=True))


def run_render(spec: RenderSpec) -> Rendered:
    """Renders `spec` in a worker process and times it."""
    started = time.perf_counter()
    result = render(spec)
    return Rendered(result, time.perf_counter() - started)


class RenderPool:
    """Worker processes for renders, made by `start`; replaced whole when one of them dies."""

    def __init__(self, start: Callable[[], Executor]) -> None:
        self._start = start
        self._executor = start()
        track_workers(self)

    def worker_pids(self) -> Iterable[int]:
        """The pids of the pool's live worker processes, for their CPU and memory figures."""
        return executor_pids(self._executor)

    async def warm_up(self, workers: int) -> None:
        """Starts the `workers` processes now, so the first renders do not wait for them.

        Each submission finding no idle process starts one, and each process runs
        `prepare_worker` before its first task.
        """
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(loop.run_in_executor(self._executor, os.getpid) for _ in range(workers))
        )

    async def render(self, spec: RenderSpec, turn: Turn | None = None) -> Rendered:
        """Renders `spec` in a worker, holding `turn`'s worker until the render ends even if
        this await is cancelled; Unavailable when the worker died on the way."""
        executor = self._executor
        try:
            future = executor.submit(run_render, spec)
            if turn is not None:
                turn.hold_until(future)
            # A running render finishes unobserved when this await is cancelled.
            return await asyncio.wrap_future(future)
        except BrokenProcessPool:
            raise self._replace(executor) from None

    async def close(self) -> None:
        """Withdraws waiting jobs and stops the processes once their current renders end."""
        forget_workers(self)
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)

    def _replace(self, broken: Executor) -> Unavailable:
        """Starts a new pool in place of `broken` (once), and the error for the lost render.

        A process that dies (killed, out of memory) breaks its whole pool: every job on it fails.
        """
        if self._executor is broken:
            _log.error("a render worker process died; starting new worker processes")
            self._executor = self._start()
            broken.shutdown(wait=False, cancel_futures=True)
        return Unavailable(
            "the worker process running this render died; retry the request",
            retry_after=1.0,
            reason="WORKER_DIED",
        )


class BuiltinBackend:
    """The built-in renderer as a backend: `workers` shared worker processes in `pool`, and
    `interactive_workers` more in `lane` that take only interactive renders."""

    def __init__(
        self,
        pool: RenderPool,
        workers: int,
        lane: RenderPool | None = None,
        interactive_workers: int = 0,
    ) -> None:
        if (lane is None) != (interactive_workers == 0):
            raise ValueError("a lane needs its workers, and workers their lane")
        self.pool = pool
        self.workers = workers
        self.lane = lane
        self.interactive_workers = interactive_workers

    async def render(self, tier: Tier, request: RenderRequest) -> Picture:
        return await self.render_on(None, tier, request)

    async def render_on(self, turn: Turn | None, tier: Tier, request: RenderRequest) -> Picture:
        """Renders on the worker `turn` holds: the lane's when it is an interactive turn."""
        pool = self.pool
        if turn is not None and turn.lane is Lane.INTERACTIVE and self.lane is not None:
            pool = self.lane
        rendered = await pool.render(RenderSpec.for_request(tier, request), turn)
        result = rendered.result
        return Picture(
            result.image, result.width, result.height, rendered.seconds, drift=result.drift
        )

    async def warm_up(self) -> None:
        """Starts every worker process now, so the first renders do not wait for them."""
        await self.pool.warm_up(self.workers)
        if self.lane is not None:
            await self.lane.warm_up(self.interactive_workers)

    async def close(self) -> None:
        await self.pool.close()
        if self.lane is not None:
            await self.lane.close()


def work_kind(tier: str, size: ImageSize) -> str:
    """The kind of a render for its service-time estimate: its tier and size ("pro/4K")."""
    return f"{tier}/{size.value}"


class RenderScheduler:
    """The generator's queues: places in each tier, and the order renders get a worker in.

    Tiers on the built-in renderer share its workers (and its interactive lane); a tier on
    another backend (an HTTP provider, `instant`) is bounded only by its own `max_concurrency`,
    its renders still started in fair order within it.
    """

    def __init__(
        self,
        catalogue: TierCatalogue,
        backends: Mapping[str, Backend],
        fair_share: FairShareSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        fair_share = fair_share or FairShareSettings()
        self._tiers = {tier.name: tier for tier in catalogue}
        estimates = ServiceTimes(self._initial_estimate)
        self._dispatchers: dict[str, Dispatcher] = {}
        for backend_name in dict.fromkeys(tier.backend for tier in catalogue):
            backend = backends[backend_name]
            tiers = [tier for tier in catalogue if tier.backend == backend_name]
            shared: int | None = None
            lanes = 0
            if isinstance(backend, BuiltinBackend):
                shared, lanes = backend.workers, backend.interactive_workers
            dispatcher = Dispatcher(
                order=FairOrder(fair_share.weights, fair_share.interactive_burst),
                groups={
                    tier.name: GroupLimits(
                        places=tier.max_concurrency + tier.queue_limit,
                        running=tier.max_concurrency,
                    )
                    for tier in tiers
                },
                estimates=estimates,
                shared_workers=shared,
                interactive_workers=lanes,
                subject="the generator",
                clock=clock,
                on_refusal=_count_refusal,
            )
            for tier in tiers:
                self._dispatchers[tier.name] = dispatcher
        for tier in catalogue:
            self._export(tier)

    def dispatcher(self, tier: str) -> Dispatcher:
        """The dispatcher of the workers `tier` renders on."""
        return self._dispatchers[tier]

    def admit(
        self, tier: Tier, size: ImageSize, requester: Requester, remaining: float | None
    ) -> Ticket:
        """A place in `tier` for a render at `size`, `remaining` seconds before its caller's
        deadline; ResourceExhausted when the tier is full or the render could not start in time.

        A full tier's retry hint is its expected latency at `size`: a place frees when a
        running render ends, within about one render's time.
        """
        dispatcher = self._dispatchers[tier.name]
        work = work_kind(tier.name, size)
        claim = requester.claim(tier.name, dispatcher.estimate(work), work)
        try:
            return dispatcher.admit(claim, remaining)
        except GroupFull as full:
            retry_after = tier.expected_latency_seconds[size]
            description = (
                f"tier {tier.name!r} is busy: {tier.max_concurrency} render(s) running and"
                f" {tier.queue_limit} waiting, the most it takes"
            )
            raise ResourceExhausted(
                f"{description}; retry in {retry_after:g} s",
                retry_after=retry_after,
                violations=[QuotaViolation(f"tier:{tier.name}", description)],
                reason="QUEUE_FULL",
                metadata={
                    "tier": tier.name,
                    "max_concurrency": str(tier.max_concurrency),
                    "queue_limit": str(tier.queue_limit),
                    "running": str(full.running),
                    "waiting": str(full.waiting),
                },
            ) from None

    def expected_wait(self, tier: str, urgency: Urgency, tenant: str = "") -> float:
        """Seconds a new render of `tenant` in `tier` at `urgency` would wait for a worker."""
        return self._dispatchers[tier].expected_wait(tenant, urgency, tier)

    def _initial_estimate(self, work: str) -> float:
        """The catalogue's expected latency of a kind of render, until one has run."""
        name, _, size = work.partition("/")
        tier = self._tiers.get(name)
        if tier is None:
            return 1.0
        latencies = {key.value: seconds for key, seconds in tier.expected_latency_seconds.items()}
        return latencies.get(size, max(latencies.values(), default=1.0))

    def _export(self, tier: Tier) -> None:
        dispatcher = self._dispatchers[tier.name]
        name = tier.name

        def running() -> int:
            return dispatcher.running(name)

        def waiting() -> int:
            return dispatcher.admitted(name) - dispatcher.running(name)

        _RENDERS.labels(name, "running").set_function(running)
        _RENDERS.labels(name, "waiting").set_function(waiting)
        for urgency in Urgency:
            _EXPECTED_WAIT.labels(name, urgency.value).set_function(
                functools.partial(dispatcher.expected_wait, "", urgency, name)
            )


def _count_refusal(claim: Claim, reason: str) -> None:
    _REFUSED.labels(claim.group, claim.urgency.value, reason).inc()
