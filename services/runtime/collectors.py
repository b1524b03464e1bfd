"""Figures read when Prometheus scrapes, not counted as things happen: database pools, worker
processes, and figures that only a query on the service's event loop can give.

Each is a collector on the default registry that the objects it reports on join when they open
and leave when they close (or are collected). The scrape runs on the metrics endpoint's thread,
so a collector only reads what is safe to read from there: the pool's own statistics, files
under /proc, or a coroutine handed to the event loop with a bound on its wait.

Worker processes: the generator and the upscaler render in process pools, whose CPU and memory
the process's own `process_*` figures do not include. They are reported per worker by the
parent, from /proc/<pid>/stat and /proc/<pid>/statm of each live worker
(`tiergen_worker_cpu_seconds_total{worker}`, `tiergen_worker_resident_memory_bytes{worker}`,
`worker` the pid), rather than by prometheus_client's multiprocess mode. That mode needs its
directory set before the first import of the library in every process, wiped at each start,
and changes what every metric means: gauges need a merge mode each, callback gauges
(`set_function`, which the queue gauges use) are not supported at all, and the workers would
have to report their own figures. Reading /proc from the parent needs nothing of the workers,
shows a worker that is stuck or swelling as itself, and a worker that died or was replaced just
stops being reported. The cost: Linux only (elsewhere no worker figures are exported).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog
from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = [
    "LoopGauge",
    "PoolFigures",
    "PooledStore",
    "WorkerPool",
    "executor_pids",
    "forget_pool",
    "forget_workers",
    "psycopg_pool_figures",
    "read_worker",
    "track_pool",
    "track_workers",
]

_log = structlog.get_logger("tiergen.metrics")


@dataclass(frozen=True)
class PoolFigures:
    """A database pool at one moment: connections lent out, connections free, callers waiting."""

    in_use: int
    idle: int
    waiting: int


class PooledStore(Protocol):
    """Something holding database connections that can say how they are used."""

    def pool_figures(self) -> PoolFigures: ...


def psycopg_pool_figures(pool: Any) -> PoolFigures:
    """The figures of a psycopg_pool pool, from its own statistics."""
    stats = pool.get_stats()
    size = int(stats.get("pool_size", 0))
    available = int(stats.get("pool_available", 0))
    return PoolFigures(
        in_use=max(0, size - available),
        idle=available,
        waiting=int(stats.get("requests_waiting", 0)),
    )


class _Tracked:
    """Objects reported on, weakly held, each with its label; safe to read from another thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()

    def add(self, item: Any, label: str) -> None:
        with self._lock:
            self._objects[item] = label

    def discard(self, item: Any) -> None:
        with self._lock:
            self._objects.pop(item, None)

    def items(self) -> list[tuple[Any, str]]:
        with self._lock:
            return [(item, label) for item, label in list(self._objects.items())]


class _PoolCollector(Collector):
    """`tiergen_db_pool_connections{store,state}` and `tiergen_db_pool_waiting{store}`, summed
    over the pools of one store in this process (the job store and the key store both draw on
    the router's database)."""

    def __init__(self) -> None:
        self.pools = _Tracked()

    def describe(self) -> Iterable[Any]:
        return self._families()[:2]

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "tiergen_db_pool_connections",
                "Database connections of the service's pools, by store and state (in_use: lent"
                " to a statement; idle: open and free).",
                labels=["store", "state"],
            ),
            GaugeMetricFamily(
                "tiergen_db_pool_waiting",
                "Callers waiting for a database connection, by store.",
                labels=["store"],
            ),
        )

    def collect(self) -> Iterator[Any]:
        totals: dict[str, list[int]] = {}
        for pool, store in self.pools.items():
            try:
                figures = pool.pool_figures()
            except Exception:
                _log.exception("could not read a database pool's figures", store=store)
                continue
            total = totals.setdefault(store, [0, 0, 0])
            total[0] += figures.in_use
            total[1] += figures.idle
            total[2] += figures.waiting
        connections, waiting = self._families()
        for store, (in_use, idle, queued) in sorted(totals.items()):
            connections.add_metric([store, "in_use"], in_use)
            connections.add_metric([store, "idle"], idle)
            waiting.add_metric([store], queued)
        yield connections
        yield waiting


_POOLS = _PoolCollector()
REGISTRY.register(_POOLS)


def track_pool(store: str, pool: PooledStore) -> None:
    """Reports `pool`'s figures under `store` ("jobs", "ledger") until `forget_pool`."""
    _POOLS.pools.add(pool, store)


def forget_pool(pool: PooledStore) -> None:
    _POOLS.pools.discard(pool)


class WorkerPool(Protocol):
    """Worker processes whose figures their parent reports."""

    def worker_pids(self) -> Iterable[int]: ...


