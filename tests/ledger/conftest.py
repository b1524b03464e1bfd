"""Ledger test fixtures: a clock tests can move, a fresh ledger on SQLite and on PostgreSQL, the
ledger's gRPC server in this process, and the ledger service as a real child process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2_grpc
from tiergen.ledger.v1 import ledger_pb2_grpc

from services.ledger.ledger import Ledger
from services.ledger.migrations import SCHEMA as LEDGER_SCHEMA
from services.ledger.model import Clock
from services.ledger.server import create_server
from services.ledger.settings import LedgerSettings
from services.runtime.migrations import upgrade
from tests.ledger.served import Served, ServeFactory
from tests.postgres import Schemas, require_postgres, with_search_path
from tests.tls import session_pki

#: Monday of ISO week 2026-W48, mid-morning.
START = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
#: The tenant of the tests that are not about tenants: not the default one, so that nothing
#: passes only because a tenant was dropped on the way to the database.
TENANT = "acme"


class ManualClock:
    """A clock that only moves when a test moves it."""

    def __init__(self, start: datetime = START) -> None:
        self._now = start

    def now(self) -> datetime:
        return self._now

    def advance(self, **delta: float) -> None:
        self._now += timedelta(**delta)


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """The test server's DSN; skips (fails under CI=true) when it cannot be reached."""
    return require_postgres("the ledger's PostgreSQL tests")


class LedgerHarness:
    """One fresh ledger database on one store, and raw access to it for tampering."""

    def __init__(self, kind: str, dsn: str, clock: ManualClock, application_name: str = "") -> None:
        self.kind = kind
        self.dsn = dsn
        self.clock = clock
        self.application_name = application_name
        self._opened: list[Ledger] = []

    def settings(self, **overrides: Any) -> LedgerSettings:
        return replace(LedgerSettings(dsn=self.dsn, pool_size=4), **overrides)

    async def open(self, clock: Clock | None = None, **overrides: Any) -> Ledger:
        """A ledger on this database; settings default to the store's, with `overrides`."""
        ledger = await Ledger.open(self.settings(**overrides), clock or self.clock)
        self._opened.append(ledger)
        return ledger

    async def execute_raw(self, *statements: str) -> list[tuple[Any, ...]]:
        """Run SQL behind the ledger's back on one connection; the last statement's rows."""
        rows: list[tuple[Any, ...]] = []
        if self.kind == "sqlite":
            path = LedgerSettings(dsn=self.dsn).sqlite_path
            assert path is not None
            sqlite_connection = sqlite3.connect(path, isolation_level=None)
            try:
                for statement in statements:
                    rows = [tuple(row) for row in sqlite_connection.execute(statement)]
            finally:
                sqlite_connection.close()
            return rows
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as connection:
            for statement in statements:
                cursor = await connection.execute(statement)
                rows = list(await cursor.fetchall()) if cursor.description else []
        return rows

    @contextlib.asynccontextmanager
    async def account_locked(self, account_id: str, tenant: str = TENANT) -> AsyncIterator[None]:
        """Hold the lock a write to the account needs (SQLite: the database's write lock)."""
        if self.kind == "sqlite":
            path = LedgerSettings(dsn=self.dsn).sqlite_path
            assert path is not None
            locker = sqlite3.connect(path, isolation_level=None)
            try:
                locker.execute("BEGIN IMMEDIATE")
                yield
            finally:
                locker.close()
            return
        async with await psycopg.AsyncConnection.connect(self.dsn) as pg_connection:
            await pg_connection.execute(
                "SELECT 1 FROM accounts WHERE tenant = %s AND account_id = %s FOR UPDATE",
                (tenant, account_id),
            )
            yield
            await pg_connection.rollback()

    async def close(self) -> None:
        for ledger in self._opened:
            await ledger.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(scope="session")
def postgres_schemas(postgres_dsn: str) -> Iterator[Schemas]:
    schemas = Schemas(postgres_dsn, "ledger_test")
    yield schemas
    schemas.drop_all()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def harness(
    request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock
) -> AsyncIterator[LedgerHarness]:
    """A fresh, empty ledger database on each store in turn."""
    if request.param == "sqlite":
        harness = LedgerHarness("sqlite", f"sqlite:///{tmp_path / 'ledger.db'}", clock)
    else:
        harness = _postgres_harness(request.getfixturevalue("postgres_schemas"), clock)
    yield harness
    await harness.close()


