"""The two databases under the job store: how each connects, runs a script of statements in a
transaction, retries, and turns driver errors into the service's errors.

The store writes each operation once, as a *script*: a generator that yields the statements
(`Step`s) it needs and receives each one's rows, deciding what comes next from them. A
database runs the whole script where its driver lives:

- `SqliteDatabase` on the one thread that owns the sqlite3 connection, so a call costs one hop
  off the event loop however many statements it takes. A hop is about 28 us of CPU here
  (`run_in_executor` on uvloop, measured); one per statement would add a dozen to each
  Generate, some 0.3 ms, about 5% of the router's CPU per request.
  Writes are `BEGIN IMMEDIATE` transactions; only a `durable` one waits for the disk.
- `PostgresDatabase` on a pooled psycopg connection in autocommit mode, each statement its own
  transaction unless the script is `ATOMIC`; conflicts between replicas are retried here, with
  the script run again from its start.

The cost of the scripts: a store method reads as a generator, with `yield` where it would
`await`, and the rows it receives are untyped.
"""

from __future__ import annotations

import asyncio
import enum
import random
import sqlite3
from collections.abc import Callable, Generator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors
from psycopg.rows import DictRow, dict_row
from sqlalchemy.engine import Dialect

from services.router.jobs.queries import POSTGRESQL, SQLITE, Query
from services.runtime.collectors import PoolFigures, forget_pool, psycopg_pool_figures, track_pool
from services.runtime.errors import Aborted, Internal, InvalidArgument, TiergenError, Unavailable

__all__ = [
    "Database",
    "Fetch",
    "Mode",
    "PostgresDatabase",
    "Script",
    "SqliteDatabase",
    "Step",
]

_T = TypeVar("_T")
_PgConnection = psycopg.AsyncConnection[DictRow]
#: The `store` label of the router database's pools in `tiergen_db_pool_*`.
_STORE = "jobs"


class Fetch(enum.Enum):
    """What a step gives back to its script."""

    #: Nothing (None).
    NOTHING = enum.auto()
    #: The first row, or None.
    ONE = enum.auto()
    #: Every row.
    ALL = enum.auto()
    #: Runs once per parameter set; the first row of each (INSERT ... RETURNING of many rows).
    EACH = enum.auto()


@dataclass(frozen=True, slots=True)
class Step:
    """One statement of a script, with its parameters (a sequence of them for `Fetch.EACH`)."""

    query: Query
    params: Mapping[str, Any] | Sequence[Mapping[str, Any]]
    fetch: Fetch

    @classmethod
    def one(cls, query: Query, **params: Any) -> Step:
        """The statement's first row, or None."""
        return cls(query, params, Fetch.ONE)

    @classmethod
    def all(cls, query: Query, **params: Any) -> Step:
        """Every row of the statement."""
        return cls(query, params, Fetch.ALL)

    @classmethod
    def run(cls, query: Query, **params: Any) -> Step:
        """The statement, for what it does."""
        return cls(query, params, Fetch.NOTHING)


#: A store operation: yields steps, receives each one's rows, returns the operation's answer.
Script = Generator[Step, Any, _T]


class Mode(enum.Enum):
    """How a script's statements are grouped into transactions."""

    #: Reads only: no transaction of its own on either database.
    READ = enum.auto()
    #: Writes each safe on its own (guarded UPDATEs): one transaction on SQLite, where it also
    #: serialises the script's reads with its writes; each statement alone on PostgreSQL.
    WRITE = enum.auto()
    #: Writes that stand or fall together: one transaction on both databases.
    ATOMIC = enum.auto()


class Database(Protocol):
    """Where the job store's scripts run."""

    @property
    def dialect(self) -> Dialect:
        """The SQLAlchemy dialect the statements are compiled for."""
        ...

    async def run(
        self, mode: Mode, script: Callable[[], Script[_T]], *, durable: bool = False
    ) -> _T:
        """The answer of a new run of `script`; `durable` when its commit must survive a power
        loss before the caller hears of it. RuntimeError once closed."""
        ...

    async def close(self) -> None:
        """Release the connections; the database refuses work afterwards."""
        ...