def executor_pids(executor: Any) -> list[int]:
    """The pids of a ProcessPoolExecutor's live worker processes (none for any other executor,
    or once it has shut down).

    Read from its `_processes` (pid to process), the one record of them the standard library
    keeps; it is copied at once, as the pool's own thread may change it meanwhile.
    """
    processes = getattr(executor, "_processes", None)
    for _ in range(3):
        try:
            return [int(pid) for pid in list(processes or ())]
        except RuntimeError:  # changed size while being copied
            continue
    return []


@dataclass(frozen=True)
class WorkerFigures:
    """What /proc says of one worker process."""

    cpu_seconds: float
    resident_bytes: int


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def read_worker(pid: int, proc: Path = Path("/proc")) -> WorkerFigures | None:
    """CPU time (user and system) and resident memory of process `pid`; None when it is gone."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
        statm = (proc / str(pid) / "statm").read_text()
    except OSError:
        return None
    # The command name, in parentheses, may hold spaces and parentheses itself: the fields
    # that follow are counted from the last ')'. utime and stime are fields 14 and 15.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        ticks = int(fields[11]) + int(fields[12])
        resident_pages = int(statm.split()[1])
    except (IndexError, ValueError):
        return None
    return WorkerFigures(ticks / _CLOCK_TICKS, resident_pages * _PAGE_BYTES)


class _WorkerCollector(Collector):
    """`tiergen_worker_cpu_seconds_total{worker}` and `tiergen_worker_resident_memory_bytes
    {worker}` of every live worker of the tracked pools."""

    def __init__(self) -> None:
        self.pools = _Tracked()

    def describe(self) -> Iterable[Any]:
        return self._families()

    def _families(self) -> tuple[CounterMetricFamily, GaugeMetricFamily]:
        return (
            CounterMetricFamily(
                "tiergen_worker_cpu_seconds",
                "CPU time (user and system) of a worker process, by worker (its pid).",
                labels=["worker"],
            ),
            GaugeMetricFamily(
                "tiergen_worker_resident_memory_bytes",
                "Resident memory of a worker process, by worker (its pid).",
                labels=["worker"],
            ),
        )

    def collect(self) -> Iterator[Any]:
        pids: set[int] = set()
        for pool, _ in self.pools.items():
            try:
                pids.update(pool.worker_pids())
            except Exception:
                _log.exception("could not list a pool's worker processes")
        cpu, memory = self._families()
        for pid in sorted(pids):
            figures = read_worker(pid)
            if figures is None:
                continue
            cpu.add_metric([str(pid)], figures.cpu_seconds)
            memory.add_metric([str(pid)], figures.resident_bytes)
        yield cpu
        yield memory


_WORKERS = _WorkerCollector()
REGISTRY.register(_WORKERS)


def track_workers(pool: WorkerPool) -> None:
    """Reports the worker processes of `pool` until `forget_workers`."""
    _WORKERS.pools.add(pool, "")


def forget_workers(pool: WorkerPool) -> None:
    _WORKERS.pools.discard(pool)


class LoopGauge(Collector):
    """A gauge read when scraped by a coroutine on the event loop of the object that reports it
    (a count in the service's database), waiting at most `timeout` seconds for it.

    The most recently tracked object reports (one service of a kind per process). A scrape
    whose read fails or takes too long leaves the gauge out of that scrape, with a log line.
    """

    def __init__(self, name: str, documentation: str, *, timeout: float = 2.0) -> None:
        self._name = name
        self._documentation = documentation
        self._timeout = timeout
        self._lock = threading.Lock()
        self._readers: dict[int, tuple[asyncio.AbstractEventLoop, Callable[[], Awaitable[float]]]]
        self._readers = {}
        REGISTRY.register(self)

    def track(self, owner: object, read: Callable[[], Awaitable[float]]) -> None:
        """Reads the gauge with `read` on the running loop until `forget(owner)`."""
        loop = asyncio.get_running_loop()
        with self._lock:
            self._readers.pop(id(owner), None)
            self._readers[id(owner)] = (loop, read)

    def forget(self, owner: object) -> None:
        with self._lock:
            self._readers.pop(id(owner), None)

    def describe(self) -> Iterable[Any]:
        return [GaugeMetricFamily(self._name, self._documentation)]

    def collect(self) -> Iterator[Any]:
        with self._lock:
            if not self._readers:
                return
            loop, read = list(self._readers.values())[-1]
        with contextlib.suppress(RuntimeError):
            if asyncio.get_running_loop() is loop:
                # Scraped on the loop itself (a test calling the registry): waiting would
                # block the very loop that must answer.
                return
        try:
            future = asyncio.run_coroutine_threadsafe(_awaited(read), loop)
        except RuntimeError:
            return  # the loop has closed
        try:
            value = future.result(self._timeout)
        except Exception as error:
            future.cancel()
            _log.warning("could not read a gauge", metric=self._name, error=repr(error))
            return
        yield GaugeMetricFamily(self._name, self._documentation, value=value)


async def _awaited(read: Callable[[], Awaitable[float]]) -> float:
    return await read()
