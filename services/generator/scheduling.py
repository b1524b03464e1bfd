"""Renders off the event loop: per-tier admission with a bounded queue, and the worker processes.

A tier runs at most `max_concurrency` renders at once and lets `queue_limit` more wait; one more
is refused at once with ResourceExhausted. Admitted renders run in a pool of worker processes
(rendering is pure-Python and numpy work that holds the GIL, so threads would not use a second
core). A render a worker has started cannot be interrupted: when its caller goes away it runs
to the end in the background and its image is dropped; one no worker has taken yet is withdrawn.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import structlog
from prometheus_client import Gauge

from services.generator.picture import Picture
from services.generator.renderer import RenderResult, RenderSpec, render
from services.generator.tiers import Quality, RenderRequest, Tier
from services.runtime.errors import QuotaViolation, ResourceExhausted, Unavailable
from services.runtime.resolution import ImageSize
from services.runtime.workers import end_with_server

__all__ = [
    "BuiltinBackend",
    "RenderPool",
    "Rendered",
    "TierQueue",
    "prepare_worker",
    "run_render",
]

_log = structlog.get_logger("tiergen.generator")

_RENDERS = Gauge(
    "tiergen_generator_renders",
    "Renders admitted to a tier, by state: running, or waiting for a turn (the queue depth).",
    ["tier", "state"],
)


@dataclass(frozen=True)
class Rendered:
    """A render's result and the time its worker spent painting and encoding it."""

    result: RenderResult
    seconds: float


def prepare_worker(server_pid: int) -> None:
    """Initializer of each worker process: ignores Ctrl-C, ends with its server `server_pid`, and
    pays a first render's one-off costs before any caller does.

    A fresh process spends about 60 ms more on its first render (fonts, numpy, Pillow plugins);
    a tiny picture at every quality moves that cost to start-up.
    """
    # Ctrl-C reaches the whole process group; the server drains and stops its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    end_with_server(server_pid)
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

    async def warm_up(self, workers: int) -> None:
        """Starts the `workers` processes now, so the first renders do not wait for them.

        Each submission finding no idle process starts one, and each process runs
        `prepare_worker` before its first task.
        """
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(loop.run_in_executor(self._executor, os.getpid) for _ in range(workers))
        )

    async def render(self, spec: RenderSpec) -> Rendered:
        """Renders `spec` in a worker; Unavailable when the worker died on the way."""
        executor = self._executor
        try:
            # Cancelling this await withdraws the job if no worker has taken it yet
            # (wrap_future cancels the job's future); a running render finishes unobserved.
            return await asyncio.wrap_future(executor.submit(run_render, spec))
        except BrokenProcessPool:
            raise self._replace(executor) from None

    async def close(self) -> None:
        """Withdraws waiting jobs and stops the processes once their current renders end."""
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
    """The built-in renderer as a backend: each request rendered on the pool's workers."""

    def __init__(self, pool: RenderPool) -> None:
        self.pool = pool

    async def render(self, tier: Tier, request: RenderRequest) -> Picture:
        rendered = await self.pool.render(RenderSpec.for_request(tier, request))
        result = rendered.result
        return Picture(
            result.image, result.width, result.height, rendered.seconds, drift=result.drift
        )

    async def close(self) -> None:
        await self.pool.close()


class TierQueue:
    """Admission to one tier: `max_concurrency` renders at once and `queue_limit` waiting."""

    def __init__(self, tier: Tier) -> None:
        self.tier = tier
        self._turns = asyncio.Semaphore(tier.max_concurrency)
        self._admitted = 0
        self._running = 0
        _RENDERS.labels(tier.name, "running").set_function(lambda: self._running)
        _RENDERS.labels(tier.name, "waiting").set_function(lambda: self._admitted - self._running)

    @property
    def capacity(self) -> int:
        """Renders the tier holds at once, running and waiting."""
        return self.tier.max_concurrency + self.tier.queue_limit

    @contextlib.contextmanager
    def place(self, size: ImageSize) -> Iterator[None]:
        """Holds a place in the tier for a render at `size`; ResourceExhausted when none is left.

        The refusal's retry hint is the tier's expected latency at `size`: a place frees when
        a running render ends, within about one render's time.
        """
        tier = self.tier
        if self._admitted >= self.capacity:
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
                },
            )
        self._admitted += 1
        try:
            yield
        finally:
            self._admitted -= 1

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Waits until a placed render may run, and holds its running slot."""
        async with self._turns:
            self._running += 1
            try:
                yield
            finally:
                self._running -= 1
