"""Gauges the router reads when scraped: each breaker's state, and the connections of the job
database on SQLite and on PostgreSQL (in use, idle, callers waiting)."""

from __future__ import annotations

import asyncio
import gc
import threading
import uuid
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from services.router.downstream.breaker import CircuitBreaker
from services.router.jobs.databases import Mode, PostgresDatabase, Script, SqliteDatabase
from services.runtime.errors import InvalidArgument, Unavailable
from tests.postgres import require_postgres


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _state(backend: str) -> float | None:
    return REGISTRY.get_sample_value("tiergen_router_breaker_state", {"backend": backend})


async def _fail(error: Exception) -> None:
    raise error


async def _succeed() -> str:
    return "image"


async def test_the_breaker_state_is_exported_closed_open_half_open_and_closed_again():
    tier = f"tier-{uuid.uuid4().hex[:8]}"
    clock = Clock()
    breaker = CircuitBreaker(f"generator/{tier}", threshold=2, cooldown_seconds=10, clock=clock)
    assert _state(tier) == 0

    with pytest.raises(Unavailable):
        await breaker.call(lambda: _fail(Unavailable("down")))
    assert _state(tier) == 0  # one failure short of the threshold
    with pytest.raises(InvalidArgument):
        await breaker.call(lambda: _fail(InvalidArgument("the request's fault")))
    with pytest.raises(Unavailable):
        await breaker.call(lambda: _fail(Unavailable("down")))
    assert _state(tier) == 2

    clock.now += 10  # the cool-down passes with no call at all
    assert _state(tier) == 1
    assert await breaker.call(_succeed) == "image"
    assert _state(tier) == 0


async def test_a_backends_breakers_in_one_process_report_the_worst_state():
    clock = Clock()
    name = f"backend-{uuid.uuid4().hex[:8]}"
    healthy = CircuitBreaker(name, threshold=1, clock=clock)
    failing = CircuitBreaker(name, threshold=1, clock=clock)
    with pytest.raises(Unavailable):
        await failing.call(lambda: _fail(Unavailable("down")))

    assert (healthy.state, _state(name)) == ("closed", 2)
    del failing
    gc.collect()  # only live breakers report
    assert _state(name) == 0


def _pool(store: str, state: str | None = None) -> float:
    if state is None:
        return REGISTRY.get_sample_value("tiergen_db_pool_waiting", {"store": store}) or 0.0
    labels = {"store": store, "state": state}
    return REGISTRY.get_sample_value("tiergen_db_pool_connections", labels) or 0.0


def _figures() -> tuple[float, float, float]:
    return _pool("jobs", "in_use"), _pool("jobs", "idle"), _pool("jobs")


def _delta(after: tuple[float, ...], before: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(a - b for a, b in zip(after, before, strict=True))


async def test_sqlite_reports_its_one_connection_in_use_and_the_scripts_waiting(tmp_path: Path):
    before = _figures()
    database = await SqliteDatabase.open(tmp_path / "jobs.db", lambda: None)
    entered, release = threading.Event(), threading.Event()

    def blocking() -> Script[None]:
        entered.set()
        release.wait(30)
        return None
        yield  # a script: a generator, here of no statement

    def quick() -> Script[None]:
        return None
        yield

    try:
        assert _delta(_figures(), before) == (0, 1, 0)
        running = asyncio.create_task(database.run(Mode.READ, blocking))
        await asyncio.to_thread(entered.wait, 30)
        queued = asyncio.create_task(database.run(Mode.READ, quick))
        await asyncio.sleep(0)  # the second script is submitted behind the first

        assert _delta(_figures(), before) == (1, 0, 1)

        release.set()
        await asyncio.gather(running, queued)
        assert _delta(_figures(), before) == (0, 1, 0)
    finally:
        release.set()
        await database.close()
    assert _delta(_figures(), before) == (0, 0, 0)


async def test_postgresql_reports_the_pools_connections_and_callers_waiting():
    dsn = require_postgres("the job database's pool figures")
    before = _figures()
    database = await PostgresDatabase.open(dsn, pool_size=1, timeout_seconds=30)
    pool = database._pool
    try:
        assert _delta(_figures(), before) == (0, 1, 0)
        async with pool.connection():
            assert _delta(_figures(), before) == (1, 0, 0)
            waiting = asyncio.create_task(_borrow(pool))
            for _ in range(1000):
                if _pool("jobs") > before[2]:
                    break
                await asyncio.sleep(0)
            assert _delta(_figures(), before) == (1, 0, 1)
        await waiting
        assert _delta(_figures(), before) == (0, 1, 0)
    finally:
        await database.close()
    assert _delta(_figures(), before) == (0, 0, 0)


async def _borrow(pool) -> None:
    async with pool.connection():
        pass