@pytest.fixture
async def postgres_harness(
    postgres_schemas: Schemas, clock: ManualClock
) -> AsyncIterator[LedgerHarness]:
    """A fresh, empty ledger database on PostgreSQL only."""
    harness = _postgres_harness(postgres_schemas, clock)
    yield harness
    await harness.close()


def _postgres_harness(schemas: Schemas, clock: ManualClock) -> LedgerHarness:
    name = schemas.create()
    dsn = with_search_path(name, application_name=name)
    # On PostgreSQL the schema is an operator's step (`tiergen migrate`), never the ledger's.
    upgrade(LEDGER_SCHEMA, dsn)
    return LedgerHarness("postgres", dsn, clock, name)


@pytest.fixture
async def ledger(harness: LedgerHarness) -> Ledger:
    return await harness.open()


@pytest.fixture
async def serve(harness: LedgerHarness) -> AsyncIterator[ServeFactory]:
    """Starts the real ledger server on the test database: `serve(clock=None, **overrides)`."""
    started: list[tuple[Any, grpc.aio.Channel]] = []

    async def start(clock: Clock | None = None, **overrides: Any) -> Served:
        settings = harness.settings(server=session_pki().server("ledger"), **overrides)
        server, port = await create_server(settings, clock)
        await server.start()
        channel = session_pki().channel(f"127.0.0.1:{port}")
        started.append((server, channel))
        return Served(
            ledger_pb2_grpc.LedgerServiceStub(channel),
            health_pb2_grpc.HealthStub(channel),
            harness,
        )

    try:
        yield start
    finally:
        for server, channel in started:
            await channel.close()
            await server.stop(0)


class LedgerProcess:
    """The ledger service as a child process (`python -m services.ledger`) on a free port.

    Each start gets a new port, so `address` changes across restarts.
    """

    #: Longest wait for the service to serve, and for it to exit after SIGTERM.
    start_seconds = 30.0
    stop_seconds = 20.0

    def __init__(self, dsn: str, run_dir: Path, settings: dict[str, str]) -> None:
        self.dsn = dsn
        self.address = ""
        self.starts = 0
        self._run_dir = run_dir
        self._log = run_dir / "ledger.log"
        self._env = {
            **os.environ,
            **session_pki().env("ledger"),
            "TIERGEN_HOST": "127.0.0.1",
            "TIERGEN_PORT": "0",
            "TIERGEN_LEDGER_DSN": dsn,
            "TIERGEN_LOG_LEVEL": "warning",
            **settings,
        }
        self._process: asyncio.subprocess.Process | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def start(self) -> str:
        """Start the service and wait until it serves; its address."""
        assert not self.running, "already running"
        ready = self._run_dir / f"ready-{self.starts}.addr"
        self.starts += 1
        with self._log.open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "services.ledger",
                env={**self._env, "TIERGEN_READY_FILE": str(ready)},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        self._process = process
        deadline = time.monotonic() + self.start_seconds
        while not ready.exists():
            if process.returncode is not None:
                raise AssertionError(f"the ledger exited with {process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the ledger did not serve in time:\n{self.log()}")
            await asyncio.sleep(0.02)
        self.address = ready.read_text().strip()
        return self.address

    async def kill(self) -> None:
        """SIGKILL: no drain, no stop hooks; whatever was in flight is cut off."""
        assert self._process is not None
        self._process.send_signal(signal.SIGKILL)
        await self._process.wait()

    async def stop(self) -> int | None:
        """SIGTERM and wait (then SIGKILL); the exit status, None if it never started."""
        process = self._process
        if process is None:
            return None
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), self.stop_seconds)
            except TimeoutError:
                process.kill()
                await process.wait()
        return process.returncode

    def log(self) -> str:
        return self._log.read_text(errors="replace")[-4000:] if self._log.exists() else ""


LedgerProcesses = Callable[..., LedgerProcess]


@pytest.fixture
async def ledger_processes(tmp_path: Path) -> AsyncIterator[LedgerProcesses]:
    """Makes ledger processes (`make(dsn, **TIERGEN_* settings)`); stops them all afterwards."""
    made: list[LedgerProcess] = []

    def make(dsn: str, **settings: str) -> LedgerProcess:
        run_dir = tmp_path / f"ledger-process-{len(made)}"
        run_dir.mkdir()
        process = LedgerProcess(dsn, run_dir, settings)
        made.append(process)
        return process

    yield make
    for process in made:
        await process.stop()