class SqliteDatabase:
    """A SQLite file (WAL) owned by one connection on one dedicated thread.

    Only a durable commit waits for the disk (`synchronous=FULL`, an fsync: up to several ms on
    a shared disk). Every other commit is `synchronous=NORMAL`: atomic and kept through a
    crash of the process, made durable by the next FULL commit, and possibly lost with a power
    loss.
    """

    def __init__(self, executor: ThreadPoolExecutor, connection: sqlite3.Connection) -> None:
        self._executor = executor
        self._connection: sqlite3.Connection | None = connection
        #: Scripts submitted and not yet finished: one runs, the rest wait for the thread.
        self._in_flight = 0
        track_pool(_STORE, self)

    @property
    def dialect(self) -> Dialect:
        return SQLITE

    def pool_figures(self) -> PoolFigures:
        """The one connection in use while a script runs, and the scripts waiting for it."""
        in_flight = self._in_flight if self._connection is not None else 0
        in_use = min(1, in_flight)
        idle = 0 if self._connection is None else 1 - in_use
        return PoolFigures(in_use=in_use, idle=idle, waiting=max(0, in_flight - 1))

    @classmethod
    async def open(cls, path: Path, prepare: Callable[[], object]) -> SqliteDatabase:
        """Run `prepare` (bringing the schema up to date), then connect, on the database's own
        thread."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="job-store")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(executor, prepare)
            connection = await loop.run_in_executor(executor, _connect_sqlite, path)
        except BaseException:
            executor.shutdown(wait=True)
            raise
        return cls(executor, connection)

    async def run(
        self, mode: Mode, script: Callable[[], Script[_T]], *, durable: bool = False
    ) -> _T:
        if self._connection is None:
            raise RuntimeError("the job store is closed")
        loop = asyncio.get_running_loop()
        self._in_flight += 1
        try:
            return await loop.run_in_executor(self._executor, self._run, mode, script, durable)
        finally:
            self._in_flight -= 1

    async def close(self) -> None:
        if self._connection is None:
            return
        forget_pool(self)
        connection, self._connection = self._connection, None
        await asyncio.get_running_loop().run_in_executor(self._executor, connection.close)
        self._executor.shutdown(wait=True)

    def _run(self, mode: Mode, script: Callable[[], Script[_T]], durable: bool) -> _T:
        connection = self._connection
        if connection is None:
            raise RuntimeError("the job store is closed")
        try:
            if mode is Mode.READ:
                return self._drive(connection, script())
            with _SqliteTransaction(connection, durable):
                return self._drive(connection, script())
        except sqlite3.Error as error:
            raise _sqlite_error(error) from error

    def _drive(self, connection: sqlite3.Connection, script: Script[_T]) -> _T:
        answer: Any = None
        while True:
            try:
                step = script.send(answer)
            except StopIteration as stop:
                result: _T = stop.value
                return result
            compiled = step.query.compiled(SQLITE)
            if step.fetch is Fetch.EACH:
                assert isinstance(step.params, Sequence)
                answer = [
                    connection.execute(compiled.sql, compiled.parameters(params)).fetchone()
                    for params in step.params
                ]
                continue
            assert isinstance(step.params, Mapping)
            cursor = connection.execute(compiled.sql, compiled.parameters(step.params))
            if step.fetch is Fetch.ONE:
                answer = cursor.fetchone()
            elif step.fetch is Fetch.ALL:
                answer = cursor.fetchall()
            else:
                answer = None


def _connect_sqlite(path: Path) -> sqlite3.Connection:
    # isolation_level=None: transactions are begun explicitly, as BEGIN IMMEDIATE, so a
    # read-then-write never has to upgrade its lock.
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=True)
    connection.row_factory = sqlite3.Row
    try:
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = NORMAL")
        connection.execute("PRAGMA foreign_keys = ON")
        connection.execute("PRAGMA busy_timeout = 5000")
    except BaseException:
        connection.close()
        raise
    return connection


def _sqlite_error(error: sqlite3.Error) -> TiergenError:
    """The service's error for a failure of the SQLite database, as the ledger's store words it."""
    text = str(error)
    if isinstance(error, sqlite3.OperationalError):
        if "locked" in text or "busy" in text:
            return Aborted(f"the job database is locked by another process: {text}")
        return Unavailable(f"the job database cannot be used: {text}")
    return Internal(f"the job database refused a change: {text}")


@dataclass(frozen=True, slots=True)
class _SqliteTransaction:
    """`BEGIN IMMEDIATE` ... `COMMIT`, or `ROLLBACK` when the block raises; a `durable` one
    commits with `synchronous=FULL`."""

    connection: sqlite3.Connection
    durable: bool

    def __enter__(self) -> None:
        if self.durable:
            self.connection.execute("PRAGMA synchronous = FULL")
        self.connection.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        try:
            self.connection.execute("COMMIT" if kind is None else "ROLLBACK")
        finally:
            if self.durable:
                self.connection.execute("PRAGMA synchronous = NORMAL")


#: Rolled back and retried: what a concurrent transaction can cause, never the caller.
_CONFLICTS = (
    pg_errors.SerializationFailure,
    pg_errors.DeadlockDetected,
    pg_errors.LockNotAvailable,
)
_CONFLICT_ATTEMPTS = 8


class PostgresDatabase:
    """A PostgreSQL database through a psycopg 3 connection pool, at READ COMMITTED.

    Deadlocks, serialization failures and lock waits past the lock timeout roll back and are
    retried; only a conflict that outlasts the retries reaches the caller, as Aborted. A
    database that cannot be reached is Unavailable, and so is a call whose connection was lost
    midway (not retried: its change may or may not have committed).
    """

    def __init__(
        self, pool: psycopg_pool.AsyncConnectionPool[_PgConnection], timeout_seconds: float
    ) -> None:
        self._pool = pool
        self._timeout = timeout_seconds
        track_pool(_STORE, self)

    @property
    def dialect(self) -> Dialect:
        return POSTGRESQL

    def pool_figures(self) -> PoolFigures:
        return psycopg_pool_figures(self._pool)

    @classmethod
    async def open(cls, dsn: str, *, pool_size: int, timeout_seconds: float) -> PostgresDatabase:
        """Connect, keeping up to `pool_size` connections. A call waits at most
        `timeout_seconds` for a connection (then Unavailable) and as long for a row lock."""
        lock_timeout_ms = str(max(1, round(timeout_seconds * 1000)))

        async def configure(connection: _PgConnection) -> None:
            await connection.execute(
                "SELECT set_config('lock_timeout', %s, false)", (lock_timeout_ms,)
            )

        pool: psycopg_pool.AsyncConnectionPool[_PgConnection] = psycopg_pool.AsyncConnectionPool(
            dsn,
            connection_class=_PgConnection,
            min_size=1,
            max_size=pool_size,
            open=False,
            kwargs={"autocommit": True, "row_factory": dict_row},
            configure=configure,
            # A connection the server dropped (a restart, a failover) is replaced before use:
            # no call is retried on a lost connection, as its change may have been applied.
            check=psycopg_pool.AsyncConnectionPool.check_connection,
            timeout=timeout_seconds,
            name="router-jobs",
        )
        try:
            await pool.open(wait=True, timeout=timeout_seconds)
        except BaseException as error:
            await pool.close()
            if isinstance(error, psycopg_pool.PoolTimeout):
                raise Unavailable(
                    f"cannot connect to the job database within {timeout_seconds} s",
                    retry_after=1.0,
                ) from error
            raise
        return cls(pool, timeout_seconds)

    async def close(self) -> None:
        forget_pool(self)
        await self._pool.close()

    async def run(
        self, mode: Mode, script: Callable[[], Script[_T]], *, durable: bool = False
    ) -> _T:
        # Every PostgreSQL commit is durable: `durable` asks for nothing more here.
        conflicts = 0
        while True:
            try:
                async with self._pool.connection(timeout=self._timeout) as connection:
                    if mode is not Mode.ATOMIC:
                        return await self._drive(connection, script())
                    async with connection.transaction():
                        return await self._drive(connection, script())
            except _CONFLICTS as error:
                conflicts += 1
                if conflicts >= _CONFLICT_ATTEMPTS:
                    raise Aborted(
                        "the job records were changed concurrently; retry",
                        reason="WRITE_CONFLICT",
                    ) from error
            except psycopg_pool.PoolClosed:
                raise RuntimeError("the job store is closed") from None
            except psycopg_pool.PoolTimeout as error:
                raise Unavailable(
                    f"no job database connection within {self._timeout} s", retry_after=1.0
                ) from error
            except psycopg.OperationalError as error:
                raise Unavailable(
                    f"the job database is unreachable: {error}", retry_after=1.0
                ) from error
            except psycopg.DataError as error:
                # Values the checks let through but PostgreSQL cannot hold, such as U+0000 in
                # an id being looked up.
                raise InvalidArgument(
                    f"the job database cannot hold a value: {error}", reason="UNSTORABLE_VALUE"
                ) from error
            except psycopg.Error as error:
                raise Internal(f"the job database refused a change: {error}") from error
            # Jittered so that transactions that just collided do not collide again.
            await asyncio.sleep(random.uniform(0, 0.002 * 2**conflicts))

    async def _drive(self, connection: _PgConnection, script: Script[_T]) -> _T:
        answer: Any = None
        while True:
            try:
                step = script.send(answer)
            except StopIteration as stop:
                result: _T = stop.value
                return result
            compiled = step.query.compiled(POSTGRESQL)
            if step.fetch is Fetch.EACH:
                assert isinstance(step.params, Sequence)
                answer = []
                async with connection.cursor() as cursor:
                    # One round trip for every row: the statements are pipelined.
                    await cursor.executemany(
                        compiled.sql,
                        [compiled.parameters(params) for params in step.params],
                        returning=True,
                    )
                    while True:
                        answer.append(await cursor.fetchone())
                        if not cursor.nextset():
                            break
                continue
            assert isinstance(step.params, Mapping)
            cursor = await connection.execute(compiled.sql, compiled.parameters(step.params))
            if step.fetch is Fetch.ONE:
                answer = await cursor.fetchone()
            elif step.fetch is Fetch.ALL:
                answer = await cursor.fetchall()
            else:
                answer = None
